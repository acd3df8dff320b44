"""Resize and Upsample: linear in x, one axis at a time, so the VJP applies the transpose of
each axis' interpolation matrix. The matrices are built here from the op's attributes and the
static sizes, following the ONNX definition (coordinate transform, then the nearest, linear or
cubic taps, antialiased when downsampling if asked, with edge clamping)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from ..errors import UnsupportedModelError
from ..protos import attrs, describe
from . import register
from .pool import channel_bank


def _source_coords(out_len, in_len, scale, coord, roi):
    y = np.arange(out_len, dtype=np.float64)
    # length_resized: the output's length (an integer, which keep_aspect_ratio_policy's one scale
    # need not give exactly: 7 x 12/7 -> 12); half_pixel_symmetric reads the unrounded one too.
    length = out_len
    if coord == "half_pixel":
        return (y + 0.5) / scale - 0.5
    if coord == "half_pixel_symmetric":
        offset = in_len / 2 * (1 - out_len / (scale * in_len))
        return offset + (y + 0.5) / scale - 0.5
    if coord == "pytorch_half_pixel":
        return (y + 0.5) / scale - 0.5 if length > 1 else np.zeros(out_len)  # the spec's 0 (onnx.reference: -0.5)
    if coord == "align_corners":
        return y * (in_len - 1) / (length - 1) if length != 1 else np.zeros(out_len)
    if coord == "asymmetric":
        return y / scale
    if coord == "tf_half_pixel_for_nn":  # (Resize-11 and 12; tf2onnx writes it for TensorFlow's nearest)
        return (y + 0.5) / scale
    if coord == "tf_crop_and_resize":
        lo, hi = roi
        if length > 1:
            x = y * (hi - lo) * (in_len - 1) / (length - 1)
        else:
            x = np.full(out_len, (hi - lo) * (in_len - 1) / 2)
        return x + lo * (in_len - 1)
    raise ValueError(f"coordinate_transformation_mode '{coord}'")


# Transforms that read the resized length: with scales, ONNX defines it as scale * input length,
# but ONNX Runtime's forward uses the rounded output length (and copies when it equals the input
# length), so where scale * length is fractional a gradient by the definition would not match the
# forward that runs (measured: 10% to 136% relative error). Refused there; sizes are exact.
_LENGTH_MODES = ("align_corners", "pytorch_half_pixel", "tf_crop_and_resize", "half_pixel_symmetric")


def _cubic(t, a):
    t = np.abs(t)
    return np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                    np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))


class AmbiguousRounding(ValueError):
    """Nearest source indices that float rounding decides (see _nearest_indices)."""


def _coords(out_len, in_len, scale32, exact, coord, roi, how) -> list[Fraction]:
    """Source coordinates, as exact fractions of the values one way of computing them gives:
    "exact" in rational arithmetic from the exact scale; "div32" in float32 in ONNX Runtime's
    order of operations; "recip32" the same with each division by a loop constant turned into a
    product with its reciprocal (as optimising compilers and GPU kernels do); "div64" in
    float64 from the float32 scale (as the ONNX reference does)."""
    y = list(range(out_len))
    if how == "exact":
        s, half, n, m = exact, Fraction(1, 2), in_len, out_len
        lo, hi = Fraction(float(np.float32(roi[0]))), Fraction(float(np.float32(roi[1])))
        fn = {"half_pixel": lambda v: (v + half) / s - half,
              "pytorch_half_pixel": lambda v: (v + half) / s - half if m > 1 else Fraction(0),
              "asymmetric": lambda v: v / s,
              "tf_half_pixel_for_nn": lambda v: (v + half) / s,
              "align_corners": lambda v: Fraction(v * (n - 1), m - 1) if m != 1 else Fraction(0),
              "tf_crop_and_resize": lambda v: (lo * (n - 1) + v * (hi - lo) * (n - 1) / (m - 1)) if m > 1
              else (lo + hi) * (n - 1) / 2,
              "half_pixel_symmetric": lambda v: Fraction(n, 2) * (1 - m / (s * n)) + (v + half) / s - half}[coord]
        return [fn(Fraction(v)) for v in y]
    t = np.float32 if how != "div64" else np.float64
    v, half, n, m = np.arange(out_len, dtype=t), t(0.5), t(in_len), t(out_len)
    sc, lo, hi = t(scale32), t(np.float32(roi[0])), t(np.float32(roi[1]))
    div = (lambda a, d: a * (t(1) / d)) if how == "recip32" else (lambda a, d: a / d)
    if coord in ("half_pixel", "pytorch_half_pixel"):
        x = div(v + half, sc) - half if coord == "half_pixel" or out_len > 1 else np.zeros(out_len, t)
    elif coord == "asymmetric":
        x = div(v, sc)
    elif coord == "tf_half_pixel_for_nn":
        x = div(v + half, sc)
    elif coord == "align_corners":
        x = div(v * (n - t(1)), m - t(1)) if out_len != 1 else np.zeros(out_len, t)
    elif coord == "tf_crop_and_resize":
        x = (lo * (n - t(1)) + div(v * (hi - lo) * (n - t(1)), m - t(1)) if out_len > 1
             else np.full(out_len, t(0.5 * (float(lo) + float(hi)) * (in_len - 1))))
    elif coord == "half_pixel_symmetric":
        offset = n / t(2) * (t(1) - m / (sc * n))
        x = float(offset) + div(v.astype(np.float64) + 0.5, float(sc)) - 0.5  # (ONNX Runtime: double here)
    else:
        raise ValueError(f"coordinate_transformation_mode '{coord}'")
    return [Fraction(float(a)) for a in np.asarray(x, t)]


def _nearest_indices(out_len, in_len, scale32, exact, spec, roi) -> np.ndarray:
    """The input index each output reads in a nearest resize. Where the exact coordinate lies on
    a rounding boundary (or within rounding error of it: 3.5 / 0.7 - 0.5 is 4.5 or 4.50000009),
    the index depends on how the runtime computes the coordinate, and runtimes differ (ONNX
    Runtime's CPU kernel does not always agree with float32 division itself): every way in
    `_coords` must give the same index, else AmbiguousRounding names the positions."""
    nm, down = spec["nearest_mode"], exact < 1
    maps = []
    for how in ("exact", "div32", "recip32", "div64"):
        idx = []
        for x in _coords(out_len, in_len, scale32, exact, spec["coord"], roi, how):
            b = x.numerator // x.denominator
            frac = x - b
            if nm == "simple":  # before opset 11: ceil when downsampling, else truncation
                i = (b if frac == 0 else b + 1) if down else b
            elif nm in ("round_prefer_floor", "round_prefer_ceil"):
                half = Fraction(1, 2)
                i = b if (frac < half or (frac == half and nm == "round_prefer_floor")) else b + 1
            elif nm == "floor":
                i = b
            else:
                i = b if frac == 0 else b + 1
            idx.append(i)
        maps.append(np.asarray(idx, dtype=np.int64))
    differ = sorted({int(k) for mp in maps[1:] for k in np.nonzero(mp != maps[0])[0]})
    if differ:
        raise AmbiguousRounding(f"the nearest input of output position(s) {differ[:4]} on an axis of length "
                                f"{out_len} (from {in_len}) depends on float rounding: its source coordinate falls on "
                                f"a rounding boundary of nearest_mode '{nm}', where runtimes differ")
    return maps[0]


def _antialias_taps(x: np.ndarray, scale: float, spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """Antialiased linear / cubic taps (opset 18): downsampling by `scale` < 1 stretches the
    kernel by 1 / scale (its footprint grows to cover it), each row's weights normalised to 1;
    at scale >= 1 the plain kernel. The window sits left of x at integer x (ONNX Runtime and the
    reference agree)."""
    s = min(scale, 1.0)
    base = np.where(x == np.floor(x), x - 1, np.floor(x))
    ratio = (x - base)[:, None]
    if spec["mode"] == "linear":
        offsets = np.arange(int(np.floor(-1 / s) + 1), 1 - int(np.floor(-1 / s) + 1) + 1)  # start .. 1 - start
        weights = np.clip(1 - np.abs((offsets - ratio) * s), 0, 1)
    else:
        offsets = np.arange(int(np.floor(-2 / s) + 1), 2 - int(np.floor(-2 / s) + 1))
        weights = _cubic((offsets - ratio) * s, spec["cubic_coeff_a"])
    return base[:, None] + offsets, weights / weights.sum(axis=1, keepdims=True)


def axis_matrix(in_len: int, out_len: int, scale: float, spec: dict, roi=(0.0, 1.0), scale32=None,
                exact: Fraction | None = None) -> np.ndarray:
    """M [out_len, in_len] with resized = M @ x along one axis. For the nearest modes, `scale32`
    is the float32 scale runtimes compute with and `exact` the scale as a fraction (defaults:
    `scale` rounded to float32, and that value)."""
    m = np.zeros((out_len, in_len))
    rows = np.arange(out_len)
    x = None
    if spec["mode"] == "nearest":
        scale32 = np.float32(scale) if scale32 is None else np.float32(scale32)
        exact = Fraction(float(scale32)) if exact is None else exact
        taps, weights = _nearest_indices(out_len, in_len, scale32, exact, spec, roi)[:, None], np.ones((out_len, 1))
    else:
        x = _source_coords(out_len, in_len, scale, spec["coord"], roi)
        base = np.floor(x)
        if spec.get("antialias"):
            taps, weights = _antialias_taps(x, scale, spec)
            if spec["exclude_outside"]:
                weights = np.where((taps < 0) | (taps > in_len - 1), 0.0, weights)
                total = weights.sum(axis=1, keepdims=True)
                weights = weights / np.where(total == 0, 1.0, total)
        elif spec["mode"] == "linear":
            r = (x - base)[:, None]
            taps, weights = base[:, None] + np.arange(2), np.concatenate([1 - r, r], axis=1)
        else:  # cubic
            r = (x - base)[:, None]
            taps = base[:, None] + np.arange(-1, 3)
            weights = _cubic(r - np.arange(-1, 3), spec["cubic_coeff_a"])
            if spec["exclude_outside"]:
                weights = np.where((taps < 0) | (taps > in_len - 1), 0.0, weights)
                weights = weights / weights.sum(axis=1, keepdims=True)
    taps = np.clip(taps, 0, in_len - 1).astype(np.int64)
    np.add.at(m, (np.broadcast_to(rows[:, None], taps.shape), taps), weights)
    if spec["coord"] == "tf_crop_and_resize":  # outside the crop: extrapolation_value, a constant
        if x is None:  # (nearest: where ONNX Runtime's float32 coordinate falls)
            x = np.array([float(c) for c in _coords(out_len, in_len, scale32, exact, spec["coord"], roi, "div32")])
        m[(x < 0) | (x > in_len - 1)] = 0.0
    return m


def _spec(b, node) -> dict:
    a = attrs(node)
    mode = a.get("mode", "nearest")
    if node.op_type == "Upsample" or b.opset < 11:
        if mode == "bilinear":
            mode = "linear"
        if mode not in ("nearest", "linear"):
            raise UnsupportedModelError(f"{describe(node)}: mode '{mode}' is not supported")
        return {"mode": mode, "coord": "asymmetric", "nearest_mode": "simple"}
    return {"mode": mode, "coord": a.get("coordinate_transformation_mode", "half_pixel"),
            "antialias": bool(a.get("antialias", 0)) and mode != "nearest",
            "nearest_mode": a.get("nearest_mode", "round_prefer_floor"),
            "cubic_coeff_a": a.get("cubic_coeff_a", -0.75), "exclude_outside": a.get("exclude_outside", 0)}


DYNAMIC = "dynamic"  # sizes computed in the graph (e.g. from Shape(x) under a dynamic batch)


def _inputs(b, node):
    """(scales, sizes, roi, axes) as numpy arrays or None, for every form of the op; sizes may
    be DYNAMIC."""
    def value(i):
        name = node.input[i] if len(node.input) > i else ""
        if not name:
            return None
        v = b.value(name)
        if v is None and i == 3 and b.opset >= 11:
            return DYNAMIC
        if v is None:
            raise UnsupportedModelError(f"{describe(node)}: its scales, sizes and roi must be constants "
                                        "to differentiate it")
        return v.astype(np.float64) if v.size else None

    a = attrs(node)
    if node.op_type == "Upsample" and b.opset < 9:
        return np.asarray(a["scales"], np.float64), None, None, None
    if node.op_type == "Upsample" or b.opset < 11:
        return value(1), None, None, None
    axes = a.get("axes")
    return value(2), value(3), value(1), None if axes is None else list(axes)


@register("Resize", "Upsample")
def resize(b, node, gys):
    x, y = node.input[0], node.output[0]
    rank = b.rank(x, node)
    spec = _spec(b, node)
    scales, sizes, roi, axes = _inputs(b, node)
    axes = [ax % rank for ax in axes] if axes is not None else list(range(rank))
    full_roi = {ax: (0.0, 1.0) for ax in range(rank)}
    if roi is not None and spec["coord"] == "tf_crop_and_resize":
        k = len(roi) // 2
        full_roi.update({ax: (roi[i], roi[k + i]) for i, ax in enumerate(axes)})
    # Axes left as they are (scale 1, or sizes equal to a dim unknown on both sides: the batch)
    # need no matrix and no static size.
    sx, sy = b.shapes.get(x) or [None] * rank, b.shapes.get(y) or [None] * rank
    policy = attrs(node).get("keep_aspect_ratio_policy", "stretch") if sizes is not None else "stretch"
    if isinstance(sizes, str):  # sizes computed in the graph: each axis is kept or has static lengths
        if policy != "stretch":
            raise UnsupportedModelError(f"{describe(node)}: keep_aspect_ratio_policy '{policy}' needs constant sizes "
                                        "to differentiate it")
        moved, unproven = [], []
        for ax in axes:
            if sx[ax] is not None and sy[ax] is not None:
                if sx[ax] != sy[ax]:
                    moved.append(ax)
            elif sx[ax] is None and sy[ax] is not None:
                raise UnsupportedModelError(f"{describe(node)}: axis {ax} goes from a length known only at run time to "
                                            f"{sy[ax]}, and its interpolation weights depend on that length; export "
                                            "the model with a fixed input size")
            elif not b.same_dim(x, ax, y, ax):
                unproven.append(ax)
        if unproven:  # (all of them: the batch's axis alone misled, where the sizes came from another tensor)
            raise UnsupportedModelError(f"{describe(node)}: its sizes are computed in the graph and the length of axes "
                                        f"{unproven} is not known to stay the same or be static; give constant sizes")
    elif scales is not None:
        moved = [ax for ax, s in zip(axes, scales.tolist()) if s != 1.0 or full_roi[ax] != (0.0, 1.0)]
    elif policy != "stretch":  # one scale for every listed axis, batch and channels included
        moved = list(axes)
    else:
        moved = [ax for ax in axes if not (sx[ax] is None and sy[ax] is None)]
    if scales is not None and any(sx[ax] is None or sy[ax] is None for ax in moved):
        block = _block_sum(b, node, gys[0], x, dict(zip(axes, scales.tolist())), moved, spec, full_roi, rank)
        if block is not None:
            return [block] + [None] * (len(node.input) - 1)
    shape_in = b.static_shape(x, node, dims=moved)
    shape_out = b.static_shape(y, node, dims=moved)
    full_scale = {ax: 1.0 for ax in range(rank)}
    scale32, exact = {}, {}  # the float32 scale runtimes compute with, and the scale as a fraction (nearest)
    if scales is not None:
        full_scale.update(zip(axes, scales.tolist()))
        runtime = {ax: int(np.float32(full_scale[ax]) * np.float32(shape_in[ax])) for ax in moved}
        if any(runtime[ax] != shape_out[ax] for ax in moved):  # (ONNX Runtime's float32 product: 0.7 x 10 = 7)
            raise UnsupportedModelError(
                f"{describe(node)}: ONNX shape inference gives it output lengths {[shape_out[ax] for ax in moved]}, "
                f"ONNX Runtime's forward {[runtime[ax] for ax in moved]} (scales {[round(full_scale[ax], 6) for ax in moved]} "
                "times the input's lengths, rounded in float64 and in float32); give sizes instead of scales")
        if moved and all(shape_out[ax] == shape_in[ax] for ax in moved):
            # ONNX Runtime copies the input when the output shape is the input's, whatever the
            # scales; the ONNX definition interpolates (measured: 30% to 86% relative error)
            raise UnsupportedModelError(
                f"{describe(node)}: its scales {[round(full_scale[ax], 6) for ax in moved]} leave the shape as it is "
                f"({[shape_in[ax] for ax in moved]}), where ONNX Runtime copies the input and the ONNX definition "
                "resamples it; give scales of 1, or sizes")
        if spec["coord"] in _LENGTH_MODES:
            for ax in moved:
                length = full_scale[ax] * shape_in[ax]
                if abs(length - round(length)) > 1e-5 * length:  # float32 scales: 5 x 0.6 = 3.0000001
                    raise UnsupportedModelError(
                        f"{describe(node)}: scale {full_scale[ax]:g} gives a fractional resized length "
                        f"({shape_in[ax]} x {full_scale[ax]:g} = {length:g}) under coordinate_transformation_mode "
                        f"'{spec['coord']}', where ONNX Runtime's forward departs from the ONNX definition; "
                        "give sizes instead of scales")
    else:  # from sizes: output / input, or the policy's one scale, min or max of sizes / input over the axes
        if policy != "stretch":
            fractions = [Fraction(int(n), shape_in[ax]) for n, ax in zip(sizes.tolist(), axes)]
            exact.update({ax: (min if policy == "not_larger" else max)(fractions) for ax in axes})
        else:
            exact.update({ax: Fraction(shape_out[ax], shape_in[ax]) for ax in moved if shape_in[ax]})
        # (both roundings are correct ones of the same fraction, as runtimes divide the lengths)
        full_scale.update({ax: float(f) for ax, f in exact.items()})
        scale32.update({ax: np.float32(f.numerator) / np.float32(f.denominator) for ax, f in exact.items()})
    if any(shape_out[ax] == 0 for ax in moved):  # an empty output: x gets no gradient (and ONNX
        return [b.zeros_like(x)] + [None] * (len(node.input) - 1)  # Runtime's empty MatMul is not zeroed)
    g = gys[0]
    for ax in moved:
        try:
            m = axis_matrix(shape_in[ax], shape_out[ax], full_scale[ax], spec, full_roi[ax], scale32.get(ax), exact.get(ax))
        except AmbiguousRounding as e:
            raise UnsupportedModelError(f"{describe(node)}: {e}; give a whole-number scale or its inverse "
                                        "(2, 0.5), or another nearest_mode") from None
        except ValueError as e:
            raise UnsupportedModelError(f"{describe(node)}: {e} is not supported") from None
        if m.shape[0] == m.shape[1] and np.array_equal(m, np.eye(m.shape[0])):
            continue
        g = b.adjoint_along(g, m.astype(b.np_dtype), ax, rank)
    return [g] + [None] * (len(node.input) - 1)


def _block_sum(b, node, g, x, scales: dict, moved: list, spec: dict, roi: dict, rank: int):
    """Where lengths are known only at run time (a dynamic image size) and the resize copies each
    input element into a block (nearest, integer scales k: PyTorch's asymmetric + floor, or
    half_pixel with rounding; HRNet's upsampling), its gradient sums each block: a depthwise Conv
    with a kernel of ones and strides k. The block form is checked on the axis matrices of
    lengths 1 to 8 (the same function as at any length). None where it does not apply."""
    ks = {ax: scales.get(ax, 1.0) for ax in range(rank)}
    channels = (b.shapes.get(x) or [None] * rank)[1] if rank > 1 else None
    if rank < 3 or rank > 5 or 0 in moved or 1 in moved or channels is None or b.np_dtype == np.float64:
        return None
    if any(ks[ax] != int(ks[ax]) or ks[ax] < 1 or roi[ax] != (0.0, 1.0) for ax in moved):
        return None
    for ax in moved:
        k = int(ks[ax])
        for n in range(1, 9):
            try:
                if not np.array_equal(axis_matrix(n, n * k, float(k), spec), np.kron(np.eye(n), np.ones((k, 1)))):
                    return None
            except AmbiguousRounding:  # (then the static path names it)
                return None
    kernel = [int(ks[ax]) for ax in range(2, rank)]
    return b.op("Conv", [g, channel_bank(b, np.ones([1, 1] + kernel), channels)], kernel_shape=kernel, strides=kernel,
                group=channels)
