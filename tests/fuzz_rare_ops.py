"""Rare ops for the gradient fuzzer (tests/test_fuzz_rare.py): the graphs of tests/fuzz_graphs.py
grown also from ops onnxattr has rules for but FUZZ_OPS never draws (smooth and domain-limited
unaries, PRelu, Pow, Max/Min/Mean/Sum/Where, the other reductions, Layer/Instance/Group/RMS/Lp
normalization and LRN, Expand, Tile, CumSum, DepthToSpace, SpaceToDepth, Trilu, ReverseSequence,
TopK, the Gathers and Scatters, Einsum, ConvTranspose, Resize, GridSample, Attention, ...) and
from forms of FUZZ_OPS the numpy interpreter does not know (Pad reflect / edge / wrap and its axes
input, Slice steps, Split num_outputs, Conv and pools in 1-D and 3-D).

No hand-written gradient covers them, so the reference is the forward alone: onnx.reference in
float64 (with tests/vjp_check.py's fixes), differentiated by central differences along random
directions. A kink (Abs, Max, TopK, nearest Resize, ...) between x - eps t and x + eps t shows as
differences that disagree across three step sizes; such a direction is skipped. The float32
export on ONNX Runtime is checked against the float64 export of every method.
"""

from __future__ import annotations

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import onnxattr
from fuzz_graphs import (BIG, FUZZ_OPS, GENERATORS, Interp, _broadcast_shape, _broadcasts, _Gen, _rank,
                         _rank_at_least, attr, graphs)
from test_fuzz import _onnxruntime_runs, _rel, _session
from vjp_check import reference, to_float32

OPSETS = (18, 23)  # 23: RMSNormalization, Attention; GroupNormalization's per-channel form is 21
STEPS = (1e-6, 1e-5, 1e-4)  # central-difference steps; they must agree, or the direction crosses a kink
FD_RTOL = 1e-5    # |<a, t> - FD| over (sum |a t| + |FD| + 1e-3 max(1, |f|))
F32_RTOL = 2e-3   # float32 ONNX Runtime vs the float64 export, over max |value| (at least 1e-2)


class RefInterp(Interp):
    """fuzz_graphs.Interp's forward, with the ops and forms it does not know run by onnx.reference
    one node at a time (the generator's probe values; `forward` for a whole model)."""

    def _known(self, node, env) -> bool:
        op = node.op_type
        if op not in FUZZ_OPS and op != "Constant":
            return False
        if op == "Pad":
            return attr(node, "mode", "constant") == "constant" and len(node.input) <= 2
        if op == "Slice":
            return len(node.input) <= 4
        if op in ("Conv", "MaxPool", "AveragePool", "GlobalAveragePool"):
            return env[node.input[0]].ndim == 4
        return not (op == "Split" and attr(node, "num_outputs") is not None)

    def run_node(self, node, env) -> list:
        if self._known(node, env):
            return super().run_node(node, env)
        names = [i for i in node.input if i]
        ins = [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(env[i].dtype), None) for i in names]
        outs = [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in node.output if o]
        one = helper.make_model(helper.make_graph([node], "one", ins, outs),
                                opset_imports=[helper.make_opsetid("", self.opset)])
        return [np.asarray(v) for v in reference(one).run(None, {i: env[i] for i in names})]


class RareGen(_Gen):
    interp_class = RefInterp


def _squash(g, t, lo, hi):
    """lo + (hi - lo) sigmoid(t): a tensor strictly inside (lo, hi), for ops with a domain."""
    s = g.emit("Sigmoid", [t])
    m = s and g.emit("Mul", [s[0], g.const(np.float64(hi - lo), "span")])
    return m and g.emit("Add", [m[0], g.const(np.float64(lo), "lo")])


SMOOTH = {"Exp": None, "Sin": None, "Cos": None, "Atan": None, "Asinh": None, "Sinh": None, "Cosh": None,
          "Erf": None, "Softplus": None, "Softsign": None, "Neg": None, "Elu": ("alpha", [1.0, 0.5]), "Selu": None,
          "HardSigmoid": ("alpha", [0.2, 0.5]), "HardSwish": None, "Mish": None, "Abs": None,
          "ThresholdedRelu": ("alpha", [0.5, 1.0]), "Shrink": ("lambd", [0.5, 0.2]),
          "Gelu": ("approximate", ["none", "tanh"])}
