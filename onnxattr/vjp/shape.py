"""Ops that move data without changing values: reshapes, permutes, slices, joins."""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedModelError
from ..graph import attrs, describe
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
    return [b.op("Transpose", [gys[0]], perm=[int(i) for i in np.argsort(perm)])]


@register("Concat")
def concat(b, node, gys):
    out = node.output[0]
    axis = attrs(node).get("axis", 1) % b.rank(out, node)
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


@register("Slice")
def slice_(b, node, gys):
    x = node.input[0]
    axes, starts, ends, steps = _slice_params(b, node)
    rank = b.rank(x, node)
    shape = b.static_shape(x, node, dims=axes)
    pads = [0] * (2 * rank)
    for ax, st, en, sp in zip(axes, starts, ends, steps):
        dim = shape[ax]
        if sp != 1:
            raise UnsupportedModelError(f"{describe(node)}: Slice with step {sp} is not supported on a differentiable path")
        st = min(max(st + dim if st < 0 else st, 0), dim)
        en = min(max(en + dim if en < 0 else en, 0), dim)
        pads[ax], pads[rank + ax] = st, dim - max(en, st)
    return [b.pad(gys[0], pads)]


@register("Pad")
def pad(b, node, gys):
    x = node.input[0]
    a = attrs(node)
    if a.get("mode", "constant") != "constant":
        raise UnsupportedModelError(f"{describe(node)}: Pad mode '{a['mode']}' is not supported")
    rank = b.rank(x, node)
    if b.opset < 11:
        pads = list(a.get("pads", a.get("paddings", [])))
    else:
        pads = [int(p) for p in _const(b, node, node.input[1], "pads")]
        if len(node.input) > 3 and node.input[3]:
            axes = [int(v) % rank for v in _const(b, node, node.input[3], "axes")]
            full = [0] * (2 * rank)
            for j, ax in enumerate(axes):
                full[ax], full[rank + ax] = pads[j], pads[len(axes) + j]
            pads = full
    crop_b = [max(p, 0) for p in pads[:rank]]
    crop_e = [max(p, 0) for p in pads[rank:]]
    g = gys[0]
    axes = [i for i in range(rank) if crop_b[i] or crop_e[i]]
    if axes:
        g = b.slice(g, [crop_b[i] for i in axes], [-crop_e[i] if crop_e[i] else BIG for i in axes], axes)
    return [b.pad(g, [max(-p, 0) for p in pads])]


@register("Gather")
def gather(b, node, gys):
    x, idx_name = node.input
    if not b.needs(x):
        return [None, None]
    rank = b.rank(x, node)
    axis = attrs(node).get("axis", 0) % rank
    dim = b.static_shape(x, node, dims=[axis])[axis]
    idx = _const(b, node, idx_name, "the indices").astype(np.int64) % dim
    g = gys[0]
    if idx.ndim == 0:
        pads = [0] * (2 * rank)
        pads[axis], pads[rank + axis] = int(idx), dim - 1 - int(idx)
        return [b.pad(b.unsqueeze(g, [axis]), pads), None]
    if idx.ndim != 1:
        raise UnsupportedModelError(f"{describe(node)}: Gather with {idx.ndim}-D indices is not supported")
    onehot = np.zeros((len(idx), dim), dtype=b.np_dtype)
    np.add.at(onehot, (np.arange(len(idx)), idx), 1.0)  # repeated indices add up
    last = list(range(rank))
    last.append(last.pop(axis))
    moved = b.op("Transpose", [g], perm=last) if axis != rank - 1 else g
    spread = b.op("MatMul", [moved, b.const(onehot)])
    back = [int(i) for i in np.argsort(last)]
    return [b.op("Transpose", [spread], perm=back) if axis != rank - 1 else spread, None]
