"""Normalisations at inference: BatchNormalization, LRN, LayerNormalization, InstanceNormalization,
GroupNormalization, RMSNormalization, LpNormalization."""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedModelError
from ..protos import attrs, describe
from . import only_known, register


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
    rank = b.rank(node.input[0], node)
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    # in float32 for a float16 model: x^2 and its window sums overflow from |x| = 256
    with b.float32(node.input[0], node.output[0], gys[0]) as ((x, y, g), narrow):
        s = _channel_window_sum(b, b.op("Mul", [x, x]), rank, size, lo, hi)
        d = b.op("Add", [b.scalar(bias), b.op("Mul", [s, b.scalar(alpha / size)])])
        direct = b.op("Mul", [g, b.op("Pow", [d, b.scalar(-beta)])])
        back = _channel_window_sum(b, b.op("Div", [b.op("Mul", [g, y]), d]), rank, size, hi, lo)
        cross = b.op("Mul", [b.op("Mul", [x, back]), b.scalar(2.0 * alpha * beta / size)])
        return [narrow(b.op("Sub", [direct, cross]))]


def _standardize_vjp(b, x: str, gh: str, axes: list[int], eps: float) -> tuple[str, str]:
    """For xhat = (x - mean) / sqrt(var + eps) over `axes`: the VJP of xhat at gradient `gh`,
    inv * (gh - mean(gh) - xhat * mean(gh * xhat)), and xhat itself (mean and variance
    recomputed from x, never read from a stashed output; in float32 for a float16 model:
    (x - mean)**2 overflows float16 from |x| = 256)."""
    with b.float32(x, gh) as ((x, gh), narrow):
        mean = b.reduce("ReduceMean", x, axes)
        d = b.op("Sub", [x, mean])
        var = b.reduce("ReduceMean", b.op("Mul", [d, d]), axes)
        inv = b.op("Div", [b.scalar(1.0), b.op("Sqrt", [b.op("Add", [var, b.scalar(eps)])])])
        xhat = b.op("Mul", [d, inv])
        centred = b.op("Sub", [gh, b.reduce("ReduceMean", gh, axes)])
        proj = b.op("Mul", [xhat, b.reduce("ReduceMean", b.op("Mul", [gh, xhat]), axes)])
        return narrow(b.op("Mul", [inv, b.op("Sub", [centred, proj])])), narrow(xhat)


def _only_first_output(b, node, gys):
    if any(g is not None for g in gys[1:]):
        raise UnsupportedModelError(f"{describe(node)}: gradients through its Mean/InvStdDev outputs are not supported")


@register("LayerNormalization")
def layer_norm(b, node, gys):
    # Y = xhat * Scale + B, xhat standardised over axes [axis, rank); Scale and B broadcast.
    _only_first_output(b, node, gys)
    a, g, y = attrs(node), gys[0], node.output[0]
    ins = list(node.input) + [""]
    x, scale, bias = ins[0], ins[1], ins[2]
    rank = b.rank(x, node)
    axes = list(range(a.get("axis", -1) % rank, rank))
    gx, xhat = _standardize_vjp(b, x, b.op("Mul", [g, scale]), axes, a.get("epsilon", 1e-5))
    gs = b.unbroadcast(b.op("Mul", [g, xhat]), scale, y, node) if b.needs(scale) else None
    gb = b.unbroadcast(g, bias, y, node) if b.needs(bias) else None
    return [gx if b.needs(x) else None, gs, gb]


def _no_parameter_gradients(b, node):
    if any(b.needs(t) for t in node.input[1:]):
        raise UnsupportedModelError(f"{describe(node)}: gradients with respect to its scale or bias are not supported")


@register("InstanceNormalization")
def instance_norm(b, node, gys):
    # Per sample and channel over the spatial axes; scale [C].
    _no_parameter_gradients(b, node)
    x, scale = node.input[:2]
    rank = b.rank(x, node)
    coef = b.op("Reshape", [scale, b.ints([-1] + [1] * (rank - 2))])
    gx, _ = _standardize_vjp(b, x, b.op("Mul", [gys[0], coef]), list(range(2, rank)), attrs(node).get("epsilon", 1e-5))
    return [gx, None, None]


