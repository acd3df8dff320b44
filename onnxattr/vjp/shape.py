"""Ops that move data without changing values: reshapes, permutes, slices, joins."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ..errors import UnsupportedModelError
from ..protos import attrs, describe
from . import register

BIG = np.iinfo(np.int64).max


def _const(b, node, name, what):
    v = b.value(name)
    if v is None:
        raise UnsupportedModelError(f"{describe(node)}: {what} must be a constant to differentiate it")
    return v


@register("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(b, node, gys):
    return [b.reshape_like(gys[0], node.input[0])]


@register("Transpose")
def transpose(b, node, gys):
    perm = attrs(node).get("perm") or list(reversed(range(b.rank(node.input[0], node))))
    if not perm:  # a scalar: nothing moves
        return [gys[0]]
    return [b.op("Transpose", [gys[0]], perm=[int(i) for i in np.argsort(perm)])]


@register("Concat")
def concat(b, node, gys):
    out = node.output[0]
    axis = attrs(node).get("axis", 1) % b.rank(out, node)
    known = [(b.shapes.get(x) or [None] * (axis + 1))[axis] for x in node.input]
    if None in known and b.opset >= 13 and len(node.input) > 1:
        # a length known only at run time (a ViT's class token joined to a dynamic number of
        # patches): Split-13 takes its sizes as a tensor
        sizes = b.op("Concat", [b.slice(b.shape_of(x), [axis], [axis + 1], [0]) for x in node.input], axis=0)
        return b.op("Split", [gys[0], sizes], outputs=len(node.input), axis=axis)
    sizes = [b.static_shape(x, node, dims=[axis])[axis] for x in node.input]
    return b.split(gys[0], sizes, axis)


@register("Split")
def split(b, node, gys):
    parts = [g if g is not None else b.zeros_like(y) for g, y in zip(gys, node.output)]
    axis = attrs(node).get("axis", 0)
    return [b.op("Concat", parts, axis=axis) if len(parts) > 1 else parts[0]]


def _slice_params(b, node):
    x = node.input[0]
    rank = b.rank(x, node)
    if b.opset < 10:
        a = attrs(node)
        starts, ends = a["starts"], a["ends"]
        axes, steps = a.get("axes", list(range(len(starts)))), [1] * len(starts)
    else:
        ins = list(node.input) + [""] * 5
        starts = _const(b, node, ins[1], "starts")
        ends = _const(b, node, ins[2], "ends")
        axes = _const(b, node, ins[3], "axes") if ins[3] else list(range(len(starts)))
        steps = _const(b, node, ins[4], "steps") if ins[4] else [1] * len(starts)
    return [int(a) % rank for a in axes], [int(s) for s in starts], [int(e) for e in ends], [int(s) for s in steps]


def _slice_indices(dim: int, start: int, end: int, step: int) -> range:
    """The positions a Slice takes along one axis (ONNX clamping, negative steps included)."""
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return range(min(max(start, 0), dim), min(max(end, 0), dim), step)
    return range(min(max(start, 0), dim - 1), min(max(end, -1), dim - 1), step)


@register("Slice")
def slice_(b, node, gys):
    # Unit steps: zero padding back to the input's size; other steps: the transpose of the
    # selection matrix along that axis.
    x, g = node.input[0], gys[0]
    ins = list(node.input) + [""] * 5
    if b.opset >= 11 and (b.value(ins[1]) is None or b.value(ins[2]) is None):
        return [_slice_by_run_time_bounds(b, node, g)]
    axes, starts, ends, steps = _slice_params(b, node)
    rank = b.rank(x, node)
    # An axis taken whole (0 to the end, step 1: tf2onnx lists the batch axis so, ending at
    # INT_MAX, or at 1e9 for x[:, None]: then the output's length is the input's in every shape
    # trial) needs no size.
    # ONNX's Slice-10 shape inference names every output length along a symbolic axis after the
    # input's (x[:, :-1] of [N, "T"] is [N, "T"]): at opset 10 only the trials can tell.
    y, names = node.output[0], b.opset != 10
    whole = [(st <= -2 ** 62 or st == 0) and sp == 1
             and (en >= 2 ** 31 - 1 or b.same_dim(x, ax % rank, y, ax % rank, names=names))
             for ax, st, en, sp in zip(axes, starts, ends, steps)]
    axes, starts, ends, steps = ([v for v, w in zip(t, whole) if not w] for t in (axes, starts, ends, steps))
    # A unit step along an axis whose length is known only at run time (y[:, -1] over a dynamic
    # sequence axis): the pads come from that length at run time (from opset 9: ConstantOfShape).
    known = b.shape(x) or [None] * rank
    runtime = [ax for ax, sp in zip(axes, steps) if sp == 1 and known[ax] is None and b.opset >= 9]
    # A larger step along such an axis from a start >= 0 to the end (x[:, :, ::2]): spread at run time.
    strided = [ax for ax, st, en, sp in zip(axes, starts, ends, steps)
               if sp > 1 and known[ax] is None and st >= 0 and en >= 2 ** 31 - 1]
    for ax, st, en, sp in zip(axes, starts, ends, steps):
        if sp != 1 and known[ax] is None and ax not in strided:
            raise UnsupportedModelError(
                f"{describe(node)}: a step of {sp} along axis {ax}, whose length is known only at run time, is "
                f"supported from a start >= 0 to the end (x[..., s::k]), not from {st} to {en}; export the model "
                "with a fixed size there")
    shape = b.static_shape(x, node, dims=[ax for ax in axes if ax not in runtime and ax not in strided])
    pads = [0] * (2 * rank)
    dynamic = {}
    for ax, st, en, sp in zip(axes, starts, ends, steps):
        if ax in runtime:
            length = b.op("Cast", [b.slice(b.shape_of(x), [ax], [ax + 1], [0])], to=TensorProto.DOUBLE)
            dynamic[ax] = _unit_step_pads(b, length, st, en)
            continue
        if ax in strided:
            g = _spread_to_the_end(b, g, x, ax, rank, st, sp)
            continue
        dim = shape[ax]
        picked = _slice_indices(dim, st, en, sp)
        if sp == 1:
            pads[ax] = picked.start if len(picked) else 0
            pads[rank + ax] = dim - (picked.stop if len(picked) else 0)
            continue
        m = np.zeros((len(picked), dim), dtype=b.np_dtype)
        m[np.arange(len(picked)), list(picked)] = 1.0
        g = b.adjoint_along(g, m, ax, rank)
    if not dynamic:
        return [b.pad(g, pads)]
    if b.opset >= 11:
        pieces = [b.ints([p]) for p in pads]
        for ax, (before, after) in dynamic.items():
            pieces[ax], pieces[rank + ax] = before, after
        return [b.op("Pad", [g, b.op("Concat", pieces, axis=0)])]
    g = b.pad(g, pads)
    for ax, (before, after) in dynamic.items():  # no Pad with computed pads: Concat zeros
        sizes = b.op("Shape", [g])
        lead = [b.slice(sizes, [0], [ax], [0])] if ax > 0 else []
        rest = [b.slice(sizes, [ax + 1], [rank], [0])] if ax < rank - 1 else []
        parts = [b.zeros(b.op("Concat", lead + [count] + rest, axis=0)) for count in (before, after)]
        g = b.op("Concat", [parts[0], g, parts[1]], axis=ax)
    return [g]


def _spread_to_the_end(b, g, x, ax: int, rank: int, start: int, step: int) -> str:
    """The gradient of x[start::step] along axis ax, whose length L is known only at run time:
    each element followed by step - 1 zeros (Unsqueeze, Pad, a Reshape joining the two axes),
    `start` zeros before, then cut to L (which also covers start >= L, an empty slice)."""
    spread = [0] * (2 * (rank + 1))
    spread[rank + 1 + ax + 1] = step - 1
    spread = b.pad(b.unsqueeze(g, [ax + 1]), spread)
    front = [0] * (2 * rank)
    front[ax] = start
    joined = b.pad(b.op("Reshape", [spread, b.shape_with(g, ax, [-1])]), front)
    return b.op("Slice", [joined, b.ints([0]), b.slice(b.shape_of(x), [ax], [ax + 1], [0]), b.ints([ax])])


def _slice_by_run_time_bounds(b, node, g):
    """Slice by starts or ends computed at run time (a window-attention model cropping its padded
    windows back to the image, x[:, :H, :W] at a dynamic size), unit steps: zero padding back to
    x's size by pads from the bounds, clamped as ONNX clamps them."""
    x, ins = node.input[0], list(node.input) + [""] * 5
    rank = b.rank(x, node)
    n = len(b.value(ins[3])) if ins[3] and b.value(ins[3]) is not None else (b.shape(ins[1]) or [None])[0]
    axes = [int(a) % rank for a in _const(b, node, ins[3], "axes")] if ins[3] else list(range(n or 0))
    steps = [int(v) for v in _const(b, node, ins[4], "steps")] if ins[4] else [1] * len(axes)
    if not axes or any(v != 1 for v in steps):
        raise UnsupportedModelError(f"{describe(node)}: starts or ends computed at run time need unit steps and a "
                                    "known number of axes to differentiate it")
    dim = b.op("Cast", [b.op("Gather", [b.shape_of(x), b.ints(axes)], axis=0)], to=TensorProto.DOUBLE)
    before, after = _unit_step_pads(b, dim, ins[1], ins[2])
    return b.op("Pad", [g, _pads_over_axes(b, b.op("Concat", [before, after], axis=0), axes, rank)])