DOMAIN = {"Log": (0.3, 3.0), "Sqrt": (0.3, 3.0), "Reciprocal": (0.5, 2.0), "Asin": (-0.9, 0.9), "Acos": (-0.9, 0.9),
          "Atanh": (-0.8, 0.8), "Acosh": (1.2, 3.0), "Tan": (-1.2, 1.2)}


def g_unary_rare(g):
    t = g.pick()
    op = g.draw(st.sampled_from([o for o in (*SMOOTH, *DOMAIN) if o != "Gelu" or g.opset >= 20]))
    if op in DOMAIN:
        s = _squash(g, t, *DOMAIN[op])
        return s and g.emit(op, [s[0]])
    if op == "Exp":
        s = g.emit("Tanh", [t])  # (exp of exp of ... overflows)
        if s is None:
            return None
        t = s[0]
    kw = {}
    if SMOOTH[op] and g.draw(st.booleans()):
        kw[SMOOTH[op][0]] = g.draw(st.sampled_from(SMOOTH[op][1]))
    if op == "Shrink" and g.draw(st.booleans()):
        kw["bias"] = 0.3
    return g.emit(op, [t], **kw)


def g_prelu(g):
    t = g.pick(_rank_at_least(2))
    shape = g.env[t].shape
    slope = g.draw(st.sampled_from([[1], [shape[1]] + [1] * (len(shape) - 2), list(shape[-1:])]))
    return g.emit("PRelu", [t, g.const(0.1 + 0.3 * g.rng.random(slope), "slope")])


def g_pow(g):
    t = g.pick()
    kind = g.draw(st.sampled_from(["int", "frac", "tensor"]))
    if kind == "int":
        return g.emit("Pow", [t, g.const(np.float64(g.draw(st.sampled_from([2.0, 3.0, -1.0]))), "e")])
    s = _squash(g, t, 0.5, 2.0)  # a positive base
    if s is None:
        return None
    if kind == "frac":
        return g.emit("Pow", [s[0], g.const(np.float64(g.draw(st.sampled_from([0.5, 1.5, -0.5]))), "e")])
    u = g.pick(lambda sh: _broadcasts(sh, g.env[s[0]].shape))
    e = u and g.emit("Tanh", [u])
    return e and g.emit("Pow", [s[0], e[0]])


def g_variadic(g):
    op = g.draw(st.sampled_from(["Max", "Min", "Mean", "Sum", "Where"]))
    t = g.pick()
    shape = g.env[t].shape
    if op == "Where":
        cond = g.rng.random(_broadcast_shape(g, shape)) > 0.5
        name = g.name("cond")
        g.inits.append(numpy_helper.from_array(cond, name))
        g.env[name] = cond
        other = g.pick(lambda s: _broadcasts(s, shape)) if g.draw(st.booleans()) else \
            g.const(g.rng.standard_normal(_broadcast_shape(g, shape)), "k")
        return g.emit("Where", [name, t, other] if g.draw(st.booleans()) else [name, other, t])
    parts = [t]
    for _ in range(g.draw(st.integers(1, 2))):
        if g.draw(st.booleans()):
            other = g.pick(lambda s: _broadcasts(s, shape))  # (with all parts so far)
            parts.append(other)
            shape = np.broadcast_shapes(shape, g.env[other].shape)
        else:
            parts.append(g.const(g.rng.standard_normal(_broadcast_shape(g, shape)), "k"))
    return g.emit(op, parts)


def g_reduce_rare(g):
    t = g.pick(_rank_at_least(2))
    r = len(g.env[t].shape)
    op = g.draw(st.sampled_from(["ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMin",
                                 "ReduceProd", "ReduceSumSquare"]))
    if op == "ReduceLogSum":
        s = _squash(g, t, 0.5, 2.0)
        if s is None:
            return None
        t = s[0]
    axes = sorted(g.rng.choice(np.arange(1, r), size=g.draw(st.integers(1, r - 1)), replace=False).tolist())
    if g.draw(st.booleans()):
        axes = [a - r for a in axes]
    keep = g.draw(st.sampled_from([0, 1]))
    if g.opset >= 18:
        return g.emit(op, [t, g.axes_input(axes)], keepdims=keep)
    return g.emit(op, [t], axes=axes, keepdims=keep)


