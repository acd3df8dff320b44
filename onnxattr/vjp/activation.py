"""Nonlinearities: their exact derivatives (methods override some of these, see methods.py)."""

from __future__ import annotations

import math

import numpy as np
import onnx

from ..protos import attrs
from . import register


def _times(b, g, d):
    return [b.op("Mul", [g, d])]


def _masked(b, g, mask):
    return [b.masked(g, mask)]


def relu_mask(b, node):
    """1[z > 0] for a Relu node, read from its output y (z > 0 iff y > 0) so that the forward
    Conv+Relu fusion still fires."""
    return b.step(node.output[0], like=node.output[0])


@register("Relu")
def relu(b, node, gys):
    return _masked(b, gys[0], relu_mask(b, node))


@register("LeakyRelu")
def leaky_relu(b, node, gys):
    alpha = attrs(node).get("alpha", 0.01)
    # x > 0 iff y > 0 when alpha >= 0: read the output then, so Conv+LeakyRelu stays fusable.
    (g,), x = gys, node.output[0] if alpha >= 0 else node.input[0]
    pos = b.op("Greater", [x, b.scalar(0.0)])
    return [b.where(pos, g, b.op("Mul", [g, b.scalar(alpha)]))]


@register("PRelu")
def prelu(b, node, gys):
    (g,), (x, slope), y = gys, node.input, node.output[0]
    pos = b.op("Greater", [x, b.scalar(0.0)])
    gx = b.where(pos, g, b.op("Mul", [g, slope]))
    gs = None
    if b.needs(slope):
        gs = b.unbroadcast(b.where(pos, b.scalar(0.0), b.op("Mul", [g, x])), slope, y, node)
    return [gx, gs]


def clip_bounds(b, node):
    """(min, max) tensor names of a Clip node, None where unbounded, for either opset form."""
    if b.opset < 11:
        a = attrs(node)
        lo, hi = a.get("min"), a.get("max")
        return (b.scalar(lo) if lo is not None else None, b.scalar(hi) if hi is not None else None)
    ins = list(node.input) + ["", ""]
    return (ins[1] or None, ins[2] or None)


@register("Clip")
def clip(b, node, gys):
    # Derivative 1 strictly inside (min, max), 0 at and beyond the bounds (PyTorch's hardtanh).
    # min < x < max iff min < y < max for y = clip(x): reading the output keeps Conv+Clip fusable.
    x = node.output[0]
    lo, hi = clip_bounds(b, node)
    bounds = _clip_bound_grads(b, node, gys[0], lo, hi) if b.opset >= 11 else []
    if b.blocked(x) and b.opset >= 11:
        mask = _clip_mask_blocked(b, x, lo, hi)
        if mask is not None:
            return _masked(b, gys[0], mask) + bounds
    if b.np_dtype == np.float16 and b.opset < 11:
        # ONNX Runtime runs float16 Clip-6 in float32 between Casts, and may drop the Cast back
        # to float16 before our comparison: compare the input in float32 with the float32 bounds.
        x = b.op("Cast", [node.input[0]], to=onnx.TensorProto.FLOAT)
        a = attrs(node)
        lo = None if a.get("min") is None else b.const(np.float32(a["min"]), dtype=np.float32)
        hi = None if a.get("max") is None else b.const(np.float32(a["max"]), dtype=np.float32)
    cond = None
    if lo is not None:
        cond = b.op("Greater", [x, lo])
    if hi is not None:
        below = b.op("Less", [x, hi])
        cond = below if cond is None else b.op("And", [cond, below])
    if cond is None:
        return [gys[0]] + bounds
    return _masked(b, gys[0], b.mask(cond)) + (bounds or [None, None][: len(node.input) - 1])


def _clip_bound_grads(b, node, g, lo, hi) -> list:
    """Gradients of Clip's min and max inputs where they are computed from the input (else
    []): y = min(max(x, lo), hi) takes lo where x < lo < hi, and hi where max(x, lo) > hi or
    lo >= hi (ONNX: every value becomes max when min > max). At a tie nobody gets the gradient,
    as x gets none at the bounds."""
    if not any(t is not None and b.needs(t) for t in (lo, hi)):
        return []
    x, y, out = node.input[0], node.output[0], [None, None]
    if lo is not None and b.needs(lo):
        below = b.op("Less", [x, lo])
        if hi is not None:
            below = b.op("And", [below, b.op("Less", [lo, hi])])
        out[0] = b.unbroadcast(b.masked(g, b.mask(below)), lo, y, node)
    if hi is not None and b.needs(hi):
        above = b.op("Greater", [x if lo is None else b.op("Max", [x, lo]), hi])
        if lo is not None:
            above = b.op("Or", [above, b.op("Not", [b.op("Less", [lo, hi])])])
        out[1] = b.unbroadcast(b.masked(g, b.mask(above)), hi, y, node)
    return out[: len(node.input) - 1]


