"""Methods composed from the backward graph, all inside the ONNX graph (one session run):
gradient x input, SmoothGrad, integrated gradients, Grad-CAM and guided Grad-CAM.

SmoothGrad and integrated gradients run the forward on batched copies of the input: a copy of
the forward nodes (sharing the weights) reads S copies stacked along the input's batch axis (the
scores' axis 0: axis 1 of a time-major [T, N, F] input), and one backward pass serves all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from .backward import build_backward, differentiable_path
from .errors import NotAClassifierError, OptionError, UnsupportedModelError
from .graph import Builder
from .methods import get_method
from .protos import attrs
from .vjp.pool import reduce_axes

BASE = ("saliency", "deconvnet", "guided")
COMPOSED = ("gradient-x-input", "smoothgrad", "integrated-gradients", "gradcam", "guided-gradcam")
ALL_METHODS = BASE + COMPOSED
CAM_METHODS = ("gradcam", "guided-gradcam")  # (the methods that take a --layer, and no --wrt)
IG_METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")
POOLS = ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "AveragePool", "MaxPool")


@dataclass(frozen=True)
class Options:
    """Parameters of the composed methods (ignored by the others)."""

    samples: int = 16            # smoothgrad: noisy copies
    noise: float = 0.15          # smoothgrad: noise std as a fraction of each input's value range
    seed: int = 0                # smoothgrad: the noise is a fixed function of (seed, sample, element index in a row)
    steps: int = 32              # integrated gradients: points on the path
    baseline: float | np.ndarray = 0.0   # integrated gradients: the path's start
    ig_method: str = "gausslegendre"     # integrated gradients: quadrature (as Captum's `method`)
    layer: str | None = None     # gradcam: the activation [N, K, ...] (default: the last before global pooling)
    relu_like: bool = False      # deconvnet/guided rules on LeakyRelu/PRelu/ReLU6 too

    def __post_init__(self):
        def bad(name, value, need):
            raise OptionError(f"{name} {value!r}: must be {need}")

        for name in ("samples", "steps", "seed"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), (int, np.integer)):
                bad(name, getattr(self, name), "an integer")
        if not 1 <= self.samples <= MAX_SAMPLES:
            bad("samples", self.samples, f"in [1, {MAX_SAMPLES}]")
        if self.steps > MAX_STEPS:  # (Gauss-Legendre's nodes cost steps**3; each step is a copy of the batch)
            bad("steps", self.steps, f"at most {MAX_STEPS}")
        if self.ig_method not in IG_METHODS:
            bad("ig_method", self.ig_method, f"one of {', '.join(IG_METHODS)}")
        if self.steps < (2 if self.ig_method == "riemann_trapezoid" else 1):
            bad("steps", self.steps, "at least 2 for riemann_trapezoid" if self.ig_method == "riemann_trapezoid" else "at least 1")
        if not 0 <= self.seed < _M:
            bad("seed", self.seed, f"in [0, {_M})")
        big = float(np.finfo(np.float32).max)  # the noise is drawn, and a baseline may run, in float32
        if not (isinstance(self.noise, (int, float, np.integer, np.floating)) and not isinstance(self.noise, bool)
                and 0 <= self.noise <= big):
            bad("noise", self.noise, "a number >= 0, finite in float32")
        try:
            base = np.asarray(self.baseline)
            values = base.astype(np.float64) if base.dtype.kind in "biuf" else None
        except (TypeError, ValueError):
            values = None
        if values is None:
            bad("baseline", self.baseline if not np.ndim(self.baseline) else "(array)", "a real number or array of them")
        if not np.all(np.abs(values) <= big):
            bad("baseline", "(array)" if np.ndim(self.baseline) else self.baseline, "finite in float32")


@dataclass
class Context:
    """What every recipe works on: the builder, the tensors to explain and the target."""

    b: Builder
    inputs: list[str]   # the model's graph inputs (not initializers)
    x: str              # the floating-point model input
    w: str              # the tensor attributions are taken with respect to (x, or --wrt)
    y: str              # class scores [N, C]
    t: str              # target class per row, int64 [N]
    classes: int

    def onehot(self, t: str | None = None) -> str:
        b = self.b
        hit = b.op("Equal", [b.unsqueeze(t or self.t, [1]), b.ints(np.arange(self.classes)[None])])
        return b.mask(hit)

    def gradient(self, policy, at: str | None = None, seeds: dict[str, str] | None = None) -> str:
        at = at or self.w
        return build_backward(self.b, seeds or {self.y: self.onehot()}, [at], policy)[at]


# ------------------------------------------------------------------------------------------ noise
_M = 2**31 - 1
_A, _C = 48271, 11
MAX_SAMPLES, MAX_STEPS = 10000, 2048


def gaussian_noise(shape, seed: int = 0) -> np.ndarray:
    """The standard-normal noise the exported SmoothGrad graph draws, reproduced in numpy (float32):
    a hash of (seed, flat element index) mod 2**31-1 (an affine step, a fifth power, two
    squarings), then Box-Muller. The fifth power is one-to-one mod 2**31-1 (5 does not divide
    2**31-2); a squaring there made the elements i and K - i (K from the seed) draw the same
    noise, for some seeds within a batch's elements."""
    i = np.arange(int(np.prod(shape)), dtype=np.int64)
    u1, u2 = _uniforms(i, seed)
    z = np.sqrt(np.float32(-2.0) * np.log(u1)) * np.cos(np.float32(2 * np.pi) * u2)
    return z.astype(np.float32).reshape(shape)


