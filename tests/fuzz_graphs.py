"""Random small ONNX classifiers, and an independent numpy interpreter for them (tests/test_fuzz.py).

`graphs()` is a hypothesis strategy for float64 models [input] -> ... -> [N, K] over the ops in
`FUZZ_OPS`: random shapes and attributes, numpy broadcasting, constants as initializers or
Constant nodes, and fan-out (any earlier tensor may be read again, by several nodes or twice by
one). The batch axis stays axis 0, so row n of the attribution explains y[n, target[n]] only.

`Interp` runs such a model in numpy (float64) and walks it backwards with hand-written
vector-Jacobian products and the three Relu rules (saliency g*1[z>0], deconvnet relu(g), guided
relu(g)*1[z>0]); it shares no code with onnxattr. It also records
* `decisions`: every piecewise choice (Relu/LeakyRelu/Clip masks, MaxPool switches), so a
  finite difference can be trusted only when x +- eps t makes the same choices;
* `margin`: the smallest distance of any such choice from flipping, relative to the tensor's
  scale, to tell when float32 rounding may flip one.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

FUZZ_OPS = (
    "Conv", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip",
    "MaxPool", "AveragePool", "GlobalAveragePool", "Concat", "Split", "Slice", "Reshape", "Flatten",
    "Transpose", "BatchNormalization", "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "Pad",
    "Unsqueeze", "Squeeze", "Identity",
)
OPSETS = (11, 13, 17, 18)
MAX_SIZE = 1000  # elements per tensor (keeps the numpy loops and the reference evaluator quick)
BIG = np.iinfo(np.int64).max



def _slice_index(x: np.ndarray, ins: list) -> tuple:
    """The numpy index of a Slice node (inputs data, starts, ends[, axes]; steps 1)."""
    starts, ends = ins[1], ins[2]
    axes = ins[3] if len(ins) > 3 and ins[3] is not None else range(len(starts))
    sl = [slice(None)] * x.ndim
    for a, s_, e in zip(axes, starts, ends):
        sl[int(a)] = slice(int(s_), int(e))
    return tuple(sl)

def attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


# ================================================================================== interpreter
def unbroadcast(g: np.ndarray, shape) -> np.ndarray:
    """Sum `g` down to `shape` (numpy broadcasting in reverse)."""
    shape = tuple(shape)
    lead = g.ndim - len(shape)
    g = g.sum(axis=tuple(range(lead))) if lead else g
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def _pads_for(node, size, kernel, strides, dil):
    """Explicit [begin..., end...] pads of a Conv/pool node (auto_pad resolved as the spec says)."""
    n = len(kernel)
    auto = attr(node, "auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i in range(n):
            out = -(-size[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - size[i])
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            begin.append(lo)
            end.append(total - lo)
        return begin + end
    if auto == "VALID":
        return [0] * (2 * n)
    return list(attr(node, "pads", [0] * (2 * n)))


def _pool_out(size, k, s, d, pb, pe, ceil_mode):
    span = (k - 1) * d + 1
    room = size + pb + pe - span
    o = (-(-room // s) if ceil_mode else room // s) + 1
    if ceil_mode and (o - 1) * s >= size + pb:  # no window may start in the end padding
        o -= 1
    return o


def _conv_fwd(x, w, bias, strides, dil, pads, group):
    n_, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (xp.shape[2] - (kh - 1) * dil[0] - 1) // strides[0] + 1
    ow = (xp.shape[3] - (kw - 1) * dil[1] - 1) // strides[1] + 1
    y = np.zeros((n_, m, oh, ow), x.dtype)
    mg = m // group
    for g in range(group):
        xs, ws = xp[:, g * cg:(g + 1) * cg], w[g * mg:(g + 1) * mg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dil[0]:i * dil[0] + (oh - 1) * strides[0] + 1:strides[0],
                           j * dil[1]:j * dil[1] + (ow - 1) * strides[1] + 1:strides[1]]
                y[:, g * mg:(g + 1) * mg] += np.einsum("nchw,mc->nmhw", patch, ws[:, :, i, j])
    if bias is not None:
        y += bias.reshape(1, -1, 1, 1)
    return y


def _conv_bwd(gy, x, w, strides, dil, pads, group):
    m, cg, kh, kw = w.shape
    oh, ow = gy.shape[2:]
    gp = np.zeros((x.shape[0], x.shape[1], x.shape[2] + pads[0] + pads[2], x.shape[3] + pads[1] + pads[3]), gy.dtype)
    mg = m // group
    for g in range(group):
        ws = w[g * mg:(g + 1) * mg]
        for i in range(kh):
            for j in range(kw):
                gp[:, g * cg:(g + 1) * cg, i * dil[0]:i * dil[0] + (oh - 1) * strides[0] + 1:strides[0],
                   j * dil[1]:j * dil[1] + (ow - 1) * strides[1] + 1:strides[1]] += \
                    np.einsum("nmhw,mc->nchw", gy[:, g * mg:(g + 1) * mg], ws[:, :, i, j])
    return gp[:, :, pads[0]:pads[0] + x.shape[2], pads[1]:pads[1] + x.shape[3]]


def _pool_windows(node, x):
    """(output shape, list of (output index, [input positions in scan order])) of a 2-D pool."""
    k = list(attr(node, "kernel_shape"))
    s = list(attr(node, "strides", [1, 1]))
    d = list(attr(node, "dilations", [1, 1]))
    size = x.shape[2:]
    pads = _pads_for(node, size, k, s, d)
    ceil_mode = attr(node, "ceil_mode", 0)
    out = [_pool_out(size[i], k[i], s[i], d[i], pads[i], pads[2 + i], ceil_mode) for i in range(2)]
    windows = []
    for oi in range(out[0]):
        for oj in range(out[1]):
            pos = [(oi * s[0] - pads[0] + a * d[0], oj * s[1] - pads[1] + b * d[1])
                   for a in range(k[0]) for b in range(k[1])]
            windows.append(((oi, oj), pos))
    return out, windows, pads, k, size


class Interp:
    """Run a model from `graphs()` in float64 numpy and differentiate it by hand."""

    def __init__(self, model: onnx.ModelProto, dtype=np.float64):
        self.opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        self.nodes = list(model.graph.node)
        self.dtype = dtype
        self.consts = {t.name: self._cast(numpy_helper.to_array(t)) for t in model.graph.initializer}
        inits = set(self.consts)
        self.inputs = [i.name for i in model.graph.input if i.name not in inits]
        self.decisions, self.margin, self.aux = [], math.inf, {}

    def _cast(self, a):
        return a.astype(self.dtype) if a.dtype.kind == "f" else a

    # ------------------------------------------------------------------ forward
    def forward(self, feeds: dict) -> dict:
        env = dict(self.consts)
        env.update({k: self._cast(v) for k, v in feeds.items()})
        self.decisions, self.margin, self.aux = [], math.inf, {}
        for node in self.nodes:
            outs = self.run_node(node, env)
            for name, v in zip(node.output, outs):
                if name:
                    env[name] = v
        return env

    def _kink(self, z, at=0.0, mask=None):
        """Record the decision z > at, and how close any nonzero-distance element is to flipping."""
        self.decisions.append(z > at)
        dist = np.abs(z - at)
        scale = max(float(np.max(np.abs(z))), 1e-30)
        live = dist[(dist > 0) if mask is None else mask & (dist > 0)]
        if live.size:
            self.margin = min(self.margin, float(live.min()) / scale)

    def run_node(self, node, env) -> list:
        op = node.op_type
        ins = [env[i] if i else None for i in node.input]
        x = ins[0] if ins else None
        if op == "Constant":
            return [self._cast(numpy_helper.to_array(attr(node, "value")))]
        if op == "Identity":
            return [x]
        if op == "Relu":
            self._kink(x)
            return [np.maximum(x, 0)]
        if op == "LeakyRelu":
            self._kink(x)
            return [np.where(x > 0, x, attr(node, "alpha", 0.01) * x)]
        if op == "Sigmoid":
            return [1 / (1 + np.exp(-x))]
        if op == "Tanh":
            return [np.tanh(x)]
        if op == "Clip":
            lo, hi = (ins + [None, None])[1:3]
            if lo is not None:
                self._kink(x, float(lo))
            if hi is not None:
                self._kink(x, float(hi))
            return [np.clip(x, -np.inf if lo is None else lo, np.inf if hi is None else hi)]
        if op in ("Add", "Sub", "Mul", "Div"):
            f = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op]
            return [f(ins[0], ins[1])]
        if op == "Conv":
            w = ins[1]
            k = list(w.shape[2:])
            s, d = list(attr(node, "strides", [1, 1])), list(attr(node, "dilations", [1, 1]))
            pads = _pads_for(node, x.shape[2:], k, s, d)
            return [_conv_fwd(x, w, ins[2] if len(ins) > 2 else None, s, d, pads, attr(node, "group", 1))]
        if op == "MaxPool":
            out, windows, _, _, size = _pool_windows(node, x)
            y = np.full(x.shape[:2] + tuple(out), -np.inf, x.dtype)
            arg = np.full(x.shape[:2] + tuple(out) + (2,), -1, np.int64)  # (-1: a window of padding only)
            second = np.full(x.shape[:2] + tuple(out), -np.inf, x.dtype)
            for o, pos in windows:
                for p in pos:  # scan order: the first maximum wins
                    if 0 <= p[0] < size[0] and 0 <= p[1] < size[1]:
                        v = x[:, :, p[0], p[1]]
                        better = v > y[(Ellipsis, *o)]
                        lower = (v < y[(Ellipsis, *o)]) & (v > second[(Ellipsis, *o)])
                        second[(Ellipsis, *o)] = np.where(better, y[(Ellipsis, *o)], np.where(lower, v, second[(Ellipsis, *o)]))
                        y[(Ellipsis, *o)] = np.where(better, v, y[(Ellipsis, *o)])
                        arg[:, :, o[0], o[1]] = np.where(better[..., None], np.array(p), arg[:, :, o[0], o[1]])
            self.aux[node.output[0]] = arg
            self.decisions.append(arg)
            gap = (y - second)[np.isfinite(second)]
            if gap.size:
                self.margin = min(self.margin, float(gap.min()) / max(float(np.max(np.abs(x))), 1e-30))
            return [y]
        if op == "AveragePool":
            out, windows, pads, k, size = _pool_windows(node, x)
            include = attr(node, "count_include_pad", 0)
            y = np.zeros(x.shape[:2] + tuple(out), x.dtype)
            div = np.zeros(out, x.dtype)
            for o, pos in windows:
                for p in pos:
                    if 0 <= p[0] < size[0] and 0 <= p[1] < size[1]:
                        y[(Ellipsis, *o)] += x[:, :, p[0], p[1]]
                    if include:
                        div[o] += -pads[0] <= p[0] < size[0] + pads[2] and -pads[1] <= p[1] < size[1] + pads[3]
                    else:
                        div[o] += 0 <= p[0] < size[0] and 0 <= p[1] < size[1]
            self.aux[node.output[0]] = div
            return [y / div]
        if op == "GlobalAveragePool":
            return [x.mean(axis=tuple(range(2, x.ndim)), keepdims=True)]
        if op == "BatchNormalization":
            _, scale, bias, mean, var = ins[:5]
            shape = [-1] + [1] * (x.ndim - 2)
            coef = scale / np.sqrt(var + attr(node, "epsilon", 1e-5))
            return [(x - mean.reshape(shape)) * coef.reshape(shape) + bias.reshape(shape)]
        if op in ("Softmax", "LogSoftmax"):
            z2, axes = self._softmax_view(node, x)
            z2 = z2 - z2.max(axis=axes, keepdims=True)
            lse = np.log(np.exp(z2).sum(axis=axes, keepdims=True))
            out = z2 - lse if op == "LogSoftmax" else np.exp(z2 - lse)
            return [out.reshape(x.shape)]
        if op == "Gemm":
            a, b = ins[0], ins[1]
            a = a.T if attr(node, "transA", 0) else a
            b = b.T if attr(node, "transB", 0) else b
            y = attr(node, "alpha", 1.0) * (a @ b)
            if len(ins) > 2 and ins[2] is not None:
                y = y + attr(node, "beta", 1.0) * ins[2]
            return [y]
        if op == "MatMul":
            return [np.matmul(ins[0], ins[1])]
        if op == "Concat":
            return [np.concatenate(ins, axis=attr(node, "axis"))]
        if op == "Split":
            axis = attr(node, "axis", 0)
            sizes = ins[1] if len(ins) > 1 and ins[1] is not None else attr(node, "split")
            cuts = np.cumsum(sizes)[:-1]
            return np.split(x, cuts, axis=axis)
        if op == "Slice":
            return [x[_slice_index(x, ins)]]
        if op == "Pad":
            pads = [int(p) for p in ins[1]]
            r = x.ndim
            cut = tuple(slice(max(-pads[i], 0), x.shape[i] - max(-pads[r + i], 0)) for i in range(r))
            return [np.pad(x[cut], [(max(pads[i], 0), max(pads[r + i], 0)) for i in range(r)])]
        if op == "Reshape":
            shape = [x.shape[i] if int(v) == 0 else int(v) for i, v in enumerate(ins[1])]
            return [x.reshape(shape)]
        if op == "Flatten":
            a = attr(node, "axis", 1)
            return [x.reshape(int(np.prod(x.shape[:a])), -1)]
        if op == "Transpose":
            return [x.transpose(attr(node, "perm"))]
        if op in ("Unsqueeze", "Squeeze"):
            axes = attr(node, "axes") if self.opset < 13 else ins[1]
            f = np.expand_dims if op == "Unsqueeze" else np.squeeze
            return [f(x, tuple(int(a) for a in axes))]
        if op in ("ReduceSum", "ReduceMean"):
            new_form = (op == "ReduceSum" and self.opset >= 13) or self.opset >= 18
            axes = ins[1] if new_form else attr(node, "axes")
            f = np.sum if op == "ReduceSum" else np.mean
            return [f(x, axis=tuple(int(a) for a in axes), keepdims=bool(attr(node, "keepdims", 1)))]
        raise NotImplementedError(op)

    def _softmax_view(self, node, x):
        """x seen as the Softmax normalises it: (view, axes to normalise over)."""
        if self.opset >= 13:
            return x, (attr(node, "axis", -1) % x.ndim,)
        axis = attr(node, "axis", 1) % x.ndim
        return x.reshape(int(np.prod(x.shape[:axis])), -1), (1,)

    # ------------------------------------------------------------------ backward
    def gradient(self, env: dict, seeds: dict, wrt: str, method: str = "saliency", relu_like: bool = False) -> np.ndarray:
        """d <seeds, outputs> / d wrt, with `method`'s rule at each Relu (and, with `relu_like`,
        at each LeakyRelu and each Clip whose lower bound is 0: deconvnet relu(g), guided
        f'(z) relu(g))."""
        self.relu_like = relu_like
        live = {wrt}
        for node in self.nodes:
            if any(i in live for i in node.input):
                live.update(o for o in node.output if o)
        grads = {k: self._cast(v) for k, v in seeds.items()}
        for node in reversed(self.nodes):
            if not any(o in grads for o in node.output):
                continue
            gys = [grads.pop(o) if o in grads else np.zeros_like(env[o]) for o in node.output]
            ins = [env[i] if i else None for i in node.input]
            gxs = self.vjp(node, ins, [env[o] for o in node.output], gys, method)
            for name, g in zip(node.input, gxs):
                if g is not None and name in live:
                    assert g.shape == env[name].shape, (node.op_type, name, g.shape, env[name].shape)
                    grads[name] = grads[name] + g if name in grads else g
        return grads.get(wrt, np.zeros_like(env[wrt]))

    def vjp(self, node, ins, outs, gys, method) -> list:
        op, g, x, y = node.op_type, gys[0], ins[0], outs[0]
        if op == "Identity":
            return [g]
        if op == "Relu":
            if method == "saliency":
                return [g * (x > 0)]
            if method == "deconvnet":
                return [np.maximum(g, 0)]
            return [np.maximum(g, 0) * (x > 0)]
        rule = method != "saliency" and getattr(self, "relu_like", False)
        if op == "LeakyRelu":
            if rule:
                g = np.maximum(g, 0)
                if method == "deconvnet":
                    return [g]
            return [np.where(x > 0, g, attr(node, "alpha", 0.01) * g)]
        if op == "Sigmoid":
            return [g * y * (1 - y)]
        if op == "Tanh":
            return [g * (1 - y * y)]
        if op == "Clip":
            lo, hi = (ins + [None, None])[1:3]
            if rule and lo is not None and float(lo) == 0:
                g = np.maximum(g, 0)
                if method == "deconvnet":
                    return [g, None, None]
            inside = np.ones(x.shape, bool)
            if lo is not None:
                inside &= x > lo
            if hi is not None:
                inside &= x < hi
            return [g * inside, None, None]
        if op == "Add":
            return [unbroadcast(g, ins[0].shape), unbroadcast(g, ins[1].shape)]
        if op == "Sub":
            return [unbroadcast(g, ins[0].shape), unbroadcast(-g, ins[1].shape)]
        if op == "Mul":
            return [unbroadcast(g * ins[1], ins[0].shape), unbroadcast(g * ins[0], ins[1].shape)]
        if op == "Div":
            a, b = ins
            return [unbroadcast(g / b, a.shape), unbroadcast(-g * a / (b * b), b.shape)]
        if op == "Conv":
            w = ins[1]
            k = list(w.shape[2:])
            s, d = list(attr(node, "strides", [1, 1])), list(attr(node, "dilations", [1, 1]))
            pads = _pads_for(node, x.shape[2:], k, s, d)
            return [_conv_bwd(g, x, w, s, d, pads, attr(node, "group", 1))] + [None] * (len(ins) - 1)
        if op == "MaxPool":
            gx = np.zeros_like(x)
            arg = self.aux[node.output[0]]
            out = y.shape[2:]
            for n in range(x.shape[0]):
                for c in range(x.shape[1]):
                    for o in np.ndindex(*out):
                        i, j = arg[(n, c, *o)]
                        if i >= 0:  # (a window of padding only: its output does not depend on x)
                            gx[n, c, i, j] += g[(n, c, *o)]
            return [gx]
        if op == "AveragePool":
            _, windows, _, _, size = _pool_windows(node, x)
            div = self.aux[node.output[0]]
            gx = np.zeros_like(x)
            for o, pos in windows:
                for p in pos:
                    if 0 <= p[0] < size[0] and 0 <= p[1] < size[1]:
                        gx[:, :, p[0], p[1]] += g[(Ellipsis, *o)] / div[o]
            return [gx]
        if op == "GlobalAveragePool":
            count = int(np.prod(x.shape[2:]))
            return [np.broadcast_to(g / count, x.shape).copy()]
        if op == "BatchNormalization":
            scale, var = ins[1], ins[4]
            coef = scale / np.sqrt(var + attr(node, "epsilon", 1e-5))
            return [g * coef.reshape([-1] + [1] * (x.ndim - 2))] + [None] * 4
        if op == "Softmax":
            y2, axes = self._softmax_view(node, y)
            g2 = g.reshape(y2.shape)
            return [(y2 * (g2 - (g2 * y2).sum(axis=axes, keepdims=True))).reshape(x.shape)]
        if op == "LogSoftmax":
            y2, axes = self._softmax_view(node, y)
            g2 = g.reshape(y2.shape)
            return [(g2 - np.exp(y2) * g2.sum(axis=axes, keepdims=True)).reshape(x.shape)]
        if op == "Gemm":
            b = ins[1]
            bb = b.T if attr(node, "transB", 0) else b
            ga = attr(node, "alpha", 1.0) * (g @ bb.T)
            ga = ga.T if attr(node, "transA", 0) else ga
            gc = unbroadcast(attr(node, "beta", 1.0) * g, ins[2].shape) if len(ins) > 2 and ins[2] is not None else None
            a = x.T if attr(node, "transA", 0) else x
            gb = attr(node, "alpha", 1.0) * (a.T @ g)
            gb = gb.T if attr(node, "transB", 0) else gb
            return [ga, gb, gc][:len(ins)]
        if op == "MatMul":
            a, b = ins
            ga = unbroadcast(np.matmul(g, np.swapaxes(b, -1, -2)), a.shape)
            gb = unbroadcast(np.matmul(np.swapaxes(a, -1, -2), g), b.shape)
            return [ga, gb]
        if op == "Concat":
            axis = attr(node, "axis") % y.ndim
            cuts = np.cumsum([t.shape[axis] for t in ins])[:-1]
            return np.split(g, cuts, axis=axis)
        if op == "Split":
            return [np.concatenate(gys, axis=attr(node, "axis", 0))] + [None] * (len(ins) - 1)
        if op == "Slice":
            gx = np.zeros_like(x)
            gx[_slice_index(x, ins)] = g
            return [gx] + [None] * (len(ins) - 1)
        if op == "Pad":
            pads = [int(p) for p in ins[1]]
            r = x.ndim
            inner = tuple(slice(max(pads[i], 0), g.shape[i] - max(pads[r + i], 0)) for i in range(r))
            gx = np.zeros_like(x)
            cut = tuple(slice(max(-pads[i], 0), x.shape[i] - max(-pads[r + i], 0)) for i in range(r))
            gx[cut] = g[inner]
            return [gx] + [None] * (len(ins) - 1)
        if op in ("Reshape", "Flatten", "Unsqueeze", "Squeeze"):
            return [g.reshape(x.shape)] + [None] * (len(ins) - 1)
        if op == "Transpose":
            return [g.transpose(np.argsort(attr(node, "perm")))]
        if op in ("ReduceSum", "ReduceMean"):
            new_form = (op == "ReduceSum" and self.opset >= 13) or self.opset >= 18
            axes = tuple(int(a) % x.ndim for a in (ins[1] if new_form else attr(node, "axes")))
            if not attr(node, "keepdims", 1):
                g = np.expand_dims(g, axes)
            if op == "ReduceMean":
                g = g / int(np.prod([x.shape[a] for a in axes]))
            return [np.broadcast_to(g, x.shape).copy()] + [None] * (len(ins) - 1)
        raise NotImplementedError(op)