def _clip_mask_blocked(b, y, lo, hi):
    """1[lo < y < hi] for y = clip(x, lo, hi) with constant bounds, from depthwise Convs, one Mul
    and a step, all kept in ONNX Runtime's NCHWc layout: step((y - lo) * (hi - y) * 2**120). Each
    factor is one rounding of a difference, so it is 0 exactly at its bound and positive inside
    (y - lo >= 2**-149, (hi - y) * 2**120 >= 2**100 there while hi - lo >= 2**-20), so the product
    is 0 at the bounds and >= 2**-49 inside: one 2**127 scaling in the step lifts it past 1."""
    lo_v = None if lo is None else b.value(lo)
    hi_v = None if hi is None else b.value(hi)
    if (lo is not None and (lo_v is None or lo_v.size != 1)) or (hi is not None and (hi_v is None or hi_v.size != 1)):
        return None
    lo_f = None if lo is None else float(lo_v)
    hi_f = None if hi is None else float(hi_v)
    # Both bounds under 2**7 in size: (hi - y) * 2**120 <= (hi - lo) * 2**120 < 2**128 stays
    # finite, so the product is 0 (not 0 * inf = NaN) at y == lo; it may overflow to +inf
    # inside, which the step still maps to 1. Wider bounds take the generic form.
    if lo_f is not None and hi_f is not None and not (hi_f - lo_f >= 2.0 ** -20 and max(abs(lo_f), abs(hi_f)) < 2.0 ** 7):
        return None
    if hi_f is None:
        return b.step(y if lo_f == 0.0 else b.channel_affine(y, 1.0, y, bias=-lo_f), like=y)
    if lo_f is None:
        return b.step(b.channel_affine(y, -1.0, y, bias=hi_f), like=y)
    above = y if lo_f == 0.0 else b.channel_affine(y, 1.0, y, bias=-lo_f)
    inside = b.op("Mul", [above, b.channel_affine(y, -(2.0 ** 120), y, bias=hi_f * 2.0 ** 120)])
    b.annotate(inside, like=y)
    return b.step(inside, like=y, least=2.0 ** -49)


@register("Sigmoid")
def sigmoid(b, node, gys):
    y = node.output[0]
    return _times(b, gys[0], b.op("Mul", [y, b.op("Sub", [b.scalar(1.0), y])]))


@register("onnxattr:Logistic")
def logistic(b, node, gys):
    """patterns.fuse's 1 / (1 + exp(-x)) written out (never emitted): y / (1 + exp(x)), where the
    Sigmoid rule's y (1 - y) cancels for y near 1 (0.17 off at x = 15 in float32, 0 from 17) and
    ONNX Runtime's Sigmoid(-x) is accurate only absolutely there (17% off at x = 15); exp is
    accurate relatively, an overflow gives the limit 0, and so does y = 0 where exp(-x) overflows."""
    with b.float32(gys[0], node.input[0], node.output[0]) as ((g, x, y), narrow):  # (float16's exp overflows from 11)
        rest = b.op("Reciprocal", [b.op("Add", [b.scalar(1.0), b.op("Exp", [x])])])  # 1 - y, without cancelling
        return [narrow(b.op("Mul", [g, b.op("Mul", [y, rest])]))]


@register("Tanh")
def tanh(b, node, gys):
    y = node.output[0]
    return _times(b, gys[0], b.op("Sub", [b.scalar(1.0), b.op("Mul", [y, y])]))


def softmax_axes(b, node):
    """The axes a Softmax/LogSoftmax normalises over: [axis] from opset 13, else axis..end."""
    rank = b.rank(node.input[0], node)
    axis = attrs(node).get("axis", -1 if b.opset >= 13 else 1) % rank
    return [axis] if b.opset >= 13 else list(range(axis, rank))


