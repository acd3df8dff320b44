"""Arithmetic with numpy broadcasting, and smooth element-wise functions."""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto

from ..errors import UnsupportedModelError
from ..protos import attrs
from . import register


@register("Identity", "Dropout")
def identity(b, node, gys):
    # Dropout at inference is the identity on output 0; its mask output has no gradient.
    if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
        training = b.value(node.input[2])
        if training is None or bool(training):
            raise UnsupportedModelError(f"Dropout node '{node.name}' may run in training mode")
    # the ratio does not act at inference: a zero gradient where it is computed from the input
    return [gys[0]] + [b.zeros_like(r) if b.needs(r) and b.is_float(r) else None for r in node.input[1:]]


@register("Add")
def add(b, node, gys):
    (g,), (x, y), z = gys, node.input, node.output[0]
    return [b.unbroadcast(g, x, z, node) if b.needs(x) else None,
            b.unbroadcast(g, y, z, node) if b.needs(y) else None]


@register("Sub")
def sub(b, node, gys):
    (g,), (x, y), z = gys, node.input, node.output[0]
    return [b.unbroadcast(g, x, z, node) if b.needs(x) else None,
            b.unbroadcast(b.op("Neg", [g]), y, z, node) if b.needs(y) else None]


@register("Mul")
def mul(b, node, gys):
    (g,), (x, y), z = gys, node.input, node.output[0]
    return [b.unbroadcast(b.op("Mul", [g, y]), x, z, node) if b.needs(x) else None,
            b.unbroadcast(b.op("Mul", [g, x]), y, z, node) if b.needs(y) else None]


@register("Div")
def div(b, node, gys):
    (g,), (x, y), z = gys, node.input, node.output[0]
    gx = b.op("Div", [g, y]) if b.needs(x) else None
    gy = None
    if b.needs(y):  # -g x / y^2 = -(g / y) z; in float32 for a float16 model, where g / y
        # overflows for a subnormal y while the gradient is finite
        with b.float32(g, y, z) as ((gw, yw, zw), narrow):
            ratio = gx if gx is not None and gw == g else b.op("Div", [gw, yw])  # (g / y, unless cast)
            gy = narrow(b.op("Neg", [b.op("Mul", [ratio, zw])]))
    return [b.unbroadcast(gx, x, z, node) if b.needs(x) else None,
            b.unbroadcast(gy, y, z, node) if gy else None]


@register("Sum")
def sum_(b, node, gys):
    z = node.output[0]
    return [b.unbroadcast(gys[0], x, z, node) if b.needs(x) else None for x in node.input]


@register("Mean")
def mean(b, node, gys):
    g = b.op("Div", [gys[0], b.scalar(len(node.input))])
    return [b.unbroadcast(g, x, node.output[0], node) if b.needs(x) else None for x in node.input]


@register("Max", "Min")
def max_min(b, node, gys):
    # Each input holding the extremum gets the gradient; tied inputs share it evenly (PyTorch's
    # maximum / minimum, and ReduceMax / ReduceMin here).
    z, g = node.output[0], gys[0]
    if len(node.input) == 1:
        return [g]
    hits = [b.mask(b.equal(x, z)) for x in node.input]
    share = b.op("Div", [g, b.add_all(hits)])
    if g in b.unbounded:
        b.unbounded.add(share)
    return [b.unbroadcast(b.masked(share, hit), x, z, node) if b.needs(x) else None
            for x, hit in zip(node.input, hits)]


@register("Neg")
def neg(b, node, gys):
    return [b.op("Neg", [gys[0]])]


@register("Abs")
def abs_(b, node, gys):
    return [b.op("Mul", [gys[0], b.sign(node.input[0])])]


@register("Exp")
def exp(b, node, gys):
    return [b.op("Mul", [gys[0], node.output[0]])]


@register("Log")
def log(b, node, gys):
    return [b.op("Div", [gys[0], node.input[0]])]


@register("Sqrt")
def sqrt(b, node, gys):
    return [b.op("Div", [gys[0], b.op("Mul", [node.output[0], b.scalar(2.0)])])]


@register("Reciprocal")
def reciprocal(b, node, gys):
    y = node.output[0]  # g * y * y: (g y) y, as y * y overflows float16 from |y| = 256
    return [b.op("Neg", [b.op("Mul", [b.op("Mul", [gys[0], y]), y])])]


@register("Pow")
def pow_(b, node, gys):
    (g,), (x, p), z = gys, node.input, node.output[0]
    gx = gp = None
    pf = p if b.types.get(p) == b.dtype else b.op("Cast", [p], to=b.dtype)
    if b.needs(x):
        # in float32 for a float16 model: x^(p - 1) overflows float16 where x^p and the gradient
        # are finite (p = -1 from |x| = 2**-8, p = -0.5 from |x| = 2**-11)
        with b.float32(x, pf, g) as ((xw, pw, gw), narrow):
            less = b.op("Sub", [pw, b.scalar(1.0)])
            exponent = b.value(p)
            if exponent is None or np.any(exponent == 0):
                # x^0 = 1 has slope 0, also at x = 0: 0 * x^0 there, not 0 * 0^-1 = 0 * inf = NaN
                less = b.op("Add", [less, b.mask(b.equal(pw, b.scalar(0.0)))])
            gx = narrow(b.op("Mul", [gw, b.op("Mul", [pw, b.op("Pow", [xw, less])])]))
        gx = b.unbroadcast(gx, x, z, node)
    if b.needs(p):
        # z log x, and 0 where x = 0 and p >= 0 (PyTorch's convention; log 0 would give 0 * -inf)
        d = b.op("Mul", [z, b.op("Log", [x])])
        at_zero = b.op("And", [b.equal(x, b.scalar(0.0)), b.op("Not", [b.op("Less", [pf, b.scalar(0.0)])])])
        gp = b.unbroadcast(b.op("Mul", [g, b.where(at_zero, b.scalar(0.0), d)]), p, z, node)
    return [gx, gp]


