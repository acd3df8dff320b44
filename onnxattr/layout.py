"""Which axis of a tensor is which: the batch axis (the scores' axis 0), and whether an activation
is channels-first [N, C, ...] or channels-last [N, ..., C] (Grad-CAM's layers and the input it
resizes its map to). A tensor's values are followed through the graph to the nodes that tell
their channel axis (layout_of)."""

from __future__ import annotations

import numpy as np

from .graph import Builder
from .protos import attrs


def batch_axis(b: Builder, t: str, y: str) -> int | None:
    """The axis of `t` that is the scores' batch axis (axis 0 of `y`): the one axis proven the
    same size (equal static sizes, the same symbolic dim or expression of the inputs' dims; a
    time-major [T, N, F] input has it on axis 1), else axis 0 unless proven to differ, else the
    one axis not proven to differ; None when that singles out no axis. Where the guess of axis 0
    is wrong (a time-major input with unnamed dims that dims.py does not follow to the scores) the
    batched methods' seed Reshape fails at run time rather than mixing copies."""
    dims, n = b.shapes.get(t) or [], (b.shapes.get(y) or [None])[0]

    def same(i):
        return dims[i] == n if dims[i] is not None or n is not None else b.same_dim(t, i, y, 0)

    proven = [i for i in range(len(dims)) if same(i)]
    if proven:
        return proven[0] if len(proven) == 1 else None
    if dims and not b.differ(t, 0, y, 0):
        return 0  # as before: a batch-first input whose unknown dims nothing relates ([?, ?, F] unnamed)
    possible = [i for i in range(len(dims)) if not b.differ(t, i, y, 0)]
    return possible[0] if len(possible) == 1 else None


def to_last(rank: int) -> list[int]:  # channels first -> last: [0, 2, 3, 1] for an image
    return [0] + list(range(2, rank)) + [1]


def to_first(rank: int) -> list[int]:  # channels last -> first: [0, 3, 1, 2] for an image
    return [0, rank - 1] + list(range(1, rank - 1))


def transpose_perm(node) -> list | None:
    return attrs(node).get("perm") if node.op_type == "Transpose" else None


# ops that read their input channels-first
READS_CHANNELS_FIRST = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "BatchNormalization",
                        "InstanceNormalization", "GlobalAveragePool", "GlobalMaxPool", "LRN", "GroupNormalization"}


def input_is_nhwc(b: Builder, x: str) -> bool:
    """Whether the input (an image, a signal [N, L, C] or a volume) is channels-last: x's axis that
    the first Conv, pool or normalisation reading it treats as channels is its last (layout_of:
    through pads and crops, Unsqueeze and Transpose, as tf2onnx writes a Keras model's start, a
    Conv1D as Unsqueeze, Transpose, Conv) rather than axis 1. Where that is not found (a Reshape
    in between): an input whose last dim is 1 or 3 and whose second is not."""
    xs = b.shapes.get(x) or []
    found = layout_of(b, x, linear=False)[0] & {1, len(xs) - 1}
    if len(found) == 1:
        return found == {len(xs) - 1} and len(xs) > 2
    return len(xs) >= 3 and xs[1] not in (1, 3) and xs[-1] in (1, 3)


# ops whose output keeps the axes of each input of the same rank (so its layout): element-wise
# ops and activations, pads and crops, joins and splits
_SAME_LAYOUT = {
    "Add", "Sub", "Mul", "Div", "Pow", "Cast", "Identity", "Neg", "Clip", "Relu", "Sqrt", "Abs", "Pad", "Slice",
    "Concat", "Split", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu",
    "Mish", "Softplus", "Softsign", "Gelu", "Erf", "Exp", "Log", "Reciprocal", "Max", "Min", "Sum", "Mean", "Dropout"}


_GLOBAL_POOLS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}


def _channel_axis(b: Builder, n, name: str, rank: int, linear: bool = True) -> tuple[int, bool] | None:
    """(the axis of `name`, node n's first input or its output, that n treats as channels, whether
    that is strong evidence): axis 1 for a Conv, windowed pool or normalisation over channels
    (strong); axis 1 for a global pool (weak: tf2onnx also writes a mean over the last axis so, in
    its LayerNorms); with `linear`, the last for a LayerNormalization over the last axis alone or a
    MatMul by a constant matrix, a Linear or Keras' Dense (weak: such a matrix may as well mix a
    map's width); else None."""
    if name != n.input[0] and name not in n.output:
        return None
    if n.op_type in READS_CHANNELS_FIRST:
        return 1, n.op_type not in _GLOBAL_POOLS
    if not linear:
        return None
    if n.op_type == "LayerNormalization":
        return (rank - 1, False) if attrs(n).get("axis", -1) % rank == rank - 1 else None
    if _linear(b, n):
        return rank - 1, False
    return None


def _linear(b: Builder, n) -> bool:
    return n.op_type == "MatMul" and len(b.shapes.get(n.input[1]) or []) == 2 and n.input[1] in b.consts