def _pads_over_axes(b, pads: str, axes: list[int], rank: int) -> str:
    """Pads [begins, ends] given for `axes` spread into ONNX's [begin_0..begin_r, end_0..end_r]."""
    return b.op("ScatterElements", [b.ints([0] * (2 * rank)), b.ints(axes + [rank + a for a in axes]), pads], axis=0)


def _unit_step_pads(b, dim: str, start, end) -> tuple[str, str]:
    """(before, after), int64, for x[start:end] with a unit step along axes of run-time lengths
    `dim` (double), with ONNX's clamping; start and end are ints or tensors (computed at run
    time). In double (exact for any length below 2**53): Min and Max take int64 only from
    opset 12."""
    zero = b.const(np.zeros(1), dtype=np.float64)

    def clamped(v):
        if isinstance(v, str):  # a tensor: counted back from the end where negative
            t = b.op("Cast", [v], to=TensorProto.DOUBLE)
            t = b.op("Where", [b.op("Less", [t, zero]), b.op("Add", [t, dim]), t])
        else:
            t = b.const(np.array([float(v)]), dtype=np.float64)
            if v < 0:
                t = b.op("Add", [t, dim])
        return b.op("Min", [b.op("Max", [t, zero]), dim])

    lo = clamped(start)
    hi = b.op("Max", [clamped(end), lo])  # an empty slice: nothing after its start
    to_int = lambda t: b.op("Cast", [t], to=TensorProto.INT64)  # noqa: E731
    return to_int(lo), to_int(b.op("Sub", [dim, hi]))