def g_norm(g):
    op = g.draw(st.sampled_from(["LayerNormalization", "InstanceNormalization", "GroupNormalization", "LRN",
                                 "LpNormalization", "RMSNormalization"]))
    kw = {"epsilon": g.draw(st.sampled_from([1e-5, 0.1]))}
    if op == "RMSNormalization" and g.opset < 23 or op == "GroupNormalization" and g.opset < 21:
        op = "LayerNormalization"
    if op in ("LayerNormalization", "RMSNormalization"):
        t = g.pick(_rank_at_least(2))
        r = len(g.env[t].shape)
        axis = g.draw(st.integers(1, r - 1))
        pshape = list(g.env[t].shape[axis:])
        if g.draw(st.booleans()):
            pshape = [1] * (len(pshape) - 1) + pshape[-1:]  # broadcast parameters
        ins = [t, g.const(1 + 0.3 * g.rng.standard_normal(pshape), "gamma")]
        if op == "LayerNormalization" and g.draw(st.booleans()):
            ins.append(g.const(0.3 * g.rng.standard_normal(pshape), "beta"))
        return g.emit(op, ins, axis=axis if g.draw(st.booleans()) else axis - r, **kw)
    if op == "LpNormalization":
        # Where a slice's norm is 0 (a Relu before it, all negative) the gradient is inf or NaN,
        # as the README says: check_rare_model accepts exactly that (_lp_zero_slice).
        t = g.pick(_rank_at_least(2))
        return g.emit(op, [t], axis=g.draw(st.integers(1, len(g.env[t].shape) - 1)), p=g.draw(st.sampled_from([1, 2])))
    t = g.pick(_rank(4) if op == "LRN" else _rank_at_least(3))
    if t is None:
        return None
    if op == "LRN":  # odd sizes only: ONNX Runtime's kernel refuses an even one at load (size % 2 == 1)
        return g.emit(op, [t], size=g.draw(st.sampled_from([1, 3, 5])), alpha=0.5, beta=0.75, bias=1.0)
    c = g.env[t].shape[1]
    if op == "GroupNormalization":
        kw["num_groups"] = g.draw(st.sampled_from([d for d in range(1, c + 1) if c % d == 0]))
    params = [g.const(1 + 0.3 * g.rng.standard_normal(c), "scale"), g.const(0.3 * g.rng.standard_normal(c), "b")]
    return g.emit(op, [t, *params], **kw)


def g_shape_rare(g):
    op = g.draw(st.sampled_from(["Expand", "Tile", "CumSum", "DepthToSpace", "SpaceToDepth", "Trilu", "ReverseSequence",
                                 "Dropout", "Cast", "GlobalMaxPool", "TopK"]))
    if op in ("Dropout", "Cast"):
        return g.emit(op, [g.pick()], **({"to": TensorProto.DOUBLE} if op == "Cast" else {}))
    if op == "Expand":
        t = g.pick(lambda s: 1 in s[1:])
        if t is None:
            return None
        target = [1] + [d if d != 1 else g.draw(st.integers(1, 3)) for d in g.env[t].shape[1:]]
        return g.emit(op, [t, g.const(target, "shape", integer=True)])
    if op == "DepthToSpace":
        t = g.pick(lambda s: len(s) == 4 and s[1] % 4 == 0)
        return t and g.emit(op, [t], blocksize=2, mode=g.draw(st.sampled_from(["DCR", "CRD"])))
    if op == "SpaceToDepth":
        t = g.pick(lambda s: len(s) == 4 and s[2] % 2 == 0 and s[3] % 2 == 0)
        return t and g.emit(op, [t], blocksize=2)
    if op in ("Trilu", "GlobalMaxPool"):
        t = g.pick(_rank_at_least(3))
        if t is None or op == "GlobalMaxPool":
            return t and g.emit(op, [t])
        k = [g.const(np.int64(g.draw(st.integers(-1, 1))), "k", integer=True)] if g.draw(st.booleans()) else []
        return g.emit(op, [t] + k, upper=g.draw(st.sampled_from([0, 1])))
    t = g.pick(_rank_at_least(2))
    shape = g.env[t].shape
    r = len(shape)
    if op == "Tile":
        return g.emit(op, [t, g.const([1] + [g.draw(st.integers(1, 2)) for _ in range(r - 1)], "reps", integer=True)])
    if op == "CumSum":
        return g.emit(op, [t, g.const(np.int64(g.draw(st.integers(1, r - 1))), "axis", integer=True)],
                      exclusive=g.draw(st.sampled_from([0, 1])), reverse=g.draw(st.sampled_from([0, 1])))
    if op == "ReverseSequence":  # batch axis 0 (it must stay the batch), lengths per row
        if g.dynamic:
            return None
        lens = g.rng.integers(1, shape[1] + 1, shape[0])
        return g.emit(op, [t, g.const(lens, "lens", integer=True)], batch_axis=0, time_axis=1)
    axis = g.draw(st.integers(1, r - 1))
    outs = g.emit("TopK", [t, g.const([g.draw(st.integers(1, shape[axis]))], "k", integer=True)], n_out=2, axis=axis,
                  largest=g.draw(st.sampled_from([0, 1])), sorted=1)
    if outs is not None:
        g.pool.remove(outs[1])  # the int64 indices
    return outs


