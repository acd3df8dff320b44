"""The driver: find the differentiable path, walk it in reverse, accumulate, prune.

Everything rules share lives here; the rules themselves (in `vjp/`) only map output
gradients to input gradients for one node.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from .errors import OnnxAttrError, UnsupportedModelError
from .graph import Builder
from .patterns import fuse
from .protos import FLOAT_TYPES, attrs, describe, reads
from .vjp import NON_DIFFERENTIABLE, rule_key

CONTROL_FLOW = {"If", "Loop", "Scan", "SequenceMap"}
QUANTIZATION = {"QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul",
                "QLinearAdd", "QLinearMul", "QGemm", "DynamicQuantizeMatMul"}
_FLOAT_NAMES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.DOUBLE: "float64"}


def differentiable_path(b: Builder, wrt: list[str], ys: list[str]) -> tuple[list[onnx.NodeProto], set[str]]:
    """Nodes through which a float tensor depends on `wrt` and feeds `ys`, in graph order,
    and the tensors that need a gradient (live inputs of those nodes, and `wrt`)."""
    live = set(wrt)
    forward = []
    for node in b.all_nodes():
        if node.op_type in NON_DIFFERENTIABLE and node.domain in ("", "ai.onnx"):
            continue
        if any(i in live for i in reads(node) if i):
            outs = [o for o in node.output if o and (b.is_float(o) or o not in b.types)]
            if outs:
                forward.append(node)
                live.update(outs)
    needed = set(ys)
    path = []
    for node in reversed(forward):
        if any(o in needed for o in node.output):
            path.append(node)
            needed.update(i for i in reads(node) if i in live)
    path.reverse()
    return path, (needed & live) | set(wrt)


def inside(node: onnx.NodeProto, live: set[str]) -> list[onnx.NodeProto]:
    """The nodes of a control-flow node's subgraphs (nested ones too) that read, directly or
    through the subgraph's own nodes, a tensor in `live` or a value a Loop carries or a Scan
    scans: a superset of what the backward differentiates inside (for `onnxattr coverage`)."""
    found = []
    for a in node.attribute:
        for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
            carried = {"Loop": [i.name for i in g.input[2:]], "Scan": [i.name for i in g.input]}.get(node.op_type, [])
            inner = set(live) | set(carried)
            for n in g.node:
                if n.op_type in NON_DIFFERENTIABLE or not any(i in inner for i in reads(n) if i):
                    continue
                found.append(n)
                inner.update(o for o in n.output if o)
                found += inside(n, inner)
    return found


def check_path(b: Builder, path: list[onnx.NodeProto], policy) -> None:
    """Fail before any work when a node on the path has no rule (listing all such nodes), has a
    shape conflict, or leaves the model's float type."""
    refuse_missing_rules(path, policy)
    refuse_shape_conflicts(b, path)
    for node in path:
        mixed = next((o for o in node.output if o in b.needed and b.types.get(o) in FLOAT_TYPES and b.types[o] != b.dtype), None)
        if mixed is not None:
            have, want = (_FLOAT_NAMES.get(t, TensorProto.DataType.Name(t).lower()) for t in (b.types[mixed], b.dtype))
            fix = ("explain the model as exported, before ONNX Runtime's optimisation inserted its casts"
                   if node.name.startswith("InsertedPrecisionFreeCast_") else "convert the whole model to one float type")
            raise UnsupportedModelError(
                f"{describe(node)}: its output '{mixed}' is {have} on the differentiable path of a {want} input "
                f"(mixed precision is not supported); {fix}")


def refuse_shape_conflicts(b: Builder, path: list[onnx.NodeProto]) -> None:
    """UnsupportedModelError for the first node on `path` whose output shape ONNX's inference
    and ONNX Runtime disagree on (a pool's ceil_mode, ...)."""
    for node in path:
        if node.output and node.output[0] in b.shape_conflicts:
            raise UnsupportedModelError(f"{describe(node)}: {b.shape_conflicts[node.output[0]]}")


