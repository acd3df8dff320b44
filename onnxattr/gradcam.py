"""Grad-CAM: the default layer (the classifier's global pooling input, else the last convolutional
activation), the map at a layer laid out either way, and its resize to the input."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from onnx import TensorProto

from .backward import differentiable_path
from .errors import NotAClassifierError, UnsupportedModelError
from .graph import Builder
from .layout import batch_axis, cam_axes, input_is_nhwc, layout_of, to_first, to_last, transpose_perm
from .methods import get_method
from .vjp.pool import reduce_axes

if TYPE_CHECKING:
    from .recipes import Context, Options


POOLS = ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "AveragePool", "MaxPool")


def _nchw_pool_input(b: Builder, node, producer: dict, rank: int) -> str | None:
    """The [N, K, ...] activation of `rank` a global pooling node reads: its input for the NCHW
    pools and a Reduce over every axis after the channels; for a Reduce over axes 1 .. rank - 2
    (channels-last, as Keras pools), the channels-first tensor transposed into it; None otherwise."""
    x = node.input[0]
    if len(b.shapes.get(x) or []) != rank:
        return None
    if not node.op_type.startswith("Reduce"):
        return x
    axes = reduce_axes(b, node)
    if axes == list(range(2, rank)):
        return x
    if axes != list(range(1, rank - 1)):
        return None
    src = producer.get(x)
    if src is not None and transpose_perm(src) == to_last(rank):
        return src.input[0]
    # a channels-last image map (Keras MobileNetV3's, timm Swin's after its last LayerNorm); at
    # other ranks only a convolutional one: a sequence model's tokens [N, T, d] are pooled so too
    found, convolutional = layout_of(b, x)
    return x if found == {rank - 1} and (convolutional or rank == 4) else None


# ops whose 4-D output is a convolutional activation [N, K, h, w] (not attention's [N, heads, T, d])
_CNN_OPS = {"Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization", "Relu", "LeakyRelu", "PRelu",
            "Clip", "Elu", "Selu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Mish", "MaxPool", "AveragePool"}


# ops whose output is channels-first whatever its rank (at ranks 3 and 5, where an activation may as
# well be a sequence's [N, T, d], _convolutional starts from these)
_MAKES_CHANNELS_FIRST = {"Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization", "MaxPool",
                         "AveragePool"}


def map_rank(b: Builder, x: str) -> int:
    """The rank of the activations Grad-CAM reads for input `x`: that of the input for a signal
    [N, C, L] or a volume [N, C, D, H, W], else an image's 4."""
    rank = len(b.shapes.get(x) or [])
    return rank if rank in (3, 5) else 4


def _convolutional(b: Builder, node, producer: dict, rank: int) -> bool:
    """Whether `node` makes a convolutional map: for an image, one of _CNN_OPS; at other ranks
    (where [N, T, d] may as well be a sequence's tokens) a Conv, pool or normalisation, an
    activation right after one, or (not a mere Transpose) a map every trail back from which ends
    at a Conv, pool or normalisation, as tf2onnx's Conv1D output [N, l, K] after its Squeeze."""
    if rank == 4:
        return node.op_type in _CNN_OPS
    if node.op_type in _MAKES_CHANNELS_FIRST:
        return True
    src = producer.get(node.input[0]) if node.input else None
    if node.op_type in _CNN_OPS and src is not None and src.op_type in _MAKES_CHANNELS_FIRST:
        return True
    if node.op_type == "Transpose" or len(b.shapes.get(node.output[0]) or []) != rank:
        return False
    found, convolutional = layout_of(b, node.output[0])
    return convolutional and len(found) == 1 and found <= {1, rank - 1}


def _batch_axis_first(b: Builder, t: str, x: str) -> bool:
    """Whether axis 0 of `t` is the input's batch axis (sequence-first tensors inside attention
    have the tokens there)."""
    st, sx = b.shapes.get(t) or [None], b.shapes.get(x) or [None]
    if st[0] is not None and sx[0] is not None:
        return st[0] == sx[0]
    return b.same_dim(t, 0, x, 0)


def default_layer(ctx: Context) -> str:
    """The last activation [N, K, h, w] before the classifier's global pooling; else the last
    convolutional one on the path ([N, K, l] for a signal input [N, C, L], [N, K, d, h, w] for a
    volume). Transformer-style models (pooling over tokens) have neither: they are asked for
    --layer rather than given an attention-internal tensor."""
    b = ctx.b
    rank = map_rank(b, ctx.x)
    path, _ = differentiable_path(b, [ctx.x], [ctx.y])
    producer = {o: n for n in path for o in n.output}
    for node in reversed(path):
        if node.op_type in POOLS and (node.op_type not in ("AveragePool", "MaxPool") or _pools_to_one(b, node)) \
                and not _back_into_maps(b, node, path, rank):
            layer = _nchw_pool_input(b, node, producer, rank)
            if layer is not None and _batch_axis_first(b, layer, ctx.x):
                return layer
    for node in reversed(path):
        if _convolutional(b, node, producer, rank):
            for o in node.output:
                if len(b.shapes.get(o) or []) == rank and b.is_float(o) and _batch_axis_first(b, o, ctx.x):
                    return o
    raise UnsupportedModelError(f"no convolutional activation {_dims_of(rank)} on the path to the scores "
                                "(a transformer pools over tokens); name one with --layer")