@register("Softmax")
def softmax(b, node, gys):
    (g,), y = gys, node.output[0]
    s = b.reduce("ReduceSum", b.op("Mul", [g, y]), softmax_axes(b, node), keepdims=1)
    return [b.op("Mul", [y, b.op("Sub", [g, s])])]


@register("LogSoftmax")
def log_softmax(b, node, gys):
    # in float32 for a float16 model: the sum of g over 65504 or more classes overflows
    with b.float32(gys[0], node.output[0]) as ((g, y), narrow):
        s = b.reduce("ReduceSum", g, softmax_axes(b, node), keepdims=1)
        return [narrow(b.op("Sub", [g, b.op("Mul", [b.op("Exp", [y]), s])]))]


@register("Softplus")
def softplus(b, node, gys):
    return _times(b, gys[0], b.op("Sigmoid", [node.input[0]]))


@register("Softsign")
def softsign(b, node, gys):
    with b.float32(gys[0], node.input[0]) as ((g, x), narrow):  # (1 + |x|)^2 overflows float16 from 255
        d = b.op("Add", [b.scalar(1.0), b.op("Abs", [x])])
        return [narrow(b.op("Div", [g, b.op("Mul", [d, d])]))]


def _hard_sigmoid_mask(b, x, alpha, beta):
    v = b.op("Add", [b.op("Mul", [x, b.scalar(alpha)]), b.scalar(beta)])
    inside = b.op("And", [b.op("Greater", [v, b.scalar(0.0)]), b.op("Less", [v, b.scalar(1.0)])])
    return b.mask(inside)


@register("HardSigmoid")
def hard_sigmoid(b, node, gys):
    a = attrs(node)
    alpha, beta = a.get("alpha", 0.2), a.get("beta", 0.5)
    m = _hard_sigmoid_mask(b, node.input[0], alpha, beta)
    return [b.op("Mul", [b.masked(gys[0], m), b.scalar(alpha)])]


@register("HardSwish")
def hard_swish(b, node, gys):
    x = node.input[0]
    if b.np_dtype == np.float32:  # ONNX Runtime's HardSigmoid is float32 only (as Gelu's)
        hs = b.op("HardSigmoid", [x], alpha=1.0 / 6, beta=0.5)
    else:  # (x + 3) / 6: its alpha attribute is float32(1/6), and 1/6 rounds in float16
        hs = b.op("Clip", [b.op("Div", [b.op("Add", [x, b.scalar(3.0)]), b.scalar(6.0)]), b.scalar(0.0), b.scalar(1.0)])
    # inside (-3, 3), the spec's kinks, compared in any float type (x / 6 + 1/2 in float16 put
    # x = -3 inside: 1/6 rounds down there)
    m = b.mask(b.op("And", [b.op("Greater", [x, b.scalar(-3.0)]), b.op("Less", [x, b.scalar(3.0)])]))
    gx = b.op("Mul", [gys[0], b.op("Add", [hs, b.op("Mul", [x, b.op("Mul", [m, b.scalar(1.0 / 6)])])])])
    if gys[0] in b.unbounded and b.opset >= 9:  # 0, not inf * 0, where the slope is 0 (x < -3)
        gx = b.op("Where", [b.op("Greater", [x, b.scalar(-3.0)]), gx, b.scalar(0.0)])
    return [gx]


@register("Elu", "Celu")
def elu(b, node, gys):
    x, y = node.input[0], node.output[0]
    alpha = attrs(node).get("alpha", 1.0)
    if node.op_type == "Elu" and b.np_dtype == np.float16:
        # y + alpha cancels in float16 from x = -5: alpha exp(x), in float32
        return [_exp_side(b, gys[0], x, 1.0, alpha)]
    pos = b.op("Greater", [x, b.scalar(0.0)])
    if node.op_type == "Elu":
        neg = b.op("Add", [y, b.scalar(alpha)])  # alpha * exp(x) = y + alpha for x <= 0
    else:
        neg = b.op("Exp", [b.op("Div", [x, b.scalar(alpha)])])
    return [b.op("Mul", [gys[0], b.where(pos, b.scalar(1.0), neg)])]


