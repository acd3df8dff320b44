"""Ops that ONNX defines as a function of other ops, differentiated through that definition.

Some standard ops have a function body in their schema: Swish (x * sigmoid(alpha x)),
MeanVarianceNormalization, CenterCropPad, ... An op of this kind that has no gradient rule of its
own is replaced, in the model being rewritten (never the caller's), by the nodes of its body at
the model's opset, so its gradient is exact by construction: the body *is* the op's definition,
and its nodes have rules. The forward then runs those nodes instead of the runtime's own kernel
(the same function, computed op by op).
"""

from __future__ import annotations

import onnx
import onnx.defs
from onnx import helper

from .protos import default_opset
from .vjp import NON_DIFFERENTIABLE, RULES

# Not expanded: Range's body is a Loop whose trip count depends on the values (its float form,
# if ever on the path, stays refused); a quantizer's body would hide it from the error's hint.
_KEPT = {"Range", "DynamicQuantizeLinear", "If", "Loop", "Scan", "SequenceMap"}


def expand_functions(model: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """Replace, in place, each default-domain node of the top-level graph whose op has no rule,
    and whose schema gives a function body at the model's opset, by that body's nodes
    (repeatedly, for a body that uses another such op). Returns {added node's name: (the op
    type and name of the node it came from)}."""
    opset = default_opset(model)
    expanded: dict[str, tuple[str, str]] = {}
    for _ in range(8):
        found = [n for n in model.graph.node if _candidate(n, opset)]  # (held: the ids stay theirs)
        if not found:
            break
        candidates = {id(n) for n in found}
        types = _Types(model)
        used = _names(model.graph)
        nodes, done = [], 0
        for node in model.graph.node:
            body = _body(node, opset, types) if id(node) in candidates else None
            if body is None:
                nodes.append(node)
                continue
            origin = expanded.get(node.name) or (node.op_type, node.name or node.output[0])
            for m in _instantiate(node, body, used):
                expanded[m.name] = origin
                nodes.append(m)
            done += 1
        if not done:
            break
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return expanded


def _candidate(node: onnx.NodeProto, opset: int) -> bool:
    if node.domain not in ("", "ai.onnx") or node.op_type in _KEPT or node.op_type in RULES \
            or node.op_type in NON_DIFFERENTIABLE:
        return False
    return _schema(node, opset)[0] is not None


def _schema(node: onnx.NodeProto, opset: int):
    """(schema, whether its function depends on the input types), or (None, False) without one."""
    try:
        s = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return None, False
    if s.deprecated:
        return None, False
    if _version(s.function_opset_versions, opset) is not None:
        return s, False
    if _version(s.context_dependent_function_opset_versions, opset) is not None:
        return s, True
    return None, False


def _version(versions, opset: int) -> int | None:
    fitting = [v for v in versions if v <= opset]
    return max(fitting) if fitting else None


class _Types:
    """The types of the model's tensors, inferred once when first asked (shape inference on the
    model without its weights' data)."""

    def __init__(self, model: onnx.ModelProto):
        self.model, self._types = model, None

    def get(self, name: str) -> onnx.TypeProto | None:
        if self._types is None:
            from .shapes import skeleton

            try:
                g = onnx.shape_inference.infer_shapes(skeleton(self.model)).graph
                self._types = {vi.name: vi.type for vi in list(g.input) + list(g.value_info) + list(g.output)}
            except Exception:  # nothing known: bodies that need a type stay unexpanded (refused as before)
                self._types = {}
            self._types.update({t.name: helper.make_tensor_type_proto(t.data_type, list(t.dims))
                                for t in self.model.graph.initializer})
        return self._types.get(name)


def _body(node: onnx.NodeProto, opset: int, types) -> onnx.FunctionProto | None:
    """The function body of `node` at `opset`, with the node's attributes filled in from the
    schema's defaults (None where it cannot be had)."""
    schema, contextual = _schema(node, opset)
    filled = onnx.NodeProto()
    filled.CopyFrom(node)
    have = {a.name for a in node.attribute}
    for name, a in schema.attributes.items():
        if name not in have and a.default_value.name:
            filled.attribute.append(a.default_value)
    fn = onnx.FunctionProto()
    try:
        if contextual:
            version = _version(schema.context_dependent_function_opset_versions, opset)
            ins = [types.get(i) if i else onnx.TypeProto() for i in node.input]
            if any(t is None for t in ins):
                return None
            fn.ParseFromString(schema.get_context_dependent_function_with_opset_version(
                version, filled.SerializeToString(), [t.SerializeToString() for t in ins]))
        else:
            version = _version(schema.function_opset_versions, opset)
            fn.ParseFromString(schema.get_function_with_opset_version(version))
    except Exception:
        return None
    if not fn.node:
        return None
    # (ONNX gives a new body where an op it uses changed meaning: the latest one up to the model's
    # opset holds there.) Bodies with other domains or subgraphs are left alone.
    for n in fn.node:
        if n.domain not in ("", "ai.onnx") or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                                    for a in n.attribute):
            return None
    if not _cast_constants(fn, types.get(node.input[0]) if node.input else None):
        return None
    fn.ClearField("attribute_proto")
    fn.attribute_proto.extend(filled.attribute)  # (read below by _instantiate)
    return fn