def _pad_matrix(n: int, before: int, after: int, mode: str) -> np.ndarray:
    """M [before + n + after, n] with Pad(x) = M @ x along one axis. Negative pads crop first,
    then the kept part is padded (as ONNX Runtime does: wrap then repeats the cropped tensor)."""
    numpy_mode = {"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode]
    kept = np.eye(n)[max(-before, 0):n - max(-after, 0)]
    return np.pad(kept, ((max(before, 0), max(after, 0)), (0, 0)), mode=numpy_mode)


@register("Pad")
def pad(b, node, gys):
    x = node.input[0]
    a = attrs(node)
    mode = a.get("mode", "constant")
    rank = b.rank(x, node)
    if b.opset < 11:
        pads = list(a.get("pads", a.get("paddings", [])))
    elif b.value(node.input[1]) is None:
        return [_pad_by_run_time_pads(b, node, gys[0], mode, rank)] + [None] * (len(node.input) - 1)
    else:
        pads = [int(p) for p in _const(b, node, node.input[1], "pads")]
        if len(node.input) > 3 and node.input[3]:
            axes = [int(v) % rank for v in _const(b, node, node.input[3], "axes")]
            full = [0] * (2 * rank)
            for j, ax in enumerate(axes):
                full[ax], full[rank + ax] = pads[j], pads[len(axes) + j]
            pads = full
    g = gys[0]
    if mode != "constant":  # reflect / edge / wrap: border values are copies, their gradients add up
        padded = [i for i in range(rank) if pads[i] or pads[rank + i]]
        shape = b.static_shape(x, node, dims=padded)
        for i in padded:
            m = _pad_matrix(shape[i], pads[i], pads[rank + i], mode).astype(b.np_dtype)
            g = b.adjoint_along(g, m, i, rank)
        return [g] + [None] * (len(node.input) - 1)
    crop_b = [max(p, 0) for p in pads[:rank]]
    crop_e = [max(p, 0) for p in pads[rank:]]
    axes = [i for i in range(rank) if crop_b[i] or crop_e[i]]
    inside = g
    if axes:
        inside = b.slice(g, [crop_b[i] for i in axes], [-crop_e[i] if crop_e[i] else BIG for i in axes], axes)
    rest = [None] * (len(node.input) - 1)
    if len(node.input) > 2 and b.needs(node.input[2]):  # the fill value: the padded positions' sum
        # g with x's part zeroed (an exact difference, no cancellation between two large sums)
        outside = b.op("Sub", [g, b.pad(inside, crop_b + crop_e)]) if axes else None
        total = list(range(rank))
        summed = b.reduce("ReduceSum", outside, total, keepdims=0) if outside else b.scalar(0.0)
        rest[1] = b.reshape_like(summed, node.input[2])
    return [b.pad(inside, [max(-p, 0) for p in pads])] + rest


def _pad_by_run_time_pads(b, node, g, mode, rank):
    """Constant-mode Pad by pads computed at run time (timm's "same" padding of TensorFlow-ported
    models, F.pad by amounts that follow from the image size): x's part of g, that is g padded by
    the negative pads (zeros where the Pad cropped x), then x's length from max(pad, 0) on."""
    if mode != "constant":
        raise UnsupportedModelError(f"{describe(node)}: {mode} padding by pads computed at run time is not "
                                    "supported (the border's gradients add up by the pads): export with a fixed size")
    if len(node.input) > 2 and b.needs(node.input[2]):
        raise UnsupportedModelError(f"{describe(node)}: the gradient of a fill value is not supported with pads "
                                    "computed at run time")
    pads = node.input[1]
    if len(node.input) > 3 and node.input[3]:  # pads for some axes: spread into [begin_0..begin_r, end_0..end_r]
        axes = [int(v) % rank for v in _const(b, node, node.input[3], "axes")]
        pads = _pads_over_axes(b, pads, axes, rank)
    zero = b.ints([0])
    negative = b.op("Less", [pads, zero])
    widened = b.op("Pad", [g, b.op("Where", [negative, b.op("Neg", [pads]), zero])])
    starts = b.slice(b.op("Where", [negative, zero, pads]), [0], [rank], [0])
    ends = b.op("Add", [starts, b.shape_of(node.input[0])])
    return b.op("Slice", [widened, starts, ends, b.ints(list(range(rank)))])


@register("Gather")
def gather(b, node, gys):
    x, idx_name = node.input
    if not b.needs(x):
        return [None, None]
    rank = b.rank(x, node)
    axis = attrs(node).get("axis", 0) % rank
    g = gys[0]
    idx = b.value(idx_name)
    dim = (b.shapes.get(x) or [None] * rank)[axis]
    if idx is not None and idx.size == 1 and idx.ndim <= 1 and dim is None and b.opset >= 11:
        # One constant index along an axis of run-time length (a text model's h[:, 0] under a
        # dynamic sequence length): zero padding whose amounts come from the shape.
        length = b.op("Gather", [b.shape_of(x), b.ints([axis])])
        k = int(idx.reshape(()))
        before = b.ints([k]) if k >= 0 else b.op("Add", [length, b.ints([k])])
        after = b.op("Sub", [b.op("Sub", [length, before]), b.ints([1])])
        zeros = lambda n: [b.ints([0] * n)] if n else []  # noqa: E731
        pads = b.op("Concat", zeros(axis) + [before] + zeros(rank - 1 - axis) + zeros(axis) + [after]
                    + zeros(rank - 1 - axis), axis=0)
        return [b.op("Pad", [b.unsqueeze(g, [axis]) if idx.ndim == 0 else g, pads]), None]
    if idx is None or dim is None or idx.ndim > 1:
        return [_scatter_add_along(b, node, x, idx_name, g, axis, rank), None]
    idx = idx.astype(np.int64) % dim
    if idx.ndim == 0:
        pads = [0] * (2 * rank)
        pads[axis], pads[rank + axis] = int(idx), dim - 1 - int(idx)
        return [b.pad(b.unsqueeze(g, [axis]), pads), None]
    onehot = np.zeros((len(idx), dim), dtype=b.np_dtype)
    np.add.at(onehot, (np.arange(len(idx)), idx), 1.0)  # repeated indices add up
    last = list(range(rank))
    last.append(last.pop(axis))
    moved = b.op("Transpose", [g], perm=last) if axis != rank - 1 else g
    spread = b.op("MatMul", [moved, b.const(onehot)])
    back = [int(i) for i in np.argsort(last)]
    return [b.op("Transpose", [spread], perm=back) if axis != rank - 1 else spread, None]


def _wrapped(b, idx: str, size: str) -> str:
    """int64 indices with the negative ones counted back from `size` (broadcast against idx)."""
    if b.types.get(idx, TensorProto.INT64) != TensorProto.INT64:
        idx = b.op("Cast", [idx], to=TensorProto.INT64)
    return b.op("Where", [b.op("Less", [idx, b.ints(0)]), b.op("Add", [idx, size]), idx])


def _scatter_add_along(b, node, x, idx, g, axis, rank):
    """Gather's VJP for indices of any rank, or not constant: ScatterND with reduction 'add'
    (opset 16) into zeros, with x's `axis` moved to the front and the index dims of g first."""
    if b.opset < 16:
        raise UnsupportedModelError(f"{describe(node)}: Gather with computed or multi-dimensional indices "
                                    f"needs opset >= 16 to differentiate (model has {b.opset})")
    ri = b.rank(idx, node)
    front = [axis] + [i for i in range(rank) if i != axis]
    gperm = list(range(axis, axis + ri)) + list(range(axis)) + list(range(axis + ri, ri + rank - 1))
    xt = b.op("Transpose", [x], perm=front) if axis else x
    gt = b.op("Transpose", [g], perm=gperm) if axis and ri else g
    dim = b.op("Gather", [b.shape_of(x), b.ints(axis)])  # a scalar: wrapping keeps the rank of idx
    wrapped = _wrapped(b, idx, dim)
    out = b.scatter_add("ScatterND", b.zeros_like(xt), b.unsqueeze(wrapped, [ri]), gt)
    return b.op("Transpose", [out], perm=[int(i) for i in np.argsort(front)]) if axis else out


@register("GatherElements")
def gather_elements(b, node, gys):
    # The transpose of picking x[.., idx[..], ..] is adding g back at those positions.
    x, idx = node.input
    rank = b.rank(x, node)
    axis = attrs(node).get("axis", 0) % rank
    if b.opset >= 16:
        return [b.scatter_add("ScatterElements", b.zeros_like(x), idx, gys[0], axis=axis), None]
    known = b.value(idx)
    if known is not None:
        dim = b.static_shape(x, node, dims=[axis])[axis]
        targets = np.indices(known.shape)
        targets[axis] = known.astype(np.int64) % dim
        flat = targets.reshape(rank, -1).T
        if len({tuple(t) for t in flat}) == len(flat):  # no position picked twice: plain scatter
            return [b.op("ScatterElements", [b.zeros_like(x), b.ints(targets[axis]), gys[0]], axis=axis), None]
    raise UnsupportedModelError(f"{describe(node)}: GatherElements with computed or repeated indices needs "
                                f"opset >= 16 to differentiate (model has {b.opset})")


@register("GatherND")
def gather_nd(b, node, gys):
    # Adding g back at the gathered positions: a plain ScatterND into zeros when constant indices
    # pick no position twice, else ScatterND with reduction 'add' (opset 16); negative indices
    # wrapped first, as for Gather. With batch_dims, each index row gets its batch position in
    # front, so that the scatter addresses the whole of x.
    x, idx = node.input
    bd = attrs(node).get("batch_dims", 0)
    known = b.value(idx)
    k = known.shape[-1] if known is not None else b.static_shape(idx, node, dims=[b.rank(idx, node) - 1])[-1]
    dims = (b.shapes.get(x) or [None] * (bd + k))[bd: bd + k]
    rows = None
    if known is not None:
        r = known.astype(np.int64)
        r = r % np.asarray(dims, np.int64) if None not in dims else r  # wrapped by the known lengths
        if r.min(initial=0) >= 0:  # (non-negative indices need none: a dim may be dynamic)
            if bd:
                lead = np.indices(known.shape[:bd]).reshape(bd, *known.shape[:bd], *[1] * (known.ndim - 1 - bd))
                r = np.concatenate([np.broadcast_to(np.moveaxis(lead, 0, -1), known.shape[:-1] + (bd,)), r], -1)
            rows = r
            flat = rows.reshape(-1, bd + k)
            if len({tuple(t) for t in flat}) == len(flat):
                return [b.op("ScatterND", [b.zeros_like(x), b.ints(rows), gys[0]]), None]
    if b.opset < 16:
        raise UnsupportedModelError(f"{describe(node)}: GatherND with computed or repeated indices (or negative "
                                    f"ones into a dim of run-time length) needs opset >= 16 to differentiate "
                                    f"(model has {b.opset})")
    if rows is not None:
        full = b.ints(rows)
    else:
        full = _wrapped(b, idx, b.slice(b.shape_of(x), [bd], [bd + k], [0]))
        if bd:  # (positions shaped from idx itself: the wrapped copy has no inferred shape)
            full = b.op("Concat", _batch_positions(b, node, x, idx, bd) + [full], axis=-1)
    return [b.scatter_add("ScatterND", b.zeros_like(x), full, gys[0]), None]


def _batch_positions(b, node, x, idx, bd) -> list[str]:
    """For GatherND's batch_dims: per batch axis j < bd, idx's rows' position along it, shaped
    like idx with a last axis of 1."""
    lead = b.rank(idx, node) - 1
    ones = b.op("Concat", [b.slice(b.shape_of(idx), [0], [lead], [0]), b.ints([1])], axis=0)
    out = []
    for j in range(bd):
        n = b.op("Gather", [b.shape_of(x), b.ints(j)])
        at = b.op("Range", [b.ints(0), n, b.ints(1)])
        out.append(b.op("Expand", [b.op("Reshape", [at, b.ints([1] * j + [-1] + [1] * (lead - j))]), ones]))
    return out


@register("TopK")
def top_k(b, node, gys):
    # The values are x's entries at the returned indices: each goes back to its position (the
    # indices of one slice are distinct, so a plain scatter into zeros is exact).
    x = node.input[0]
    if gys[0] is None:
        return [None] * len(node.input)
    if b.opset < 11:
        raise UnsupportedModelError(f"{describe(node)}: TopK needs opset >= 11 (ScatterElements) to differentiate "
                                    f"(model has {b.opset})")
    axis = attrs(node).get("axis", -1) % b.rank(x, node)
    gx = b.op("ScatterElements", [b.zeros_like(x), node.output[1], gys[0]], axis=axis)
    return [gx] + [None] * (len(node.input) - 1)


@register("Tile")
def tile(b, node, gys):
    # g [r0 * d0, r1 * d1, ...] viewed as [r0, d0, r1, d1, ...], summed over the repeats.
    x = node.input[0]
    reps = [int(r) for r in _const(b, node, node.input[1], "the repeats")]
    shape = b.shapes.get(x) or [None] * len(reps)
    split, summed = [], []
    for i, (r, d) in enumerate(zip(reps, shape)):
        if r != 1:
            summed.append(len(split))
            split.append(r)
        split.append(d)
    if not summed:
        return [gys[0], None]
    if split.count(None) > 1 or any(split[i + 1] is None for i in summed):
        b.static_shape(x, node)  # raises, naming the tensor
    split = [-1 if d is None else d for d in split]
    g = b.op("Reshape", [gys[0], b.ints(split)])
    return [b.reduce("ReduceSum", g, summed, keepdims=0), None]


@register("ReverseSequence")
def reverse_sequence(b, node, gys):
    # Reverses each row's first sequence_lens[n] steps: a permutation that is its own inverse.
    a = attrs(node)
    return [b.op("ReverseSequence", [gys[0], node.input[1]], batch_axis=a.get("batch_axis", 1), time_axis=a.get("time_axis", 0)),
            None]


@register("SpaceToDepth")
def space_to_depth(b, node, gys):
    return [b.op("DepthToSpace", [gys[0]], blocksize=attrs(node)["blocksize"], mode="DCR" if b.opset >= 11 else None)]


@register("DepthToSpace")
def depth_to_space(b, node, gys):
    a = attrs(node)
    bs = a["blocksize"]
    if a.get("mode", "DCR") == "DCR":
        return [b.op("SpaceToDepth", [gys[0]], blocksize=bs)]
    # CRD: y = reshape(transpose(reshape(x, [N, C/bs^2, bs, bs, H, W]), [0, 1, 4, 2, 5, 3]), ...)
    x = node.input[0]
    _, c, h, w = b.static_shape(x, node, dims=[1, 2, 3])
    g = b.op("Reshape", [gys[0], b.ints([0, c // (bs * bs), h, bs, w, bs])])
    return [b.reshape_like(b.op("Transpose", [g], perm=[0, 1, 3, 5, 2, 4]), x)]