def refuse_missing_rules(path: list[onnx.NodeProto], policy) -> None:
    """UnsupportedModelError naming the nodes on `path` without a gradient rule, if any: the
    first thing to tell about a model, before its shapes or types."""
    missing = []
    ruleless = [node for node in path if policy.rule(rule_key(node)) is None]
    for node in ruleless:
        if node.domain not in ("", "ai.onnx"):
            kind = "domain" if node.domain == "ai.onnx.ml" else "custom domain"
            missing.append(f"{describe(node)} ({kind} '{node.domain}')")
        elif node.op_type in CONTROL_FLOW:
            missing.append(f"{describe(node)} (control flow)")
        elif not onnx.defs.has(node.op_type):  # (tf2onnx leaves an op it cannot convert, e.g. Erfc, as it was)
            missing.append(f"{describe(node)} (not an ONNX operator: the model is not valid ONNX, a converter left it "
                           "unconverted)")
        else:
            missing.append(describe(node))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        quantized = any(n.op_type in QUANTIZATION for n in ruleless)
        nchwc = any(n.domain == "com.microsoft.nchwc" for n in ruleless)
        raise UnsupportedModelError(
            f"no gradient rule for {len(missing)} node(s) on the differentiable path: "
            + "; ".join(missing[:3]) + more
            + ("; a quantized model: explain the float model it was quantized from" if quantized else "")
            + ("; ONNX Runtime's layout ops of ORT_ENABLE_ALL, made for one machine: explain the model as exported, "
               "or saved at ORT_ENABLE_EXTENDED" if nchwc else "")
        )


def build_backward(b: Builder, seeds: dict[str, str], wrt: list[str], policy, unreached_ok: bool = False) -> dict[str, str]:
    """Emit the backward graph into `b`: returns {wrt name: gradient tensor name}.

    `seeds` maps forward tensors to the names of their incoming gradients (cotangents). A `wrt`
    tensor that no gradient reaches is an error, or left out of the result with `unreached_ok`
    (a Loop body's carried value that the seeded outputs do not read).
    """
    b.policy = policy  # for rules that differentiate a subgraph (Loop)
    path, b.needed = differentiable_path(b, wrt, list(seeds))
    path = fuse(b, path)
    check_path(b, path, policy)
    partials: dict[str, list[str]] = {y: [g] for y, g in seeds.items()}
    producer = {o: n for n in b.all_nodes() for o in n.output if o}
    for node in reversed(path):
        gys = []
        for o in node.output:
            parts = partials.pop(o, None)
            gys.append(b.add_all(parts, like=o) if parts else None)
            if parts and any(p in b.unbounded for p in parts):
                b.unbounded.add(gys[-1])
        for o, g in zip(node.output, gys):
            if g is not None:
                b.annotate(g, like=o)
        if all(g is None for g in gys):
            continue
        try:
            gxs = policy.rule(rule_key(node))(b, node, gys)
        except OnnxAttrError as e:  # (at a batched forward copy's node: named as the model names it)
            raise b.named_as_model(e, node) from None
        if isinstance(gxs, dict):  # control flow: by name, for its inputs and the outer tensors its body reads
            pairs = [(name, gxs.get(name)) for name in dict.fromkeys(i for i in reads(node) if i)]
        else:
            gxs = list(gxs) + [None] * (len(node.input) - len(gxs))
            pairs = list(zip(node.input, gxs))
        if may_blow_up(b, node, producer) or any(g in b.unbounded for g in gys if g is not None):
            b.unbounded.update(g for _, g in pairs if g is not None)
        for name, g in pairs:
            if g is None and b.needs(name) and b.is_float(name):
                # never a silently dropped term: this operand depends on the explained input
                which = (f"its input {list(node.input).index(name)} ('{name}')" if name in node.input
                         else f"the tensor '{name}' its body reads")
                raise UnsupportedModelError(f"{describe(node)}: {which} depends on the input being "
                                            f"explained, and {node.op_type}'s gradient with respect to it is not supported")
            if g is not None:
                b.annotate(g, like=name)
            if g is not None and b.needs(name):
                partials.setdefault(name, []).append(g)
    grads = {}
    for x in wrt:
        if x not in partials and unreached_ok:
            continue
        if x not in partials:
            raise UnsupportedModelError(f"no gradient reaches input '{x}': {_why_unreached(b, x, list(seeds))}")
        grads[x] = b.add_all(partials[x], like=x)
    return grads


def _why_unreached(b: Builder, x: str, ys: list[str]) -> str:
    """Why no gradient flows from `ys` back to `x`: the first node where the outputs' dependence
    on x stops being a float one (a Shape, an integer or boolean result, a quantization, a
    piecewise-constant op), or no dependence at all."""
    depends, floats = {x}, {x}
    cuts = []
    for node in b.all_nodes():
        ins = [i for i in reads(node) if i]
        if not any(i in depends for i in ins):
            continue
        outs = [o for o in node.output if o]
        depends.update(outs)
        carried = node.op_type not in NON_DIFFERENTIABLE and [o for o in outs if b.is_float(o) or o not in b.types]
        if any(i in floats for i in ins):
            if carried:
                floats.update(carried)
            if len(carried or []) < len(outs):  # (a TopK's indices, beside its float values)
                cuts.append(node)
    needed = set(ys)
    for node in reversed(b.all_nodes()):
        if any(o in needed for o in node.output):
            needed.update(i for i in reads(node) if i)
    if not needed & depends:
        return "the output does not depend on it"
    blocked = [n for n in cuts if any(o in needed and o not in floats for o in n.output)]
    # a node whose float outputs the output also needs (Dropout's mask beside its values, TopK's
    # indices beside its values) is not where the float dependence stops: one further on is
    cut = next((n for n in blocked if not any(o in needed and o in floats for o in n.output)), None)
    if cut is None:
        cut = next(iter(blocked), None)
    if cut is None:
        return "the output does not depend on it through float operations"
    out = next(o for o in cut.output if o in needed and o not in floats)
    elem = b.types.get(out)
    what = (f"is {TensorProto.DataType.Name(elem).lower()}" if elem is not None and elem not in FLOAT_TYPES
            else "is piecewise constant or depends on the input's shape only")
    hint = "; explain the float model it was quantized from" if cut.op_type in QUANTIZATION else ""
    return f"the output depends on it only through {describe(cut)}, whose output '{out}' {what} (no gradient passes){hint}"


