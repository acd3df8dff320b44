"""Check one VJP rule set on a tiny model, JAX `check_vjp` style.

A `Case` is a one-or-few-node graph written once in float64. `check_case` builds it, asks
`onnxattr.api.vjp_model` for its backward graph, and checks

* float64 (onnx.reference): <J t, c> by central differences of the forward equals <t, VJP(c)>,
  for random inputs x, directions t and cotangents c;
* float32 (ONNX Runtime, CPU): the same model converted to float32 gives the float64 VJP (and
  the forward outputs) to float32 accuracy;
* both backward models pass `onnx.checker.check_model(full_check=True)` and use only
  default-domain ops.

Inputs that are differentiated are graph inputs; everything else (weights, shapes, axes) is an
initializer. Inputs are drawn away from kinks: `In(avoid=...)` keeps values at least `GAP` from
the listed points, and `In(kind="distinct")` draws all such inputs of a case from one shuffled
grid with spacing 2 `GAP`, so maxima are unique (MaxPool, Max/Min, GlobalMaxPool).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_rnn import RNN_14 as _UpstreamRNN
from onnx.reference.ops.op_loop import Loop as _UpstreamLoop
from onnx.reference.ops.op_scan import Scan as _UpstreamScan

from onnxattr.api import vjp_model

GAP = 0.02  # minimum distance from a kink / between competing maxima
EPS = 1e-6  # central-difference step (float64)
DIRECTIONS = 2  # random (t, c) pairs per case

# Tolerances from measurements over the whole table with 20 seeds each:
# * FD_RTOL: |<J t, c> - <t, VJP(c)>| over the sum of the absolute terms of both sides. Median
#   4e-11, max 7e-9 (HardSigmoid/HardSwish/LeakyRelu defaults, whose float32 attribute defaults
#   in the reference differ from the exact constants the rules use by ~1e-8 relative).
# * F32_RTOL: max |float32 ORT - float64 reference| over max |float64 value|, per output.
#   Median 1e-7, max 5e-6 (a gradient summed over a broadcast scalar, with cancellation).
FD_RTOL = 1e-7
F32_RTOL = 5e-5


@dataclass
class In:
    """A differentiated graph input: its shape and how to draw it."""

    shape: tuple
    kind: str = "normal"  # normal | positive | distinct
    scale: float = 1.0  # normal: standard deviation; positive: values in [0.5, 0.5 + 2 * scale]
    avoid: tuple = ()  # kink locations to stay GAP away from


@dataclass
class Case:
    id: str
    opset: int
    nodes: list
    inputs: dict  # name -> In (graph inputs, all differentiated)
    outputs: tuple = ("y",)
    inits: dict = field(default_factory=dict)  # name -> array (float64 arrays follow the model dtype)
    no_ort: str = ""  # why ONNX Runtime cannot run the forward op itself (then only float64 is checked)
    no_float64: str = ""  # why the float64 model is not valid ONNX (the checker then skips it)


def case(id, opset, nodes, inputs, outputs=("y",), no_ort="", no_float64="", **inits) -> Case:
    if isinstance(nodes, onnx.NodeProto):
        nodes = [nodes]
    inputs = {k: v if isinstance(v, In) else In(tuple(v)) for k, v in inputs.items()}
    return Case(id, opset, list(nodes), inputs, tuple(outputs), inits, no_ort, no_float64)


N = helper.make_node


# ------------------------------------------------------------------------------ building
def build(c: Case, out_shapes: dict | None = None) -> onnx.ModelProto:
    """The float64 model of a case (outputs typed, and shaped once `out_shapes` is known)."""
    inputs = [helper.make_tensor_value_info(k, TensorProto.DOUBLE, list(v.shape)) for k, v in c.inputs.items()]
    outputs = [helper.make_tensor_value_info(o, TensorProto.DOUBLE, (out_shapes or {}).get(o)) for o in c.outputs]
    inits = []
    for name, v in c.inits.items():
        inits.append(numpy_helper.from_array(np.asarray(v), name))  # float32 ones (Resize scales) stay
    graph = helper.make_graph(c.nodes, c.id.replace("/", "_"), inputs, outputs, inits)
    opsets = [helper.make_opsetid("", c.opset)]
    model = helper.make_model(graph, opset_imports=opsets)
    # onnx 1.23 stamps IR 14, which ONNX Runtime refuses: use the oldest IR the opset allows.
    model.ir_version = max(8, helper.find_min_ir_version_for(opsets))
    return model


def to_float32(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with every float64 tensor, type and Cast target turned into float32."""
    return _retyped(model, TensorProto.DOUBLE, TensorProto.FLOAT)


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with every float32 tensor, type and Cast target turned into float64 (for a
    graph with no input that must stay float32, such as Resize scales)."""
    return _retyped(model, TensorProto.FLOAT, TensorProto.DOUBLE)


def _retyped(model: onnx.ModelProto, old: int, new: int) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    _retype_graph(m.graph, old, new)
    return m


def _retype_graph(g: onnx.GraphProto, old: int, new: int) -> None:
    """In place, subgraphs (Loop bodies) included."""
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type == old:
            vi.type.tensor_type.elem_type = new

    def fix_tensor(t):
        if t.data_type == old:
            value = numpy_helper.to_array(t).astype(helper.tensor_dtype_to_np_dtype(new))
            t.CopyFrom(numpy_helper.from_array(value, t.name))

    for t in g.initializer:
        fix_tensor(t)
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                fix_tensor(a.t)
            elif a.type == onnx.AttributeProto.GRAPH:
                _retype_graph(a.g, old, new)
            elif a.name == "to" and n.op_type == "Cast" and a.i == old:
                a.i = new


# ------------------------------------------------------------------------------ sampling
def _away(x: np.ndarray, avoid, scale, rng) -> np.ndarray:
    for _ in range(100):
        bad = np.zeros(x.shape, bool)
        for p in avoid:
            bad |= np.abs(x - p) < GAP
        if not bad.any():
            return x
        x[bad] = rng.standard_normal(int(bad.sum())) * scale
    raise AssertionError("could not draw inputs away from the kinks")


def sample_inputs(c: Case, rng) -> dict:
    distinct = [k for k, v in c.inputs.items() if v.kind == "distinct"]
    total = sum(int(np.prod(c.inputs[k].shape)) for k in distinct)
    pool = iter(rng.permutation(np.arange(total) - total / 2 + 0.25) * GAP * 2)  # spacing 2 GAP, none at 0
    xs = {}
    for name, spec in c.inputs.items():
        size = int(np.prod(spec.shape))
        if spec.kind == "distinct":
            x = np.array([next(pool) for _ in range(size)], dtype=np.float64)
        elif spec.kind == "positive":
            x = 0.5 + 2 * spec.scale * rng.random(size)
        else:
            x = rng.standard_normal(size) * spec.scale
        xs[name] = _away(x, spec.avoid, spec.scale, rng).reshape(spec.shape)
    return xs


# ------------------------------------------------------------------------------ reference fixes
# onnx 1.23's reference evaluator gets these ops wrong (or too imprecise for differences at
# 1e-6); slow numpy versions written from the ONNX spec replace them. The float32 check then
# compares what they compute with ONNX Runtime, so a mistake here would show up there too.
class _Fix(OpRun):
    op_domain = ""

    @property
    def opset(self) -> int:
        return self.run_params["opsets"][""]

    def attr(self, name, default=None):
        for a in self.onnx_node.attribute:
            if a.name == name:
                v = helper.get_attribute_value(a)
                return v.decode() if isinstance(v, bytes) else v
        return default


class ConvTranspose(_Fix):  # upstream: group > 1 reshapes the weights wrongly
    def _run(self, x, w, bias=None, **_):
        assert self.attr("auto_pad", "NOTSET") == "NOTSET" and self.attr("output_shape") is None
        n, size, k = x.ndim - 2, x.shape[2:], w.shape[2:]
        s, d = self.attr("strides", [1] * n), self.attr("dilations", [1] * n)
        pads, extra, group = self.attr("pads", [0] * 2 * n), self.attr("output_padding", [0] * n), self.attr("group", 1)
        cg, mg = x.shape[1] // group, w.shape[1]
        full = [(size[i] - 1) * s[i] + (k[i] - 1) * d[i] + 1 + extra[i] for i in range(n)]
        y = np.zeros((x.shape[0], mg * group, *full))
        for kidx in np.ndindex(*k):
            at = tuple(slice(kidx[i] * d[i], kidx[i] * d[i] + (size[i] - 1) * s[i] + 1, s[i]) for i in range(n))
            for g in range(group):
                part = np.einsum("nc...,cm->nm...", x[:, g * cg:(g + 1) * cg], w[(slice(g * cg, (g + 1) * cg), slice(None)) + kidx])
                y[(slice(None), slice(g * mg, (g + 1) * mg)) + at] += part
        y = y[(slice(None), slice(None)) + tuple(slice(pads[i], full[i] - pads[n + i]) for i in range(n))]
        if bias is not None:
            y = y + bias.reshape([-1] + [1] * n)
        return (y.astype(x.dtype),)


class Erf(_Fix):  # upstream: computed in float32
    def _run(self, x, **_):
        return (np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype),)


def _softmax(x, axis, opset, log):
    axis %= x.ndim
    z = x.reshape(int(np.prod(x.shape[:axis])), -1) if opset < 13 else x
    a = 1 if opset < 13 else axis
    z = z - z.max(axis=a, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=a, keepdims=True))
    return ((z - lse) if log else np.exp(z - lse)).reshape(x.shape)


class Softmax(_Fix):  # upstream: opset < 13 (flatten to 2-D at `axis`) is not implemented
    def _run(self, x, **_):
        return (_softmax(x, self.attr("axis", 1 if self.opset < 13 else -1), self.opset, False),)


class LogSoftmax(_Fix):
    def _run(self, x, **_):
        return (_softmax(x, self.attr("axis", 1 if self.opset < 13 else -1), self.opset, True),)


class Gelu(_Fix):  # upstream: its function body runs the float32 Erf
    def _run(self, x, **_):
        if self.attr("approximate", "none") == "tanh":
            return (0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),)
        return (0.5 * x * (1 + Erf._run(self, x / math.sqrt(2))[0]),)


class MeanVarianceNormalization(_Fix):  # upstream: its function body adds a float32 epsilon
    def _run(self, x, **_):
        axes = tuple(self.attr("axes", [0, 2, 3]))
        mean = x.mean(axis=axes, keepdims=True)
        std = np.sqrt((x * x).mean(axis=axes, keepdims=True) - mean * mean)  # the spec's E[x^2] - E[x]^2
        return ((x - mean) / (std + 1e-9),)


class GlobalMaxPool(_Fix):  # upstream: wrong axes unless there are exactly 2 spatial dims
    def _run(self, x, **_):
        return (x.max(axis=tuple(range(2, x.ndim)), keepdims=True),)


def _pool_windows(op: _Fix, size) -> tuple:
    """(kernel, strides, dilations, begin pads, end pads, output lengths) of a pool node as ONNX
    Runtime reads them: with ceil_mode, no window starts in the end padding."""
    k = op.attr("kernel_shape")
    n = len(k)
    s, d, auto = op.attr("strides", [1] * n), op.attr("dilations", [1] * n), op.attr("auto_pad", "NOTSET")
    span = [(k[i] - 1) * d[i] + 1 for i in range(n)]
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        out = [-(-size[i] // s[i]) for i in range(n)]
        total = [max(0, (out[i] - 1) * s[i] + span[i] - size[i]) for i in range(n)]
        begin = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in total]
        return k, s, d, begin, [t - b for t, b in zip(total, begin)], out
    pads = [0] * (2 * n) if auto == "VALID" else op.attr("pads", [0] * (2 * n))
    out = []
    for i in range(n):
        room = size[i] + pads[i] + pads[n + i] - span[i]
        o = (-(-room // s[i]) if op.attr("ceil_mode", 0) else room // s[i]) + 1
        out.append(o - 1 if (o - 1) * s[i] >= size[i] + pads[i] else o)  # no window starts in the end pad
    return k, s, d, pads[:n], pads[n:], out


class AveragePool(_Fix):  # upstream: ceil_mode at stride 3 averages the wrong elements ([1..7] -> 1.5, 4, 6)
    def _run(self, x, **_):
        size = x.shape[2:]
        k, s, d, begin, end, out = _pool_windows(self, size)
        n, counted = len(k), self.attr("count_include_pad", 0)
        y = np.zeros(x.shape[:2] + tuple(out), x.dtype)
        for o in np.ndindex(*out):
            total, count = 0.0, 0
            for kk in np.ndindex(*k):
                pos = [o[i] * s[i] - begin[i] + kk[i] * d[i] for i in range(n)]
                if all(0 <= pos[i] < size[i] for i in range(n)):
                    total, count = total + x[(Ellipsis, *pos)], count + 1
                elif counted and all(-begin[i] <= pos[i] < size[i] + end[i] for i in range(n)):
                    count += 1
            y[(Ellipsis, *o)] = total / count
        return (y,)


class MaxPool(_Fix):  # upstream: wrong Indices when windows overlap
    def _run(self, x, **_):
        assert not self.attr("storage_order", 0)
        size = x.shape[2:]
        k, s, d, begin, _, out = _pool_windows(self, size)
        n = len(k)
        lead = x.shape[:2]
        y = np.full(lead + tuple(out), -np.inf)
        idx = np.zeros(lead + tuple(out), np.int64)
        base = np.arange(int(np.prod(lead))).reshape(lead) * int(np.prod(size))
        for o in np.ndindex(*out):
            for kk in np.ndindex(*k):  # scan order: the first maximum wins
                pos = [o[i] * s[i] - begin[i] + kk[i] * d[i] for i in range(n)]
                if all(0 <= pos[i] < size[i] for i in range(n)):
                    v = x[(Ellipsis, *pos)]
                    better = v > y[(Ellipsis, *o)]
                    y[(Ellipsis, *o)] = np.where(better, v, y[(Ellipsis, *o)])
                    idx[(Ellipsis, *o)] = np.where(better, base + np.ravel_multi_index(pos, size), idx[(Ellipsis, *o)])
        return (y.astype(x.dtype), idx)[: len(self.onnx_node.output)]


class Mean(_Fix):  # upstream: accumulates in place, so the first input must have the full shape
    def _run(self, *xs, **_):
        return ((sum(np.broadcast_arrays(*xs)) / len(xs)).astype(xs[0].dtype),)


class Scatter(_Fix):  # upstream: not implemented (ScatterElements without reduction, opset 9-10)
    def _run(self, data, idx, updates, **_):
        y = data.copy()
        axis = self.attr("axis", 0) % data.ndim
        np.put_along_axis(y, idx.astype(np.int64) % data.shape[axis], updates, axis=axis)
        return (y,)


class LpNormalization(_Fix):  # upstream: sum(x ** p), so p = 1 sums signed values (ONNX Runtime: sum |x|)
    def _run(self, x, **_):
        axis, p = self.attr("axis", -1), self.attr("p", 2)
        norm = (np.abs(x) ** p).sum(axis=axis, keepdims=True) ** (1.0 / p)
        return (np.where(norm == 0, 0, x / np.where(norm == 0, 1, norm)).astype(x.dtype),)


class BatchNormalization(_Fix):  # upstream: training mode by default (opset 6-9), tuple output (6-7)
    def _run(self, x, scale, bias, mean, var, **_):
        assert self.attr("spatial", 1) == 1 and not self.attr("training_mode", 0)
        shape = [-1] + [1] * (x.ndim - 2)
        coef = scale / np.sqrt(var + self.attr("epsilon", 1e-5))
        return ((x - mean.reshape(shape)) * coef.reshape(shape) + bias.reshape(shape),)


class LRN(_Fix):  # upstream: loops over the batch instead of the channels, 4-D only
    def _run(self, x, **_):
        size = self.attr("size")
        alpha, beta, bias = self.attr("alpha", 1e-4), self.attr("beta", 0.75), self.attr("bias", 1.0)
        lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
        sq = np.zeros_like(x)
        for c in range(x.shape[1]):
            sq[:, c] = np.sum(x[:, max(0, c - lo):c + hi + 1] ** 2, axis=1)
        return (x / (bias + alpha / size * sq) ** beta,)


class Pad(_Fix):  # upstream: no negative pads, no Pad-2..10 for some opsets
    def _run(self, x, pads=None, value=None, axes=None, **_):
        mode = self.attr("mode", "constant")
        if self.opset < 11:
            pads, value = self.attr("pads", self.attr("paddings")), self.attr("value", 0.0)
        value = 0.0 if value is None else float(np.asarray(value))
        axes = list(range(x.ndim)) if axes is None else [int(a) % x.ndim for a in axes]
        full = [0] * (2 * x.ndim)
        for j, ax in enumerate(axes):
            full[ax], full[x.ndim + ax] = int(pads[j]), int(pads[len(axes) + j])
        before, after = full[:x.ndim], full[x.ndim:]
        x = x[tuple(slice(max(-b, 0), x.shape[i] - max(-a, 0)) for i, (b, a) in enumerate(zip(before, after)))]
        width = [(max(b, 0), max(a, 0)) for b, a in zip(before, after)]
        if mode != "constant":  # reflect, edge, wrap: numpy's modes of the same names
            return (np.pad(x, width, mode=mode).astype(x.dtype),)
        return (np.pad(x, width, constant_values=value).astype(x.dtype),)


class GroupNormalization(_Fix):  # upstream: the function body computes in float32 (stash_type)
    def _run(self, x, scale, bias, **_):
        assert self.opset >= 21
        groups, eps = self.attr("num_groups"), self.attr("epsilon", 1e-5)
        xr = x.reshape(x.shape[0], groups, -1)
        xhat = (xr - xr.mean(-1, keepdims=True)) / np.sqrt(xr.var(-1, keepdims=True) + eps)
        shape = [-1] + [1] * (x.ndim - 2)
        return ((xhat.reshape(x.shape) * scale.reshape(shape) + bias.reshape(shape)).astype(x.dtype),)


def _upsample_asymmetric(x, scales, mode):
    """Upsample-7/9 and Resize-10 as ONNX Runtime computes them: per axis, source coordinate
    out / scale; nearest takes its floor (its ceiling when shrinking), linear the two neighbours
    (clamped at the edge)."""
    for ax, s in enumerate(scales):
        n_in, n_out = x.shape[ax], int(np.floor(x.shape[ax] * s))
        src = np.arange(n_out) / s
        if mode == "nearest":
            idx = np.clip(np.ceil(src) if s < 1 else np.floor(src), 0, n_in - 1).astype(np.int64)
            x = np.take(x, idx, axis=ax)
        else:
            lo = np.clip(np.floor(src), 0, n_in - 1).astype(np.int64)
            hi = np.minimum(lo + 1, n_in - 1)
            r = np.clip(src - lo, 0, 1).reshape([-1] + [1] * (x.ndim - ax - 1))
            x = np.take(x, lo, axis=ax) * (1 - r) + np.take(x, hi, axis=ax) * r
    return x


class Upsample(_Fix):  # upstream: nearest with integer scales only, Upsample-9 only
    def _run(self, x, scales=None, **_):
        if scales is None:
            scales = self.attr("scales")
        mode = self.attr("mode", "nearest").replace("bilinear", "linear")
        return (_upsample_asymmetric(x, np.asarray(scales, np.float64), mode).astype(x.dtype),)


class Resize(_Fix):
    """upstream: Resize-10 (no coordinate_transformation_mode) is not implemented; with
    keep_aspect_ratio_policy, the transforms that read length_resized (the output's length, an
    integer) get scale x input length instead (7 x 5/3 = 11.7 for an output of 12)."""

    def _run(self, x, *args, **kwargs):
        if self.opset >= 11:
            from onnx.reference.ops.op_resize import Resize as Upstream

            names = [a.name for a in self.onnx_node.attribute]
            kwargs = {k: v for k, v in kwargs.items() if k in names or v is not None}
            policy, coord = self.attr("keep_aspect_ratio_policy", "stretch"), self.attr("coordinate_transformation_mode")
            if policy != "stretch" and coord in ("align_corners", "tf_crop_and_resize", "pytorch_half_pixel"):
                args, kwargs = self._policy_as_sizes(x, list(args), kwargs, policy, coord)
            return Upstream._run(self, x, *args, **kwargs)
        return (_upsample_asymmetric(x, np.asarray(args[0], np.float64), self.attr("mode", "nearest")).astype(x.dtype),)

    def _policy_as_sizes(self, x, args, kwargs, policy, coord):
        """The same resize as explicit output sizes with the stretch policy: the same function
        for transforms that read only the lengths; pytorch_half_pixel also reads the policy's
        scale, so it must equal output / input on every axis longer than 1 (asserted)."""
        sizes = np.asarray(args[2]).tolist()
        axes = [a % x.ndim for a in (self.attr("axes") or range(x.ndim))]
        ratios = [n / x.shape[a] for n, a in zip(sizes, axes)]
        scale = (min if policy == "not_larger" else max)(ratios)
        out = [int(math.floor(scale * x.shape[a] + 0.5)) for a in axes]  # round_int: halves up
        if coord == "pytorch_half_pixel":
            assert all(o == 1 or o / x.shape[a] == scale for o, a in zip(out, axes)), "not the same function"
        args[2] = np.asarray(out, np.int64)
        kwargs["keep_aspect_ratio_policy"] = "stretch"
        return args, kwargs


class GridSample(_Fix):  # upstream: coordinates in float32 (so float64 differences of the grid are noise)
    """4-D, bilinear / nearest, the three paddings, written pixel by pixel after PyTorch's
    GridSampler.h: unnormalise, reflect (about [-0.5, W - 0.5], or [0, W - 1] with align_corners)
    then clip, or clip (border), then interpolate with zeros outside."""

    def _run(self, x, grid, **_):
        mode, pad, align = self.attr("mode", "bilinear"), self.attr("padding_mode", "zeros"), bool(self.attr("align_corners", 0))
        n_, c_, h, w = x.shape
        out = np.zeros((n_, c_) + grid.shape[1:3], dtype=x.dtype)

        def coord(v, size):
            v = (v + 1) / 2 * (size - 1) if align else ((v + 1) * size - 1) / 2
            if pad == "reflection":
                lo, span = (0.0, size - 1.0) if align else (-0.5, float(size))
                if span <= 0:
                    return 0.0
                d = abs(v - lo)
                flips = np.floor(d / span)
                extra = np.fmod(d, span)
                v = extra + lo if flips % 2 == 0 else span - extra + lo
            if pad in ("border", "reflection"):
                v = min(max(v, 0.0), size - 1.0)
            return v

        def pixel(n, c, yy, xx):
            return x[n, c, yy, xx] if 0 <= yy < h and 0 <= xx < w else 0.0

        for n in range(n_):
            for i in range(grid.shape[1]):
                for j in range(grid.shape[2]):
                    ix, iy = coord(float(grid[n, i, j, 0]), w), coord(float(grid[n, i, j, 1]), h)
                    for c in range(c_):
                        if mode == "nearest":
                            out[n, c, i, j] = pixel(n, c, int(np.rint(iy)), int(np.rint(ix)))
                            continue
                        x0, y0 = int(np.floor(ix)), int(np.floor(iy))
                        ax, ay = ix - x0, iy - y0
                        out[n, c, i, j] = ((1 - ay) * ((1 - ax) * pixel(n, c, y0, x0) + ax * pixel(n, c, y0, x0 + 1))
                                           + ay * ((1 - ax) * pixel(n, c, y0 + 1, x0) + ax * pixel(n, c, y0 + 1, x0 + 1)))
        return (out,)


class AffineGrid(_Fix):  # upstream: the grid cast to float32
    """2-D: grid[n, h, w] = theta[n] @ (x_w, y_h, 1), x and y the pixel centres in [-1, 1] (or the
    corners, with align_corners)."""

    def _run(self, theta, size, **_):
        h, w = (int(v) for v in size[2:])
        align = bool(self.attr("align_corners", 0))

        def axis(n):
            return (np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1)) if align else (2.0 * np.arange(n) + 1.0) / n - 1.0

        out = np.zeros((theta.shape[0], h, w, 2), dtype=theta.dtype)
        for i, yv in enumerate(axis(h)):
            for j, xv in enumerate(axis(w)):
                out[:, i, j] = theta @ np.array([xv, yv, 1.0], dtype=theta.dtype)
        return (out,)


class Scan(_UpstreamScan):
    """Upstream scans forwards along axis 0 only (the recurrent rules scan in reverse; the Scan
    rule scans along other axes): each scanned input is moved to axis 0 and flipped where it is
    scanned in reverse, and each scan output the other way round."""

    op_domain = ""
    _OWN = ("scan_input_directions", "scan_output_directions", "scan_input_axes", "scan_output_axes")

    def __init__(self, onnx_node, run_params):
        a = {x.name: list(helper.get_attribute_value(x)) for x in onnx_node.attribute if x.name in self._OWN}
        self._dirs_in, self._dirs_out = a.get("scan_input_directions", []), a.get("scan_output_directions", [])
        self._axes_in, self._axes_out = a.get("scan_input_axes", []), a.get("scan_output_axes", [])
        node = onnx.NodeProto()
        node.CopyFrom(onnx_node)
        keep = [x for x in node.attribute if x.name not in a]
        del node.attribute[:]
        node.attribute.extend(keep)
        super().__init__(node, run_params)

    @staticmethod
    def _get(values, j):
        return values[j] if j < len(values) else 0

    def _run(self, *args, **kwargs):
        states = len(args) - self.num_scan_inputs
        args = list(args)
        for j in range(self.num_scan_inputs):
            v = np.moveaxis(args[states + j], self._get(self._axes_in, j), 0)
            args[states + j] = np.flip(v, 0) if self._get(self._dirs_in, j) == 1 else v
        outs = list(super()._run(*args, **kwargs))
        for j in range(len(outs) - states):
            v = np.flip(outs[states + j], 0) if self._get(self._dirs_out, j) == 1 else outs[states + j]
            outs[states + j] = np.moveaxis(v, 0, self._get(self._axes_out, j))
        return tuple(outs)


class Loop(_UpstreamLoop):
    """Upstream takes an omitted condition for false (the spec: run M times) and joins the
    stacked outputs with vstack (a [N, H] step output then gives [T * N, H], not [T, N, H])."""

    op_domain = ""

    def _run(self, M, cond, *carried, context=None, body=None, attributes=None, bindings=None):  # noqa: ARG002
        names, outs = self.body.input_names, self.body.output_names
        state = dict(zip(names[2:], carried))
        state.update(context or {})
        go = True if cond is None else bool(cond)
        it, stacked = 0, [[] for _ in range(len(outs) - 1 - len(carried))]
        values = list(carried)
        while go and (M is None or it < int(M)):
            state[names[0]] = np.array(it, dtype=np.int64)
            state[names[1]] = np.array(go)
            res = dict(zip(outs, self._run_body(state, attributes=attributes, bindings=bindings)))
            go = bool(res[outs[0]])
            values = [res[o] for o in outs[1:1 + len(carried)]]
            state.update(zip(names[2:], values))
            for k, o in enumerate(outs[1 + len(carried):]):
                stacked[k].append(res[o])
            it += 1
        return tuple(values) + tuple(np.stack(s) if s else np.zeros((0,)) for s in stacked)


class RNN(_UpstreamRNN):  # upstream: Tanh and Affine only, and the first activation for both directions
    op_domain = ""

    def _run_forward(self, *args):
        first, self._calls = self.f1, getattr(self, "_calls", 0) + 1
        if self.direction == "bidirectional" and self._calls % 2 == 0 and hasattr(self, "f2"):
            self.f1 = self.f2  # the reverse direction's pass (upstream runs forward, then reverse)
        try:
            return super()._run_forward(*args)
        finally:
            self.f1 = first

    def choose_act(self, name, alpha, beta):
        if name == "Relu":
            return lambda x: np.maximum(x, 0.0)
        if name == "Sigmoid":
            return lambda x: 1.0 / (1.0 + np.exp(-x))
        return super().choose_act(name, alpha, beta)


REFERENCE_FIXES = [Loop, Scan, RNN, ConvTranspose, Erf, Gelu, MeanVarianceNormalization, GroupNormalization, Upsample, Resize, Softmax, LogSoftmax, AveragePool,
                   MaxPool, GlobalMaxPool, Mean, BatchNormalization, LRN, Pad, GridSample, AffineGrid, LpNormalization, Scatter]


def reference(model: onnx.ModelProto) -> ReferenceEvaluator:
    return ReferenceEvaluator(model, new_ops=REFERENCE_FIXES)


# ------------------------------------------------------------------------------ checking
def _run_ref(model, feeds):
    return reference(model).run(None, feeds)


def _check_backward_model(vm: onnx.ModelProto) -> None:
    onnx.checker.check_model(vm, full_check=True)
    other = [(n.op_type, n.domain) for n in vm.graph.node if n.domain not in ("", "ai.onnx")]
    assert not other, f"backward graph uses non-default domains: {other}"


def check_case(c: Case, seed: int = 0, tune_for: str = "cpu") -> dict:
    """Run every check on a case, with the backward formulated for `tune_for`; returns the
    measured errors (raises AssertionError on failure)."""
    rng = np.random.default_rng(seed)
    x = sample_inputs(c, rng)
    probe = build(c)
    ys = _run_ref(probe, x)
    model = build(c, {o: list(y.shape) for o, y in zip(c.outputs, ys)})

    # float64: central differences of the forward against the VJP model, on the reference evaluator
    vm, cot_names, grad_names = vjp_model(model, tune_for=tune_for)
    if not c.no_float64:
        _check_backward_model(vm)
    assert set(grad_names) == set(c.inputs), (grad_names, c.inputs)
    ref_fwd = reference(model)
    ref_vjp = reference(vm)
    out_names = [o.name for o in vm.graph.output]
    fd_err = 0.0
    cots_last = grads_last = None
    for _ in range(DIRECTIONS):
        t = {k: rng.standard_normal(v.shape) for k, v in x.items()}
        cot = {o: rng.standard_normal(y.shape) for o, y in zip(c.outputs, ys)}
        plus = ref_fwd.run(None, {k: x[k] + EPS * t[k] for k in x})
        minus = ref_fwd.run(None, {k: x[k] - EPS * t[k] for k in x})
        jt = [(p - m) / (2 * EPS) for p, m in zip(plus, minus)]
        lhs_terms = [jt_i * cot[o] for jt_i, o in zip(jt, c.outputs)]
        res = dict(zip(out_names, ref_vjp.run(None, {**x, **{cot_names[o]: cot[o] for o in c.outputs}})))
        grads = {k: np.asarray(res[grad_names[k]]) for k in x}
        for k in x:
            assert grads[k].shape == x[k].shape, f"gradient of {k} has shape {grads[k].shape}, not {x[k].shape}"
        rhs_terms = [t[k] * grads[k] for k in x]
        lhs = sum(float(np.sum(v)) for v in lhs_terms)
        rhs = sum(float(np.sum(v)) for v in rhs_terms)
        scale = sum(float(np.sum(np.abs(v))) for v in lhs_terms + rhs_terms)
        assert scale > 0, "the case has an identically zero VJP: it tests nothing"
        err = abs(lhs - rhs) / scale
        assert err <= FD_RTOL, f"<J t, c> = {lhs!r} but <t, VJP(c)> = {rhs!r} (relative error {err:.2e})"
        fd_err = max(fd_err, err)
        cots_last, grads_last = cot, grads
        for o, y, r in zip(c.outputs, ys, [res[o] for o in c.outputs]):
            np.testing.assert_allclose(r, y, rtol=1e-12, atol=1e-12, err_msg=f"forward output {o} changed")

    # float32: the same case on ONNX Runtime against the float64 reference VJP
    m32 = to_float32(model)
    vm32, cot32, grad32 = vjp_model(m32, tune_for=tune_for)
    _check_backward_model(vm32)
    if c.no_ort:
        return {"fd": fd_err, "f32": None}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(vm32.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {k: v.astype(np.float32) for k, v in x.items()}
    feeds.update({cot32[o]: cots_last[o].astype(np.float32) for o in c.outputs})
    res32 = dict(zip([o.name for o in vm32.graph.output], sess.run(None, feeds)))
    f32_err = 0.0
    expected = [(o, ys[i]) for i, o in enumerate(c.outputs)] + [(grad32[k], grads_last[k]) for k in x]
    for name, want in expected:
        got = res32[name]
        assert got.dtype == np.float32 and got.shape == want.shape, (name, got.dtype, got.shape, want.shape)
        mag = float(np.max(np.abs(want))) if want.size else 0.0
        err = float(np.max(np.abs(got - want))) / mag if mag else float(np.max(np.abs(got), initial=0.0))
        assert err <= F32_RTOL, f"float32 ONNX Runtime {name}: max error {err:.2e} relative to max |value| {mag:.3g}"
        f32_err = max(f32_err, err)
    return {"fd": fd_err, "f32": f32_err}


def check_case_float64_ort(c: Case, seed: int = 0) -> float | None:
    """The float64 model's backward on ONNX Runtime (CPU) against the float64 reference VJP,
    where ONNX Runtime runs the case's forward in float64 (else None: nothing to run). ONNX
    Runtime lacks double kernels for some ops a backward could use (Clip-6, ConvTranspose): the
    exported model must not need them when the model itself runs."""
    rng = np.random.default_rng(seed)
    x = sample_inputs(c, rng)
    ys = _run_ref(build(c), x)
    model = build(c, {o: list(y.shape) for o, y in zip(c.outputs, ys)})
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 4
    try:
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, x)
    except Exception:  # noqa: BLE001  (no double kernel for the forward op itself)
        return None
    vm, cots, grads = vjp_model(model)
    sess = ort.InferenceSession(vm.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    cot = {cots[o]: rng.standard_normal(y.shape) for o, y in zip(c.outputs, ys)}
    names = [grads[k] for k in x]
    got = sess.run(names, {**x, **cot})
    want = reference(vm).run(names, {**x, **cot})
    err = 0.0
    for name, g, r in zip(names, got, want):
        assert g.dtype == np.float64 and g.shape == r.shape, (name, g.dtype, g.shape, r.shape)
        mag = float(np.max(np.abs(r))) if r.size else 0.0
        e = float(np.max(np.abs(g - r))) / mag if mag else float(np.max(np.abs(g), initial=0.0))
        assert e <= 1e-9, f"float64 ONNX Runtime gradient {name}: max error {e:.2e} relative to max |value| {mag:.3g}"
        err = max(err, e)
    return err