def _unsqueezed(b: Builder, n, axes: list, back: bool) -> list | None:
    """Axes through an Unsqueeze or Squeeze n (`axes` those of its output if `back`, else of its
    input): inserted axes are None, removed ones dropped."""
    where = attrs(n).get("axes")
    if where is None and len(n.input) > 1 and n.input[1]:
        where = b.static_value(n.input[1])
    long = n.output[0] if n.op_type == "Unsqueeze" else n.input[0]  # (the tensor with the extra axes)
    rank = len(b.shapes.get(long) or [])
    if where is None and n.op_type == "Squeeze":  # (every length-1 axis)
        dims = b.shapes.get(long) or [None]
        where = [i for i, d in enumerate(dims) if d == 1] if None not in dims else None
    if where is None or not rank or any(not -rank <= int(a) < rank for a in np.ravel(where)):
        return None
    extra = {int(a) % rank for a in np.ravel(where)}
    if (n.op_type == "Unsqueeze") == back:  # long -> short: drop the extra axes
        return [a for i, a in enumerate(axes) if i not in extra] if len(axes) == rank else None
    rest = iter(axes)  # short -> long: insert them
    return [None if i in extra else next(rest) for i in range(rank)] if len(axes) == rank - len(extra) else None


def layout_of(b: Builder, t: str, linear: bool = True) -> tuple[set, bool]:
    """(the axes of `t` found to be channels, whether t is a convolutional map: every trail back
    from it ends at a Conv, pool or normalisation over channels, with no LayerNorm or Linear on
    the way). The values of t are followed back to where they come from and on to where they go,
    through ops that keep their layout (element-wise ops and activations, pads, crops, joins),
    Transposes (the axes permuted along), Unsqueeze and Squeeze, Reshapes that keep the last
    length (the last axis kept), LayerNorms and Linears (the last axis dropped), to the nodes that
    tell a channel axis (_channel_axis): the axes the strong ones tell, else those the weak ones
    tell (`linear`: also LayerNorms and Linears)."""
    rank = len(b.shapes.get(t) or [])
    producer, consumers = b.forward_maps()

    def ndim(name):
        return len(b.shapes.get(name) or [])

    strong, weak, convolutional = set(), set(), True
    todo, seen = [(t, True, list(range(rank))), (t, False, list(range(rank)))], set()
    while todo and len(seen) < 400:
        name, back, axes = todo.pop()
        nodes = ([producer[name]] if name in producer else []) if back else consumers.get(name, [])
        if back and not nodes:
            convolutional = False  # (a graph input)
        for n in nodes:
            if n.domain not in ("", "ai.onnx"):
                convolutional &= not back
                continue
            told, nxt = _channel_axis(b, n, name, len(axes), linear), []
            if told is not None:
                c, sure = told
                if axes[c] is not None:
                    (strong if sure else weak).add(axes[c])
                convolutional &= not back or sure
                if sure or n.op_type in _GLOBAL_POOLS:
                    continue
                # a LayerNorm keeps the axes, a Linear all but the last: on to what else tells
                nxt = [(n.input[0] if back else n.output[0], axes if n.op_type == "LayerNormalization"
                        else axes[:-1] + [None])]
            elif n.op_type == "Transpose":
                perm = transpose_perm(n) or list(reversed(range(len(axes))))
                if len(perm) == len(axes) and back:
                    before = [None] * len(perm)
                    for i, p in enumerate(perm):
                        before[p] = axes[i]
                    nxt = [(n.input[0], before)]
                elif len(perm) == len(axes):
                    nxt = [(n.output[0], [axes[p] for p in perm])]
            elif n.op_type in ("Unsqueeze", "Squeeze") and name in (n.input[0], n.output[0]):
                moved = _unsqueezed(b, n, axes, back)
                nxt = [] if moved is None else [(n.input[0] if back else n.output[0], moved)]
            elif n.op_type in _SAME_LAYOUT and ndim(n.output[0]) == len(axes):
                nxt = [(i, axes) for i in (n.input if back else n.output)
                       if i and ndim(i) == len(axes) and i not in b.consts]
            elif n.op_type == "Reshape":
                si, so = b.shapes.get(n.input[0]) or [None], b.shapes.get(n.output[0]) or [None]
                if si[-1] is not None and si[-1] == so[-1]:  # the last axis kept (Keras' Dense on a map)
                    other = n.input[0] if back else n.output[0]
                    nxt = [(other, [None] * (ndim(other) - 1) + [axes[-1]])]
            convolutional &= not back or bool(nxt)
            for m, ax in nxt:
                if (m, back) not in seen:
                    seen.add((m, back))
                    todo.append((m, back, ax))
    return strong or weak, convolutional


def channels_last(b: Builder, t: str) -> bool:
    """Whether the activation `t` [N, ...] is laid out channels-last ([N, h, w, K]; [N, l, K] for
    a signal): the axis its Conv, pool or normalisation treats as channels, or where none tells, its
    LayerNorm or Linear, is its last (layout_of). As tf2onnx leaves Keras MobileNetV3's last
    activation before its pooling, PyTorch's ConvNeXt and Swin blocks between their permutes.
    Channels-first where nothing tells or the evidence disagrees."""
    rank = len(b.shapes.get(t) or [])
    return rank >= 3 and layout_of(b, t)[0] == {rank - 1}


def cam_axes(b: Builder, layer: str) -> tuple[int, list[int]]:
    """The channel axis and the spatial axes of a Grad-CAM layer [N, K, ...] or, where
    `channels_last`, [N, ..., K]."""
    rank = len(b.shapes.get(layer) or [])
    return (rank - 1, list(range(1, rank - 1))) if channels_last(b, layer) else (1, list(range(2, rank)))
