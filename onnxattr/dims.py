"""Which unknown lengths are provably equal: each dim as an expression of the inputs' dims.

ONNX shape inference names every unknown length it cannot relate by a fresh symbol: a residual
block's Conv output and its skip input, both [N, C, unk_a, unk_b] with a dynamic image size, look
unrelated, and the backward would have to check at run time whether one broadcasts. Here every
dim of a tensor the graph computes from its inputs through element-wise ops, Convs, pools,
constant Pads, axis permutations, Reshapes to the Shape of a tensor and Resizes to sizes taken
from it (also token embeddings' Gathers, Expands, recurrent layers, arange(n)) becomes an expression
over the inputs' dims: an int, or (base, offset) meaning base + offset, where base is an input
dim ("in", input, axis) or a division ("div", expression, stride) of one (floor division; conv
and pool lengths are
floor((length + pads - window) / stride) + 1; with ceil_mode, stride - 1 more). Two dims with
equal expressions are equal in every run. Anything else (other Reshapes, Slice, Resize, ceil_mode pools
whose last window may start in the end pad, ...) gets None: unknown, never guessed.
"""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from .protos import attrs, constant_tensor, reads

# outputs[0] has the shape of inputs[0]
_SAME = {
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
    "Softsign", "Mish", "Gelu", "Erf", "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs", "Sin", "Cos", "Identity",
    "Cast", "Clip", "Dropout", "BatchNormalization", "InstanceNormalization", "LRN", "LayerNormalization",
    "Softmax", "LogSoftmax", "ThresholdedRelu", "Shrink", "Floor", "Ceil", "Round", "Sign",
}
# multidirectional broadcasting of every input
_BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Greater", "Less",
              "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor"}
_WINDOWED = {"Conv", "MaxPool", "AveragePool", "LpPool"}
_INT_TYPES = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
_GLOBAL = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}


def _plus(e, k: int):
    if e is None or isinstance(e, int):
        return None if e is None else e + k
    return (e[0], e[1] + k)


def _floordiv(e, s: int):
    if e is None:
        return None
    if isinstance(e, int):
        return e // s
    return e if s == 1 else (("div", e, s), 0)


def _broadcast(dims: list):
    """The broadcast length of `dims` (one per input, None where the input lacks the axis)."""
    real = [d for d in dims if d != 1 and d is not ...]
    if any(d is None for d in real):
        return None
    if not real:
        return 1
    return real[0] if all(d == real[0] for d in real) else None


def _window(node, x: list, w_shape: list | None) -> list | None:
    a = attrs(node)
    n = len(x) - 2
    ceil = a.get("ceil_mode", 0)
    if ceil and a.get("auto_pad", "NOTSET") != "NOTSET":
        return None
    kernel = list(a.get("kernel_shape") or (w_shape[2:] if w_shape and None not in w_shape[2:] else []))
    if len(kernel) != n:
        return None
    strides = list(a.get("strides", [1] * n))
    dil = list(a.get("dilations", [1] * n))
    auto = a.get("auto_pad", "NOTSET")
    channels = x[1] if node.op_type != "Conv" else w_shape[0] if w_shape else None
    out = [x[0], channels]
    for i in range(n):
        if auto in ("SAME_UPPER", "SAME_LOWER"):  # ceil(length / stride) = floor((length + stride - 1) / stride)
            # (with dilations ONNX Runtime pads pools by the undilated kernel, to other lengths)
            out.append(_floordiv(_plus(x[2 + i], strides[i] - 1), strides[i]) if dil[i] == 1 else None)
            continue
        pads = [0] * (2 * n) if auto == "VALID" else list(a.get("pads", [0] * (2 * n)))
        reach = (kernel[i] - 1) * dil[i] + 1
        room = pads[i] + pads[n + i] - reach
        if ceil:  # ceil((length + room) / stride) = floor((length + room + stride - 1) / stride), but a
            # window that would start in the end pad is left out: at some lengths, unless the end
            # pad plus a stride fits in the window's reach
            if pads[n + i] + strides[i] > reach:
                out.append(None)
                continue
            room += strides[i] - 1
        out.append(_plus(_floordiv(_plus(x[2 + i], room), strides[i]), 1))
    return out


