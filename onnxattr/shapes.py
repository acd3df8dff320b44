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

from .protos import attrs, constant_tensor

SMALL = 4096  # largest tensor (elements) evaluated or kept as a value
PASSES = 64  # most rounds of shape inference and folding per trial (swinv2_cr at batch 1: 33)
TRIALS = (6, 35)  # differ modulo 2, 3, 4, 5, 7, 8, ...: a value equal for both does not depend on them
CHECKS = (1, 1009)  # and trials below and far above both: min(N, 4) is 4 at 6 and 35 but 1 at 1;
# max(L, 40) and a length padded to a multiple of 64 are 40 and 64 at 6 and 35, not at 1009
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


def _trial(model: onnx.ModelProto, size: int, step: int = 0, keys: dict | None = None) -> tuple[dict, dict]:
    """Shapes and small values with every free dim of the inputs set to `size`, or with `step`,
    the k-th distinct free dim (by dim_param; each unnamed one its own; by `keys`, {(input,
    axis): key}, where given) to size + k * step."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {i.name for i in g.initializer}
    index: dict = {}
    for vi in g.input:
        if vi.name not in inits:
            for j, d in enumerate(vi.type.tensor_type.shape.dim):
                if not d.HasField("dim_value"):
                    key = (keys or {}).get((vi.name, j)) or d.dim_param or object()
                    k = index.setdefault(key, len(index))
                    d.Clear()
                    d.dim_value = size + k * step
    values = {i.name: numpy_helper.to_array(i) for i in g.initializer if np.prod(i.dims) <= SMALL}
    for n in g.node:
        t = constant_tensor(n) if n.op_type == "Constant" else None
        if t is not None:
            values[n.output[0]] = numpy_helper.to_array(t)
    shapes: dict = {}
    for _ in range(PASSES):
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


def trial_shapes(model: onnx.ModelProto) -> tuple[dict[str, list], dict[str, np.ndarray], tuple[dict, dict]]:
    """({tensor: dims, None where they depend on the inputs' free dims},
    {tensor: value of a small tensor that does not depend on them},
    the dims of both trials as they came)."""
    (s1, v1), (s2, v2) = (_trial(model, size) for size in TRIALS)
    shapes = {k: [d if d == e else None for d, e in zip(s, s2[k])]
              for k, s in s1.items() if k in s2 and len(s) == len(s2[k])}
    values = {k: v for k, v in v1.items() if k in v2 and v.shape == v2[k].shape and np.array_equal(v, v2[k])}
    # A value or dim equal at 6 and 35 may still saturate (min(N, 4)): it must hold at 1 too. With
    # several free dims, all of one size in those trials, W - H is 0 in each: it must hold with
    # distinct sizes too. Where such a trial changes a rank (Squeeze without axes), or fails (free
    # dims that must be equal), it has no say.
    checks = [_trial(model, size) for size in CHECKS] + ([_trial(model, TRIALS[0], step=5)] if free_dims(model) > 1 else [])
    for s3, v3 in checks:
        for k, dims in shapes.items():
            if k in s3 and len(s3[k]) == len(dims):
                shapes[k] = [d if d == e else None for d, e in zip(dims, s3[k])]
        values = {k: v for k, v in values.items() if k not in v3 or (v.shape == v3[k].shape and np.array_equal(v, v3[k]))}
    return shapes, values, (s1, s2)


def trial_with_distinct_dims(model: onnx.ModelProto, same=()) -> dict:
    """The dims of a trial with each free dim of its own size (6, 11, 16, ...), but the pairs of
    input dims in `same` ((input, axis), (input, axis)) of one size: lengths the graph broadcasts
    against each other (a padding mask's [N', T'] against a time-major GRU's outputs [T, N, H]),
    which sizes of their own would make the trial fail."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    parent: dict = {}

    def find(k):
        while parent.get(k, k) != k:
            k = parent[k]
        return k

    free = {(vi.name, j): d.dim_param or (vi.name, j) for vi in g.input if vi.name not in inits
            for j, d in enumerate(vi.type.tensor_type.shape.dim) if not d.HasField("dim_value")}
    for a, b in same:
        if a in free and b in free:
            parent[find(free[a])] = find(free[b])
    return _trial(model, TRIALS[0], step=5, keys={at: ("free", find(k)) for at, k in free.items()})[0]


def free_dims(model: onnx.ModelProto) -> int:
    """How many independent free dims the graph inputs have: distinct dim_params, plus each
    unnamed unknown dim."""
    inits = {i.name for i in model.graph.initializer}
    named, unnamed = set(), 0
    for vi in model.graph.input:
        if vi.name in inits or not vi.type.HasField("tensor_type"):
            continue
        for d in vi.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                if d.dim_param:
                    named.add(d.dim_param)
                else:
                    unnamed += 1
    return len(named) + unnamed


# ---------------------------------------------- helpers of Builder._infer (one inference pass)
def skeleton(model: onnx.ModelProto, small: int = 1024) -> onnx.ModelProto:
    """The model without the data of large initializers (they become typed graph inputs), so
    shape inference neither copies the weights nor hits protobuf's 2 GB limit."""
    # IR 3 lists every initializer as a graph input too, and shape inference then takes them for
    # inputs whose values it may not use (a torch opset-8 export lost its MatMul shapes): infer
    # at IR 4, where the small initializers are constants and not inputs.
    skel = onnx.ModelProto(ir_version=max(model.ir_version, 4))
    skel.opset_import.extend(model.opset_import)
    skel.functions.extend(model.functions)
    g, sg = model.graph, skel.graph
    sg.name = g.name
    # The model's value_info and output shapes are left out: ONNX Runtime ignores them when they
    # are stale, so a backward sized by them would not load (the Builder takes them only where
    # inference finds nothing). Outputs keep their types.
    sg.node.extend(g.node)
    for n in sg.node:  # ONNX's STFT inference takes an absent onesided for 0; the spec and ONNX Runtime for 1
        if n.op_type == "STFT" and n.domain in ("", "ai.onnx") and not any(a.name == "onesided" for a in n.attribute):
            n.attribute.append(helper.make_attribute("onesided", 1))
    for sp in g.sparse_initializer:  # shape inference does not read sparse initializers: typed inputs
        sg.input.append(helper.make_tensor_value_info(sp.values.name, sp.values.data_type, list(sp.dims)))
    given = {i.name for i in g.input} | {i.name for i in g.initializer}
    for o in g.output:  # (an input that is also an output keeps its declaration: inference merges them)
        sg.output.append(helper.make_tensor_value_info(o.name, o.type.tensor_type.elem_type, None)
                         if o.type.HasField("tensor_type") and o.name not in given else o)
    declared = {i.name for i in g.input}
    kept = set()
    for init in g.initializer:
        if int(np.prod(init.dims)) <= small and init.data_location != TensorProto.EXTERNAL:
            sg.initializer.append(init)
            kept.add(init.name)
        elif init.name not in declared:
            sg.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    sg.input.extend(i for i in g.input if model.ir_version >= 4 or i.name not in kept)
    return skel


_INTS = {TensorProto.INT64, TensorProto.INT32}
FED_SUFFIX = "/onnxattr_folded"  # suffix of the integers fed back to shape inference


def _int_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)  # ONNX integer Div truncates toward zero
    return q if (a >= 0) == (b >= 0) else -q


