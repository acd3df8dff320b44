"""Normalisations at inference: BatchNormalization, LRN."""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedModelError
from ..graph import attrs, describe
from . import register


@register("BatchNormalization")
def batch_norm(b, node, gys):
    a = attrs(node)
    if a.get("training_mode", 0) or any(o for o in node.output[1:]):
        raise UnsupportedModelError(f"{describe(node)}: training-mode BatchNormalization is not supported")
    x, scale, _, _, var = node.input[:5]
    if any(b.needs(t) for t in node.input[1:]):
        raise UnsupportedModelError(f"{describe(node)}: gradients with respect to BatchNormalization parameters are not supported")
    coef = b.op("Div", [scale, b.op("Sqrt", [b.op("Add", [var, b.scalar(a.get("epsilon", 1e-5))])])])
    rank = b.rank(x, node)
    if a.get("spatial", 1) and rank > 2:
        coef = b.op("Reshape", [coef, b.ints([-1] + [1] * (rank - 2))])
    return [b.op("Mul", [gys[0], coef])]


def _channel_window_sum(b, t: str, rank: int, size: int, before: int, after: int) -> str:
    """out[:, c] = sum of t[:, c - before .. c + after] (zero outside), as a Conv over channels."""
    lifted = b.unsqueeze(t, [1])
    kernel = np.ones([1, 1, size] + [1] * (rank - 2), dtype=b.np_dtype)
    pads = [before] + [0] * (rank - 2) + [after] + [0] * (rank - 2)
    summed = b.op("Conv", [lifted, b.const(kernel)], pads=pads, kernel_shape=list(kernel.shape[2:]))
    return b.squeeze(summed, [1])


@register("LRN")
def lrn(b, node, gys):
    a = attrs(node)
    size, alpha, beta, bias = a["size"], a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0)
    x, y, g = node.input[0], node.output[0], gys[0]
    rank = b.rank(x, node)
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    s = _channel_window_sum(b, b.op("Mul", [x, x]), rank, size, lo, hi)
    d = b.op("Add", [b.scalar(bias), b.op("Mul", [s, b.scalar(alpha / size)])])
    direct = b.op("Mul", [g, b.op("Pow", [d, b.scalar(-beta)])])
    back = _channel_window_sum(b, b.op("Div", [b.op("Mul", [g, y]), d]), rank, size, hi, lo)
    cross = b.op("Mul", [b.op("Mul", [x, back]), b.scalar(2.0 * alpha * beta / size)])
    return [b.op("Sub", [direct, cross])]