def _pad(node, x: list, consts: dict) -> list | None:
    """Pad by constant pads (an attribute before opset 11, else a constant input, with optional
    constant axes): each length grows by its two pads, whatever the mode."""
    a = attrs(node)
    pads = a.get("pads")
    if pads is None:
        pads = consts.get(node.input[1]) if len(node.input) > 1 else None
    if pads is None:
        return None
    pads, rank = [int(p) for p in pads], len(x)
    axes = list(range(rank))
    if len(node.input) > 3 and node.input[3]:
        axes = consts.get(node.input[3])
        if axes is None:
            return None
        axes = [int(i) % rank for i in axes]
    if len(pads) != 2 * len(axes):
        return None
    out = list(x)
    for k, i in enumerate(axes):
        out[i] = _plus(out[i], pads[k] + pads[len(axes) + k])
    return out


def _one(side: list):
    """The product of `side` as an expression: an int, or its one non-int dim when the ints
    multiply to 1; else None."""
    ints = [d for d in side if isinstance(d, int)]
    rest = [d for d in side if not isinstance(d, int)]
    product = 1
    for d in ints:
        product *= d
    if not rest:
        return product
    return rest[0] if len(rest) == 1 and rest[0] is not None and product == 1 else None


def _reshape(x: list, shape: list, allowzero: int) -> list | None:
    """Reshape to a shape of known entries (constants, or lengths read by Shape): its lengths,
    the input's where 0 copies one, and for -1 what is left of the input once the other lengths
    are taken out of it. (A length read by Shape is taken as it is: where it is 0 in some run, a
    0 there copies the input's length instead, which these expressions do not follow.)"""
    out, free = [], None
    for k, s in enumerate(shape):
        if s is None or not isinstance(s, int):  # unknown, or an input's length
            out.append(s)
        elif s == 0 and not allowzero:
            if k >= len(x):
                return None
            out.append(x[k])
        elif s == -1 and free is None:
            free = k
            out.append(None)
        elif s >= 0:
            out.append(s)
        else:
            return None
    if free is not None:
        rest, ints = list(x), 1
        for k, e in enumerate(out):
            if k == free:
                continue
            if isinstance(e, int):
                ints *= e
            elif e is not None and e in rest:  # (an unknown length is no particular one of the input's)
                rest.remove(e)
            else:
                return out
        known = [d for d in rest if isinstance(d, int)]
        product = _one(known)
        unknown = [d for d in rest if not isinstance(d, int)]
        if not unknown:
            out[free] = product // ints if ints and product % ints == 0 else None
        elif len(unknown) == 1 and product == ints:
            out[free] = unknown[0]
    return out


def _slice(node, x: list, vals: dict, shapes: dict) -> list | None:
    """A Slice keeps the lengths of the axes it does not slice, and of those it takes whole (from 0
    to INT_MAX, step 1), whatever its bounds (computed at run time, as PyTorch's chunk writes them
    at a dynamic size); the other lengths are unknown. None where its axes are not known."""
    a, rank = attrs(node), len(x)
    if "starts" in a:  # (before opset 10: attributes)
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
        count = len(starts)
    else:
        ins = list(node.input) + [""] * 5
        starts, ends = (vals.get(i, (None,))[0] for i in ins[1:3])
        axes = vals.get(ins[3], (None,))[0] if ins[3] else None
        steps = vals.get(ins[4], (None,))[0] if ins[4] else None
        count = len(starts) if starts is not None else (shapes.get(ins[1]) or [None])[0]
        if ins[3] and axes is None:
            return None
    if axes is None:
        axes = list(range(count)) if count is not None else None
    if axes is None or any(not isinstance(i, int) or not -rank <= i < rank for i in axes):
        return None
    out = list(x)
    for k, axis in enumerate(axes):
        st = starts[k] if starts is not None else None
        en = ends[k] if ends is not None else None
        sp = steps[k] if steps is not None else 1
        whole = isinstance(st, int) and isinstance(en, int) and (st == 0 or st <= -2 ** 62) and en >= 2 ** 31 - 1
        if not (whole and sp == 1):
            out[axis % rank] = None
    return out