def _uniforms(i, seed):
    h = (i * _A + _C + seed * 7919) % _M
    h2 = h * h % _M
    h = (h2 * h2 % _M * h + 12345) % _M
    h = (h * h + 6789) % _M
    h2 = (h * h + 4242) % _M
    scale = np.float32(1.0 / _M)
    return ((h.astype(np.float32) + np.float32(0.5)) * scale, (h2.astype(np.float32) + np.float32(0.5)) * scale)


def _graph_noise(b: Builder, shape: str, seed: int) -> str:
    """The same noise as `gaussian_noise`, built in the graph for a runtime shape tensor."""
    if b.opset < 11:
        raise UnsupportedModelError(f"smoothgrad needs opset >= 11 (Range, Mod); the model has {b.opset}")
    count = b.reduce("ReduceProd", shape, [0], keepdims=0)
    i = b.op("Range", [b.ints(0), count, b.ints(1)])

    def step(h, mul, add):
        return b.op("Mod", [b.op("Add", [b.op("Mul", [h, mul]), b.ints(add)]), b.ints(_M)])

    h = step(i, b.ints(_A), _C + seed * 7919)
    squared = step(h, h, 0)
    h = step(step(squared, squared, 0), h, 12345)  # h ** 5: one-to-one mod _M (see gaussian_noise)
    h = step(h, h, 6789)
    h2 = step(h, h, 4242)

    def f32(value):  # drawn in float32 whatever the model's type (in float16, 2**31 overflows)
        return b.const(value, dtype=np.float32)

    def uniform(v):
        f = b.op("Cast", [v], to=TensorProto.FLOAT)
        return b.op("Mul", [b.op("Add", [f, f32(0.5)]), f32(1.0 / _M)])

    radius = b.op("Sqrt", [b.op("Mul", [f32(-2.0), b.op("Log", [uniform(h)])])])
    z = b.op("Mul", [radius, b.op("Cos", [b.op("Mul", [f32(2 * np.pi), uniform(h2)])])])
    if b.dtype != TensorProto.FLOAT:
        z = b.op("Cast", [z], to=b.dtype)
    return b.op("Reshape", [z, shape])


# ------------------------------------------------------------------------------------------ helpers
def _tail_shape(b: Builder, w: str) -> str:
    """Shape(w)[1:] as an int64 tensor."""
    return b.slice(b.shape_of(w), [1], [np.iinfo(np.int64).max], [0])


