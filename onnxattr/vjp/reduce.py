"""Reductions beyond ReduceSum/ReduceMean (in pool.py), and the running sum CumSum.

Each input element gets the output gradient, broadcast back over the reduced axes, times the
partial derivative of the reduction there: the share of the extremum, sign(x), x / y, 1 / sum, ...
"""

from __future__ import annotations

from ..protos import attrs
from . import register
from .pool import reduce_axes


@register("ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp", "ReduceLogSum",
          "ReduceProd")
def reduce_other(b, node, gys):
    x, y, g = node.input[0], node.output[0], gys[0]
    axes, rest = reduce_axes(b, node), [None] * (len(node.input) - 1)
    if axes and not attrs(node).get("keepdims", 1):
        y, g = b.unsqueeze(y, axes), b.unsqueeze(g, axes)
    op = node.op_type
    if op == "ReduceProd":
        if not axes:  # noop_with_empty_axes: the identity
            return [g] + rest
        # in float32 for a float16 model: the product of the others overflows where its
        # product with g is finite
        with b.float32(g, x) as ((g, x), narrow):
            return [narrow(b.op("Mul", [g, _product_of_the_others(b, x, axes)]))] + rest
    elif op in ("ReduceMax", "ReduceMin"):
        # Split evenly among the elements equal to the extremum (PyTorch's amax / amin).
        hit = b.mask(b.equal(x, y))
        d = b.op("Div", [hit, b.reduce("ReduceSum", hit, axes, keepdims=1)]) if axes else hit
    elif op == "ReduceL1":
        d = b.sign(x)
    elif op == "ReduceL2":  # x / y, and 0 where y = 0 (as PyTorch's norm)
        zero = b.scalar(0.0)
        d = b.where(b.equal(y, zero), zero, b.op("Div", [x, y]))
    elif op == "ReduceSumSquare":
        d = b.op("Mul", [x, b.scalar(2.0)])
    elif op == "ReduceLogSum":  # 1 / the sum, the same for every element (log(x) for noop_with_empty_axes)
        if not axes:
            return [b.op("Div", [g, x])] + rest
        total = b.reduce("ReduceSum", x, axes, keepdims=1)
        return [b.expand_like(b.op("Div", [g, total]), x)] + rest
    else:  # ReduceLogSumExp: softmax over the reduced axes
        d = b.op("Exp", [b.op("Sub", [x, y])])
    return [b.op("Mul", [g, d])] + rest


def _product_of_the_others(b, x, axes):
    """d prod / d x_i: prod / x_i without zeros; at the only zero, the product of the rest; 0 where
    there are two zeros or more (PyTorch's prod backward)."""
    zero, one = b.scalar(0.0), b.scalar(1.0)
    at_zero = b.equal(x, zero)
    zeros = b.reduce("ReduceSum", b.mask(at_zero), axes, keepdims=1)
    safe = b.where(at_zero, one, x)
    others = b.reduce("ReduceProd", safe, axes, keepdims=1)  # the product of the nonzero entries
    return b.where(at_zero, b.where(b.equal(zeros, one), others, zero),
                   b.where(b.equal(zeros, zero), b.op("Div", [others, safe]), zero))


@register("CumSum")
def cumsum(b, node, gys):
    # The adjoint of a running sum is the running sum in the other direction.
    a = attrs(node)
    out = b.op("CumSum", [gys[0], node.input[1]], exclusive=a.get("exclusive") or None,
               reverse=0 if a.get("reverse", 0) else 1)
    return [out, None]