def _back_into_maps(b: Builder, pool, path: list, rank: int) -> bool:
    """Whether what `pool` computes goes back into a feature map on the way to the scores (a
    squeeze-and-excitation block's channel weights), so it is not the classifier's pooling."""
    reached, after = set(pool.output), False
    for node in path:
        if node is pool:
            after = True
            continue
        if not after or not any(i in reached for i in node.input):
            continue
        reached.update(node.output)
        for o in node.output:
            shape = b.shapes.get(o) or []
            if len(shape) == rank and sum(d is None or d > 1 for d in shape[1:]) >= 2:  # (channels first or last)
                return True
    return False


def _dims_of(rank: int) -> str:
    return {3: "[N, K, l]", 4: "[N, K, h, w]", 5: "[N, K, d, h, w]"}[rank]


def _pools_to_one(b: Builder, node) -> bool:
    """Whether a windowed pool is global in effect: its output is [N, K, 1, ...]."""
    shape = b.shapes.get(node.output[0]) or []
    return len(shape) >= 3 and all(d == 1 for d in shape[2:])


def _upsample(ctx: Context, cam: str, layer: str) -> str:
    """cam [N, 1, h, w] (h, w those of `layer`) resized (bilinear, half-pixel) to the input's
    spatial size, laid out like the input (channels first or last); likewise [N, 1, l] (linear)
    for a signal and [N, 1, d, h, w] (trilinear) for a volume. Before opset 11
    ONNX's linear Upsample/Resize is the only one there is: asymmetric coordinates, so the map
    shifts slightly."""
    b = ctx.b
    xs = b.shapes.get(ctx.x) or []
    if len(xs) not in (3, 4, 5):
        raise UnsupportedModelError(f"gradcam resizes its map to the input's spatial size, but the input '{ctx.x}' "
                                    f"has rank {len(xs)}, not that of a signal [N, C, L], an image [N, C, H, W] or "
                                    "[N, H, W, C], or a volume [N, C, D, H, W]")
    rank = len(xs)
    nhwc = input_is_nhwc(b, ctx.x)
    spatial = list(range(1, rank - 1)) if nhwc else list(range(2, rank))
    double = b.dtype == TensorProto.DOUBLE
    if double:  # ONNX Runtime has no float64 Resize (nor Upsample): the map is resized in float32
        cam = b.op("Cast", [cam], to=TensorProto.FLOAT)
    if b.opset >= 11:
        sizes = b.op("Concat", [b.slice(b.shape_of(cam), [0], [2], [0]),
                                b.op("Gather", [b.shape_of(ctx.x), b.ints(spatial)])], axis=0)
        empty = b.const(np.zeros(0, np.float32), dtype=np.float32)  # roi and scales: float32 in any model
        up = b.op("Resize", [cam, empty, empty, sizes], mode="linear",
                  coordinate_transformation_mode="half_pixel")
    else:
        size = b.static_shape(ctx.x, None, dims=spatial)
        axes = cam_axes(b, layer)[1]
        hw = b.static_shape(layer, None, dims=axes)
        scales = np.array([1, 1] + [size[a] / hw[axes[i]] for i, a in enumerate(spatial)], np.float32)
        if b.opset >= 10:
            up = b.op("Resize", [cam, b.const(scales, dtype=np.float32)], mode="linear")
        elif b.opset >= 9:
            up = b.op("Upsample", [cam, b.const(scales, dtype=np.float32)], mode="linear")
        else:
            raise UnsupportedModelError(f"gradcam needs opset >= 9 to resize the map (model has {b.opset})")
    if double:
        up = b.op("Cast", [up], to=TensorProto.DOUBLE)
    return b.op("Transpose", [up], perm=to_last(rank)) if nhwc else up


# ------------------------------------------------------------------------------------------ recipes
def gradcam_maps(ctx: Context, opts: Options) -> tuple[str, str, str]:
    """(layer name, cam [N, 1, h, w] (or [N, 1, l], [N, 1, d, h, w]), cam resized to the input)."""
    b = ctx.b
    axis = batch_axis(b, ctx.x, ctx.y)
    if axis not in (0, None):  # the map is laid out [N, 1, ...] and resized along the input's axes after the batch
        raise UnsupportedModelError(f"gradcam needs the input's batch on its first axis, but '{ctx.x}' "
                                    f"{b.dims_text(ctx.x)} has it on axis {axis} (that of the scores '{ctx.y}')")
    layer = opts.layer or default_layer(ctx)
    rank = map_rank(b, ctx.x)
    if layer not in b.types:
        raise UnsupportedModelError(f"--layer '{layer}' is not a tensor of the model")
    if len(b.shapes.get(layer) or []) != rank or not b.is_float(layer):
        raise UnsupportedModelError(f"--layer '{layer}' is not a {rank}-D float activation {_dims_of(rank)}")
    if not _batch_axis_first(b, layer, ctx.x):
        dims = ", ".join("?" if d is None else str(d) for d in b.shapes[layer])
        raise NotAClassifierError(f"--layer '{layer}' [{dims}]: its first axis is not the input's batch axis "
                                  "(row n of the map must explain row n of the scores)")
    g = ctx.gradient(get_method("saliency"), at=layer)
    channels, spatial = cam_axes(b, layer)
    alpha = b.reduce("ReduceMean", g, spatial, keepdims=1)
    cam = b.op("Relu", [b.reduce("ReduceSum", b.op("Mul", [alpha, layer]), [channels], keepdims=1)])
    if channels != 1:  # a channels-last layer's map [N, h, w, 1] -> [N, 1, h, w]
        cam = b.op("Transpose", [cam], perm=to_first(rank))
    return layer, cam, _upsample(ctx, cam, layer)