# ================================================================================== generator
class _Gen:
    """Grows a graph one node at a time; `env` holds probe values (for shapes only)."""

    interp_class = Interp  # what runs each new node on the probe values

    def __init__(self, draw, opset, seed):
        self.draw, self.opset = draw, opset
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.pool = [], [], []
        self.env, self.count = {}, 0
        self.dynamic = False  # a symbolic batch axis: constants must not depend on its size
        self.interp = self.interp_class(helper.make_model(helper.make_graph([], "g", [], []),
                                                          opset_imports=[helper.make_opsetid("", opset)]))

    def name(self, hint):
        self.count += 1
        return f"{hint}{self.count}"

    def const(self, value, hint="c", integer=False):
        arr = np.asarray(value, dtype=np.int64 if integer else np.float64)
        name = self.name(hint)
        t = numpy_helper.from_array(arr, name)
        if self.draw(st.booleans()):
            self.nodes.append(helper.make_node("Constant", [], [name], value=t))
        else:
            self.inits.append(t)
        self.env[name] = arr
        return name

    def weights(self, *shape, fan_in=None):
        return self.rng.standard_normal(shape) / math.sqrt(fan_in or max(1, shape[-1]))

    def pick(self, ok=lambda s: True):
        cands = [t for t in self.pool if ok(self.env[t].shape)]
        if not cands:
            return None
        # Mostly the newest tensor (depth), sometimes an earlier one (fan-out, skips). Hypothesis
        # favours small draws, so 0 must mean "the newest".
        k = self.draw(st.integers(0, 9))
        if k < 6:
            return cands[-1]
        if k < 9:
            return cands[-1 - min(k - 5, len(cands) - 1)]
        return self.draw(st.sampled_from(cands[::-1]))

    def emit(self, op, inputs, n_out=1, **attrs):
        """Append a node if its outputs are small enough; returns their names, or None."""
        outs = [self.name(op.lower()) for _ in range(n_out)]
        node = helper.make_node(op, inputs, outs, name=self.name(op), **attrs)
        self.interp.opset = self.opset
        vals = self.interp.run_node(node, self.env)
        if any(v.size > MAX_SIZE or v.size == 0 for v in vals):
            return None
        self.nodes.append(node)
        for o, v in zip(outs, vals):
            self.env[o] = v
            self.pool.append(o)
        return outs

    def axes_input(self, axes):
        return self.const(axes, "axes", integer=True)