def _shape_with(b: Builder, w: str, axis: int, middle: list, lead: list = ()) -> str:
    """Shape(w) with its dim `axis` replaced by the ints `middle`, after the ints `lead`."""
    if axis == 0:
        return b.op("Concat", [b.ints([*lead, *middle]), _tail_shape(b, w)], axis=0)
    shape = b.shape_of(w)
    parts = [b.slice(shape, [0], [axis], [0]), b.ints(list(middle)),
             b.slice(shape, [axis + 1], [np.iinfo(np.int64).max], [0])]
    return b.op("Concat", ([b.ints(list(lead))] if lead else []) + parts, axis=0)


def batch_axis(b: Builder, t: str, y: str) -> int | None:
    """The axis of `t` that is the scores' batch axis (axis 0 of `y`): the one axis proven the
    same size (equal static sizes, the same symbolic dim or expression of the inputs' dims; a
    time-major [T, N, F] input has it on axis 1), else axis 0 unless proven to differ, else the
    one axis not proven to differ; None when that singles out no axis. Where the guess of axis 0
    is wrong (a time-major input with unnamed dims) the batched methods' seed Reshape fails at run
    time rather than mixing copies."""
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


def _stacking_axis(ctx: Context, t: str) -> int:
    """The batch axis of `t` (the input, or the --wrt tensor), along which the batched methods
    stack their copies: it must be dynamic and known."""
    b = ctx.b
    axis = batch_axis(b, t, ctx.y)
    batch = (b.shapes.get(ctx.y) or [None])[0]
    if batch is None and axis is not None:
        batch = b.shapes[t][axis]
    if batch is not None:
        where = f" (axis {axis})" if axis else ""
        raise UnsupportedModelError(
            f"the input '{ctx.x}' has a fixed batch of {batch}{where}: this method runs its copies of the input as "
            "one batch (sizes fixed at export would mix or refuse them); export the model with a dynamic batch axis")
    if axis is None:
        raise UnsupportedModelError(
            f"cannot tell which axis of '{t}' {b.dims_text(t)} is the batch axis of the scores '{ctx.y}' "
            f"{b.dims_text(ctx.y)}, along which this method stacks its copies; give the input's batch axis and "
            "the scores' axis 0 one symbolic name at export")
    return axis


def _batched(ctx: Context, stacked: str, copies: int, axis: int) -> tuple[str, dict[str, str], str]:
    """Run the forward on `stacked` (w with a copies axis inserted before its batch axis `axis`:
    [copies, N, ...] for a batch-first w) in place of w: returns (the batch fed in place of w,
    copy after copy along its batch axis, the copy's tensor names, targets repeated per copy)."""
    b = ctx.b
    xa = axis if ctx.x == ctx.w else _stacking_axis(ctx, ctx.x)
    flat = b.op("Reshape", [stacked, _shape_with(b, ctx.w, axis, [-1])])
    feeds = {}
    for name in ctx.inputs:  # other inputs with the same batch axis go along, copied; the rest as they are
        if name == ctx.w:
            continue
        rank = len(b.shapes.get(name) or [])
        along = [i for i in range(rank) if b.same_dim(name, i, ctx.x, xa)]
        if len(along) > 1:
            raise UnsupportedModelError(f"the input '{name}' {b.dims_text(name)} has the batch axis of '{ctx.x}' "
                                        f"on axes {along}: cannot tell along which to copy it")
        if along:
            feeds[name] = b.op("Tile", [name, b.ints([copies if i == along[0] else 1 for i in range(rank)])])
    rename = b.clone_forward(feeds, {ctx.w: flat})
    if ctx.y not in rename:
        raise UnsupportedModelError(f"the scores '{ctx.y}' do not depend on '{ctx.w}'")
    return flat, rename, b.op("Tile", [ctx.t, b.ints([copies])])


def _seed_like(b: Builder, seed: str, scores: str) -> str:
    """The copies' seed [copies * N, classes] reshaped to the copies' scores: the same shape, unless
    the copies were stacked along an axis that is not the batch's (then it fails at run time
    instead of broadcasting one row's seed over the copies)."""
    return b.op("Reshape", [seed, b.shape_of(scores)])


