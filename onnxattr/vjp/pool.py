"""Pooling: MaxPool routes to the first maximum (DeconvNet's switches); AveragePool spreads.

MaxPool's gradient goes to the elements its Indices output names: scattered with add-reduction
where windows overlap, by MaxUnpool where they cannot; before opset 16, and for AveragePool, one
depthwise ConvTranspose adds up the contributions of overlapping windows, then a crop from padded
to input coordinates.
"""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedModelError
from ..protos import attrs, describe
from . import register
from .linear import same_to_input, transposed_to_input, window


def _geometry(b, node):
    a = attrs(node)
    kernel = list(a["kernel_shape"])
    n = len(kernel)
    x, y = node.input[0], node.output[0]
    strides, dil, pads = window(b, node, x, kernel)
    xs = b.static_shape(x, node, dims=range(1, 2 + n))
    ys = b.static_shape(y, node, dims=range(1, 2 + n))
    return kernel, strides, dil, pads, xs[1], xs[2:], ys[2:]


def channel_bank(b, bank: np.ndarray, channels: int) -> str:
    """A depthwise kernel bank [channels * K, 1, *kernel] from one channel's [K, 1, *kernel]:
    tiled in the graph, so the file holds it once."""
    return b.op("Tile", [b.const(bank.astype(b.np_dtype)), b.ints([channels] + [1] * (bank.ndim - 1))])