def _rank(r):
    return lambda s: len(s) == r


def _rank_at_least(r):
    return lambda s: len(s) >= r


def g_unary(g: _Gen):
    t = g.pick()
    op = g.draw(st.sampled_from(["Relu", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "Identity"]))
    if op == "LeakyRelu":
        return g.emit(op, [t], alpha=g.draw(st.sampled_from([0.01, 0.1, 0.3])))
    if op == "Clip":
        lo = g.const(np.float64(g.draw(st.sampled_from([0.0, -0.5]))), "lo")
        kind = g.draw(st.sampled_from(["both", "min", "max"]))
        hi = g.const(np.float64(g.draw(st.sampled_from([0.5, 1.0, 6.0]))), "hi") if kind != "min" else ""
        ins = [t, lo if kind != "max" else "", hi] if kind != "min" else [t, lo]
        return g.emit(op, ins)
    return g.emit(op, [t])


def _broadcast_shape(g, shape):
    """A shape that broadcasts to `shape`: some dims set to 1, maybe leading dims dropped."""
    dims = [d if g.draw(st.booleans()) else 1 for d in shape]
    if g.dynamic:
        dims[0] = 1  # a constant cannot know the batch size
    drop = g.draw(st.integers(0, len(shape)))
    return dims[drop:]