def may_blow_up(b: Builder, node: onnx.NodeProto, producer: dict) -> bool:
    """Whether a node's gradient may be +-inf for finite inputs: sqrt, log, 1/x and x / y at 0,
    x**p at 0 for p < 1, asin, acos and atanh at +-1, acosh at 1. (An infinite value there may
    turn finite again further on, through a clamp, a Relu or a sigmoid.) The masks below such a
    node then select rather than multiply, so that, as in PyTorch, a masked-out inf gives 0 and
    not NaN. Arguments provably > 0 (a variance + eps, a norm clipped at eps) are safe."""
    op, ins = node.op_type, node.input
    if op in ("Sqrt", "Log", "Reciprocal"):
        return not _positive(b, ins[0], producer)
    if op == "Div":
        v = b.value(ins[1])
        return not (bool(np.all(v != 0)) if v is not None else _positive(b, ins[1], producer))
    if op == "Pow":
        p = b.value(ins[1])
        return not ((p is not None and bool(np.all(p >= 1))) or _positive(b, ins[0], producer))
    return op in ("Asin", "Acos", "Atanh", "Acosh")


_PASS = {"Reshape", "Expand", "Unsqueeze", "Squeeze", "Identity", "Transpose", "Flatten"}
_NON_NEGATIVE = {"ReduceSumSquare", "ReduceL2", "ReduceL1", "Abs", "Relu", "Exp", "Sigmoid", "Softmax", "Softplus", "Sqrt"}


def _positive(b: Builder, t: str, producer: dict, depth: int = 6) -> bool:
    """Whether `t` is provably > 0 (as computed in floating point, underflow included)."""
    v = b.value(t)
    if v is not None:
        return bool(np.all(v > 0))
    n = producer.get(t)
    if n is None or depth == 0:
        return False
    op, ins, d = n.op_type, n.input, depth - 1
    if op in _PASS or op == "Sqrt":
        return _positive(b, ins[0], producer, d)
    if op == "Add":  # positive + non-negative >= the positive one
        return any(_positive(b, ins[i], producer, d) and _non_negative(b, ins[1 - i], producer, d) for i in (0, 1))
    if op == "Max":
        return any(_positive(b, i, producer, d) for i in ins if i)
    if op == "Clip":  # a lower bound > 0 (input, or Clip-6's attribute)
        lo = b.value(ins[1]) if len(ins) > 1 and ins[1] else attrs(n).get("min")
        return lo is not None and bool(np.all(np.asarray(lo) > 0))
    return False


def _non_negative(b: Builder, t: str, producer: dict, depth: int = 6) -> bool:
    v = b.value(t)
    if v is not None:
        return bool(np.all(v >= 0))
    n = producer.get(t)
    if n is None or depth == 0:
        return False
    op, ins, d = n.op_type, n.input, depth - 1
    if op in _NON_NEGATIVE or (op == "Mul" and ins[0] == ins[1]):
        return True
    if op == "Pow":
        p = b.value(ins[1])
        return p is not None and p.size == 1 and float(p) % 2 == 0
    if op in _PASS or op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "GlobalAveragePool"):
        return _non_negative(b, ins[0], producer, d)
    if op in ("Add", "Mul", "Max"):
        return all(_non_negative(b, i, producer, d) for i in ins if i)
    if op == "Div":
        return _non_negative(b, ins[0], producer, d) and _positive(b, ins[1], producer, d)
    return _positive(b, t, producer, depth)


def prune(nodes: list[onnx.NodeProto], keep: set[str]) -> list[onnx.NodeProto]:
    """Drop added nodes whose outputs reach neither `keep` nor another kept node."""
    live = set(keep)
    kept = []
    for node in reversed(nodes):
        if any(o in live for o in node.output):
            kept.append(node)
            live.update(reads(node))  # Scan bodies (recurrent rules) read outer tensors
    kept.reverse()
    return kept