@register("GroupNormalization")
def group_norm(b, node, gys):
    # x [N, C, *] standardised over [C / G, *] per group, then scale and bias per channel [C].
    # (GroupNormalization-18, with per-group parameters, is deprecated: the checker refuses it.)
    _no_parameter_gradients(b, node)
    if b.opset < 21:
        raise UnsupportedModelError(f"{describe(node)}: GroupNormalization before opset 21 is deprecated; "
                                    "convert the model to opset 21")
    a = attrs(node)
    x, scale = node.input[:2]
    groups, rank = a["num_groups"], b.rank(x, node)
    coef = b.op("Reshape", [scale, b.ints([-1] + [1] * (rank - 2))])
    grouped = b.ints([0, groups, -1])
    gh = b.op("Reshape", [b.op("Mul", [gys[0], coef]), grouped])
    gx, _ = _standardize_vjp(b, b.op("Reshape", [x, grouped]), gh, [2], a.get("epsilon", 1e-5))
    return [b.reshape_like(gx, x), None, None]


@register("RMSNormalization")
def rms_norm(b, node, gys):
    # Y = x * r * Scale, r = 1 / sqrt(mean(x^2) + epsilon) over axes [axis, rank); Scale broadcasts.
    # dx = r * gs - x * r^3 * mean(gs * x), with gs = g * Scale.
    only_known(node, {"axis", "epsilon", "stash_type"})
    a, g, y = attrs(node), gys[0], node.output[0]
    x, scale = node.input[:2]
    rank = b.rank(x, node)
    axes = list(range(a.get("axis", -1) % rank, rank))
    gs = [b.op("Mul", [g, scale])] if b.needs(x) else []
    gx = xr = None
    with b.float32(x, *gs) as ((xw, *gs), narrow):  # (x**2 and r**3 in float32 in a float16 model)
        mean_square = b.reduce("ReduceMean", b.op("Mul", [xw, xw]), axes)
        r = b.op("Div", [b.scalar(1.0), b.op("Sqrt", [b.op("Add", [mean_square, b.scalar(a.get("epsilon", 1e-5))])])])
        if gs:
            coef = b.op("Mul", [b.reduce("ReduceMean", b.op("Mul", [gs[0], xw]), axes),
                                b.op("Mul", [r, b.op("Mul", [r, r])])])
            gx = narrow(b.op("Sub", [b.op("Mul", [gs[0], r]), b.op("Mul", [xw, coef])]))
        if b.needs(scale):
            xr = narrow(b.op("Mul", [xw, r]))
    return [gx, b.unbroadcast(b.op("Mul", [g, xr]), scale, y, node) if xr else None]


def lp_normalize_vjp(b, g: str, x: str, y: str, axis: int, p: int) -> str:
    """Gradient of y = x / n along `axis`: n = sum |x| (p = 1) or sqrt(sum x^2) (p = 2), so
    gx = (g - s sum(g y)) / n with s = sign(x) or y. At n = 0 (ONNX Runtime's y is 0 there) it
    is infinite or NaN: x / |x| has no derivative at 0, and the Explainer reports it."""
    with b.float32(g, x, y) as ((g, x, y), narrow):  # (sums of squares in float32 in a float16 model)
        if p == 1:
            n = b.reduce("ReduceSum", b.op("Abs", [x]), [axis], keepdims=1)
            along = b.op("Sign", [x])
        else:
            n = b.op("Sqrt", [b.reduce("ReduceSum", b.op("Mul", [x, x]), [axis], keepdims=1)])
            along = y
        inner = b.reduce("ReduceSum", b.op("Mul", [g, y]), [axis], keepdims=1)
        return narrow(b.op("Div", [b.op("Sub", [g, b.op("Mul", [along, inner])]), n]))


@register("LpNormalization")
def lp_normalization(b, node, gys):
    a = attrs(node)
    p, axis = a.get("p", 2), a.get("axis", -1)
    if p not in (1, 2):
        raise UnsupportedModelError(f"{describe(node)}: p {p} is not an LpNormalization the spec defines (1 or 2)")
    if axis < 0 and (b.opset < 11 or b.shapes.get(node.input[0]) is not None):
        axis += b.rank(node.input[0], node)
    return [lp_normalize_vjp(b, gys[0], node.input[0], node.output[0], axis, p)]
