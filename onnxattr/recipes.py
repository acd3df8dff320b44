"""Methods composed from the backward graph, all inside the ONNX graph (one session run):
gradient x input, SmoothGrad, integrated gradients, Grad-CAM and guided Grad-CAM.

SmoothGrad and integrated gradients run the forward on batched copies of the input: a copy of
the forward nodes (sharing the weights) reads S copies stacked along the input's batch axis (the
scores' axis 0: axis 1 of a time-major [T, N, F] input), and one backward pass serves all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from .backward import build_backward
from .errors import OptionError, UnsupportedModelError
from .gradcam import gradcam_maps
from .graph import Builder
from .layout import batch_axis
from .methods import get_method

BASE = ("saliency", "deconvnet", "guided")
COMPOSED = ("gradient-x-input", "smoothgrad", "integrated-gradients", "gradcam", "guided-gradcam")
ALL_METHODS = BASE + COMPOSED
CAM_METHODS = ("gradcam", "guided-gradcam")  # (the methods that take a --layer, and no --wrt)
IG_METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")
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


# dim names that exporters make up (TorchScript's dynamic_axes as lists, ONNX shape inference's,
# torch.export's): they say nothing of whether two dims are one
_MADE_UP = re.compile(r"(.*_dynamic_axes_\d+|unk__\d+|s\d+)")


def _dim_name(b, name: str, axis: int) -> str:
    p = b.shape_protos.get(name)
    return p.dim[axis].dim_param if p is not None and axis < len(p.dim) else ""


def _automatic(dim_name: str) -> bool:
    return not dim_name or _MADE_UP.fullmatch(dim_name) is not None


def _batched(ctx: Context, stacked: str, copies: int, axis: int) -> tuple[str, dict[str, str], str]:
    """Run the forward on `stacked` (w with a copies axis inserted before its batch axis `axis`:
    [copies, N, ...] for a batch-first w) in place of w: returns (the batch fed in place of w,
    copy after copy along its batch axis, the copy's tensor names, targets repeated per copy)."""
    b = ctx.b
    xa = axis if ctx.x == ctx.w else _stacking_axis(ctx, ctx.x)
    flat = b.op("Reshape", [stacked, b.shape_with(ctx.w, axis, [-1])])
    feeds = {}
    for name in ctx.inputs:  # other inputs with the same batch axis go along, copied; the rest as they are
        if name == ctx.w:
            continue
        rank = len(b.shapes.get(name) or [])
        along = [i for i in range(rank) if b.same_dim(name, i, ctx.x, xa)]
        if len(along) > 1:
            raise UnsupportedModelError(f"the input '{name}' {b.dims_text(name)} has the batch axis of '{ctx.x}' "
                                        f"on axes {along}: cannot tell along which to copy it")
        met = [i for i in range(rank) if b.shapes[name][i] is None and b.meet(name, i, ctx.x, xa)]
        if along:
            feeds[name] = b.op("Tile", [name, b.ints([copies if i == along[0] else 1 for i in range(rank)])])
        elif len(met) == 1:  # the batch under another name (TorchScript's dynamic_axes as lists name each input's
            # dims apart), or 1: it meets the batch in a broadcast (a padding mask) or as a recurrent layer's
            # initial state [D, N, H]; copied where its length is the batch's at run time
            ma = met[0]
            same = b.op("Equal", [b.slice(b.shape_of(name), [ma], [ma + 1], [0]), b.slice(b.shape_of(ctx.x), [xa], [xa + 1], [0])])
            tiled = b.ints([copies if i == ma else 1 for i in range(rank)])
            feeds[name] = b.op("Tile", [name, b.op("Where", [same, tiled, b.ints([1] * rank)])])
        elif xa < rank and b.shapes[name][xa] is None and b.untraced(name, xa, ctx.x, xa) and \
                _automatic(_dim_name(b, name, xa)):
            # (and is not the batch where it is not copied: a length nothing here follows, under a name no one
            # chose; copied where it is not the batch, it is wrong. A name of the user's own, apart from the
            # batch's, says it is not the batch: a memory bank [P, D] read through TopK stays as it is)
            named = [_dim_name(b, t, xa) or "?" for t in (name, ctx.x)]
            raise UnsupportedModelError(
                f"cannot tell whether axis {xa} of the input '{name}' ('{named[0]}') is the batch axis of '{ctx.x}' "
                f"('{named[1]}'): the graph takes it where its length is not followed, and this method runs its "
                f"copies of '{ctx.x}' as one batch, with '{name}' copied along only if it has one row per example; "
                "if it has, give the two dims one symbolic name at export (if not, a name of its own)")
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
    return b.op("Reshape", [g, b.shape_with(w, axis, [copies, -1])])


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
        z = _graph_noise(b, b.shape_with(ctx.w, wa, [1], lead=[s]), opts.seed)
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
        g = ctx.gradient(get_method("saliency"), at=flat, seeds={yc: _seed_like(b, ctx.onehot(t), yc)})
        # The quadrature weights apply after the backward, in float32 for a float16 model: a seed
        # scaled by them (about 1 / steps) left each copy's float16 gradient subnormal, and the
        # error grew with the steps (ViT-Tiny: 9.7e-4 at 32 steps, 3.2e-3 at 128).
        # The baseline's copy (the last) is left out, not weighted by 0: its gradient may be inf or
        # NaN (sqrt(|x|) at a baseline of 0; a float16 ConvNeXt at 0), and 0 x NaN made the whole
        # attribution NaN where no quadrature point is at the baseline.
        with b.float32(g, diff) as ((g, d), narrow):
            lifted_w = b.const(weights[:-1].astype(b.np_dtype).reshape([1] * wa + [k - 1] + [1] * (rank - wa)))
            points_g = b.slice(_per_copy(b, g, k, ctx.w, wa), [0], [k - 1], [wa])
            summed = b.reduce("ReduceSum", b.op("Mul", [points_g, lifted_w]), [wa], keepdims=0)
            att = narrow(b.op("Mul", [summed, d]))
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
