"""GridSample (PyTorch's grid_sample: spatial transformers, deformable sampling), 4-D input,
and AffineGrid (affine_grid: the spatial transformer's sampling grid, below).

The forward reads, per output location, the pixel(s) around the coordinates its grid gives:
    ix = ((gx + 1) * W - 1) / 2   (align_corners=0)   or   (gx + 1) / 2 * (W - 1)   (align_corners=1)
then, by padding_mode, zeros outside, coordinates clamped into [0, W - 1] (border), or
reflected about the edges (reflection: about [-0.5, W - 0.5], or [0, W - 1] with align_corners,
then clamped); bilinear mode weights the four pixels around (ix, iy), nearest takes the one at
the rounded coordinates (halves to even). The rule rebuilds those coordinates, indices and
weights with standard ops (as ONNX Runtime computes them, in the same order), then
* the input's gradient: each output gradient times each pixel's weight, added into that pixel
  (ScatterElements with additions, one call for the four corners);
* the grid's gradient (bilinear): sum over channels of the gradient times the interpolation's
  slope along x and y (the pixels' differences, weighted), times the slope of the coordinate
  mapping (zero where border clamps it, -1 where reflection flips it). Nearest sampling is
  piecewise constant in the grid: zero, as in PyTorch.
Refused by name: bicubic / cubic mode, inputs of other ranks.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ..protos import attrs
from . import refuse, register


def _coordinate(b, g: str, length: int, align: bool, padding: str):
    """(pixel coordinate, its slope with respect to the grid value) along one axis."""
    if align:
        ix = b.op("Mul", [b.op("Div", [b.op("Add", [g, b.scalar(1.0)]), b.scalar(2.0)]), b.scalar(length - 1.0)])
        slope = b.scalar((length - 1) / 2.0)
    else:
        ix = b.op("Div", [b.op("Sub", [b.op("Mul", [b.op("Add", [g, b.scalar(1.0)]), b.scalar(float(length))]), b.scalar(1.0)]),
                          b.scalar(2.0)])
        slope = b.scalar(length / 2.0)
    if padding == "reflection":
        lo, span = (0.0, length - 1.0) if align else (-0.5, float(length))
        if span <= 0:  # one pixel, align_corners: every coordinate reflects to 0
            return b.op("Mul", [ix, b.scalar(0.0)]), b.op("Mul", [ix, b.scalar(0.0)])
        shifted = b.op("Sub", [ix, b.scalar(lo)])
        dist = b.op("Abs", [shifted])
        flips = b.op("Floor", [b.op("Div", [dist, b.scalar(span)])])
        extra = b.op("Sub", [dist, b.op("Mul", [flips, b.scalar(span)])])
        odd = b.op("Sub", [flips, b.op("Mul", [b.op("Floor", [b.op("Div", [flips, b.scalar(2.0)])]), b.scalar(2.0)])])
        # even flips: lo + extra, odd: lo + span - extra; slope sign(shifted) * (1 - 2 odd)
        ix = b.op("Add", [b.op("Add", [b.op("Mul", [odd, b.op("Sub", [b.scalar(span), b.op("Mul", [extra, b.scalar(2.0)])])]),
                                        extra]), b.scalar(lo)])
        sign = b.op("Where", [b.op("Less", [shifted, b.scalar(0.0)]), b.scalar(-1.0), b.scalar(1.0)])
        slope = b.op("Mul", [slope, b.op("Mul", [sign, b.op("Sub", [b.scalar(1.0), b.op("Mul", [odd, b.scalar(2.0)])])])])
    if padding in ("border", "reflection"):
        inside = b.op("And", [b.op("Greater", [ix, b.scalar(0.0)]), b.op("Less", [ix, b.scalar(length - 1.0)])])
        ix = b.op("Clip", [ix, b.scalar(0.0), b.scalar(length - 1.0)])
        slope = b.op("Mul", [slope, b.op("Cast", [inside], to=b.dtype)])
    return ix, slope


def _corner(b, ix: str, iy: str, W: int, H: int):
    """(flat index [N, L] int64, in-range as the model's float type) of pixel (ix, iy), integral
    floats; out-of-range pixels point at pixel 0 with weight 0."""
    ok = b.op("And", [b.op("And", [b.op("GreaterOrEqual", [ix, b.scalar(0.0)]), b.op("LessOrEqual", [ix, b.scalar(W - 1.0)])]),
                      b.op("And", [b.op("GreaterOrEqual", [iy, b.scalar(0.0)]), b.op("LessOrEqual", [iy, b.scalar(H - 1.0)])])])
    flat = b.op("Add", [b.op("Mul", [iy, b.scalar(float(W))]), ix])
    flat = b.op("Cast", [b.op("Where", [ok, flat, b.scalar(0.0)])], to=TensorProto.INT64)
    return flat, b.op("Cast", [ok], to=b.dtype)


@register("GridSample")
def grid_sample(b, node, gys):
    x, grid = node.input[:2]
    a = attrs(node)
    mode, padding, align = a.get("mode", "bilinear"), a.get("padding_mode", "zeros"), bool(a.get("align_corners", 0))
    if b.rank(x, node) != 4:
        refuse(node, f"input of rank {b.rank(x, node)}: only 4-D inputs (N, C, H, W) are supported")
    if mode not in ("bilinear", "linear", "nearest"):
        refuse(node, f"mode {mode} is not supported (bilinear and nearest are)")
    H, W = b.shape(x)[2:]
    if H is None or W is None:
        refuse(node, "the input's height and width must be known when exporting")
    g = b.op("Reshape", [gys[0], b.ints([0, 0, -1])])  # [N, C, L]
    gx, gy = (b.op("Reshape", [b.op("Gather", [grid, b.ints(k)], axis=3), b.ints([0, -1])]) for k in (0, 1))  # [N, L]
    ix, sx = _coordinate(b, gx, W, align, padding)
    iy, sy = _coordinate(b, gy, H, align, padding)
    if mode == "nearest":
        corners = [(*_corner(b, b.op("Round", [ix]), b.op("Round", [iy]), W, H), None)]
    else:
        x0, y0 = b.op("Floor", [ix]), b.op("Floor", [iy])
        x1, y1 = b.op("Add", [x0, b.scalar(1.0)]), b.op("Add", [y0, b.scalar(1.0)])
        wx1, wy1 = b.op("Sub", [ix, x0]), b.op("Sub", [iy, y0])
        wx0, wy0 = b.op("Sub", [b.scalar(1.0), wx1]), b.op("Sub", [b.scalar(1.0), wy1])
        corners = [(*_corner(b, cx, cy, W, H), b.op("Mul", [wx, wy]))
                   for cx, cy, wx, wy in ((x0, y0, wx0, wy0), (x1, y0, wx1, wy0), (x0, y1, wx0, wy1), (x1, y1, wx1, wy1))]
    out = [None, None]
    flat_x = b.op("Reshape", [x, b.ints([0, 0, -1])])  # [N, C, H*W]
    if b.needs(x):
        idx = b.op("Concat", [k for k, _, _ in corners], axis=1)
        weights = [ok if w is None else b.op("Mul", [w, ok]) for _, ok, w in corners]
        upd = b.op("Concat", [b.op("Mul", [g, b.unsqueeze(w, [1])]) for w in weights], axis=2)
        shape = b.op("Shape", [upd])
        total = b.scatter_add("ScatterElements", b.zeros_like(flat_x), b.op("Expand", [b.unsqueeze(idx, [1]), shape]), upd, axis=2)
        out[0] = b.reshape_like(total, x)
    if b.needs(grid) and mode != "nearest":
        shape = b.op("Shape", [g])
        v = [b.op("Mul", [b.op("GatherElements", [flat_x, b.op("Expand", [b.unsqueeze(k, [1]), shape])], axis=2), b.unsqueeze(ok, [1])])
             for k, ok, _ in corners]
        wx0u, wx1u, wy0u, wy1u = (b.unsqueeze(t, [1]) for t in (wx0, wx1, wy0, wy1))
        dx = b.op("Add", [b.op("Mul", [wy0u, b.op("Sub", [v[1], v[0]])]), b.op("Mul", [wy1u, b.op("Sub", [v[3], v[2]])])])
        dy = b.op("Add", [b.op("Mul", [wx0u, b.op("Sub", [v[2], v[0]])]), b.op("Mul", [wx1u, b.op("Sub", [v[3], v[1]])])])
        gx_total = b.op("Mul", [b.reduce("ReduceSum", b.op("Mul", [g, dx]), [1], keepdims=0), sx])
        gy_total = b.op("Mul", [b.reduce("ReduceSum", b.op("Mul", [g, dy]), [1], keepdims=0), sy])
        both = b.op("Concat", [b.unsqueeze(gx_total, [2]), b.unsqueeze(gy_total, [2])], axis=2)  # [N, L, 2]
        out[1] = b.reshape_like(both, grid)
    elif b.needs(grid):
        out[1] = b.zeros_like(grid)
    return out


@register("AffineGrid")
def affine_grid(b, node, gys):
    """grid[n, h, w] = theta[n] @ (x_w, y_h, 1) (opset 20; PyTorch's affine_grid, the grid of a
    spatial transformer): linear in theta, so theta's gradient is the output gradient [N, H*W, 2]
    transposed times that base grid [H*W, 3], a constant of the output's height and width."""
    shape = b.shape(node.output[0])
    if shape is None or len(shape) != 4 or None in shape[1:3]:
        refuse(node, "only 2-D grids [N, H, W, 2] of a height and width known when exporting are supported")
    H, W = shape[1:3]
    align = bool(attrs(node).get("align_corners", 0))
    if align and 1 in (H, W):  # -1 + 2 i / (n - 1) at n = 1: the spec divides by zero
        refuse(node, "align_corners=1 with an output height or width of 1 is not defined (the spec divides by zero; "
                     "ONNX Runtime's forward takes +1 there, the ONNX reference -1, PyTorch 0)")

    def axis(n: int) -> np.ndarray:
        if align:
            return np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1)
        return (2.0 * np.arange(n) + 1.0) / n - 1.0

    ys, xs = np.meshgrid(axis(H), axis(W), indexing="ij")
    base = np.stack([xs.ravel(), ys.ravel(), np.ones(H * W)], axis=1).astype(b.np_dtype)  # [H*W, 3]
    g = b.op("Transpose", [b.op("Reshape", [gys[0], b.ints([0, H * W, 2])])], perm=[0, 2, 1])
    return [b.op("MatMul", [g, b.const(base)]), None]