def g_binary(g: _Gen):
    op = g.draw(st.sampled_from(["Add", "Sub", "Mul", "Div"]))
    t = g.pick()
    shape = g.env[t].shape
    kind = g.draw(st.sampled_from(["const", "tensor", "same"]))
    if op == "Div":
        # Denominators stay away from 0: a constant of magnitude >= 0.5, or sigmoid(u) + 0.5.
        if kind == "const":
            mag = 0.5 + 1.5 * g.rng.random(_broadcast_shape(g, shape))
            other = g.const(mag * g.rng.choice([-1.0, 1.0], size=mag.shape), "den")
        else:
            u = g.pick(lambda s: _broadcasts(s, shape))
            if u is None:
                return None
            sig = g.emit("Sigmoid", [u])
            if sig is None:
                return None
            other = g.emit("Add", [sig[0], g.const(np.float64(0.5), "half")])
            if other is None:
                return None
            other = other[0]
        return g.emit(op, [t, other])
    if kind == "const":
        other = g.const(g.rng.standard_normal(_broadcast_shape(g, shape)), "k")
    elif kind == "same":
        other = t  # x op x: the tensor read twice by one node
    else:
        other = g.pick(lambda s: _broadcasts(s, shape))
        if other is None:
            return None
    ins = [t, other] if g.draw(st.booleans()) else [other, t]
    return g.emit(op, ins)