def _spread(b, g, kernel_bank, channels, kernel, strides, dil, pads, size, out):
    """Depthwise ConvTranspose of `g` [N, C*K or C, *out] with a per-channel bank of kernels,
    cropped to the input's coordinates [pads_begin, pads_begin + size)."""
    n = len(kernel)
    if b.np_dtype == np.float64:  # ONNX Runtime has no double ConvTranspose
        return _spread_by_offsets(b, g, kernel_bank, channels, kernel, strides, dil, pads, size, out)
    w = channel_bank(b, kernel_bank, channels)
    full = b.op("ConvTranspose", [g, w], strides=strides, dilations=dil, group=channels, kernel_shape=kernel)
    lengths = [(out[i] - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 for i in range(n)]
    return b.crop(full, pads[:n], size, lengths)


def _spread_by_offsets(b, g, kernel_bank, channels, kernel, strides, dil, pads, size, out):
    """`_spread` from element-wise ops, Pads and Reshapes only: for each kernel offset, the
    gradients routed through it are spread out by the strides (zeros between), shifted to the
    offset's input positions and summed."""
    n, kin = len(kernel), kernel_bank.shape[0]
    if kin > 1:
        g = b.op("Reshape", [g, b.ints([0, channels, kin] + list(out))])
    terms = []
    for q in np.ndindex(*kernel):
        (i,) = np.flatnonzero(kernel_bank[(slice(None), 0) + q]) if kin > 1 else (0,)
        t = b.op("Gather", [g, b.ints(int(i))], axis=2) if kin > 1 else g
        if kernel_bank[(i, 0) + q] != 1:
            t = b.op("Mul", [t, b.scalar(float(kernel_bank[(i, 0) + q]))])
        if any(s > 1 for s in strides):
            t = b.op("Reshape", [t, b.ints([0, channels] + [d for o in out for d in (o, 1)])])
            t = b.pad(t, [0] * (2 + 2 * n) + [0, 0] + [d for s in strides for d in (0, s - 1)])
            t = b.op("Reshape", [t, b.ints([0, channels] + [o * s for o, s in zip(out, strides)])])
        shift = [q[a] * dil[a] - pads[a] for a in range(n)]
        t = b.pad(t, [0, 0] + [max(v, 0) for v in shift] + [0, 0]
                  + [max(0, size[a] + max(-shift[a], 0) - out[a] * strides[a] - max(shift[a], 0)) for a in range(n)])
        terms.append(b.slice(t, [max(-v, 0) for v in shift], [max(-v, 0) + size[a] for a, v in enumerate(shift)],
                             list(range(2, 2 + n))))
    return b.add_all(terms)


def _divmod(b, q: str, d: int):
    quot = b.op("Div", [q, b.ints(d)])
    return quot, b.op("Sub", [q, b.op("Mul", [quot, b.ints(d)])])


def _along(values, axis: int, rank: int) -> np.ndarray:
    shape = [1] * rank
    shape[axis] = len(values)
    return np.asarray(values, dtype=np.int64).reshape(shape)


def unpool_is_exact(b, kernel, strides, dil) -> bool:
    """MaxUnpool writes each gradient at its index without adding: exact when no two windows
    share an element (stride >= dilated kernel extent on every axis, as in VGG's 2x2 stride-2
    pools). ONNX Runtime's CPU kernel is float32 only; its CUDA provider has none. On the CPU:
    [8, 64, 112, 112] 2x2 stride 2, MaxPool + gradient 18.3 ms against 26.7 with the scatter-add;
    VGG-11 saliency 839 against 918 ms at batch 8 (2.75x against 3.00x its forward), the same
    attributions bit for bit."""
    return (b.tune_for == "cpu" and b.opset >= 9 and b.np_dtype == np.float32
            and all(s >= (k - 1) * d + 1 for k, s, d in zip(kernel, strides, dil)))


def _unpool_pads(kernel, strides, size, out):
    """MaxUnpool's pads, or None: the output shape is given as an input, but ONNX Runtime still
    requires the shape its attributes imply, (out - 1) * stride + kernel - pads, to fit in it,
    with each pad smaller than the kernel. The excess is at most 2 (kernel - 1) where no window
    starts in the end padding (ONNX Runtime's rule; the Builder refuses models where ONNX's shape
    inference counts such a window), so None is only a guard."""
    begins, ends = [], []
    for k, s, n, o in zip(kernel, strides, size, out):
        excess = max(0, (o - 1) * s + k - n)
        begins.append(min(k - 1, excess))
        ends.append(excess - begins[-1])
        if ends[-1] > k - 1:
            return None
    return begins + ends


@register("MaxPool")
def max_pool(b, node, gys):
    a = attrs(node)
    if a.get("storage_order", 0):
        raise UnsupportedModelError(f"{describe(node)}: storage_order=1 is not supported")
    g, known = gys[0], (b.shape(node.input[0]) or [None, None])[2:]
    if None in known or not known:
        # a spatial size known only at run time (pads too, with auto_pad SAME): the scatter-add reads none
        if b.opset < 16:
            raise UnsupportedModelError(f"{describe(node)}: its input's size is known only at run time, where the "
                                        "gradient needs ScatterElements with reduction (opset 16; the model has "
                                        f"{b.opset}): export at opset 16 or later, or with a fixed size")
        if any(d > 1 for d in a.get("dilations", [])):  # a dilated window may hold padding only (see
            # _without_empty_windows): ONNX Runtime's output there is the lowest float; no gradient passes
            lowest = b.scalar(float(np.finfo(b.np_dtype).min))
            g = b.op("Where", [b.op("Equal", [node.output[0], lowest]), b.scalar(0.0), g])
        return [_scatter_switches(b, node, g)]
    kernel, strides, dil, pads, channels, size, out = _geometry(b, node)
    n = len(kernel)
    g = _without_empty_windows(b, g, kernel, strides, dil, pads, size, out)
    if b.opset < 8:
        return [_max_pool_by_value(b, node, g, kernel, strides, dil, pads, channels, size, out)]
    idx = node.output[1] if len(node.output) > 1 and node.output[1] else b.op_like(node, [node.input[0]], 2)[1]
    unpool_pads = _unpool_pads(kernel, strides, size, out) if unpool_is_exact(b, kernel, strides, dil) else None
    if unpool_pads is not None:
        return [b.op("MaxUnpool", [g, idx, b.shape_of(node.input[0])], kernel_shape=kernel, strides=strides,
                     pads=unpool_pads)]
    if b.opset >= 16:
        return [_scatter_switches(b, node, g, idx)]
    # Indices are flat over [N, C, *size]: decode the coordinates of each chosen element.
    _, rem = _divmod(b, idx, int(np.prod(size)))
    local = None
    for i in range(n):
        step = int(np.prod(size[i + 1:]))
        coord = b.op("Div", [rem, b.ints(step)]) if step > 1 else rem
        if i > 0:
            coord = _divmod(b, coord, size[i])[1]
        starts = _along([o * strides[i] - pads[i] for o in range(out[i])], 2 + i, n + 2)
        r = b.op("Sub", [coord, b.ints(starts)])
        if dil[i] > 1:
            r = b.op("Div", [r, b.ints(dil[i])])
        ks = int(np.prod(kernel[i + 1:]))
        r = b.op("Mul", [r, b.ints(ks)]) if ks > 1 else r
        local = r if local is None else b.op("Add", [local, r])
    k = int(np.prod(kernel))
    onehot = b.mask(b.op("Equal", [b.unsqueeze(local, [2]), b.ints(_along(range(k), 2, n + 3))]))
    routed = b.op("Mul", [onehot, b.unsqueeze(g, [2])])
    routed = b.op("Reshape", [routed, b.ints([0, channels * k] + list(out))])
    bank = np.eye(k, dtype=b.np_dtype).reshape([k, 1] + kernel)
    return [_spread(b, routed, bank, channels, kernel, strides, dil, pads, size, out)]


def _without_empty_windows(b, g, kernel, strides, dil, pads, size, out):
    """g with 0 where a window holds no input element, only padding (a dilated window over a short
    axis: PyTorch's MaxPool2d(2, dilation=2, padding=1) on a length-1 axis): that output is the
    lowest float whatever x is, and ONNX Runtime's Indices there are garbage (-4, -1), which the
    scatter would read as the last elements."""
    n = len(kernel)
    live = [np.array(_window_counts(out[i], kernel[i], strides[i], dil[i], pads[i], pads[n + i], size[i], False)) > 0
            for i in range(n)]
    if all(v.all() for v in live):
        return g
    mask = np.ones(out, dtype=b.np_dtype)
    for i, v in enumerate(live):
        mask *= v.reshape([-1 if k == i else 1 for k in range(n)])
    return b.op("Mul", [g, b.const(mask.reshape([1, 1] + list(out)))])


def _scatter_switches(b, node, g, idx=None):
    """MaxPool's gradient as a scatter-add at the flat Indices (opset 16: ScatterElements with
    reduction): overlapping windows add up."""
    x = node.input[0]
    if idx is None:
        idx = node.output[1] if len(node.output) > 1 and node.output[1] else b.op_like(node, [x], 2)[1]
    flat = b.op("Reshape", [b.zeros_like(x), b.ints([-1])])
    spread = b.scatter_add("ScatterElements", flat, b.op("Reshape", [idx, b.ints([-1])]),
                           b.op("Reshape", [g, b.ints([-1])]), axis=0)
    return b.reshape_like(spread, x)


def _max_pool_by_value(b, node, g, kernel, strides, dil, pads, channels, size, out):
    """MaxPool-1 has no Indices output: find each window's first maximum by value. The j-th
    element of every window is a depthwise Conv with a one-hot kernel over the input padded with
    the lowest float; the first j whose element equals the window's maximum takes the gradient."""
    n, k = len(kernel), int(np.prod(kernel))
    lengths = [(out[i] - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 for i in range(n)]
    ends = [max(pads[n + i], lengths[i] - pads[i] - size[i]) for i in range(n)]
    lowest = float(np.finfo(np.float32).min)  # Pad-2 takes its value as a float32 attribute
    padded = b.op("Pad", [node.input[0]], pads=[0, 0] + list(pads[:n]) + [0, 0] + ends, value=lowest)
    routed, taken = [], None
    for j in range(k):
        onehot = np.zeros([channels, 1, k], dtype=b.np_dtype)
        onehot[:, 0, j] = 1.0
        elem = b.op("Conv", [padded, b.const(onehot.reshape([channels, 1] + kernel))], group=channels,
                    strides=strides, dilations=dil, kernel_shape=kernel)
        b.types[elem] = b.dtype
        hit = b.equal(elem, node.output[0])
        if taken is not None:
            hit = b.op("And", [hit, b.op("Not", [taken])])
        taken = hit if taken is None else b.op("Or", [taken, hit])
        routed.append(b.unsqueeze(b.op("Mul", [g, b.mask(hit)]), [2]))
    stacked = b.op("Reshape", [b.op("Concat", routed, axis=2), b.ints([0, channels * k] + list(out))])
    bank = np.eye(k, dtype=b.np_dtype).reshape([k, 1] + kernel)
    return _spread(b, stacked, bank, channels, kernel, strides, dil, pads, size, out)


def _window_counts(o_len, k, s, d, pb, pe, size, include_pad):
    counts = []
    for o in range(o_len):
        pos = [o * s - pb + j * d for j in range(k)]
        hi = size + pe if include_pad else size
        lo = -pb if include_pad else 0
        counts.append(sum(lo <= p < hi for p in pos))
    return counts


@register("AveragePool")
def average_pool(b, node, gys):
    dynamic = _average_pool_dynamic(b, node, gys[0])
    if dynamic is not None:
        return [dynamic]
    kernel, strides, dil, pads, channels, size, out = _geometry(b, node)
    n = len(kernel)
    include = attrs(node).get("count_include_pad", 0)
    div = np.ones(out, dtype=np.float64)
    for i in range(n):
        c = _window_counts(out[i], kernel[i], strides[i], dil[i], pads[i], pads[n + i], size[i], include)
        div = div * np.asarray(c, dtype=np.float64).reshape([-1] + [1] * (n - 1 - i))
    if np.all(div == div.flat[0]):
        scaled = b.divide_by_count(gys[0], div.flat[0])
    else:
        scaled = b.op("Mul", [gys[0], b.const((1.0 / div).astype(b.np_dtype))])
    bank = np.ones([1, 1] + kernel, dtype=b.np_dtype)
    return [_spread(b, scaled, bank, channels, kernel, strides, dil, pads, size, out)]


def _average_pool_dynamic(b, node, g):
    """AveragePool's gradient where the input's spatial size is known only at run time: g / count
    spread by a depthwise ConvTranspose with a bank of ones, sized to the input at run time. Where
    every window counts the same elements (no ceil_mode; zero pads, or pads counted) the count is
    the kernel's size, else `_run_time_counts`; auto_pad SAME (without dilations) from a Conv of
    ones with that auto_pad. None where the size is known (the static path decides)."""
    a, x = attrs(node), node.input[0]
    shape = b.shape(x) or []
    kernel = list(a["kernel_shape"])
    n = len(kernel)
    if len(shape) != n + 2 or None not in shape[2:] or shape[1] is None:
        return None
    if b.opset < 10 or b.np_dtype != np.float32:
        need = (f"opset 10 (Slice with run-time ends; the model has {b.opset})" if b.opset < 10 else
                f"float32 (its ConvTranspose; the model is {np.dtype(b.np_dtype).name})")
        raise UnsupportedModelError(f"{describe(node)}: its input's size is known only at run time, where the "
                                    f"gradient needs {need}: export with a fixed size")
    if a.get("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER") and any(d > 1 for d in a.get("dilations", [])):
        raise UnsupportedModelError(f"{describe(node)}: auto_pad {a['auto_pad']} with dilations over a size known only "
                                    "at run time is not supported (ONNX Runtime pads by the undilated kernel)")
    channels, include, ceil = shape[1], a.get("count_include_pad", 0), a.get("ceil_mode", 0)
    w = channel_bank(b, np.ones([1, 1] + kernel), channels)
    if a.get("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER") and any(s > 1 for s in a.get("strides", [])):
        # pads from the run-time size (Keras' padding="same"): every window lies within the input
        # and its pads, so a counted pad gives the kernel's size; else a Conv of ones with the
        # pool's auto_pad counts the input's elements each window reads
        if include:
            counts = b.scalar(float(np.prod(kernel)))
        else:
            counts = _count_ones(b, b.slice(b.shape_of(x), [2], [2 + n], [0]), kernel, strides=list(a["strides"]),
                                 auto_pad=a["auto_pad"])
        return same_to_input(b, node, b.op("Div", [g, counts]), w, x, kernel, channels)
    strides, dil, pads = window(b, node, x, kernel)
    if not ceil and (include or not any(pads)):
        scaled = b.divide_by_count(g, float(np.prod(kernel)))
    else:
        counts = _run_time_counts(b, node, kernel, strides, dil, pads, include, ceil)
        scaled = b.op("Div", [g, counts])
    return transposed_to_input(b, scaled, w, x, strides, dil, pads, channels, kernel)


def _count_ones(b, size: str, kernel: list[int], **geometry) -> str:
    """[1, 1, *out]: how many of the ones [1, 1, *size] (a run-time size) each window of a pool's
    `geometry` (strides, pads or auto_pad, dilations) reads: a Conv with a kernel of ones."""
    ones = b.op("Expand", [b.scalar(1.0), b.op("Concat", [b.ints([1, 1]), size], axis=0)])
    return b.op("Conv", [ones, b.const(np.ones([1, 1] + kernel, dtype=b.np_dtype))], kernel_shape=kernel, **geometry)


def _run_time_counts(b, node, kernel, strides, dil, pads, include, ceil):
    """[1, 1, *out]: the number of elements each window averages, as `_window_counts` counts them
    (ONNX Runtime's rule), from the input's run-time size: a Conv with a kernel of ones, with the
    pool's geometry, over ones as long as what is counted (the input; with count_include_pad the
    input and its pads). With ceil_mode, stride - 1 more zeros at the end give the last, partial
    window; ONNX Runtime leaves out a window that would start in the end padding, so the counts
    are cut to the pool's run-time output length (the ConvTranspose then reads as many windows)."""
    n = len(kernel)
    size = b.slice(b.shape_of(node.input[0]), [2], [2 + n], [0])
    if include:
        size = b.op("Add", [size, b.ints([pads[i] + pads[n + i] for i in range(n)])])
        pads = [0] * (2 * n)
    ends = [pads[n + i] + (strides[i] - 1 if ceil else 0) for i in range(n)]
    counts = _count_ones(b, size, kernel, strides=strides, dilations=dil, pads=pads[:n] + ends)
    if ceil:
        out = b.slice(b.shape_of(node.output[0]), [2], [2 + n], [0])
        counts = b.op("Slice", [counts, b.ints([0] * n), out, b.ints(list(range(2, 2 + n)))])
    return counts


@register("GlobalAveragePool")
def global_average_pool(b, node, gys):
    x = node.input[0]
    s = b.shapes.get(x)
    if s is not None and None not in s[2:]:
        return [b.channel_affine(b.expand_like(gys[0], x), 1.0 / float(np.prod(s[2:])), like=x)]
    else:
        dims = b.slice(b.shape_of(x), [2], [np.iinfo(np.int64).max], [0])
        count = b.op("Cast", [b.reduce("ReduceProd", dims, [0], keepdims=0)], to=b.dtype)
    return [b.expand_like(b.op("Div", [gys[0], count]), x)]


def reduce_axes(b, node) -> list[int]:
    """The axes a ReduceSum/ReduceMean node reduces, for either opset form ([]: a no-op)."""
    rank = b.rank(node.input[0], node)
    a = attrs(node)
    if (node.op_type == "ReduceSum" and b.opset >= 13) or b.opset >= 18:
        axes = None
        if len(node.input) > 1 and node.input[1]:
            axes = b.value(node.input[1])
            if axes is None:
                raise UnsupportedModelError(f"{describe(node)}: the axes must be a constant to differentiate it")
    else:
        axes = a.get("axes")
    if axes is None or len(axes) == 0:
        return [] if a.get("noop_with_empty_axes", 0) else list(range(rank))
    return sorted({int(i) % rank for i in np.ravel(axes)})


@register("ReduceSum", "ReduceMean")
def reduce_sum_mean(b, node, gys):
    # Like GlobalAveragePool over `axes`: every reduced element gets g (over the count, for a mean).
    x, g = node.input[0], gys[0]
    axes, rest = reduce_axes(b, node), [None] * (len(node.input) - 1)
    if not axes:
        return [g] + rest
    if not attrs(node).get("keepdims", 1):
        g = b.unsqueeze(g, axes)
    if node.op_type == "ReduceMean":
        s = b.shapes.get(x)
        if s is not None and all(s[i] is not None for i in axes):
            g = b.divide_by_count(g, float(np.prod([s[i] for i in axes])))
        else:
            dims = b.op("Gather", [b.shape_of(x), b.ints(axes)])
            g = b.divide_by_count(g, b.reduce("ReduceProd", dims, [0], keepdims=0))
    return [b.expand_like(g, x)] + rest


@register("GlobalMaxPool")
def global_max_pool(b, node, gys):
    x = node.input[0]
    flat = b.op("Reshape", [x, b.ints([0, 0, -1])])
    first = b.op("ArgMax", [flat], axis=2, keepdims=1)  # ties go to the first maximum
    shape = b.shapes.get(x)
    if (shape is not None and None not in shape[2:]) or b.opset < 11:
        spatial = b.static_shape(x, node, dims=range(2, b.rank(x, node)))[2:]
        positions = b.ints(np.arange(int(np.prod(spatial))))
    else:
        count = b.squeeze(b.slice(b.shape_of(flat), [2], [3], [0]), [0])
        positions = b.op("Range", [b.ints(0), count, b.ints(1)])
    onehot = b.mask(b.op("Equal", [first, positions]))
    routed = b.op("Mul", [onehot, b.op("Reshape", [gys[0], b.ints([0, 0, 1])])])
    return [b.reshape_like(routed, x)]