_ARITH = {"Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b, "Div": _int_div}
_COMPARE = {"Equal": lambda a, b: a == b, "Less": lambda a, b: a < b, "Greater": lambda a, b: a > b,
            "And": lambda a, b: bool(a) and bool(b), "Or": lambda a, b: bool(a) or bool(b)}


def _wrap(v: int, bits: int = 64) -> int:
    """An integer as a signed `bits`-bit one wraps (ONNX Runtime's int64 and int32 arithmetic)."""
    half = 1 << (bits - 1)
    return (int(v) + half) % (half << 1) - half


_INT_ENDS = (2 ** 63 - 1, 2 ** 31 - 1)


def _slice(x: np.ndarray, starts, ends, axes, steps) -> np.ndarray:
    """Slice as the ONNX spec clamps it (starts into [0, d - 1] and ends into [-1, d - 1] for a
    negative step), and as ONNX Runtime reads an end of INT_MAX with a negative step: to the
    front."""
    axes = [a % x.ndim for a in axes] if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    index = [np.arange(d) for d in x.shape]
    for ax, b, e, st in zip(axes, starts, ends, steps):
        d = x.shape[ax]
        if st == 0:
            raise ValueError("slice step 0")
        to_front = st < 0 and e in _INT_ENDS
        b, e = b + d if b < 0 else b, (e + d if e < 0 else e)
        if st > 0:
            b, e = min(max(b, 0), d), min(max(e, 0), d)
        else:
            b, e = min(max(b, 0), d - 1), -1 if to_front else min(max(e, -1), d - 1)
        index[ax] = np.arange(b, e, st)
    return x[np.ix_(*index)] if x.ndim else x


def _fold_node(n: onnx.NodeProto, ins: list[np.ndarray]) -> np.ndarray:
    """One node on object arrays of ints (None: unknown); ValueError for what is not folded."""
    a = attrs(n)
    if n.op_type in _ARITH:
        f = _ARITH[n.op_type]
        return np.frompyfunc(lambda x, y: None if x is None or y is None else _wrap(f(x, y)), 2, 1)(*ins)
    if n.op_type in _COMPARE:
        f = _COMPARE[n.op_type]
        return np.frompyfunc(lambda x, y: None if x is None or y is None else bool(f(x, y)), 2, 1)(*ins)
    if n.op_type in ("Max", "Min") and len(ins) > 1:
        f = max if n.op_type == "Max" else min
        out = ins[0]
        for v in ins[1:]:
            out = np.frompyfunc(lambda x, y: None if x is None or y is None else f(x, y), 2, 1)(out, v)
        return out
    if n.op_type == "Not":
        return np.frompyfunc(lambda x: None if x is None else not x, 1, 1)(ins[0])
    if n.op_type == "Identity":
        return ins[0]
    if n.op_type == "Cast" and a["to"] in _INTS:
        bits = 32 if a["to"] == TensorProto.INT32 else 64
        return np.frompyfunc(lambda x: None if x is None else _wrap(x, bits), 1, 1)(ins[0])
    if n.op_type == "Reshape" and None not in ins[1].flat:
        shape = [ins[0].shape[i] if int(v) == 0 and not a.get("allowzero", 0) else int(v) for i, v in enumerate(ins[1].flat)]
        return np.reshape(ins[0], shape)
    if n.op_type == "Transpose":
        return np.transpose(ins[0], a.get("perm"))
    if n.op_type == "ConstantOfShape" and None not in ins[0].flat and "value" in a:
        fill = numpy_helper.to_array(a["value"])
        if fill.dtype.kind in "iu" and int(np.prod([int(v) for v in ins[0].flat])) <= 64:
            return np.full([int(v) for v in ins[0].flat], int(fill.reshape(-1)[0]), dtype=object)
    if n.op_type == "Concat":
        return np.concatenate(ins, axis=a["axis"])
    if n.op_type == "Gather" and None not in ins[1].flat:
        return np.take(ins[0], np.asarray(ins[1], dtype=np.int64), axis=a.get("axis", 0))
    if n.op_type in ("Unsqueeze", "Squeeze") and (len(ins) == 1 or None not in ins[1].flat):
        axes = a.get("axes", list(ins[1].flat) if len(ins) > 1 else None)
        if n.op_type == "Unsqueeze":
            return np.expand_dims(ins[0], [int(i) for i in axes])
        # no axes, or an empty axes tensor (as ONNX Runtime reads it): every dim of length 1
        return np.squeeze(ins[0], tuple(int(i) for i in axes) if axes else None)
    if n.op_type == "Slice" and len(ins) > 2 and all(v is None or None not in v.flat for v in ins[1:]):
        return _slice(ins[0], *[None if v is None else [int(x) for x in v.flat] for v in (ins + [None, None])[1:5]])
    raise ValueError(f"{n.op_type} is not folded")


def fold_ints(g: onnx.GraphProto, shapes: dict, consts: dict) -> dict[str, np.ndarray]:
    """The small integer tensors that shape arithmetic computes (Shape, then Gather, Div, Concat,
    ...), as object arrays with None for entries that depend on an unknown dim."""
    values = {name: np.asarray(numpy_helper.to_array(t), dtype=object) for name, t in consts.items()
              if t.data_type in _INTS and int(np.prod(t.dims)) <= 64}
    for n in g.node:
        if n.domain not in ("", "ai.onnx") or not n.output or n.output[0] in values:
            continue
        if n.op_type == "Shape":
            dims = shapes.get(n.input[0])
            if dims is not None:
                a = attrs(n)
                values[n.output[0]] = np.asarray(dims[a.get("start", 0):a.get("end", len(dims))], dtype=object)
            continue
        ins = [values.get(i) if i else None for i in n.input]  # an omitted input keeps its place (None)
        given = [v for i, v in zip(n.input, ins) if i]
        if given and all(v is not None for v in given) and (n.op_type == "Slice" or all(n.input)):
            try:
                values[n.output[0]] = np.asarray(_fold_node(n, ins), dtype=object)
            except (ValueError, IndexError, KeyError, TypeError, ZeroDivisionError):
                pass  # an op or a form not folded here: the value stays unknown
    return values


def feed_ints(skel: onnx.ModelProto, values: dict, consts: dict) -> tuple[onnx.ModelProto, int]:
    """A copy of the inference skeleton whose nodes read the fully folded integers as
    initializers, and each Reshape its shape with one unknown entry as -1 there; and how many
    inputs that newly replaced."""
    out = onnx.ModelProto()
    out.CopyFrom(skel)
    static = {i.name for i in out.graph.initializer}
    static |= {n.output[0] for n in out.graph.node if n.op_type == "Constant"}
    feeds = {}
    for n in out.graph.node:
        for i, name in enumerate(n.input):
            v = values.get(name)
            if v is None or name in static or name.endswith(FED_SUFFIX):
                continue
            if None not in v.flat:
                feeds[name + FED_SUFFIX] = numpy_helper.from_array(numpy_helper.to_array(consts[name]), name + FED_SUFFIX)
            elif n.op_type == "Reshape" and i == 1 and list(v.flat).count(None) == 1 and -1 not in v.flat:
                name = n.output[0] + "/shape"
                feeds[name + FED_SUFFIX] = numpy_helper.from_array(np.where(v == None, -1, v).astype(np.int64),  # noqa: E711
                                                             name + FED_SUFFIX)
            else:
                continue
            n.input[i] = name + FED_SUFFIX
    out.graph.initializer.extend(feeds.values())
    return out, len(feeds)


def _pool_size(n: int, k: int, s: int, d: int, pb: int, pe: int, ceil_mode: int) -> int:
    span = (k - 1) * d + 1
    out = (-(-(n + pb + pe - span) // s) if ceil_mode else (n + pb + pe - span) // s) + 1
    return out - 1 if ceil_mode and (out - 1) * s >= n + pb else out


def _declare(skel: onnx.ModelProto, vi: onnx.ValueInfoProto) -> None:
    """Declare a tensor's type and shape in `skel` for the next inference pass, in place of any
    earlier declaration: on its graph output entry if it is one (that entry is what inference
    reports for it, over value_info), else in value_info."""
    outputs = [o for o in skel.graph.output if o.name == vi.name]
    if outputs:
        outputs[0].CopyFrom(vi)
        return
    keep = [v for v in skel.graph.value_info if v.name != vi.name]
    del skel.graph.value_info[:]
    skel.graph.value_info.extend(keep + [vi])


def fix_pool_shapes(skel: onnx.ModelProto, shapes: dict, types: dict, conflicts: dict) -> int:
    """ONNX shape inference (1.23) sizes a ceil_mode pool without the spec's rule that a window
    may not start in the end padding, which ONNX Runtime and the reference follow (a 2x2 window,
    stride 2, pads 1 on 5 gives 3, not 4). Declare the runtime size in `skel`'s value_info, so
    the next inference pass propagates it, and note the node in `conflicts` (ONNX Runtime's own
    load-time inference would reject a backward graph sized for the real output); returns how
    many nodes were corrected."""
    fixed = 0
    for n in skel.graph.node:
        a = attrs(n)
        if n.op_type not in ("MaxPool", "AveragePool", "LpPool") or not a.get("ceil_mode", 0) or n.output[0] in conflicts:
            continue
        if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or n.domain not in ("", "ai.onnx"):
            continue
        xs, ys, k = shapes.get(n.input[0]), shapes.get(n.output[0]), list(a["kernel_shape"])
        r = len(k)
        if xs is None or ys is None or len(xs) != r + 2 or len(ys) != r + 2 or None in xs[2:]:
            continue
        s, d = a.get("strides", [1] * r), a.get("dilations", [1] * r)
        pads = a.get("pads", [0] * 2 * r) if a.get("auto_pad", "NOTSET") == "NOTSET" else [0] * 2 * r
        want = [_pool_size(xs[2 + i], k[i], s[i], d[i], pads[i], pads[r + i], 1) for i in range(r)]
        if ys[2:] == want:
            continue
        conflicts[n.output[0]] = (f"ceil_mode output size {ys[2:]} by ONNX shape inference, {want} in ONNX Runtime "
                                  f"(no window may start in the end padding); re-export without ceil_mode, with "
                                  f"explicit pads")
        for o in n.output:  # Y, and MaxPool's Indices: same shape
            if not o:
                continue
            dims = [v if v is not None else f"onnxattr_{o}_{i}" for i, v in enumerate(ys[:2])] + want
            elem = TensorProto.INT64 if o != n.output[0] else types.get(n.input[0], TensorProto.FLOAT)
            _declare(skel, helper.make_tensor_value_info(o, elem, dims))
        fixed += 1
    return fixed


WHOLE_END = 2 ** 31 - 1  # an end at least this clamps to the length (a dim can not hold 2**31 elements)


def keep_whole_slice_dims(skel: onnx.ModelProto, shape_protos: dict, types: dict, consts: dict, done: set) -> int:
    """ONNX shape inference gives a Slice's output a fresh symbol on every sliced axis of unknown
    length, even where the slice takes the whole axis (start 0, or one at most -2**31; end at
    least 2**31 - 1; step 1: tf2onnx writes x[:, a:b] of a TensorFlow strided slice so): the
    tensors after it then look unrelated to the rest (a Keras GRU cell's gates against its state).
    Declare the input's symbol there in `skel`'s value_info, for the next inference pass; returns
    how many outputs were declared (each at most once: their names are kept in `done`)."""
    fixed = 0
    for n in skel.graph.node:
        if n.op_type != "Slice" or n.domain not in ("", "ai.onnx") or not n.output[0] or n.output[0] in done:
            continue
        xs, ys = shape_protos.get(n.input[0]), shape_protos.get(n.output[0])
        if xs is None or ys is None or len(xs.dim) != len(ys.dim):
            continue
        a = attrs(n)
        if "starts" in a:  # Slice-1: attributes, no steps
            starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
        else:
            vals = [consts.get(i) if i else None for i in list(n.input[1:5]) + [""] * (5 - len(n.input))]
            if vals[0] is None or vals[1] is None or any(i and v is None for i, v in zip(n.input[3:5], vals[2:4])):
                continue
            starts, ends = (numpy_helper.to_array(v).tolist() for v in vals[:2])
            axes = numpy_helper.to_array(vals[2]).tolist() if vals[2] is not None else None
            steps = numpy_helper.to_array(vals[3]).tolist() if vals[3] is not None else None
        rank = len(xs.dim)
        axes = list(range(len(starts))) if axes is None else [int(i) % rank for i in axes]
        steps = steps or [1] * len(axes)
        dims = [onnx.TensorShapeProto.Dimension() for _ in range(rank)]
        changed = False
        for i in range(rank):
            dims[i].CopyFrom(ys.dim[i])
            if i not in axes or ys.dim[i].dim_param == xs.dim[i].dim_param or not xs.dim[i].dim_param:
                continue
            k = axes.index(i)
            if steps[k] == 1 and (starts[k] == 0 or starts[k] <= -WHOLE_END - 1) and ends[k] >= WHOLE_END:
                dims[i].Clear()
                dims[i].dim_param = xs.dim[i].dim_param
                changed = True
        if not changed:
            continue
        vi = helper.make_tensor_value_info(n.output[0], types.get(n.input[0], TensorProto.FLOAT), None)
        vi.type.tensor_type.shape.dim.extend(dims)
        _declare(skel, vi)
        done.add(n.output[0])
        fixed += 1
    return fixed


def classifier_rows(a: dict, features: int | None) -> tuple[int, bool]:
    """A LinearClassifier's (coefficient rows, binary) from its attributes: one row per intercept
    (else coefficients / features, else one per class label); binary: one row, two labels."""
    labels = max(len(a.get("classlabels_ints", []) or []), len(a.get("classlabels_strings", []) or []))
    coefficients = len(a.get("coefficients", []) or [])
    rows = len(a.get("intercepts", []) or []) or (coefficients // features if features else labels)
    return rows, rows == 1 and labels == 2


def ml_shapes(skel: onnx.ModelProto, shape_protos: dict, types: dict, consts: dict, done: set) -> int:
    """ONNX shape inference leaves the outputs of ai.onnx.ml's Normalizer and Scaler without a
    shape when nothing declares one (skl2onnx's default ZipMap after them), an
    ArrayFeatureExtractor's with fresh symbols for its lengths, and the rules and the classifier check need them:
    Normalizer's and Scaler's output is float (the spec's type) with the input's shape, a
    LinearClassifier's scores [N, one per coefficient row] (two for one row and two labels), an
    ArrayFeatureExtractor's the input's but for the last axis (one per constant index). Declared
    in `skel`'s value_info for the next inference pass; returns how many (each once: names kept
    in `done`). ONNX 1.23 also gives GroupNormalization (a function op with no inference function,
    onnx/onnx#7157) no output at all: its output is the input's type and shape."""
    fixed = 0
    for n in skel.graph.node:
        group_norm = n.op_type == "GroupNormalization" and n.domain in ("", "ai.onnx")
        if not group_norm and (n.domain != "ai.onnx.ml" or n.op_type not in ("Normalizer", "Scaler", "LinearClassifier",
                                                                              "ArrayFeatureExtractor")):
            continue
        out = n.output[1] if n.op_type == "LinearClassifier" and len(n.output) > 1 else n.output[0]
        xs, ys = shape_protos.get(n.input[0]), shape_protos.get(out)
        known = ys is not None and all(d.HasField("dim_value") or d.dim_param for d in ys.dim)
        if not out or out in done or xs is None or (known and n.op_type != "ArrayFeatureExtractor"):
            continue  # (inference gives ArrayFeatureExtractor's last axis a fresh symbol)
        dims = [onnx.TensorShapeProto.Dimension() for _ in xs.dim]
        for d, x in zip(dims, xs.dim):
            d.CopyFrom(x)
        if n.op_type == "LinearClassifier":
            width = xs.dim[-1].dim_value if xs.dim and xs.dim[-1].HasField("dim_value") else None
            rows, binary = classifier_rows(attrs(n), width)
            if len(xs.dim) != 2 or not rows:
                continue
            dims[1].Clear()
            dims[1].dim_value = 2 if binary else rows
        elem = types.get(n.input[0], TensorProto.FLOAT) if group_norm else TensorProto.FLOAT
        if n.op_type == "ArrayFeatureExtractor":
            idx = consts.get(n.input[1])
            if idx is None or len(xs.dim) < 2 or len(idx.dims) > 1:
                continue
            dims[-1].Clear()
            dims[-1].dim_value = int(np.prod(idx.dims))  # (a scalar index keeps the axis, length 1)
            elem = types.get(n.input[0], TensorProto.FLOAT)
        vi = helper.make_tensor_value_info(out, elem, None)
        vi.type.tensor_type.shape.dim.extend(dims)
        _declare(skel, vi)
        done.add(out)
        fixed += 1
    return fixed