def _broadcasts(a, b):
    """Whether tensors a and b broadcast together with their batch axes (0) aligned."""
    try:
        np.broadcast_shapes(a, b)
    except ValueError:
        return False
    return len(a) == len(b) and a[0] == b[0]


def _same_ok(size, kernel, strides):
    """ONNX Runtime computes SAME pads without clamping at 0: a stride longer than the kernel
    can give negative pads, which it rejects. Only draw SAME where the total pad is >= 0."""
    return all((-(-n // s) - 1) * s + k - n >= 0 for n, k, s in zip(size, kernel, strides))


def g_conv(g: _Gen):
    t = g.pick(_rank(4))
    if t is None:
        return None
    n, c, h, w = g.env[t].shape
    group = g.draw(st.sampled_from([gr for gr in (1, 2, 3) if c % gr == 0]))
    m = group * g.draw(st.integers(1, 3))
    kh, kw = g.draw(st.integers(1, 3)), g.draw(st.integers(1, 3))
    attrs = {"kernel_shape": [kh, kw], "group": group}
    if g.draw(st.booleans()):
        attrs["strides"] = [g.draw(st.integers(1, 2)), g.draw(st.integers(1, 2))]
    if g.draw(st.booleans()):
        attrs["dilations"] = [g.draw(st.integers(1, 2)), g.draw(st.integers(1, 2))]
    pad_kind = g.draw(st.sampled_from(["pads", "none", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    if pad_kind == "pads":
        attrs["pads"] = [g.draw(st.integers(0, 2)) for _ in range(4)]
    elif pad_kind != "none":
        if pad_kind.startswith("SAME") and max(attrs.get("dilations", [1])) > 1:
            return None  # ONNX Runtime rejects dilations with SAME padding
        if pad_kind.startswith("SAME") and not _same_ok((h, w), attrs["kernel_shape"], attrs.get("strides", [1, 1])):
            return None
        attrs["auto_pad"] = pad_kind
    k = list(attrs.get("dilations", [1, 1]))
    pads = attrs.get("pads", [0] * 4) if pad_kind in ("pads", "none", "VALID") else [0] * 4
    for i, size in enumerate((h, w)):
        if size + pads[i] + pads[2 + i] < (attrs["kernel_shape"][i] - 1) * k[i] + 1:
            return None
    ins = [t, g.const(g.weights(m, c // group, kh, kw, fan_in=c // group * kh * kw), "W")]
    if g.draw(st.booleans()):
        ins.append(g.const(0.1 * g.rng.standard_normal(m), "B"))
    return g.emit("Conv", ins, **attrs)


def g_pool(g: _Gen):
    t = g.pick(_rank(4))
    if t is None:
        return None
    op = g.draw(st.sampled_from(["MaxPool", "AveragePool"]))
    h, w = g.env[t].shape[2:]
    k = [g.draw(st.integers(1, 3)), g.draw(st.integers(1, 3))]
    attrs = {"kernel_shape": k, "strides": [g.draw(st.integers(1, 2)), g.draw(st.integers(1, 2))]}
    dil = [1, 1]
    if op == "MaxPool" and g.draw(st.booleans()):
        dil = [g.draw(st.integers(1, 2)), g.draw(st.integers(1, 2))]
        attrs["dilations"] = dil
    pad_kind = g.draw(st.sampled_from(["pads", "none", "SAME_UPPER", "SAME_LOWER"]))
    pads = [0] * 4
    if pad_kind == "pads":
        pads = [g.draw(st.integers(0, k[i % 2] - 1)) for i in range(4)]  # pads < kernel
        attrs["pads"] = pads
    elif pad_kind != "none":
        if max(dil) > 1 or not _same_ok((h, w), k, attrs["strides"]):
            return None
        attrs["auto_pad"] = pad_kind
    if pad_kind in ("pads", "none") and g.draw(st.booleans()):
        attrs["ceil_mode"] = 1
    if op == "AveragePool" and g.draw(st.booleans()):
        attrs["count_include_pad"] = 1
    for i, size in enumerate((h, w)):
        if size + pads[i] + pads[2 + i] < (k[i] - 1) * dil[i] + 1:
            return None
        if attrs.get("ceil_mode") and _pool_out(size, k[i], attrs["strides"][i], dil[i], pads[i], pads[2 + i], 1) != \
                -(-(size + pads[i] + pads[2 + i] - (k[i] - 1) * dil[i] - 1) // attrs["strides"][i]) + 1:
            return None  # ONNX shape inference and ONNX Runtime disagree: refused (tests/test_regressions.py)
    return g.emit(op, [t], **attrs)


def g_global_pool(g: _Gen):
    t = g.pick(_rank(4))
    return None if t is None else g.emit("GlobalAveragePool", [t])


def g_batchnorm(g: _Gen):
    t = g.pick(_rank_at_least(2))
    c = g.env[t].shape[1]
    params = [g.const(1 + 0.3 * g.rng.standard_normal(c), "scale"), g.const(0.3 * g.rng.standard_normal(c), "bias"),
              g.const(0.3 * g.rng.standard_normal(c), "mean"), g.const(0.5 + 1.5 * g.rng.random(c), "var")]
    return g.emit("BatchNormalization", [t] + params, epsilon=g.draw(st.sampled_from([1e-5, 1e-3, 0.1])))


def g_softmax(g: _Gen):
    t = g.pick(_rank_at_least(2))
    r = len(g.env[t].shape)
    axis = g.draw(st.integers(1, r - 1))
    if g.draw(st.booleans()):
        axis -= r  # negative axes too
    return g.emit(g.draw(st.sampled_from(["Softmax", "LogSoftmax"])), [t], axis=axis)


def g_concat(g: _Gen):
    t = g.pick(_rank_at_least(2))
    shape = g.env[t].shape
    axis = g.draw(st.integers(1, len(shape) - 1))

    def fits(s):
        return len(s) == len(shape) and all(s[i] == shape[i] for i in range(len(shape)) if i != axis)

    parts = [t]
    for _ in range(g.draw(st.integers(1, 2))):
        if g.draw(st.integers(0, 2)) == 0 and not g.dynamic:
            s = list(shape)
            s[axis] = g.draw(st.integers(1, 3))
            s[0] = shape[0]
            parts.append(g.const(g.rng.standard_normal(s), "cat"))
        else:
            parts.append(g.pick(fits))  # may be t itself: read twice
    g.rng.shuffle(parts)
    return g.emit("Concat", parts, axis=axis if g.draw(st.booleans()) else axis - len(shape))


def g_split(g: _Gen):
    t = g.pick(lambda s: len(s) >= 2 and max(s[1:]) >= 2)
    if t is None:
        return None
    shape = g.env[t].shape
    axis = g.draw(st.sampled_from([i for i in range(1, len(shape)) if shape[i] >= 2]))
    parts = g.draw(st.integers(2, min(3, shape[axis])))
    cuts = sorted(g.rng.choice(np.arange(1, shape[axis]), size=parts - 1, replace=False))
    sizes = np.diff([0, *cuts, shape[axis]]).astype(np.int64)
    if g.opset >= 13:
        outs = g.emit("Split", [t, g.const(sizes, "split", integer=True)], n_out=parts, axis=axis)
    else:
        outs = g.emit("Split", [t], n_out=parts, axis=axis, split=[int(s) for s in sizes])
    if outs is not None and g.draw(st.booleans()):
        g.pool.remove(outs[0])  # an output nobody reads: its gradient is zero
    return outs


def g_slice(g: _Gen):
    t = g.pick(lambda s: len(s) >= 2 and max(s[1:]) >= 2)
    if t is None:
        return None
    shape = g.env[t].shape
    axes, starts, ends = [], [], []
    for ax in range(1, len(shape)):
        if shape[ax] >= 2 and g.draw(st.booleans()) or (ax == len(shape) - 1 and not axes):
            d = shape[ax]
            if d < 2:
                continue
            s = g.draw(st.integers(0, d - 1))
            e = g.draw(st.integers(s + 1, d))
            s = s - d if g.draw(st.booleans()) else s  # negative starts
            e = BIG if e == d and g.draw(st.booleans()) else (e - d if e < d and g.draw(st.booleans()) else e)
            axes.append(ax if g.draw(st.booleans()) else ax - len(shape))
            starts.append(s)
            ends.append(e)
    if not axes:
        return None
    ins = [t, g.const(starts, "starts", integer=True), g.const(ends, "ends", integer=True)]
    if g.draw(st.booleans()) or axes != list(range(len(axes))):
        ins.append(g.axes_input(axes))
    return g.emit("Slice", ins)


def g_pad(g: _Gen):
    t = g.pick(_rank_at_least(2))
    shape = g.env[t].shape
    r = len(shape)
    pads = [0] * (2 * r)
    for ax in range(1, r):
        for side in (0, r):
            pads[side + ax] = g.draw(st.sampled_from([0, 0, 1, 2, -1])) if shape[ax] > 2 else g.draw(st.integers(0, 1))
    if not any(pads):
        pads[r - 1] = 1
    return g.emit("Pad", [t, g.const(pads, "pads", integer=True)])


def _factor(g, n):
    """A random factorisation of n into 1-3 factors."""
    out = []
    while n > 1 and len(out) < 2:
        divs = [d for d in range(2, n + 1) if n % d == 0]
        d = g.draw(st.sampled_from(divs))
        out.append(d)
        n //= d
    out.append(n)
    return out


def g_reshape(g: _Gen):
    t = g.pick(_rank_at_least(2))
    shape = g.env[t].shape
    if g.draw(st.integers(0, 3)) == 0:
        return g.emit("Flatten", [t], axis=1)
    dims = _factor(g, int(np.prod(shape[1:])))
    g.rng.shuffle(dims)
    target = [0] + [int(d) for d in dims]
    if g.draw(st.booleans()):
        target[1 + g.draw(st.integers(0, len(dims) - 1))] = -1
    return g.emit("Reshape", [t, g.const(target, "shape", integer=True)])


def g_transpose(g: _Gen):
    t = g.pick(_rank_at_least(3))
    if t is None:
        return None
    r = len(g.env[t].shape)
    perm = [0] + [int(i) for i in 1 + g.rng.permutation(r - 1)]
    return g.emit("Transpose", [t], perm=perm)


def g_gemm(g: _Gen):
    t = g.pick(_rank(2))
    if t is None:
        return None
    f = g.env[t].shape[1]
    k = g.draw(st.integers(1, 6))
    trans_b = g.draw(st.booleans())
    w = g.weights(f, k, fan_in=f)
    ins = [t, g.const(w.T if trans_b else w, "W")]
    attrs = {"transB": int(trans_b)}
    if g.draw(st.booleans()):
        attrs["alpha"] = g.draw(st.sampled_from([0.5, 2.0]))
    if g.draw(st.booleans()):
        bias_shape = g.draw(st.sampled_from([[k], [1, k], [1], []]))
        ins.append(g.const(0.1 * g.rng.standard_normal(bias_shape), "C"))
        if g.draw(st.booleans()):
            attrs["beta"] = g.draw(st.sampled_from([0.5, 2.0]))
    return g.emit("Gemm", ins, **attrs)


def g_matmul(g: _Gen):
    t = g.pick(_rank_at_least(2))
    shape = g.env[t].shape
    kind = g.draw(st.sampled_from(["right", "left", "self"]))
    if kind == "self" and len(shape) >= 3:
        tt = g.emit("Transpose", [t], perm=list(range(len(shape) - 2)) + [len(shape) - 1, len(shape) - 2])
        if tt is None:
            return None
        return g.emit("MatMul", [t, tt[0]] if g.draw(st.booleans()) else [tt[0], t])
    k = g.draw(st.integers(1, 5))
    if kind == "left" and len(shape) >= 3:
        w = g.weights(k, shape[-2], fan_in=shape[-2])
        return g.emit("MatMul", [g.const(w, "W"), t])
    lead = [1] * g.draw(st.integers(0, len(shape) - 2))  # broadcast batch dims on the weight
    w = g.weights(*lead, shape[-1], k, fan_in=shape[-1])
    return g.emit("MatMul", [t, g.const(w, "W")])


def g_reduce(g: _Gen):
    t = g.pick(_rank_at_least(3))
    if t is None:
        return None
    r = len(g.env[t].shape)
    axes = sorted(g.rng.choice(np.arange(1, r), size=g.draw(st.integers(1, r - 1)), replace=False).tolist())
    op = g.draw(st.sampled_from(["ReduceSum", "ReduceMean"]))
    keep = g.draw(st.sampled_from([0, 1]))
    if (op == "ReduceSum" and g.opset >= 13) or g.opset >= 18:
        return g.emit(op, [t, g.axes_input(axes)], keepdims=keep)
    return g.emit(op, [t], axes=axes, keepdims=keep)


def g_unsqueeze(g: _Gen):
    t = g.pick(lambda s: len(s) <= 3)
    if t is None:
        return None
    r = len(g.env[t].shape)
    axis = g.draw(st.integers(1, r))
    out = g.emit("Unsqueeze", [t, g.axes_input([axis])] if g.opset >= 13 else [t], axes=None if g.opset >= 13 else [axis])
    return out


def g_squeeze(g: _Gen):
    t = g.pick(lambda s: len(s) >= 3 and 1 in s[1:])
    if t is None:
        return None
    shape = g.env[t].shape
    axes = [i for i in range(1, len(shape)) if shape[i] == 1][:1]
    return g.emit("Squeeze", [t, g.axes_input(axes)] if g.opset >= 13 else [t], axes=None if g.opset >= 13 else axes)


GENERATORS = [g_unary, g_unary, g_binary, g_binary, g_conv, g_conv, g_conv, g_pool, g_pool, g_global_pool,
              g_batchnorm, g_softmax, g_concat, g_split, g_slice, g_pad, g_reshape, g_transpose, g_gemm, g_matmul,
              g_reduce, g_unsqueeze, g_squeeze]


@st.composite
def graphs(draw, max_ops: int = 10, generators=GENERATORS, opsets=OPSETS, gen=_Gen):
    """A float64 classifier model (x -> y [N, K]) over FUZZ_OPS (or the ops `generators` draw, in a
    `gen` whose interpreter runs them: tests/fuzz_rare_ops.py), its input shape and class count."""
    opset = draw(st.sampled_from(opsets))
    g = gen(draw, opset, draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(1, 2))
    g.dynamic = draw(st.booleans())
    kind = draw(st.sampled_from(["image", "image", "vector", "sequence"]))
    if kind == "image":
        shape = [n, draw(st.integers(1, 3)), draw(st.integers(3, 6)), draw(st.integers(3, 6))]
    elif kind == "vector":
        shape = [n, draw(st.integers(2, 8))]
    else:
        shape = [n, draw(st.integers(2, 5)), draw(st.integers(2, 5))]
    g.env["x"] = g.rng.standard_normal(shape)
    g.pool.append("x")
    for _ in range(draw(st.integers(1, max_ops))):
        for _attempt in range(5):
            grow = draw(st.sampled_from(generators))
            if grow(g) is not None:
                break
    # The classifier head: flatten the newest tensor (or any), then a linear layer to K classes.
    t = g.pick()
    if len(g.env[t].shape) != 2:
        t = g.emit("Flatten", [t], axis=1)[0] if int(np.prod(g.env[t].shape[1:])) <= MAX_SIZE else None
        assert t is not None
    classes = draw(st.integers(2, 4))
    f = g.env[t].shape[1]
    w = g.weights(f, classes, fan_in=f)
    if draw(st.booleans()):
        out = g.emit("Gemm", [t, g.const(w, "Wout"), g.const(0.1 * g.rng.standard_normal(classes), "bout")])[0]
    else:
        out = g.emit("MatMul", [t, g.const(w, "Wout")])[0]
    final = draw(st.sampled_from(["logits", "logits", "Softmax", "LogSoftmax"]))
    if final != "logits":
        out = g.emit(final, [out], axis=1)[0]
    # Rename the scores to "y"; sometimes expose a non-[N, K] tensor as an extra, earlier output.
    for node in g.nodes:
        node.output[:] = ["y" if o == out else o for o in node.output]
        node.input[:] = ["y" if i == out else i for i in node.input]
    batch = "N" if g.dynamic else n
    outputs = [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [batch, classes])]
    extra = [p for p in g.pool if p != out and len(g.env[p].shape) != 2]
    if extra and draw(st.integers(0, 3)) == 0:
        e = draw(st.sampled_from(extra))
        outputs.insert(0, helper.make_tensor_value_info(e, TensorProto.DOUBLE, [batch] + list(g.env[e].shape[1:])))
    inputs = [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [batch] + shape[1:])]
    graph = helper.make_graph(g.nodes, "fuzz", inputs, outputs, g.inits)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = max(8, helper.find_min_ir_version_for(opsets))
    return model
