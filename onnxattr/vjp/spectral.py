"""STFT (opset 17): an audio model's spectrogram, computed in the graph from the waveform
(torch.stft through torch.export); DFT (torch.fft), below.

Y[n, f, k] = sum_t x[n, f * step + t] w[t] exp(-2 pi i k t / L) is linear in the signal x, so its
gradient is the transposed frame transform: per frame, the output gradient's real and imaginary
parts times the windowed cosines and sines (w cos, -w sin for a real signal's gradient; w sin,
w cos for the imaginary part of a complex one), each frame then added into the samples it
covers (samples after the last frame get none).
Refused by name: a frame step, window or frame length computed at run time, and a window that
depends on the input.
"""

from __future__ import annotations

import numpy as np

from ..protos import attrs
from . import refuse, register


@register("STFT")
def stft(b, node, gys):
    signal, step_name = node.input[:2]
    window = node.input[2] if len(node.input) > 2 else ""
    length_name = node.input[3] if len(node.input) > 3 else ""
    step, w = b.value(step_name), b.value(window) if window else None
    frame = b.value(length_name) if length_name else None
    if step is None or (window and w is None) or (length_name and frame is None):
        refuse(node, "its frame_step, window and frame_length must be constants")
    if window and b.needs(window):
        refuse(node, "its window depends on the input being explained")
    size = int(frame) if frame is not None else len(w)
    w = np.ones(size) if w is None else w.astype(np.float64)
    if len(w) != size:
        refuse(node, f"window of length {len(w)} for frames of {size}")
    bins = size // 2 + 1 if attrs(node).get("onesided", 1) else size
    angle = 2 * np.pi * np.outer(np.arange(bins), np.arange(size)) / size
    cos, sin = w * np.cos(angle), w * np.sin(angle)  # [K, L]
    parts = [np.concatenate([cos, -sin])]  # d(re, im) / d(real part of x)
    shape = b.shape(signal)
    if shape is None or len(shape) != 3 or shape[2] not in (1, 2):
        refuse(node, "only signals [batch, length, 1 or 2] are supported")
    if shape[2] == 2:
        parts.append(np.concatenate([sin, cos]))  # d(re, im) / d(imaginary part of x)
    # per frame: [N, F, 2K] (real parts, then imaginary) @ [2K, L] kernels -> [N, F, L], then each
    # frame added into the samples it covers (ScatterElements with additions: ONNX Runtime has no
    # double ConvTranspose, and a float64 STFT model must load)
    g = b.op("Reshape", [b.op("Transpose", [gys[0]], perm=[0, 1, 3, 2]), b.ints([0, 0, 2 * bins])])
    frames = b.op("Gather", [b.op("Shape", [gys[0]]), b.ints([1])])
    starts = b.op("Mul", [b.op("Range", [b.ints(0), b.squeeze(frames, [0]), b.ints(1)]), b.ints(int(step))])
    where = b.op("Add", [b.unsqueeze(starts, [1]), b.ints(np.arange(size)[None, :])])  # [F, L]: sample of each tap
    samples = b.slice(b.shape_of(signal), [0], [2], [0])  # [N, length]
    rows = b.op("Concat", [b.op("Gather", [samples, b.ints([0])]), b.ints([1])], axis=0)  # [N, 1]: Expand broadcasts
    where = b.op("Expand", [b.op("Reshape", [where, b.ints([1, -1])]), rows])
    outs = []
    for kernel in parts:
        taps = b.op("MatMul", [g, b.const(kernel.astype(b.np_dtype))])  # [N, F, L]
        flat = b.op("Reshape", [taps, b.ints([0, -1])])
        outs.append(b.unsqueeze(b.scatter_add("ScatterElements", b.zeros(samples), where, flat, axis=1), [2]))
    return [outs[0] if len(outs) == 1 else b.op("Concat", outs, axis=2), None, None, None]


@register("DFT")
def dft(b, node, gys):
    """DFT (torch.fft through torch.export): X[k] = c sum_t x[t] exp(s 2 pi i k t / n), s = -1 and
    c = 1 (or +1 and 1 / n inverse), the input zero-padded or cut to dft_length n along the axis,
    k < n // 2 + 1 if onesided. Linear: with C = cos and S = sin of 2 pi k t / n, the real part
    a of x gets c (C^T g_re + s S^T g_im), its imaginary part b c (C^T g_im - s S^T g_re), each a
    constant matrix along the axis. Refused: an inverse onesided (half-spectrum) or a onesided
    complex transform, and lengths or an axis known only at run time."""
    a = attrs(node)
    x = node.input[0]
    shape = b.shape(x)
    rank = len(shape) if shape is not None else b.rank(x, node)
    if b.opset >= 20:
        axis_name = node.input[2] if len(node.input) > 2 else ""
        axis = b.value(axis_name) if axis_name else np.array(-2)
        if axis is None:
            refuse(node, "its axis must be a constant")
        axis = int(axis)
    else:
        axis = a.get("axis", 1)
    axis %= rank
    length = shape[axis] if shape is not None else None
    n_name = node.input[1] if len(node.input) > 1 else ""
    n = b.value(n_name) if n_name else length
    if length is None or n is None or shape[-1] not in (1, 2):
        refuse(node, "the signal's length and dft_length must be known when exporting, and its last axis 1 or 2 long")
    n, inverse, onesided = int(n), bool(a.get("inverse", 0)), bool(a.get("onesided", 0))
    if onesided and (inverse or shape[-1] == 2):
        refuse(node, "a onesided inverse or complex transform is not supported")
    bins = n // 2 + 1 if onesided else n
    angle = 2 * np.pi * np.outer(np.arange(bins), np.arange(min(n, length))) / n
    scale, sign = (1.0 / n, 1.0) if inverse else (1.0, -1.0)
    cos, sin = np.zeros((bins, length)), np.zeros((bins, length))  # samples past n were cut: no gradient
    cos[:, :min(n, length)], sin[:, :min(n, length)] = scale * np.cos(angle), scale * np.sin(angle)
    g_re, g_im = (b.op("Gather", [gys[0], b.ints([k])], axis=rank - 1) for k in (0, 1))

    def along(t: str, m: np.ndarray) -> str:
        return b.adjoint_along(t, m.astype(b.np_dtype), axis, rank)

    parts = [b.op("Add", [along(g_re, cos), along(g_im, sign * sin)])]
    if shape[-1] == 2:
        parts.append(b.op("Sub", [along(g_im, cos), along(g_re, sign * sin)]))
    return [parts[0] if len(parts) == 1 else b.op("Concat", parts, axis=rank - 1)] + [None] * (len(node.input) - 1)