def _cast_constants(fn: onnx.FunctionProto, first: onnx.TypeProto | None) -> bool:
    """In place: a float32 constant of the body that enters arithmetic directly is cast to the
    type of the function's first input, where that is another float type
    (MeanVarianceNormalization's epsilon and exponent are written for float32 only; other bodies
    CastLike theirs). False where the body needs that type and it is unknown."""
    floats = set()
    for n in fn.node:
        if n.op_type == "Constant" and any(a.name in ("value_float", "value_floats") or
                                           (a.name == "value" and a.t.data_type == onnx.TensorProto.FLOAT)
                                           for a in n.attribute):
            floats.add(n.output[0])
    direct = [n for n in fn.node if n.op_type != "CastLike" and any(t in floats for t in n.input)]
    if not direct:
        return True
    if first is None or not first.HasField("tensor_type"):
        return False
    to = first.tensor_type.elem_type
    if to == onnx.TensorProto.FLOAT:
        return True
    nodes, cast = [], {}
    for n in fn.node:
        if n.op_type != "CastLike":
            for k, t in enumerate(n.input):
                if t in floats:
                    if t not in cast:
                        cast[t] = f"{t}_cast"
                        nodes.append(helper.make_node("Cast", [t], [cast[t]], to=to))
                    n.input[k] = cast[t]
        nodes.append(n)
    del fn.node[:]
    fn.node.extend(nodes)
    return True


def _instantiate(node: onnx.NodeProto, fn: onnx.FunctionProto, used: set[str]) -> list[onnx.NodeProto]:
    """The body's nodes wired to `node`'s inputs and outputs, its own tensors and nodes given
    names not yet `used`, attribute references replaced by the node's values."""
    label = node.name or node.output[0]

    def fresh(hint: str) -> str:
        name, k = f"{label}/{hint}", 1
        while name in used:
            name, k = f"{label}/{hint}_{k}", k + 1
        used.add(name)
        return name

    rename = {formal: (node.input[i] if i < len(node.input) else "") for i, formal in enumerate(fn.input)}
    rename.update({formal: node.output[i] for i, formal in enumerate(fn.output) if i < len(node.output) and node.output[i]})
    values = {a.name: a for a in fn.attribute_proto}
    out = []
    for n in fn.node:
        m = onnx.NodeProto()
        m.CopyFrom(n)
        for names in (m.input, m.output):
            for k, t in enumerate(names):
                if t and t not in rename:
                    rename[t] = fresh(t)
                names[k] = rename.get(t, t) if t else t
        kept = []
        for a in m.attribute:
            if a.ref_attr_name:
                if a.ref_attr_name not in values:
                    continue  # an optional attribute the node does not set
                v = onnx.AttributeProto()
                v.CopyFrom(values[a.ref_attr_name])
                v.name = a.name
                kept.append(v)
            else:
                kept.append(a)
        del m.attribute[:]
        m.attribute.extend(kept)
        m.name = fresh(n.name or n.op_type)
        m.domain = ""
        out.append(m)
    return out


def _names(g: onnx.GraphProto) -> set[str]:
    return ({o for n in g.node for o in n.output} | {i for n in g.node for i in n.input} | {n.name for n in g.node}
            | {i.name for i in g.input} | {t.name for t in g.initializer} | {o.name for o in g.output})
