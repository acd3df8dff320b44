"""Static dims and small constant values that ONNX shape inference cannot see.

Exporters compute shapes in the graph (Shape, Gather, Equal, Where, ConstantOfShape, Mod, ...),
and ONNX data propagation stops at the first op it does not know, so with a dynamic batch axis
the dims after `x.expand(B, -1, -1)` or a window padding computed from `x.shape` come out
unknown, and so do the pads, axes and sizes that rules need as constants. Here the inputs'
free dims are set to a trial size, every node whose inputs are all known small tensors is
evaluated (onnx.reference, one node at a time), the results are fed back as initializers and
inference runs again, until nothing changes. Two trial sizes: a dim or value that comes out
the same for both does not depend on the free dims.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SMALL = 4096  # largest tensor (elements) evaluated or kept as a value
TRIALS = (6, 35)  # differ modulo 2, 3, 4, 5, 7, 8, ...: a value equal for both does not depend on them
NOT_FOLDED = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
              "Bernoulli", "If", "Loop", "Scan", "SequenceMap"}


def _dims(vi) -> list | None:
    t = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


def _evaluate(node: onnx.NodeProto, ins: list[np.ndarray], opsets) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    names = [i for i in node.input if i]
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
              for n, v in dict(zip(names, ins)).items()]
    outputs = [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in node.output if o]
    model = helper.make_model(helper.make_graph([node], "fold", inputs, outputs), opset_imports=opsets)
    return ReferenceEvaluator(model).run(None, dict(zip(names, ins)))


def _too_big(node: onnx.NodeProto, ins: list[np.ndarray], shapes: dict) -> bool:
    """Whether evaluating `node` could make a tensor over SMALL elements (from small inputs:
    ConstantOfShape, Expand, Tile, Range and the like), judged before running it."""
    for o in node.output:
        s = shapes.get(o)
        if s is not None and None not in s and int(np.prod(s)) > SMALL:
            return True
    try:
        if node.op_type == "ConstantOfShape":
            return int(np.prod(ins[0])) > SMALL
        if node.op_type == "Expand":
            return max(ins[0].size, int(np.prod(ins[1]))) > SMALL
        if node.op_type == "Tile":
            return ins[0].size * int(np.prod(ins[1])) > SMALL
        if node.op_type == "Range":
            start, limit, delta = (float(v) for v in ins)
            return delta == 0 or (limit - start) / delta > SMALL
    except (TypeError, ValueError, OverflowError, IndexError):
        return True
    return False


def _trial(model: onnx.ModelProto, size: int) -> tuple[dict, dict]:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {i.name for i in g.initializer}
    for vi in g.input:
        if vi.name not in inits:
            for d in vi.type.tensor_type.shape.dim:
                if not d.HasField("dim_value"):
                    d.Clear()
                    d.dim_value = size
    values = {i.name: numpy_helper.to_array(i) for i in g.initializer if np.prod(i.dims) <= SMALL}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    shapes: dict = {}
    for _ in range(20):
        try:
            inferred = onnx.shape_inference.infer_shapes(m, data_prop=True)
        except Exception:
            break
        ig = inferred.graph
        shapes = {vi.name: _dims(vi) for vi in [*ig.input, *ig.value_info, *ig.output] if _dims(vi) is not None}
        new = {}  # values found in this pass; nodes come in graph order, so whole chains fold at once
        for n in g.node:
            outs = [o for o in n.output if o]
            if not outs or n.domain not in ("", "ai.onnx") or n.op_type in NOT_FOLDED:
                continue
            if n.op_type in ("Shape", "Size"):
                s = list(new[n.input[0]].shape) if n.input[0] in new else shapes.get(n.input[0])
                if s is None or None in s:
                    continue
                if n.op_type == "Size":
                    new[outs[0]] = np.array(int(np.prod(s)), np.int64)
                else:
                    a = {x.name: x.i for x in n.attribute}
                    new[outs[0]] = np.array(s[a.get("start", 0):a.get("end", len(s))], np.int64)
                continue
            ins = [new.get(i, values.get(i)) for i in n.input if i]
            if any(v is None or v.size > SMALL for v in ins) or _too_big(n, ins, shapes):
                continue
            try:
                res = _evaluate(n, ins, m.opset_import)
            except Exception:  # an op the reference cannot run: that value stays unknown
                continue
            new.update({o: np.asarray(v) for o, v in zip(outs, res) if np.asarray(v).size <= SMALL})
        if not new:
            break
        values.update(new)
        # Nodes whose outputs are all known become initializers; inference runs again.
        keep = [n for n in g.node if not all(o in values for o in n.output if o)]
        known = {o for n in g.node for o in n.output if o and o in values}
        del g.node[:]
        g.node.extend(keep)
        g.initializer.extend(numpy_helper.from_array(values[o], o) for o in known)
    for name, v in values.items():
        shapes.setdefault(name, list(v.shape))
    return shapes, values


def trial_shapes(model: onnx.ModelProto) -> tuple[dict[str, list], dict[str, np.ndarray]]:
    """({tensor: dims, None where they depend on the inputs' free dims},
    {tensor: value of a small tensor that does not depend on them})."""
    (s1, v1), (s2, v2) = (_trial(model, size) for size in TRIALS)
    shapes = {k: [d if d == e else None for d, e in zip(s, s2[k])]
              for k, s in s1.items() if k in s2 and len(s) == len(s2[k])}
    values = {k: v for k, v in v1.items() if k in v2 and v.shape == v2[k].shape and np.array_equal(v, v2[k])}
    return shapes, values
