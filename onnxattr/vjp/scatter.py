"""ScatterND and ScatterElements (and Scatter, its name before opset 11): writes into a copy of `data`.

Without a reduction, data's overwritten positions get no gradient and each update gets the
gradient at the position it was written to, read back with the matching Gather. Where two
updates hit one position only the one ONNX Runtime kept (the last) counts: unless the indices
are constant and distinct, the winners are found at run time by scattering the updates'
ordinals the same way and reading them back. With reduction 'add', data keeps its whole
gradient and every update reads its position's.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, numpy_helper

from ..errors import UnsupportedModelError
from ..protos import attrs, describe
from . import register


def _distinct_targets(b, node, data: str, idx: np.ndarray, axis: int | None) -> bool:
    """Whether constant indices write each position of data at most once."""
    shape = b.shapes.get(data)
    if axis is None:  # ScatterND: rows of the last index axis address data's leading dims
        k = idx.shape[-1]
        if shape is None or any(d is None for d in shape[:k]):
            return False
        rows = idx.reshape(-1, k).astype(np.int64) % np.asarray(shape[:k], np.int64)
        return len({tuple(r) for r in rows}) == len(rows)
    if shape is None or shape[axis] is None:
        return False
    targets = np.indices(idx.shape)
    targets[axis] = idx.astype(np.int64) % shape[axis]
    flat = targets.reshape(idx.ndim, -1).T
    return len({tuple(t) for t in flat}) == len(flat)


def _winners(b, node, data: str, idx: str, axis: int | None) -> str:
    """Bool, shaped like the index slots: whether each update is the one left in place."""
    slots = b.shape_of(idx) if axis is not None else b.slice(b.shape_of(idx), [0], [-1], [0])
    count = b.reduce("ReduceProd", slots, [0], keepdims=0)
    ids = b.op("Reshape", [b.op("Range", [b.ints(0), count, b.ints(1)]), slots])
    minus_one = numpy_helper.from_array(np.array([-1], np.int64))
    if axis is None:
        ri = b.rank(idx, node)
        k = b.static_shape(idx, node, dims=[ri - 1])[ri - 1]
        board = b.op("ConstantOfShape", [b.slice(b.shape_of(data), [0], [k], [0])], value=minus_one)
        back = b.op("GatherND", [b.op("ScatterND", [board, idx, ids]), idx])
    else:
        board = b.op("ConstantOfShape", [b.shape_of(data)], value=minus_one)
        back = b.op("GatherElements", [b.op("ScatterElements", [board, idx, ids], axis=axis), idx], axis=axis)
    return b.op("Equal", [back, ids])


@register("ScatterND", "ScatterElements", "Scatter")
def scatter(b, node, gys):
    data, idx, updates = node.input
    g = gys[0]
    reduction = attrs(node).get("reduction", "none")
    rank = b.rank(data, node)
    axis = attrs(node).get("axis", 0) % rank if node.op_type != "ScatterND" else None
    if node.op_type == "Scatter" and b.needs(updates):  # (Scatter is opset 9-10 only)
        raise UnsupportedModelError(f"{describe(node)}: the gradient of its updates reads them back with GatherElements, "
                                    f"which needs opset >= 11 (the model has {b.opset}): export at opset 11 or later")
    if reduction not in ("none", "add"):
        raise UnsupportedModelError(f"{describe(node)}: reduction '{reduction}' is not supported")
    if b.types.get(idx, TensorProto.INT64) != TensorProto.INT64:
        idx = b.op("Cast", [idx], to=TensorProto.INT64)
    kw = {"axis": axis} if axis is not None else {}
    gather = "GatherND" if axis is None else "GatherElements"
    gd = gu = None
    if b.needs(data):
        gd = g if reduction == "add" else b.op(node.op_type, [g, idx, b.zeros_like(updates)], **kw)
    if b.needs(updates):
        gu = b.op(gather, [g, idx], **kw)
        known = b.value(node.input[1])
        if reduction == "none" and not (known is not None and _distinct_targets(b, node, data, known, axis)):
            won = b.mask(_winners(b, node, data, idx, axis))
            if axis is None:  # one flag per slot: broadcast over the slice each slot writes
                extra = b.rank(updates, node) - (b.rank(idx, node) - 1)
                won = b.unsqueeze(won, list(range(b.rank(idx, node) - 1, b.rank(idx, node) - 1 + extra))) if extra else won
            gu = b.op("Mul", [gu, won])
    return [gd, None, gu]