def _per_copy(b: Builder, g: str, copies: int, w: str, axis: int) -> str:
    """g (shaped like the batch `_batched` feeds) with the copies on their own axis `axis`."""
    return b.op("Reshape", [g, _shape_with(b, w, axis, [copies, -1])])


def check_baseline(base: np.ndarray, dims: list, wrt: str | None = None) -> None:
    """The baseline must broadcast against the path's tensor (the input, or the --wrt tensor
    `wrt`): no more dims, each 1 or that tensor's size."""
    ok = base.ndim <= len(dims) and all(d == 1 or w is None or d == w for d, w in zip(base.shape[::-1], dims[::-1]))
    if not ok:
        what = "the input" if wrt is None else f"the --wrt tensor '{wrt}'"
        raise OptionError(f"baseline of shape {list(base.shape)} does not broadcast against {what} "
                          f"{['?' if w is None else w for w in dims]}")


def ig_points(steps: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, weights) of the path quadrature, as Captum's `approximation_parameters`."""
    n = steps
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return 0.5 * (nodes + 1), 0.5 * weights
    if method == "riemann_trapezoid":
        if n < 2:
            raise OptionError("riemann_trapezoid needs at least 2 steps")
        # Captum's weights, kept for parity: 1/n with halved ends (they sum to (n-1)/n, not 1).
        weights = np.full(n, 1.0 / n)
        weights[[0, -1]] /= 2
        return np.linspace(0, 1, n), weights
    alphas = {"riemann_left": np.linspace(0, 1 - 1 / n, n), "riemann_right": np.linspace(1 / n, 1, n),
              "riemann_middle": np.linspace(1 / (2 * n), 1 - 1 / (2 * n), n)}
    if method not in alphas:
        raise OptionError(f"unknown integration method '{method}' (choose from {', '.join(IG_METHODS)})")
    return alphas[method], np.full(n, 1.0 / n)


def _to_last(rank: int) -> list[int]:  # channels first -> last: [0, 2, 3, 1] for an image
    return [0] + list(range(2, rank)) + [1]


def _to_first(rank: int) -> list[int]:  # channels last -> first: [0, 3, 1, 2] for an image
    return [0, rank - 1] + list(range(1, rank - 1))


def _perm(node) -> list | None:
    return attrs(node).get("perm") if node.op_type == "Transpose" else None


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
    if src is not None and _perm(src) == _to_last(rank):
        return src.input[0]
    # a channels-last image map (Keras MobileNetV3's, timm Swin's after its last LayerNorm); at
    # other ranks only a convolutional one: a sequence model's tokens [N, T, d] are pooled so too
    found, convolutional = _layout(b, x)
    return x if found == {rank - 1} and (convolutional or rank == 4) else None


# ops whose 4-D output is a convolutional activation [N, K, h, w] (not attention's [N, heads, T, d])
_CNN_OPS = {"Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization", "Relu", "LeakyRelu", "PRelu",
            "Clip", "Elu", "Selu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Mish", "MaxPool", "AveragePool"}
# ops whose output is channels-first whatever its rank (an activation of rank 3 may as well be a
# sequence's [N, T, d]: there only these, and element-wise ops right after them, count)
_CHANNEL_FIRST = {"Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization", "MaxPool", "AveragePool"}


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
    if node.op_type in _CHANNEL_FIRST:
        return True
    src = producer.get(node.input[0]) if node.input else None
    if node.op_type in _CNN_OPS and src is not None and src.op_type in _CHANNEL_FIRST:
        return True
    if node.op_type == "Transpose" or len(b.shapes.get(node.output[0]) or []) != rank:
        return False
    found, convolutional = _layout(b, node.output[0])
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


# ops that read their input channels-first
_CHANNELS_FIRST = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "BatchNormalization",
                   "InstanceNormalization", "GlobalAveragePool", "GlobalMaxPool", "LRN", "GroupNormalization"}