@register("Selu")
def selu(b, node, gys):
    a = attrs(node)
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
    x, y = node.input[0], node.output[0]
    if b.np_dtype == np.float16:  # as Elu's
        return [_exp_side(b, gys[0], x, gamma, alpha * gamma)]
    pos = b.op("Greater", [x, b.scalar(0.0)])
    neg = b.op("Add", [y, b.scalar(alpha * gamma)])  # alpha * gamma * exp(x) = y + alpha * gamma for x <= 0
    return [b.op("Mul", [gys[0], b.where(pos, b.scalar(gamma), neg)])]


def _exp_side(b, g, x, slope, scale):
    """g times `slope` where x > 0, else times `scale` exp(x), in float32 for a float16 model."""
    with b.float32(g, x) as ((g, x), narrow):
        pos = b.op("Greater", [x, b.scalar(0.0)])
        neg = b.op("Mul", [b.op("Exp", [x]), b.scalar(scale)])
        return narrow(b.op("Mul", [g, b.where(pos, b.scalar(slope), neg)]))


@register("ThresholdedRelu")
def thresholded_relu(b, node, gys):
    alpha = attrs(node).get("alpha", 1.0)
    return _masked(b, gys[0], b.mask(b.op("Greater", [node.input[0], b.scalar(alpha)])))


@register("Shrink")
def shrink(b, node, gys):
    # y = x - bias above lambd, x + bias below -lambd, 0 between: slope 1 strictly outside.
    x, lambd = node.input[0], attrs(node).get("lambd", 0.5)
    outside = b.op("Or", [b.op("Greater", [x, b.scalar(lambd)]), b.op("Less", [x, b.scalar(-lambd)])])
    return _masked(b, gys[0], b.mask(outside))


@register("Gelu")
def gelu(b, node, gys):
    # in float32 for a float16 model: x^2 overflows from |x| = 256 (inf * 0 = NaN in the tanh
    # form), and Phi(x) = 0.5 + 0.5 erf(a) cancels from x = -3
    with b.float32(gys[0], node.input[0]) as ((g, x), narrow):
        return [narrow(_gelu(b, g, x, attrs(node).get("approximate", "none")))]


def _gelu(b, g, x, approximate):
    s = b.scalar
    if approximate == "tanh":
        c = math.sqrt(2.0 / math.pi)
        x2 = b.op("Mul", [x, x])
        u = b.op("Mul", [s(c), b.op("Add", [x, b.op("Mul", [s(0.044715), b.op("Mul", [x2, x])])])])
        t = b.op("Tanh", [u])
        du = b.op("Mul", [s(c), b.op("Add", [s(1.0), b.op("Mul", [s(3 * 0.044715), x2])])])
        left = b.op("Mul", [s(0.5), b.op("Add", [s(1.0), t])])
        right = b.op("Mul", [b.op("Mul", [s(0.5), x]), b.op("Mul", [b.op("Sub", [s(1.0), b.op("Mul", [t, t])]), du])])
        return b.op("Mul", [g, b.op("Add", [left, right])])
    # gelu'(x) = Phi(x) + x phi(x) in nine element-wise passes: Phi = 0.5 erf(a) + 0.5 as one
    # HardSigmoid (never clipped: erf is in [-1, 1]) with a = x / sqrt 2, and x phi(x) =
    # x / exp(a^2) / sqrt(2 pi) (exp overflowing to inf for |x| > 13 gives the limit 0).
    a = b.op("Mul", [x, s(1 / math.sqrt(2))])
    erf = b.op("Erf", [a])
    if b.np_dtype == np.float32:  # ONNX Runtime's HardSigmoid is float32 only
        cdf = b.op("HardSigmoid", [erf], alpha=0.5, beta=0.5)
    else:
        cdf = b.op("Add", [b.op("Mul", [erf, s(0.5)]), s(0.5)])
    slope = b.op("Mul", [b.op("Div", [x, b.op("Exp", [b.op("Mul", [a, a])])]), s(1 / math.sqrt(2 * math.pi))])
    return b.op("Mul", [g, b.op("Add", [cdf, slope])])


@register("Mish")
def mish(b, node, gys):
    x = node.input[0]
    t = b.op("Tanh", [b.op("Softplus", [x])])
    sech2 = b.op("Sub", [b.scalar(1.0), b.op("Mul", [t, t])])
    return _times(b, gys[0], b.op("Add", [t, b.op("Mul", [x, b.op("Mul", [b.op("Sigmoid", [x]), sech2])])]))