def g_gather(g):
    op = g.draw(st.sampled_from(["Gather", "GatherElements", "GatherND", "ScatterElements", "ScatterND"]))
    t = g.pick(_rank_at_least(2))
    shape = g.env[t].shape
    axis = g.draw(st.integers(1, len(shape) - 1))
    if op == "Gather":
        idx = g.rng.integers(-shape[axis], shape[axis], g.draw(st.sampled_from([[3], [2, 2], []])))
        return g.emit(op, [t, g.const(idx, "idx", integer=True)], axis=axis)
    if g.dynamic:
        return None  # the other index tensors have the batch size
    if op == "GatherElements":
        ishape = list(shape)
        ishape[axis] = g.draw(st.integers(1, 4))
        return g.emit(op, [t, g.const(g.rng.integers(0, shape[axis], ishape), "idx", integer=True)], axis=axis)
    if op == "GatherND":  # batch_dims 1 keeps the batch axis
        idx = g.rng.integers(0, shape[1], (shape[0], 2, 1))
        return g.emit(op, [t, g.const(idx, "idx", integer=True)], batch_dims=1)
    if op == "ScatterElements":
        ishape = list(shape)
        ishape[axis] = g.draw(st.integers(1, shape[axis]))
        # distinct indices along the axis: two writes to one place leave only one of them
        idx = np.take(np.argsort(g.rng.random(shape), axis=axis), range(ishape[axis]), axis=axis)
        upd = g.pick(lambda s: list(s) == ishape) or g.const(g.rng.standard_normal(ishape), "upd")
        # (reduction mul / max / min are refused by name: no rule)
        kw = {"reduction": "add"} if g.opset >= 16 and g.draw(st.booleans()) else {}
        return g.emit(op, [t, g.const(idx, "idx", integer=True), upd], axis=axis, **kw)
    rows = g.rng.permutation(shape[1])[:g.draw(st.integers(1, shape[1]))]  # ScatterND: whole rows of axis 1
    idx = np.array([[[n, j] for j in rows] for n in range(shape[0])])
    ushape = [shape[0], len(rows)] + list(shape[2:])
    upd = g.pick(lambda s: list(s) == ushape) or g.const(g.rng.standard_normal(ushape), "upd")
    return g.emit(op, [t, g.const(idx, "idx", integer=True), upd])


def g_einsum(g):
    t = g.pick(_rank_at_least(2))
    shape = g.env[t].shape
    r = len(shape)
    ix = "abcdef"[:r]
    kind = g.draw(st.sampled_from(["weight", "self", "trace"]))
    if kind == "weight":
        w = g.weights(shape[-1], g.draw(st.integers(1, 4)))
        return g.emit("Einsum", [t, g.const(w, "W")], equation=f"{ix},{ix[-1]}z->{ix[:-1]}z")
    if kind == "self":
        return g.emit("Einsum", [t, t], equation=f"{ix},{ix}->{ix[0]}{ix[-1]}")
    if r < 3 or shape[-1] != shape[-2]:
        return None
    return g.emit("Einsum", [t], equation=f"{ix[:-1]}{ix[-2]}->{ix[:-2]}")