def _axes(node, consts: dict, rank: int) -> list | None:
    """A Squeeze / Unsqueeze / Reduce node's constant axes (attribute or input), in [0, rank)."""
    axes = attrs(node).get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = consts.get(node.input[1])
        if axes is None:
            return None
    if axes is None or any(not -rank <= int(a) < rank for a in axes):
        return None
    return sorted(int(a) % rank for a in axes)


def _given_axes(node) -> bool:
    return "axes" in attrs(node) or (len(node.input) > 1 and bool(node.input[1]))


def _reduce(node, x: list, consts: dict) -> list | None:
    a = attrs(node)
    axes = _axes(node, consts, len(x))
    if axes is None and _given_axes(node):
        return None  # (axes computed at run time, or out of range)
    if not axes:  # none or empty: every axis, or none with noop_with_empty_axes
        if a.get("noop_with_empty_axes", 0):
            return list(x)
        axes = list(range(len(x)))
    if a.get("keepdims", 1):
        return [1 if i in axes else d for i, d in enumerate(x)]
    return [d for i, d in enumerate(x) if i not in axes]


def _constant_tensors(g) -> list:
    """(name, values as a list, TensorProto) of the graph's initializers and Constant nodes that are
    ints of rank 0 or 1."""
    tensors = [(t.name, t) for t in g.initializer]
    tensors += [(n.output[0], constant_tensor(n)) for n in g.node if n.op_type == "Constant"]
    return [(name, numpy_helper.to_array(t).reshape(-1).tolist(), t) for name, t in tensors
            if t is not None and t.data_type in _INT_TYPES and len(t.dims) <= 1]


def _shape_value(node, vals: dict, sym: dict, shapes: dict):
    """(value, rank) of node's output where it computes from lengths (rank 0 or 1; each element
    an int, an expression or None), as Shape -> Gather -> Concat -> Reshape targets are built
    (PyTorch's x.view(x.size(0), -1), tf2onnx's Tensordot for a Dense on a map); else None."""
    op, a = node.op_type, attrs(node)
    v = [vals.get(i) if i else None for i in node.input]
    if op == "Shape":
        d = sym.get(node.input[0]) or shapes.get(node.input[0])
        return None if d is None else (list(d)[slice(a.get("start", 0), a.get("end"))], 1)
    if op in ("Identity", "Cast") and v[0] is not None and a.get("to", onnx.TensorProto.INT64) in _INT_TYPES:
        return v[0]
    if op == "Gather" and v[0] is not None and v[0][1] == 1 and v[1] is not None and a.get("axis", 0) in (0, -1):
        (data, _), (idx, rank) = v[0], v[1]
        if any(not isinstance(i, int) or not -len(data) <= i < len(data) for i in idx):
            return None
        return [data[i] for i in idx], rank
    if op == "Unsqueeze" and v[0] is not None and v[0][1] == 0:
        return v[0][0], 1
    if op == "Squeeze" and v[0] is not None and v[0][1] == 1 and len(v[0][0]) == 1:
        return v[0][0], 0
    if op == "Slice" and v[0] is not None and v[0][1] == 1:
        ends = v[2] if len(node.input) > 2 else (a.get("ends"), 1)
        starts = v[1] if len(node.input) > 1 else (a.get("starts"), 1)
        axes = v[3][0] if len(node.input) > 3 and node.input[3] else a.get("axes", [0])
        steps = v[4][0] if len(node.input) > 4 and node.input[4] else [1]
        if None in (starts, ends) or starts[0] is None or ends[0] is None or list(axes) not in ([0], [-1]) \
                or list(steps) != [1] or not all(isinstance(i, int) for i in starts[0] + ends[0]):
            return None
        return v[0][0][slice(starts[0][0], ends[0][0])], 1
    if op == "Concat":  # (a piece of known length whose values are not known: that many unknowns)
        pieces = [x if x is not None else (([None] * shapes[i][0], 1) if len(shapes.get(i) or [None, None]) == 1
                                           and shapes[i][0] is not None else None)
                  for x, i in zip(v, node.input)]
        if pieces and all(x is not None and x[1] == 1 for x in pieces):
            return [e for x in pieces for e in x[0]], 1
        return None
    if op == "ReduceProd" and v[0] is not None and v[0][1] == 1 and len(node.input) == 1:
        if a.get("axes", [0]) in ([0], [-1]) and not a.get("noop_with_empty_axes", 0):
            return [_one(v[0][0])], 1 if a.get("keepdims", 1) else 0
    return None