def input_is_nhwc(b: Builder, x: str) -> bool:
    """Whether the input (an image, a signal [N, L, C] or a volume) is channels-last: x's axis that
    the first Conv, pool or normalisation reading it treats as channels is its last (_layout:
    through pads and crops, Unsqueeze and Transpose, as tf2onnx writes a Keras model's start, a
    Conv1D as Unsqueeze, Transpose, Conv) rather than axis 1. Where that is not found (a Reshape
    in between): an input whose last dim is 1 or 3 and whose second is not."""
    xs = b.shapes.get(x) or []
    found = _layout(b, x, linear=False)[0] & {1, len(xs) - 1}
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
    if n.op_type in _CHANNELS_FIRST:
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


def _graph_maps(b: Builder) -> tuple[dict, dict]:
    """(tensor -> producing node, tensor -> consuming nodes) of the forward graph, once per Builder."""
    maps = getattr(b, "_layout_maps", None)
    if maps is None:
        producer, consumers = {}, {}
        for n in b.model.graph.node:
            producer.update((o, n) for o in n.output)
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        maps = b._layout_maps = (producer, consumers)
    return maps


def _unsqueezed(b: Builder, n, axes: list, back: bool) -> list | None:
    """Axes through an Unsqueeze or Squeeze n (`axes` those of its output if `back`, else of its
    input): inserted axes are None, removed ones dropped."""
    where = attrs(n).get("axes")
    if where is None and len(n.input) > 1 and n.input[1]:
        where = b.static_value(n.input[1])
    short, long = (n.input[0], n.output[0]) if n.op_type == "Unsqueeze" else (n.output[0], n.input[0])
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