@register("Mod")
def mod(b, node, gys):
    # Float Mod is C's fmod (ONNX requires fmod=1 for floats): a - b q with q = trunc(a / b), so
    # the slope is 1 in a and -q in b (PyTorch's fmod backward).
    (g,), (x, y), z = gys, node.input, node.output[0]
    if not b.is_float(z):
        return [None, None]
    gy = None
    if b.needs(y):
        ratio = b.op("Div", [x, y])
        q = b.op("Mul", [b.sign(ratio), b.op("Floor", [b.op("Abs", [ratio])])])
        gy = b.unbroadcast(b.op("Neg", [b.op("Mul", [g, q])]), y, z, node)
    return [b.unbroadcast(g, x, z, node) if b.needs(x) else None, gy]


@register("Erf")
def erf(b, node, gys):
    x = node.input[0]
    d = b.op("Mul", [b.scalar(2.0 / math.sqrt(math.pi)), b.op("Exp", [b.op("Neg", [b.op("Mul", [x, x])])])])
    return [b.op("Mul", [gys[0], d])]


@register("Cast", "CastLike")
def cast(b, node, gys):
    # CastLike's second input only gives the type: a zero gradient where it depends on the input.
    x = node.input[0]
    other = [b.zeros_like(t) if b.needs(t) and b.is_float(t) else None for t in node.input[1:]]
    if not b.is_float(x):
        return [None] + other
    return [b.op("Cast", [gys[0]], to=b.types[x])] + other


def _sqrt_of(b, a, x, c):
    """sqrt(a + c x^2) for constants a and c."""
    return b.op("Sqrt", [b.op("Add", [b.scalar(a), b.op("Mul", [b.scalar(c), b.op("Mul", [x, x])])])])


@register("Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh")
def trig(b, node, gys):
    # Their derivatives, from x (or y = f(x) for tan): cos, -sin, 1 + y^2, 1 / sqrt(1 - x^2),
    # -1 / sqrt(1 - x^2), 1 / (1 + x^2), cosh, sinh, 1 / sqrt(1 + x^2), 1 / sqrt(x^2 - 1),
    # 1 / (1 - x^2); inf at the ends of asin's, acos's, acosh's and atanh's domains, as in PyTorch.
    # In float32 for a float16 model: x^2 and y^2 overflow from 256 (atan, asinh, acosh, tan).
    op = node.op_type
    with b.float32(gys[0], node.output[0] if op == "Tan" else node.input[0]) as ((g, v), narrow):
        return [narrow(_trig(b, op, g, v))]


def _trig(b, op, g, x):
    """The gradient of trig op `op` at g, from its input x (its output, for Tan)."""
    one = b.scalar(1.0)
    if op == "Sin" and b.dtype == TensorProto.DOUBLE:
        # cos x as 1 - 2 sin^2(x / 2): ONNX Runtime before 1.29 runs Sin in double but has no
        # double Cos kernel, so a float64 model's attribution would not load where the model does
        s = b.op("Sin", [b.op("Mul", [x, b.scalar(0.5)])])
        return b.op("Mul", [g, b.op("Sub", [one, b.op("Mul", [b.scalar(2.0), b.op("Mul", [s, s])])])])
    if op in ("Sin", "Cosh"):
        return b.op("Mul", [g, b.op("Cos" if op == "Sin" else "Sinh", [x])])
    if op == "Sinh":
        return b.op("Mul", [g, b.op("Cosh", [x])])
    if op == "Cos":
        return b.op("Neg", [b.op("Mul", [g, b.op("Sin", [x])])])
    if op == "Tan":
        return b.op("Mul", [g, b.op("Add", [one, b.op("Mul", [x, x])])])
    if op == "Atan":
        return b.op("Div", [g, b.op("Add", [one, b.op("Mul", [x, x])])])
    if op == "Atanh":
        return b.op("Div", [g, b.op("Sub", [one, b.op("Mul", [x, x])])])
    root = {"Asin": (1.0, -1.0), "Acos": (1.0, -1.0), "Asinh": (1.0, 1.0), "Acosh": (-1.0, 1.0)}[op]
    gx = b.op("Div", [g, _sqrt_of(b, root[0], x, root[1])])
    return b.op("Neg", [gx]) if op == "Acos" else gx


@register("Where")
def where(b, node, gys):
    (g,), (c, x, y), z = gys, node.input, node.output[0]
    zero = b.scalar(0.0)
    return [None,
            b.unbroadcast(b.op("Where", [c, g, zero]), x, z, node) if b.needs(x) else None,
            b.unbroadcast(b.op("Where", [c, zero, g]), y, z, node) if b.needs(y) else None]


@register("Expand")
def expand(b, node, gys):
    return [b.unbroadcast(gys[0], node.input[0], node.output[0], node), None]


@register("Trilu")
def trilu(b, node, gys):
    # Keeping a triangle is a 0/1 mask: its own adjoint.
    return [b.op("Trilu", [gys[0]] + list(node.input[1:2]), upper=attrs(node).get("upper", 1)), None]