def _resize_sizes(node, dims: list, sizes) -> list | None:
    """A Resize's output dims from its `sizes` input where those are lengths followed from the
    graph (PyTorch's F.interpolate(x, size=...): Concat(Shape(x)[:2], [h, w])), stretched."""
    a = attrs(node)
    if sizes is None or sizes[1] != 1 or a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        return None
    axes = a.get("axes", list(range(len(dims))))
    if len(axes) != len(sizes[0]) or not all(-len(dims) <= ax < len(dims) for ax in axes):
        return None
    out = list(dims)
    for ax, d in zip(axes, sizes[0]):
        out[ax % len(dims)] = d
    return out


def symbolic_dims(model: onnx.ModelProto, shapes: dict, met: list | None = None,
                  lost: set | None = None) -> dict[str, list]:
    """{tensor: [expression per axis]} for the graph's inputs and what follows from them. `met`
    collects the pairs of different unknown expressions that an element-wise op broadcasts
    against each other on one axis: where the model runs, each is the other or 1 there (a padding
    mask [N', T] meeting the token embeddings [N, T, D] in a Mul: N' is N or 1). `lost` collects
    the input dims ("in", input, axis) that reach a node whose outputs these expressions do not
    follow (an op without a case here, a length left unknown, a broadcast against an unknown
    length): where such a dim goes from there, and what it meets, is not known."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    init_dims = {i.name: list(i.dims) for i in g.initializer}
    constants = _constant_tensors(g)
    consts = {name: value for name, value, _ in constants}
    sym: dict[str, list] = {}
    # (value, rank) of the int tensors of rank 0 or 1 whose values are known: constants, and
    # lengths read by Shape (_shape_value; a Reshape to Shape(t) gives t's dims, as PyTorch's
    # GroupNorm writes x -> [N, G, -1] -> back)
    vals = {name: (value, len(t.dims)) for name, value, t in constants}
    for vi in g.input:
        if vi.name in inits or not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        sym[vi.name] = [d.dim_value if d.HasField("dim_value") else (("in", vi.name, i), 0)
                        for i, d in enumerate(vi.type.tensor_type.shape.dim)]

    def dims(t: str) -> list | None:
        if t in sym:
            return sym[t]
        s = shapes.get(t, init_dims.get(t))
        return None if s is None else list(s)  # (an unknown length stays None: never guessed)

    def meeting(padded: list) -> None:  # (one axis of several inputs broadcast against each other)
        unknown = list(dict.fromkeys(d for d in padded if d is not None and d is not ... and not isinstance(d, int)))
        if met is not None:
            met.extend(zip(unknown, unknown[1:]))
        if lost is not None and None in padded:  # (met a length nothing here follows)
            lost.update(b for d in unknown for b in input_dims(d))

    def broadcast(operands: list) -> list:  # (numpy's rule, right-aligned; each axis's lengths meet)
        rank = max(len(d) for d in operands)
        padded = [[...] * (rank - len(d)) + list(d) for d in operands]
        for i in range(rank):
            meeting([d[i] for d in padded])
        return [_broadcast([d[i] for d in padded]) for i in range(rank)]

    def bases(entries) -> set:
        return {b for d in entries or () for b in input_dims(d)}

    for node in g.node:
        # the input dims that what the node reads (a branch's captures too) holds in its dims, and in
        # its values (lengths read by Shape; Size's product of them is not followed)
        read = [] if lost is None else [i for i in reads(node) if i]
        in_dims = {b for i in read for b in bases(dims(i))}
        in_vals = {b for i in read for b in bases(vals.get(i, ((),))[0])}
        if node.op_type == "Size":
            in_vals |= in_dims
        if node.domain not in ("", "ai.onnx") or not any(node.output):
            if lost is not None:
                lost.update(in_dims | in_vals)
            continue
        op, out, more = node.op_type, None, {}
        value = _shape_value(node, vals, sym, shapes)
        if value is not None and node.output[0]:
            vals[node.output[0]] = value
        ins = [dims(i) if i else None for i in node.input]
        if op in _SAME and ins and ins[0] is not None:
            out = list(ins[0])
        elif op in _BROADCAST and ins and all(d is not None for d in ins):
            out = broadcast(ins)
        elif op == "Expand" and len(ins) == 2 and ins[0] is not None and vals.get(node.input[1], ([], 0))[1] == 1:
            out = broadcast([ins[0], vals[node.input[1]][0]])
        elif op == "ConstantOfShape" and ins and vals.get(node.input[0], ([], 0))[1] == 1:
            out = list(vals[node.input[0]][0])
        elif op == "Range" and len(node.input) == 3 and all(vals.get(i, ([], 1))[1] == 0 for i in node.input):
            start, limit, delta = (vals[i][0][0] for i in node.input)  # (arange(n) of a length n read by Shape)
            if start == 0 and delta == 1 and limit is not None:
                out = [limit]
        elif op in ("LSTM", "GRU", "RNN") and ins and ins[0] is not None and len(ins[0]) == 3:
            a = attrs(node)
            hidden, layout = a.get("hidden_size"), a.get("layout", 0)
            directions = 2 if a.get("direction", b"forward") in (b"bidirectional", "bidirectional") else 1
            steps, batch = (ins[0][0], ins[0][1]) if layout == 0 else (ins[0][1], ins[0][0])
            # sequence_lens [N] and the initial states [D, N, H] ([N, D, H] in layout 1) have X's batch
            for k, axis in ((4, 0), (5, 1 - layout), (6, 1 - layout)):
                if len(ins) > k and ins[k] is not None and len(ins[k]) > axis:
                    meeting([batch, ins[k][axis]])
            if hidden is not None:
                out = [steps, directions, batch, hidden] if layout == 0 else [batch, steps, directions, hidden]
                state = [directions, batch, hidden] if layout == 0 else [batch, directions, hidden]
                more = {o: list(state) for o in node.output[1:] if o}
        elif op == "Gather" and len(ins) == 2 and ins[0] is not None and ins[1] is not None:  # (token embeddings)
            axis = attrs(node).get("axis", 0) % max(len(ins[0]), 1)
            out = list(ins[0][:axis]) + list(ins[1]) + list(ins[0][axis + 1:])
        elif op in _WINDOWED and ins and ins[0] is not None and len(ins[0]) >= 3:
            w_shape = shapes.get(node.input[1]) if op == "Conv" and len(node.input) > 1 else None
            out = _window(node, ins[0], w_shape)
        elif op in _GLOBAL and ins and ins[0] is not None:
            out = list(ins[0][:2]) + [1] * (len(ins[0]) - 2)
        elif op == "Reshape" and len(node.input) > 1 and ins[0] is not None and vals.get(node.input[1], ([], 0))[1] == 1:
            out = _reshape(ins[0], vals[node.input[1]][0], attrs(node).get("allowzero", 0))
        elif op == "Squeeze" and ins and ins[0] is not None:
            axes = _axes(node, consts, len(ins[0]))
            if not axes and not (axes is None and _given_axes(node)):  # none or empty: every length-1 axis
                axes = [i for i, d in enumerate(ins[0]) if d == 1] if all(isinstance(d, int) for d in ins[0]) else None
            out = None if axes is None else [d for i, d in enumerate(ins[0]) if i not in axes]
        elif op == "Unsqueeze" and ins and ins[0] is not None:
            given = attrs(node).get("axes", consts.get(node.input[1]) if len(node.input) > 1 else None)
            axes = None if given is None else _axes(node, consts, len(ins[0]) + len(given))
            if axes is not None:
                rank = len(ins[0]) + len(axes)
                rest = iter(ins[0])
                out = [1 if i in axes else next(rest) for i in range(rank)]
        elif op == "Flatten" and ins and ins[0] is not None:
            axis = attrs(node).get("axis", 1)
            axis += len(ins[0]) if axis < 0 else 0
            out = [_one(ins[0][:axis]), _one(ins[0][axis:])] if 0 <= axis <= len(ins[0]) else None
        elif op == "MatMul" and len(ins) == 2 and all(d is not None and len(d) >= 2 for d in ins):
            out = broadcast([d[:-2] for d in ins]) + [ins[0][-2], ins[1][-1]]
        elif op == "Gemm" and len(ins) >= 2 and all(d is not None and len(d) == 2 for d in ins[:2]):
            a = attrs(node)
            out = [ins[0][1 if a.get("transA", 0) else 0], ins[1][0 if a.get("transB", 0) else 1]]
        elif op.startswith("Reduce") and ins and ins[0] is not None:
            out = _reduce(node, ins[0], consts)
        elif op == "Pad" and ins and ins[0] is not None:
            out = _pad(node, ins[0], consts)
        elif op == "Slice" and ins and ins[0] is not None:
            out = _slice(node, ins[0], vals, shapes)
        elif op == "Resize" and len(node.input) > 3 and node.input[3] and ins[0] is not None:
            out = _resize_sizes(node, ins[0], vals.get(node.input[3]))
        elif op == "Transpose" and ins and ins[0] is not None:
            perm = attrs(node).get("perm", list(range(len(ins[0])))[::-1])
            if sorted(perm) == list(range(len(ins[0]))):
                out = [ins[0][p] for p in perm]
        if out is not None and node.output[0]:
            more[node.output[0]] = out
        for name, out in more.items():
            # a static length known otherwise wins (and keeps the expressions honest)
            known = shapes.get(name)
            if known is not None and len(known) == len(out):
                out = [k if k is not None else e for k, e in zip(known, out)]
            elif known is not None:  # (a rank that disagrees with shape inference: claim nothing)
                continue
            sym[name] = out
        if in_dims or in_vals:  # an input dim the outputs may hold where no expression follows it
            outputs = [o for o in node.output if o]
            followed = all(dims(o) is not None and None not in dims(o) for o in outputs) and \
                (not in_vals or all(o in vals and None not in vals[o][0] for o in outputs))
            if not followed:
                lost.update((in_dims | in_vals) - {b for o in outputs for b in bases(dims(o)) | bases(vals.get(o, ((),))[0])})
    return sym


def input_dims(e) -> set:
    """The input dims ("in", input, axis) an expression is made of."""
    if e is None or e is ... or isinstance(e, int):
        return set()
    base = e[0]
    return {base} if base[0] == "in" else input_dims(base[1])


def same(sym: dict, x: str, i: int, y: str, j: int) -> bool:
    """Whether dim i of x and dim j of y have one expression (so one length in every run)."""
    a, b = sym.get(x), sym.get(y)
    if a is None or b is None or not (0 <= i < len(a)) or not (0 <= j < len(b)):
        return False
    return a[i] is not None and not isinstance(a[i], int) and a[i] == b[j]