def _layout(b: Builder, t: str, linear: bool = True) -> tuple[set, bool]:
    """(the axes of `t` found to be channels, whether t is a convolutional map: every trail back
    from it ends at a Conv, pool or normalisation over channels, with no LayerNorm or Linear on
    the way). The values of t are followed back to where they come from and on to where they go,
    through ops that keep their layout (element-wise ops and activations, pads, crops, joins),
    Transposes (the axes permuted along), Unsqueeze and Squeeze, Reshapes that keep the last
    length (the last axis kept), LayerNorms and Linears (the last axis dropped), to the nodes that
    tell a channel axis (_channel_axis): the axes the strong ones tell, else those the weak ones
    tell (`linear`: also LayerNorms and Linears)."""
    rank = len(b.shapes.get(t) or [])
    producer, consumers = _graph_maps(b)

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
                perm = _perm(n) or list(reversed(range(len(axes))))
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
    LayerNorm or Linear, is its last (_layout). As tf2onnx leaves Keras MobileNetV3's last
    activation before its pooling, PyTorch's ConvNeXt and Swin blocks between their permutes.
    Channels-first where nothing tells or the evidence disagrees."""
    rank = len(b.shapes.get(t) or [])
    return rank >= 3 and _layout(b, t)[0] == {rank - 1}


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
    return b.op("Transpose", [up], perm=_to_last(rank)) if nhwc else up


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
        cam = b.op("Transpose", [cam], perm=_to_first(rank))
    return layer, cam, _upsample(ctx, cam, layer)


def cam_axes(b: Builder, layer: str) -> tuple[int, list[int]]:
    """The channel axis and the spatial axes of a Grad-CAM layer [N, K, ...] or, where
    `channels_last`, [N, ..., K]."""
    rank = len(b.shapes.get(layer) or [])
    return (rank - 1, list(range(1, rank - 1))) if channels_last(b, layer) else (1, list(range(2, rank)))


def build(method: str, ctx: Context, opts: Options) -> dict[str, str]:
    """Emit `method` into ctx.b; returns {output name: tensor name} ("attribution" and extras)."""
    b = ctx.b
    if method in BASE:
        return {"attribution": ctx.gradient(get_method(method, relu_like=opts.relu_like))}
    if method == "gradient-x-input":
        return {"attribution": b.op("Mul", [ctx.gradient(get_method("saliency")), ctx.w])}
    if method == "smoothgrad":
        s = opts.samples
        wa = _stacking_axis(ctx, ctx.w)
        rank = b.rank(ctx.w)
        axes = [a for a in range(rank) if a != wa]
        span = b.op("Sub", [b.reduce("ReduceMax", ctx.w, axes), b.reduce("ReduceMin", ctx.w, axes)])
        # one draw per sample and element of a row, the same for every row: a row's result does
        # not depend on the batch it comes in nor on its place there. Drawn [s, row with a 1 at
        # the batch axis], then the samples moved next to the batch axis
        z = _graph_noise(b, _shape_with(b, ctx.w, wa, [1], lead=[s]), opts.seed)
        if wa:
            z = b.op("Transpose", [z], perm=list(range(1, wa + 1)) + [0] + list(range(wa + 1, rank + 1)))
        noise = b.op("Mul", [z, b.op("Mul", [span, b.scalar(opts.noise)])])
        flat, rename, t = _batched(ctx, b.op("Add", [b.unsqueeze(ctx.w, [wa]), noise]), s, wa)
        g = ctx.gradient(get_method("saliency"), at=flat, seeds={rename[ctx.y]: _seed_like(b, ctx.onehot(t), rename[ctx.y])})
        return {"attribution": b.reduce("ReduceMean", _per_copy(b, g, s, ctx.w, wa), [wa], keepdims=0)}
    if method == "integrated-gradients":
        alphas, weights = ig_points(opts.steps, opts.ig_method)
        alphas, weights = np.append(alphas, 0.0), np.append(weights, 0.0)  # last copy: the baseline
        k = len(alphas)
        rank = b.rank(ctx.w)
        check_baseline(np.asarray(opts.baseline), b.shapes.get(ctx.w) or [None] * rank, None if ctx.w == ctx.x else ctx.w)
        wa = _stacking_axis(ctx, ctx.w)
        base_value = np.asarray(opts.baseline, dtype=b.np_dtype)
        base = b.const(base_value)
        diff = b.op("Sub", [ctx.w, base])
        lifted = b.const(alphas.astype(b.np_dtype).reshape([1] * wa + [k] + [1] * (rank - wa)))
        if base_value.ndim > rank - wa:  # it reaches the axes before the copies' axis: give it that axis too
            base = b.const(np.expand_dims(base_value.reshape((1,) * (rank - base_value.ndim) + base_value.shape), wa))
        points = b.op("Add", [b.op("Mul", [lifted, b.unsqueeze(diff, [wa])]), base])
        flat, rename, t = _batched(ctx, points, k, wa)
        yc = rename[ctx.y]
        scale = b.const(weights.astype(b.np_dtype).reshape(k, 1, 1))
        seed = b.op("Reshape", [b.op("Mul", [b.op("Reshape", [ctx.onehot(t), b.ints([k, -1, ctx.classes])]), scale]),
                                b.ints([-1, ctx.classes])])
        g = ctx.gradient(get_method("saliency"), at=flat, seeds={yc: _seed_like(b, seed, yc)})
        att = b.op("Mul", [b.reduce("ReduceSum", _per_copy(b, g, k, ctx.w, wa), [wa], keepdims=0), diff])
        picked = ctx.onehot()
        y_x = b.reduce("ReduceSum", b.op("Mul", [ctx.y, picked]), [1], keepdims=0)
        y_all = b.op("Reshape", [yc, b.ints([k, -1, ctx.classes])])
        y_base = b.op("Gather", [y_all, b.ints(k - 1)], axis=0)
        y_b = b.reduce("ReduceSum", b.op("Mul", [y_base, picked]), [1], keepdims=0)
        total = b.reduce("ReduceSum", att, [a for a in range(rank) if a != wa], keepdims=0)
        gap = b.op("Sub", [total, b.op("Sub", [y_x, y_b])])
        return {"attribution": att, "completeness_gap": gap}
    if method in CAM_METHODS:
        layer, cam, up = gradcam_maps(ctx, opts)
        out = {"cam": cam}
        if method == "gradcam":
            out["attribution"] = up
        else:
            guided = ctx.gradient(get_method("guided", relu_like=opts.relu_like), at=ctx.x)
            out["attribution"] = b.op("Mul", [guided, up])
        out["_layer"] = layer
        return out
    raise OptionError(f"unknown method '{method}' (choose from {', '.join(ALL_METHODS)})")