def g_conv_transpose(g):
    t = g.pick(_rank(4))
    if t is None:
        return None
    c = g.env[t].shape[1]
    group = g.draw(st.sampled_from([gr for gr in (1, 2) if c % gr == 0]))
    m = group * g.draw(st.integers(1, 2))
    k = [g.draw(st.integers(1, 3)), g.draw(st.integers(1, 3))]
    attrs = {"strides": [g.draw(st.integers(1, 2)), g.draw(st.integers(1, 2))], "group": group, "kernel_shape": k}
    if g.draw(st.booleans()):
        attrs["pads"] = [g.draw(st.integers(0, k[i % 2] - 1)) for i in range(4)]
    if g.draw(st.booleans()):
        attrs["output_padding"] = [g.draw(st.integers(0, s - 1)) for s in attrs["strides"]]
    ins = [t, g.const(g.weights(c, m // group, *k, fan_in=c), "W")]
    if g.draw(st.booleans()):
        ins.append(g.const(0.1 * g.rng.standard_normal(m), "B"))
    return g.emit("ConvTranspose", ins, **attrs)


def g_resize(g):
    t = g.pick(_rank(4))
    if t is None or g.dynamic:
        return None
    n, c, h, w = g.env[t].shape
    kw = {"mode": g.draw(st.sampled_from(["nearest", "linear", "cubic"])),
          "coordinate_transformation_mode": g.draw(st.sampled_from(["half_pixel", "asymmetric", "align_corners",
                                                                     "pytorch_half_pixel"]))}
    if kw["mode"] == "nearest":
        kw["nearest_mode"] = g.draw(st.sampled_from(["floor", "round_prefer_floor", "ceil"]))
    sizes = [n, c, g.draw(st.integers(2, 2 * h)), g.draw(st.integers(2, 2 * w))]
    return g.emit("Resize", [t, "", "", g.const(sizes, "sizes", integer=True)], **kw)


def _known_dims(g, t) -> bool:
    """Whether ONNX shape inference knows every dim of `t` but the batch."""
    x = helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N" if g.dynamic else g.env["x"].shape[0],
                                                                *g.env["x"].shape[1:]])
    model = helper.make_model(helper.make_graph(g.nodes, "g", [x], [], g.inits),
                              opset_imports=[helper.make_opsetid("", g.opset)])
    inferred = [x] + list(onnx.shape_inference.infer_shapes(model).graph.value_info)
    dims = next((v.type.tensor_type.shape.dim for v in inferred if v.name == t), None)
    return dims is not None and len(dims) == len(g.env[t].shape) and all(d.HasField("dim_value") for d in dims[1:])


def g_misc(g):
    # (RotaryEmbedding is not drawn: its schema has no float64 (T is float, float16, bfloat16), so
    # these float64 graphs cannot hold it; tests/test_vjp_ops.py and test_attention.py check it.)
    op = g.draw(st.sampled_from(["Mod", "CastLike", "GridSample", "Attention"]))
    if op == "Mod":
        return g.emit(op, [g.pick(), g.const(np.float64(g.draw(st.sampled_from([0.7, -1.3]))), "m")], fmod=1)
    if op == "CastLike":
        return g.emit(op, [g.pick(), g.const(np.zeros(1), "like")])
    if op == "GridSample":
        t = g.pick(_rank(4))
        if g.opset < 20 or t is None or g.dynamic:
            return None
        grid = g.rng.uniform(-1.1, 1.1, (g.env[t].shape[0], g.draw(st.integers(1, 4)), g.draw(st.integers(1, 4)), 2))
        # (mode cubic is refused by name: bilinear and nearest have rules)
        return g.emit(op, [t, g.const(grid, "grid")], mode=g.draw(st.sampled_from(["linear", "nearest"])),
                      padding_mode=g.draw(st.sampled_from(["zeros", "border", "reflection"])),
                      align_corners=g.draw(st.sampled_from([0, 1])))
    t = g.pick(_rank(3))
    # onnx's Attention shape inference (AttentionPropagateElemTypeFromInputToOutput, onnx 1.23)
    # gives the output's hidden size as 0, not unknown, when the input's last dim is unknown (after
    # a GroupNormalization, to which onnx 1.23 gives no output type: onnx/onnx#7157); the export
    # then fails to load in ONNX Runtime ("Incompatible dimensions" at a Mul of the backward). A
    # fault of onnx's, not onnxattr's: draw Attention only on inputs whose dims inference knows.
    if g.opset < 23 or t is None or not _known_dims(g, t):
        return None
    d = g.env[t].shape[2]
    heads = g.draw(st.sampled_from([h for h in (1, 2) if d % h == 0]))
    return g.emit(op, [t, t, t], q_num_heads=heads, kv_num_heads=heads, is_causal=g.draw(st.sampled_from([0, 1])))


def g_forms(g):
    """Forms of FUZZ_OPS the numpy interpreter does not know."""
    kind = g.draw(st.sampled_from(["pad", "slice", "split", "conv", "pool"]))
    if kind == "pad":
        t = g.pick(_rank_at_least(2))
        shape = g.env[t].shape
        r = len(shape)
        mode = g.draw(st.sampled_from(["reflect", "edge"] + (["wrap"] if g.opset >= 19 else [])))
        axes = [a for a in range(1, r) if g.draw(st.booleans())] or [r - 1]
        pads = [g.draw(st.integers(0, max(0, min(2, shape[a] - (mode == "reflect"))))) for _ in range(2) for a in axes]
        if not any(pads):
            return None
        if g.draw(st.booleans()):
            return g.emit("Pad", [t, g.const(pads, "pads", integer=True), "", g.axes_input(axes)], mode=mode)
        full = [0] * (2 * r)
        for i, a in enumerate(axes):
            full[a], full[r + a] = pads[i], pads[len(axes) + i]
        return g.emit("Pad", [t, g.const(full, "pads", integer=True)], mode=mode)
    if kind in ("slice", "split"):
        t = g.pick(lambda s: len(s) >= 2 and max(s[1:]) >= 2)
        if t is None or kind == "split" and g.opset < 18:
            return None
        shape = g.env[t].shape
        axis = g.draw(st.sampled_from([i for i in range(1, len(shape)) if shape[i] >= 2]))
        d = shape[axis]
        if kind == "split":
            k = g.draw(st.integers(2, min(3, d)))
            return g.emit("Split", [t], n_out=k, axis=axis, num_outputs=k)
        step = g.draw(st.sampled_from([-1, -2, 2, 3]))
        if step > 0:
            start, end = g.draw(st.integers(0, d - 1)), g.draw(st.sampled_from([d, BIG, -1]))
        else:
            start, end = g.draw(st.sampled_from([-1, d - 1, BIG])), g.draw(st.sampled_from([-BIG, 0, -d - 5]))
        return g.emit("Slice", [t, g.const([start], "starts", integer=True), g.const([end], "ends", integer=True),
                                g.axes_input([axis]), g.const([step], "steps", integer=True)])
    t = g.pick(lambda s: len(s) in (3, 5))  # 1-D and 3-D
    if t is None:
        return None
    shape = g.env[t].shape
    sp = len(shape) - 2
    k = [g.draw(st.integers(1, min(3, shape[2 + i]))) for i in range(sp)]
    strides = [g.draw(st.integers(1, 2)) for _ in range(sp)]
    if kind == "conv":
        c = shape[1]
        pads = [g.draw(st.integers(0, 1)) for _ in range(2 * sp)]
        w = g.const(g.weights(2, c, *k, fan_in=c * int(np.prod(k))), "W")
        return g.emit("Conv", [t, w], kernel_shape=k, strides=strides, pads=pads)
    op = g.draw(st.sampled_from(["MaxPool", "AveragePool", "GlobalAveragePool"]))
    return g.emit(op, [t]) if op == "GlobalAveragePool" else g.emit(op, [t], kernel_shape=k, strides=strides)


RARE = [g_forms, g_forms, g_misc, g_unary_rare, g_unary_rare, g_prelu, g_pow, g_variadic, g_variadic, g_reduce_rare,
        g_norm, g_norm, g_shape_rare, g_shape_rare, g_gather, g_einsum, g_conv_transpose, g_resize]


def rare_graphs(max_ops: int = 10):
    """fuzz_graphs.graphs with the rare ops drawn (twice as often, together, as FUZZ_OPS)."""
    return graphs(max_ops, generators=GENERATORS + 2 * RARE, opsets=OPSETS, gen=RareGen)


# ==================================================================================== the check
def _lp_zero_slice(model, x) -> bool:
    """Whether an LpNormalization reads a slice of norm 0 at x (x / |x|: no derivative there)."""
    lp = [n for n in model.graph.node if n.op_type == "LpNormalization"]
    if not lp:
        return False
    interp = RefInterp(model)
    env = interp.forward({"x": x})
    return any((np.abs(env[n.input[0]]).sum(axis=attr(n, "axis", -1)) == 0).any() for n in lp)


def check_rare_model(model: onnx.ModelProto, seed: int = 0) -> dict:
    """The checks above on one float64 model with input `x` and scores `y`; returns what ran."""
    onnx.checker.check_model(model, full_check=True)  # the generator itself must make valid ONNX
    rng = np.random.default_rng(seed)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    batch = int(rng.integers(1, 3))  # for a symbolic batch axis
    shape = [d.dim_value if d.HasField("dim_value") else batch for d in dims]
    x = rng.standard_normal(shape)
    fwd = reference(model)
    y = fwd.run(["y"], {"x": x})[0]
    if not np.isfinite(y).all():  # (chained Exp, Pow, Reciprocal can overflow: nothing to compare)
        return {"fd": 0, "kinks": 0, "f32": False, "refused": False}
    target = rng.integers(0, y.shape[1], y.shape[0])
    onehot = np.eye(y.shape[1])[target]
    try:
        att = {m: onnxattr.attribution_model(model, method=m) for m in onnxattr.METHODS}
    except onnxattr.UnsupportedModelError as e:
        # A nearest Resize on a rounding boundary of its nearest_mode is refused (README, bad
        # inputs): which input the forward reads there depends on the runtime.
        assert "depends on float rounding" in str(e), str(e)
        return {"fd": 0, "kinks": 0, "f32": False, "refused": True}
    onnx.checker.check_model(att["saliency"], full_check=True)
    a64 = {m: reference(a).run(["attribution"], {"x": x, "target": target})[0] for m, a in att.items()}
    if not all(np.isfinite(a).all() for a in a64.values()):
        # README: where an LpNormalization slice's norm is 0 the gradient is inf or NaN, reported
        # as such (a Relu's mask multiplies it, so it reaches x even where the scores are flat).
        assert _lp_zero_slice(model, x), "a non-finite attribution with finite scores"
        return {"fd": 0, "kinks": 0, "f32": False, "refused": False}

    def f(p):
        return float(np.sum(fwd.run(["y"], {"x": p})[0] * onehot))

    fd, kinks = 0, 0
    for _ in range(3):
        t = rng.standard_normal(shape)
        d = [(f(x + h * t) - f(x - h * t)) / (2 * h) for h in STEPS]
        rhs = float(np.sum(a64["saliency"] * t))
        scale = float(np.sum(np.abs(a64["saliency"] * t))) + abs(d[0]) + 1e-3 * max(1.0, abs(f(x)))
        if abs(d[0] - d[1]) > 1e-5 * scale or abs(d[1] - d[2]) > 1e-3 * scale:
            kinks += 1  # the step sizes disagree: a kink near x along t
            continue
        assert abs(d[0] - rhs) <= FD_RTOL * scale, \
            f"saliency: <attribution, t> = {rhs!r} but the finite difference is {d[0]!r}"
        fd += 1

    m32, x32 = to_float32(model), x.astype(np.float32)
    if _onnxruntime_runs(m32, x32) is None:
        return {"fd": fd, "kinks": kinks, "f32": False, "refused": False}
    for method in onnxattr.METHODS:
        a = onnxattr.attribution_model(m32, method=method)
        a32 = _session(a).run(["attribution"], {"x": x32, "target": target})[0]
        err = _rel(a32, a64[method], 1e-2)
        if err > F32_RTOL:
            # The tolerance: 20x what float32 loses in the same export elsewhere (onnx.reference in
            # float32). A normalization over a slice of two values far apart is all cancellation in
            # its backward (the exact gradient is about eps / sigma^3): 5.7e-3 off, in one graph
            # of 6,000, ONNX Runtime and onnx.reference alike.
            ref32 = reference(a).run(["attribution"], {"x": x32, "target": target})[0]
            tol = 20 * _rel(ref32, a64[method], 1e-2)
            assert err < tol, f"{method}: float32 ONNX Runtime differs from the float64 export by {err:.2e} " \
                              f"(relative; tolerance {max(F32_RTOL, tol):.1e})"
    return {"fd": fd, "kinks": kinks, "f32": True, "refused": False}
