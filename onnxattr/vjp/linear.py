"""Conv, Gemm and MatMul: input gradients from the forward weights (never a stored copy)."""

from __future__ import annotations

import string

import numpy as np

from ..errors import UnsupportedModelError
from ..protos import attrs, describe
from . import register


def window(b, node, x: str, kernel: list[int]):
    """(strides, dilations, pads) of a Conv/pool node, with auto_pad resolved to explicit pads."""
    a, n = attrs(node), len(kernel)
    strides = list(a.get("strides", [1] * n))
    dil = list(a.get("dilations", [1] * n))
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        known = (b.shape(x) or [None] * (2 + n))[2:]
        if any(k is None and s > 1 for k, s in zip(known, strides)):
            raise UnsupportedModelError(f"{describe(node)}: auto_pad {auto} with a stride over a size known only at "
                                        "run time is not supported (the padding depends on it): export with a fixed "
                                        "size")
        pool = node.op_type in ("MaxPool", "AveragePool")
        if pool and any(d > 1 for d in dil):  # (ONNX Runtime's windows then are not the spec's: fewer of them)
            raise UnsupportedModelError(f"{describe(node)}: auto_pad {auto} with dilations is not supported (ONNX "
                                        "Runtime pads by the undilated kernel); give explicit pads")
        begin, end = [], []
        for i in range(n):
            # out = ceil(size / stride): at stride 1 the total pad is the window's reach - 1, whatever the size
            size = known[i] if known[i] is not None else 1
            out = -(-size // strides[i])
            total = (out - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - size
            if total < 0 and pool:
                # the spec's windows then start inside the input (a kernel-1 stride-3 pool over 9
                # reads x[1], x[4], x[7]); runtimes differ (ONNX Runtime's float32 MaxPool refuses
                # it, its AveragePool-19 and float64 MaxPool shift the windows their own ways)
                raise UnsupportedModelError(f"{describe(node)}: auto_pad {auto} with a stride beyond the kernel asks "
                                            "for negative padding; give explicit pads")
            total = max(0, total)  # (a Conv clamps it, as ONNX Runtime and the reference do)
            small, big = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else big)
            end.append(big if auto == "SAME_UPPER" else small)
        pads = begin + end
    elif auto == "VALID":
        pads = [0] * (2 * n)
    else:
        pads = list(a.get("pads", [0] * (2 * n)))
    return strides, dil, pads


def flipped_transposed(b, w: str, group: int, spatial: int) -> str:
    """W [M, C/G, *k] -> W' [C, M/G, *k] with kernels flipped: Conv(dy, W') = Conv's input-VJP.
    Built in the graph from the forward weight; ONNX Runtime folds it once at load."""
    perm = [1, 0] + list(range(2, 2 + spatial))
    if group == 1:
        wt = b.op("Transpose", [w], perm=perm)
    else:
        ws = b.static_shape(w, None)
        m, cg, k = ws[0], ws[1], ws[2:]
        grouped = b.op("Reshape", [w, b.ints([group, m // group, cg] + k)])
        swapped = b.op("Transpose", [grouped], perm=[0, 2, 1] + list(range(3, 3 + spatial)))
        wt = b.op("Reshape", [swapped, b.ints([group * cg, m // group] + k)])
    axes = list(range(2, 2 + spatial))
    if b.opset >= 10:
        big = np.iinfo(np.int64).max
        return b.slice(wt, [-1] * spatial, [-big] * spatial, axes, [-1] * spatial)
    for ax in axes:
        size = b.static_shape(w, None)[ax]
        wt = b.op("Gather", [wt, b.ints(list(range(size - 1, -1, -1)))], axis=ax)
    return wt


@register("Conv")
def conv(b, node, gys):
    g, (x, w) = gys[0], node.input[:2]
    for other in node.input[1:]:
        if b.needs(other):
            raise UnsupportedModelError(f"{describe(node)}: gradients with respect to weights or bias are not supported")
    ws = b.static_shape(w, node)
    spatial, kernel = len(ws) - 2, ws[2:]
    group = attrs(node).get("group", 1)
    n = spatial
    known = (b.shape(x) or [None] * (2 + n))[2:]
    if None in known and attrs(node).get("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER") and b.opset >= 10:
        same = same_to_input(b, node, g, w, x, kernel, group)
        if same is not None:
            return [same]
    strides, dil, pads = window(b, node, x, kernel)
    begin = [(kernel[i] - 1) * dil[i] - pads[i] for i in range(n)]
    if all(s == 1 for s in strides):
        end = [(kernel[i] - 1) * dil[i] - pads[n + i] for i in range(n)]
        if min(begin + end) >= 0:
            return [_flipped_conv(b, g, w, group, kernel, dil, begin + end)]
    # Strided: ConvTranspose. A phase-split (sub-pixel) Conv + DepthToSpace was measured too: it
    # won only for 7x7 kernels and lost 1.2-2.7x for 1x1, 3x3 and depthwise ones in ONNX Runtime.
    if None in known and attrs(node).get("auto_pad", "NOTSET") in ("NOTSET", "VALID") and b.opset >= 10:
        return [transposed_to_input(b, g, w, x, strides, dil, pads, group, kernel)]
    size = b.static_shape(x, node, dims=range(2, 2 + n))[2:]
    out = b.static_shape(node.output[0], node, dims=range(2, 2 + n))[2:]
    if group > 1 and ws[0] == group and ws[1] == 1 and b.blocked(x):
        # Depthwise (ONNX Runtime's grouped ConvTranspose loops over the groups): zero insertion,
        # a 1x1 ConvTranspose with unit weights, then the stride-1 form on the spread gradient of
        # length (out - 1) * stride + 1; 10-11% faster on MobileNetV2 at batch 1 and 8.
        end = [size[i] - (out[i] - 1) * strides[i] - 1 - begin[i] + (kernel[i] - 1) * dil[i] for i in range(n)]
        if min(begin + end) >= 0:
            ones = b.const(np.ones([group, 1] + [1] * n, dtype=b.np_dtype), hint="zero_insert")
            spread = b.op("ConvTranspose", [g, ones], strides=strides, group=group, kernel_shape=[1] * n)
            return [_flipped_conv(b, spread, w, group, kernel, dil, begin + end)]
    extra = [size[i] - ((out[i] - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - pads[i] - pads[n + i])
             for i in range(n)]
    gx = b.op("ConvTranspose", [g, w], strides=strides, dilations=dil, pads=pads, group=group,
              kernel_shape=kernel, output_padding=extra if any(extra) else None)
    return [b.channel_affine(gx, 1.0, like=x)]


def transposed_to_input(b, g, w, x, strides, dil, pads, group, kernel, begin: str | None = None):
    """ConvTranspose(g, w) sized to x [N, C, *length] where the length is known only at run time
    (a strided Conv's input gradient; AveragePool's, with a bank of ones). Of the lengths a
    window maps to the same output length, the input's exceeds the shortest by the remainder r
    in [0, stride) of (length + pads - effective kernel) / stride, which a ConvTranspose needs as
    output_padding: take the largest, stride - 1, then keep the first `length` positions (those
    past it are the gradient of inputs the longer input would have), from `begin` (a run-time
    int64 [n]: pads known only at run time, left out of `pads`) where given."""
    n = len(kernel)
    gx = b.op("ConvTranspose", [g, w], strides=strides, dilations=dil, pads=pads, group=group, kernel_shape=kernel,
              output_padding=[s - 1 for s in strides] if any(s > 1 for s in strides) else None)
    size = b.slice(b.shape_of(x), [2], [2 + n], [0])
    starts, ends = (b.ints([0] * n), size) if begin is None else (begin, b.op("Add", [begin, size]))
    return b.op("Slice", [gx, starts, ends, b.ints(list(range(2, 2 + n)))])


def same_to_input(b, node, g, w, x, kernel, group):
    """ConvTranspose(g, w) sized to x for a strided Conv (or AveragePool) with auto_pad SAME over a
    length known only at run time (Keras' padding="same" through tf2onnx): ONNX pads by
    total = max(0, (ceil(length / stride) - 1) * stride + reach - length), total // 2 in front for
    SAME_UPPER (the rest for SAME_LOWER). The unpadded ConvTranspose with output_padding stride - 1
    is at least begin + length long; its input positions are [begin, begin + length), with begin
    computed from the run-time length. None at stride 1 everywhere (the pads do not depend on the
    length there: `window` gives them)."""
    a, n = attrs(node), len(kernel)
    strides, dil = list(a.get("strides", [1] * n)), list(a.get("dilations", [1] * n))
    if all(s == 1 for s in strides):
        return None
    size = b.slice(b.shape_of(x), [2], [2 + n], [0])
    stride = b.ints(strides)
    out = b.op("Div", [b.op("Add", [size, b.ints([s - 1 for s in strides])]), stride])
    reach = b.ints([(k - 1) * d + 1 for k, d in zip(kernel, dil)])
    total = b.op("Sub", [b.op("Add", [b.op("Mul", [b.op("Sub", [out, b.ints([1] * n)]), stride]), reach]), size])
    zeros = b.ints([0] * n)
    total = b.op("Where", [b.op("Greater", [total, zeros]), total, zeros])
    half = b.op("Div", [total, b.ints([2] * n)])
    begin = half if a["auto_pad"] == "SAME_UPPER" else b.op("Sub", [total, half])
    return transposed_to_input(b, g, w, x, strides, dil, [0] * (2 * n), group, kernel, begin=begin)


def _flipped_conv(b, g, w, group, kernel, dil, pads):
    """Conv(g, W flipped and transposed) with `pads`: the input gradient of a stride-1 Conv,
    out[i] = sum_t g[i + pads_begin - t * dil] w[t]."""
    wt = flipped_transposed(b, w, group, len(kernel))
    return b.op("Conv", [g, wt], pads=pads, dilations=dil, group=group, kernel_shape=kernel)


def _transpose_last2(b, t: str, rank: int) -> str:
    return b.op("Transpose", [t], perm=list(range(rank - 2)) + [rank - 1, rank - 2])


@register("MatMul")
def matmul(b, node, gys):
    (g,), (x, w), y = gys, node.input, node.output[0]
    rx, rw = b.rank(x, node), b.rank(w, node)
    # Promote 1-D operands as numpy does, so both products below are plain batched matmuls.
    x2 = b.unsqueeze(x, [0]) if rx == 1 else x
    w2 = b.unsqueeze(w, [1]) if rw == 1 else w
    g2 = g
    if rx == 1 and rw == 1:
        g2 = b.op("Reshape", [g, b.ints([1, 1])])
    elif rx == 1:
        g2 = b.unsqueeze(g, [b.rank(y, node) - 1])
    elif rw == 1:
        g2 = b.unsqueeze(g, [b.rank(y, node)])
    ry2 = max(rx, rw, 2)
    gx = gw = None
    if b.needs(x):
        gx = b.op("MatMul", [g2, _transpose_last2(b, w2, max(rw, 2))])
        if rx == 1:  # one row [1, K] shared by every batch: sum the rows back to [K]
            gx = b.reduce("ReduceSum", gx, range(ry2 - 1), keepdims=0)
        else:
            gx = _reduce_batch(b, gx, x, ry2, rx, node)
    if b.needs(w):
        gw = b.op("MatMul", [_transpose_last2(b, x2, max(rx, 2)), g2])
        if rw == 1:  # one column [K, 1] shared by every batch: sum the batch and the column away
            gw = b.reduce("ReduceSum", gw, [*range(ry2 - 2), ry2 - 1], keepdims=0)
        else:
            gw = _reduce_batch(b, gw, w, ry2, rw, node)
    return [gx, gw]


def _reduce_batch(b, grad: str, x: str, r_out: int, rx: int, node) -> str:
    """Sum a batched-matmul gradient over the batch dims that `x` was broadcast along (those of
    unknown size decided at run time, unless they are known to match the output's)."""
    return b.unbroadcast(grad, x, node.output[0], node, dims=range(rx - 2), lead=r_out - rx)


@register("Gemm")
def gemm(b, node, gys):
    (g,), ins = gys, list(node.input) + [""]
    a_, w, c = ins[0], ins[1], ins[2]
    at = attrs(node)
    alpha, beta = at.get("alpha", 1.0), at.get("beta", 1.0)
    ta, tb = at.get("transA", 0), at.get("transB", 0)
    if alpha != 1.0:
        g = b.op("Mul", [g, b.scalar(alpha)])
    ga = gw = gc = None
    if b.needs(a_):
        wt = w if tb else b.op("Transpose", [w], perm=[1, 0])  # (op(W))^T
        ga = b.op("MatMul", [g, wt])
        if ta:
            ga = b.op("Transpose", [ga], perm=[1, 0])
    if b.needs(w):
        at_ = a_ if ta else b.op("Transpose", [a_], perm=[1, 0])  # (op(A))^T
        gw = b.op("MatMul", [at_, g])
        if tb:
            gw = b.op("Transpose", [gw], perm=[1, 0])
    if b.needs(c):
        gc = gys[0] if beta == 1.0 else b.op("Mul", [gys[0], b.scalar(beta)])
        gc = b.unbroadcast(gc, c, node.output[0], node)
    return [ga, gw, gc]


@register("ConvTranspose")
def conv_transpose(b, node, gys):
    # ConvTranspose(x, W) is the adjoint of Conv(., W) with the same geometry, so its VJP is
    # that Conv (W [C, M/G, *k] read as a Conv weight [M', C'/G, *k] with M' = C).
    x, w = node.input[:2]
    for other in node.input[1:]:
        if b.needs(other):
            raise UnsupportedModelError(f"{describe(node)}: gradients with respect to weights or bias are not supported")
    a = attrs(node)
    if a.get("auto_pad", "NOTSET") != "NOTSET" or a.get("output_shape"):
        raise UnsupportedModelError(f"{describe(node)}: ConvTranspose with auto_pad or output_shape is not supported; "
                                    "export it with explicit pads")
    n = b.rank(x, node) - 2
    kernel = list(a.get("kernel_shape") or b.static_shape(w, node)[2:])
    strides, dil = list(a.get("strides", [1] * n)), list(a.get("dilations", [1] * n))
    pads, extra = list(a.get("pads", [0] * (2 * n))), list(a.get("output_padding", [0] * n))
    gx = b.op("Conv", [gys[0], w], strides=strides, dilations=dil, pads=pads, group=a.get("group", 1),
              kernel_shape=kernel)
    if any(extra[i] >= strides[i] for i in range(n)):  # output_padding >= stride adds whole output steps
        size = b.static_shape(x, node, dims=range(2, 2 + n))[2:]
        gx = b.slice(gx, [0] * n, size, list(range(2, 2 + n)))
    return [gx] + [None] * (len(node.input) - 1)


def _einsum_terms(b, node) -> tuple[list[str], str]:
    """The input terms and the output term of an Einsum equation ('...' kept), made explicit."""
    eq = attrs(node)["equation"].replace(" ", "")
    lhs, arrow, out = eq.partition("->")
    terms = lhs.split(",")
    if not arrow:  # implicit output: the letters used once, in order, after any ellipsis
        letters = [c for t in terms for c in t.replace("...", "")]
        out = ("..." if any("..." in t for t in terms) else "") + "".join(sorted(c for c in set(letters)
                                                                                if letters.count(c) == 1))
    return terms, out


@register("Einsum")
def einsum(b, node, gys):
    # d out / d input_i is the Einsum of the output gradient with the other inputs, written to
    # input i's term; letters only input i has were summed away and come back by broadcasting.
    terms, out = _einsum_terms(b, node)
    if any("..." in t for t in terms) and not all("..." in t for i, t in enumerate(terms) if b.needs(node.input[i])):
        # An input without '...' sums over the others' '...' dims, and ONNX Runtime refuses an
        # output term without '...' when an input has one: spell those dims out as letters.
        terms, out = _explicit_ellipsis(b, node, terms, out)
    g, grads = gys[0], []
    for i, (x, term) in enumerate(zip(node.input, terms)):
        if not b.needs(x):
            grads.append(None)
            continue
        if "..." in term and not _same_ellipsis(b, node, x, term, out):
            raise UnsupportedModelError(f"{describe(node)}: Einsum whose '...' dims broadcast or are summed "
                                        "is not supported")
        others = [t for j, t in enumerate(terms) if j != i]
        ins = [g] + [t for j, t in enumerate(node.input) if j != i]
        term, eyes = _split_diagonal(b, node, x, term, set("".join(terms) + out))
        others += [t for t, _ in eyes]
        ins += [e for _, e in eyes]
        seen = set(out + "".join(others))
        kept = "".join(c for c in term.replace("...", "\0") if c == "\0" or c in seen).replace("\0", "...")
        gx = b.op("Einsum", ins, equation=",".join([out] + others) + "->" + kept)
        lost = [k for k, c in enumerate(_positions(term, b.rank(x, node))) if c not in seen]
        if lost:
            gx = b.expand_like(b.unsqueeze(gx, lost), x)
        grads.append(gx)
    return grads


def _split_diagonal(b, node, x: str, term: str, used: set) -> tuple[str, list[tuple[str, str]]]:
    """A term with a repeated letter reads a diagonal of x ('bcii->bci'): x's later occurrences
    of the letter get fresh letters, tied back to the first by identity matrices ('ij' terms, of
    the axis' static length), so the gradient is an Einsum to a term of distinct letters."""
    free = (c for c in string.ascii_letters if c not in used)
    rank, head, dots, tail = b.rank(x, node), *term.partition("...")
    seen, eyes, parts = set(), [], []
    for part, first in ((head, 0), (tail, rank - len(tail))):
        letters = []
        for k, c in enumerate(part):
            if c in seen:
                f = next(free, None)
                if f is None:
                    raise UnsupportedModelError(f"{describe(node)}: Einsum with too many letters to undo its diagonal")
                n = b.static_shape(x, node, dims=[first + k])[first + k]
                eyes.append((c + f, b.const(np.eye(n, dtype=b.np_dtype), hint="einsum_eye")))
                c = f
            seen.add(c)
            letters.append(c)
        parts.append("".join(letters))
    return parts[0] + dots + parts[1], eyes


def _explicit_ellipsis(b, node, terms: list[str], out: str) -> tuple[list[str], str]:
    """The equation with every '...' replaced by unused letters (right-aligned, as '...' dims
    broadcast), where no '...' dim broadcasts: then each letter names one size."""
    dots = [(x, [k for k, c in enumerate(_positions(t, b.rank(x, node))) if c == "."])
            for x, t in zip(list(node.input) + [node.output[0]], terms + [out]) if "..." in t]
    width = max(len(d) for _, d in dots)
    for k in range(1, width + 1):  # the k-th '...' dim from the right, in every operand that has it
        sizes = {b.shapes[x][d[-k]] for x, d in dots if len(d) >= k}
        if len(sizes) > 1 or None in sizes and len(dots) > 2:
            raise UnsupportedModelError(f"{describe(node)}: Einsum whose '...' dims broadcast or are summed "
                                        "is not supported")
    used = set("".join(terms) + out)
    free = [c for c in string.ascii_letters if c not in used][:width]
    if len(free) < width:
        raise UnsupportedModelError(f"{describe(node)}: Einsum with too many dims to spell out its '...'")

    def spell(t: str, x: str) -> str:
        c = b.rank(x, node) - len(t.replace("...", ""))
        return t.replace("...", "".join(free[width - c:])) if "..." in t else t

    return [spell(t, x) for t, x in zip(terms, node.input)], spell(out, node.output[0])


def _positions(term: str, rank: int) -> list[str]:
    """One entry per axis of a term's operand: its letter, or '.' for ellipsis axes."""
    head, dots, tail = term.partition("...")
    return list(head) + ["."] * (rank - len(head) - len(tail) if dots else 0) + list(tail)


def _same_ellipsis(b, node, x, term, out) -> bool:
    """Whether x's '...' dims are exactly the output's '...' dims (no broadcast, no sum)."""
    if "..." not in out:
        return False
    y = node.output[0]
    px, py = _positions(term, b.rank(x, node)), _positions(out, b.rank(y, node))
    sx, sy = b.shapes.get(x), b.shapes.get(y)
    ex = [k for k, c in enumerate(px) if c == "."]
    ey = [k for k, c in enumerate(py) if c == "."]
    return len(ex) == len(ey) and all((sx[i] is not None and sx[i] == sy[j]) or (sx[i] is None and sy[j] is None and b.same_dim(x, i, y, j))
                                      for i, j in zip(ex, ey))


@register("Col2Im")
def col2im(b, node, gys):
    """Col2Im (torch's Fold) adds each column's blocks into the image; its adjoint takes them
    back out (Unfold): the gradient image with channels as batch, through a Conv whose kernels
    are the K one-hot blocks (each output one product by 1: exact), with Col2Im's strides, pads
    and dilations, gives [N*C, K, L...] -> [N, C*K, L], channel-major as Col2Im reads it."""
    x, image, block = node.input[:3]
    shape, kernel = b.value(image), b.value(block)
    if shape is None or kernel is None:
        raise UnsupportedModelError(f"{describe(node)}: image_shape and block_shape must be constants")
    a, n, k = attrs(node), len(kernel), int(np.prod(kernel))
    ones = np.eye(k, dtype=b.np_dtype).reshape([k, 1] + [int(d) for d in kernel])
    g = b.op("Reshape", [gys[0], b.ints([-1, 1] + [int(d) for d in shape])])
    cols = b.op("Conv", [g, b.const(ones)], kernel_shape=[int(d) for d in kernel], strides=a.get("strides", [1] * n),
                pads=a.get("pads", [0] * 2 * n), dilations=a.get("dilations", [1] * n))
    return [b.reshape_like(cols, x), None, None]
