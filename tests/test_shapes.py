"""The static integer folding of shape arithmetic (onnxattr/shapes.py fold_ints) against ONNX
Runtime: a wrong fully known value becomes a constant the rules and the If inliner trust."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxattr.runtime import make_session
from onnxattr.shapes import fold_ints

N = helper.make_node
BIG64, BIG32 = 2 ** 63 - 1, 2 ** 31 - 1

# (id, nodes after s = Shape(X) with X [1, 4], int64 constants); the last node's output is compared
CASES = [
    ("slice_axes_omitted_steps_given", [N("Slice", ["s", "b", "e", "", "p"], ["y"])], {"b": [-5], "e": [2], "p": [2]}),
    ("slice_negative_step_start_below_minus_dim", [N("Slice", ["s", "b", "e", "a", "p"], ["y"])],
     {"b": [-5], "e": [-10], "a": [0], "p": [-1]}),
    ("slice_negative_step_to_int64_max", [N("Slice", ["s", "b", "e", "a", "p"], ["y"])],
     {"b": [-1], "e": [BIG64], "a": [0], "p": [-1]}),
    ("slice_negative_step_to_int32_max", [N("Slice", ["s", "b", "e", "a", "p"], ["y"])],
     {"b": [-1], "e": [BIG32], "a": [0], "p": [-1]}),
    ("slice_reverse_all", [N("Slice", ["s", "b", "e", "a", "p"], ["y"])], {"b": [-1], "e": [-(2 ** 63)], "a": [0], "p": [-1]}),
    ("squeeze_empty_axes", [N("Squeeze", ["c", "ax"], ["y"])], {"c": np.array([[5, 6]]), "ax": np.zeros(0, np.int64)}),
    ("cast_int32_wraps", [N("Cast", ["c"], ["y"], to=TensorProto.INT32)], {"c": [2 ** 31 + 5]}),
    ("add_wraps", [N("Add", ["c", "one"], ["y"])], {"c": [BIG64], "one": [1]}),
    ("div_truncates", [N("Div", ["c", "d"], ["y"])], {"c": [-7, 7, 1], "d": [2, -2, -3]}),
    ("reshape_zero_and_minus_one", [N("Concat", ["s", "s"], ["t"], axis=0), N("Reshape", ["t", "r"], ["y"])], {"r": [0, -1]}),
    ("transpose_2d", [N("Concat", ["s", "s"], ["t"], axis=0), N("Reshape", ["t", "r"], ["u"]), N("Transpose", ["u"], ["y"])],
     {"r": [2, 2]}),
    ("compare_and_logic", [N("Equal", ["s", "c"], ["e"]), N("Not", ["e"], ["ne"]), N("Less", ["s", "d"], ["l"]),
                           N("Or", ["ne", "l"], ["y"])], {"c": [1, 5], "d": [2, 2]}),
    ("max_min_broadcast", [N("Max", ["s", "c", "d"], ["m"]), N("Min", ["m", "e"], ["y"])], {"c": [3], "d": [0, 2], "e": [2]}),
    ("constant_of_shape_int", [N("ConstantOfShape", ["s"], ["y"], value=numpy_helper.from_array(np.array([7], np.int64)))], {}),
]


@pytest.mark.parametrize("nodes, consts", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_folded_values_match_onnxruntime(nodes, consts):
    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.int64) if not isinstance(v, np.ndarray) else v, k)
             for k, v in consts.items()]
    nodes = [N("Shape", ["X"], ["s"])] + nodes
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4])], [], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    types = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(m).graph.value_info}
    m.graph.output.append(helper.make_tensor_value_info("y", types.get("y", TensorProto.INT64), None))
    want = make_session(m.SerializeToString(), "cpu")[0].run(None, {"X": np.zeros((1, 4), np.float32)})[0]
    got = fold_ints(g, {"X": [1, 4]}, {t.name: t for t in inits}).get("y")
    assert got is not None, "not folded"
    assert got.shape == want.shape and [int(v) for v in got.flat] == [int(v) for v in want.flat], (got, want)


def test_entries_of_an_unknown_dim_stay_unknown():
    g = helper.make_graph([N("Shape", ["X"], ["s"]), N("Slice", ["s", "b", "e", "a", "p"], ["y"])], "g",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])], [],
                          [numpy_helper.from_array(np.array(v, np.int64), k)
                           for k, v in {"b": [-1], "e": [-(2 ** 63)], "a": [0], "p": [-1]}.items()])
    got = fold_ints(g, {"X": [None, 4]}, {t.name: t for t in g.initializer})["y"]
    assert list(got) == [4, None]


# ------------------------------------------------------------------------------ dims.py
def _random_window_graph(rng, nodes_count: int = 10):
    """x [1, 4, "H", "W"] through random Convs, pools (explicit pads or auto_pad SAME), Pads, activations and broadcasting Adds of any two
    earlier tensors of the same rank (the Adds that would fail at run time are left out by the
    caller's size range: it only keeps graphs ONNX Runtime runs at every size)."""
    nodes, inits, tensors = [], [], ["x"]
    for k in range(nodes_count):
        kind = rng.choice(["Conv", "MaxPool", "AveragePool", "Relu", "Add", "GlobalAveragePool", "Pad", "GroupNorm"],
                          p=[.3, .13, .1, .13, .2, .04, .06, .04])
        src = str(rng.choice(tensors))
        out = f"t{k}"
        if kind in ("Conv", "MaxPool", "AveragePool"):
            kh, kw = (int(v) for v in rng.integers(1, 4, 2))
            sh, sw = (int(v) for v in rng.integers(1, 3, 2))
            pads = [int(v) for v in rng.integers(0, 2, 4)]
            pads = [min(p, kk - 1) for p, kk in zip(pads, [kh, kw, kh, kw])]
            a = dict(kernel_shape=[kh, kw], strides=[sh, sw], pads=pads)
            if rng.random() < 0.3:  # Keras' padding="same" through tf2onnx: length ceil(length / stride)
                a = dict(kernel_shape=[kh, kw], strides=[sh, sw], auto_pad=str(rng.choice(["SAME_UPPER", "SAME_LOWER"])))
            if kind == "Conv":
                w = f"w{k}"
                inits.append(numpy_helper.from_array(rng.standard_normal((4, 4, kh, kw)).astype(np.float32), w))
                nodes.append(helper.make_node("Conv", [src, w], [out], **a))
            else:
                nodes.append(helper.make_node(kind, [src], [out], **a))
        elif kind == "Pad":  # constant pads, some negative (a crop): Keras' ZeroPadding2D, Cropping2D
            pads = [0, 0] + [int(v) for v in rng.integers(-1, 3, 2)] + [0, 0] + [int(v) for v in rng.integers(-1, 3, 2)]
            inits.append(numpy_helper.from_array(np.array(pads, np.int64), f"pads{k}"))
            nodes.append(helper.make_node("Pad", [src, f"pads{k}"], [out]))
        elif kind == "GroupNorm":  # as PyTorch exports it: [N, G, -1], InstanceNormalization, back to Shape(x)
            inits += [numpy_helper.from_array(np.array([0, 2, -1], np.int64), f"groups{k}"),
                      numpy_helper.from_array(np.ones(2, np.float32), f"one{k}"),
                      numpy_helper.from_array(np.zeros(2, np.float32), f"zero{k}")]
            nodes += [helper.make_node("Reshape", [src, f"groups{k}"], [f"{out}_g"]),
                      helper.make_node("InstanceNormalization", [f"{out}_g", f"one{k}", f"zero{k}"], [f"{out}_n"]),
                      helper.make_node("Shape", [src], [f"{out}_s"]),
                      helper.make_node("Reshape", [f"{out}_n", f"{out}_s"], [out])]
        elif kind == "Add":
            nodes.append(helper.make_node("Add", [src, str(rng.choice(tensors))], [out]))
        else:
            nodes.append(helper.make_node(kind, [src], [out]))
        tensors.append(out)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, "H", "W"])],
                              [helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors[1:]], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, tensors


def _evaluate(e, x_shape) -> int:
    """The length a dims.py expression stands for when the input "x" has x_shape. The division
    truncates as ONNX Runtime's does: a window past the input and its pads, (1 + 1 - 3) / 2 + 1,
    is 1 there (equal expressions stay equal lengths under either rounding)."""
    if isinstance(e, int):
        return e
    base, offset = e
    if base[0] == "in":
        return x_shape[base[2]] + offset
    return int(_evaluate(base[1], x_shape) / base[2]) + offset


def test_symbolic_dims_claim_only_true_equalities():
    """dims.same claims two unknown lengths equal only where they are equal at every size: random
    graphs of Convs, pools and Adds over a dynamic image size, run by ONNX Runtime at 12 sizes.
    It must also find the equalities a residual block needs (checked on a ResNet-style block)."""
    from onnxattr.dims import same, symbolic_dims
    from onnxattr.graph import Builder

    rng = np.random.default_rng(0)
    claims = checked = same_pads = evaluated = evaluated_pads = 0
    for _ in range(120):
        model, tensors = _random_window_graph(rng)
        try:
            sess = make_session(model.SerializeToString(), "cpu")[0]
            runs = [sess.run(tensors[1:], {"x": np.zeros((1, 4, h, w), np.float32)})
                    for h, w in ((9, 9), (10, 13), (11, 8), (12, 12), (13, 10), (14, 17), (15, 15), (16, 9),
                                 (17, 12), (18, 19), (19, 11), (20, 20))]
        except Exception:  # an Add of tensors that do not broadcast at some size, a window past the input
            continue
        checked += 1
        pad_outputs = {n.output[0] for n in model.graph.node if n.op_type in ("Pad", "Reshape")}
        padded_same = {n.output[0] for n in model.graph.node
                       if any(at.name == "auto_pad" and at.s.startswith(b"SAME") for at in n.attribute)}
        shapes = Builder(model, TensorProto.FLOAT).shapes
        sym = symbolic_dims(model, shapes)
        actual = {t: [np.shape(r[k]) for r in runs] for k, t in enumerate(tensors[1:])}
        actual["x"] = [(1, 4, h, w) for h, w in ((9, 9), (10, 13), (11, 8), (12, 12), (13, 10), (14, 17), (15, 15),
                                                  (16, 9), (17, 12), (18, 19), (19, 11), (20, 20))]
        for t in tensors:  # every expression gives the length ONNX Runtime computed, at every size
            for i, e in enumerate(sym.get(t) or []):
                if e is not None:
                    evaluated += 1
                    evaluated_pads += t in pad_outputs
                    assert all(_evaluate(e, xs) == sa[i] for sa, xs in zip(actual[t], actual["x"])), (t, i, e)
        for a in tensors:
            for b in tensors:
                for i in (2, 3):
                    for j in (2, 3):
                        if same(sym, a, i, b, j):
                            claims += 1
                            same_pads += a in padded_same or b in padded_same
                            assert all(sa[i] == sb[j] for sa, sb in zip(actual[a], actual[b])), (a, i, b, j)
    assert checked >= 25 and claims >= 150 and same_pads >= 20 and evaluated >= 500 and evaluated_pads >= 20, (
        checked, claims, same_pads, evaluated, evaluated_pads)


def test_symbolic_dims_see_a_residual_block():
    """x -> Conv 3x3 s2 p1 -> Relu -> Conv 3x3 p1, plus x -> Conv 1x1 s2: the two branches of a
    ResNet downsampling block have one length, floor((H - 1) / 2) + 1, though inference names
    them apart; a 3x3 Conv without padding does not."""
    from onnxattr.dims import same, symbolic_dims

    rng = np.random.default_rng(1)
    w = lambda name, k: numpy_helper.from_array(rng.standard_normal((4, 4, k, k)).astype(np.float32), name)  # noqa: E731
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["b"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "w3"], ["s"], kernel_shape=[1, 1], strides=[2, 2]),
             helper.make_node("Add", ["b", "s"], ["y"]),
             helper.make_node("Conv", ["y", "w2"], ["v"], kernel_shape=[3, 3])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, "H", "W"])],
                              [helper.make_tensor_value_info("v", TensorProto.FLOAT, None)],
                              [w("w1", 3), w("w2", 3), w("w3", 1)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sym = symbolic_dims(model, {})
    assert same(sym, "b", 2, "s", 2) and same(sym, "y", 3, "a", 3) and same(sym, "r", 2, "y", 2)
    assert not same(sym, "x", 2, "a", 2) and not same(sym, "v", 2, "y", 2) and not same(sym, "b", 2, "b", 3)


def test_symbolic_dims_do_not_carry_channels_through_a_conv_of_unknown_weights():
    """A Conv's output channels are its weight's first dim: with that unknown, nothing is claimed
    (the input's symbolic channel count was carried over, claiming M = C)."""
    from onnxattr.dims import same, symbolic_dims

    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "C", 5, 5]),
                                            helper.make_tensor_value_info("w", TensorProto.FLOAT, ["M", "C", 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    sym = symbolic_dims(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), {})
    assert not same(sym, "y", 1, "x", 1) and sym["y"][2:] == [5, 5]


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_symbolic_dims_through_reshapes_squeezes_reductions_and_products(opset):
    """Constant Reshapes (a -1 is what is left of the input once the other lengths are taken out:
    an unknown length only where exactly one is left and the static lengths cancel), Squeeze,
    Unsqueeze, Flatten, the Reduce ops (axes as attribute or input, keepdims or not), MatMul and
    Gemm carry the batch through a squeeze-and-excitation block or a classifier head as tf2onnx
    writes them (Keras EfficientNetB0 with a dynamic size: `GlobalAveragePool -> Squeeze ->
    Reshape [-1, C, 1, 1]` lost it, so Grad-CAM's default layer fell to the first block). Every
    expression is checked against ONNX Runtime's lengths at six (N, H) sizes."""
    from onnxattr.dims import same, symbolic_dims

    rng = np.random.default_rng(2)
    consts = {"s_n_12": [-1, 12], "s_0_m1_4": [0, -1, 4], "s_0_0_12": [0, 0, 12], "s_m1_3_1_1": [-1, 3, 1, 1],
              "ax0": [0], "ax1": [1], "ax2": [2], "ax23": [2, 3]}
    inits = [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in consts.items()]
    inits += [numpy_helper.from_array(rng.standard_normal((12, 5)).astype(np.float32), "w"),
              numpy_helper.from_array(rng.standard_normal((5, 12)).astype(np.float32), "wt")]

    def axes_node(op, src, out, axes, **kw):
        if opset >= (18 if op.startswith("Reduce") else 13):
            return helper.make_node(op, [src, axes], [out], **kw)
        return helper.make_node(op, [src], [out], axes=consts[axes], **kw)

    nodes = [helper.make_node("Reshape", ["x", "s_0_m1_4"], ["r1"]),      # [N, 3H, 4]: -1 unknown
             helper.make_node("Reshape", ["x", "s_n_12"], ["r2"]),        # [NH, 12]: unknown
             helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["t", "s_0_0_12"], ["r3"]),      # [N, H, 12]
             axes_node("ReduceMean", "x", "g", "ax2", keepdims=0),         # [N, 3, 4]
             helper.make_node("Reshape", ["g", "s_n_12"], ["r5"]),        # [N, 12]
             axes_node("ReduceMax", "x", "k", "ax1", keepdims=1),          # [N, 1, H, 4]
             axes_node("Squeeze", "k", "sq", "ax1"),                       # [N, H, 4]
             axes_node("Unsqueeze", "sq", "un", "ax0"),                    # [1, N, H, 4]
             helper.make_node("Flatten", ["sq"], ["f1"], axis=1),         # [N, 4H]: unknown
             helper.make_node("Flatten", ["sq"], ["f2"], axis=2),         # [NH, 4]: unknown
             helper.make_node("Flatten", ["g"], ["f3"], axis=1),          # [N, 12]
             helper.make_node("Flatten", ["g"], ["f4"], axis=-2),         # [N, 12]: axis 1
             helper.make_node("MatMul", ["f3", "w"], ["mm"]),             # [N, 5]
             helper.make_node("MatMul", ["r3", "w"], ["mm3"]),            # [N, H, 5]
             helper.make_node("Gemm", ["r5", "wt"], ["gm"], transB=1),    # [N, 5]
             helper.make_node("GlobalAveragePool", ["x"], ["gp"]),        # [N, 3, 1, 1]
             axes_node("Squeeze", "gp", "gs", "ax23"),                     # [N, 3]
             helper.make_node("Reshape", ["gs", "s_m1_3_1_1"], ["se"]),   # [N, 3, 1, 1]
             helper.make_node("Mul", ["x", "se"], ["y"])]                 # [N, 3, H, 4]
    if opset >= 13:  # no axes, or an empty axes input: every axis (noop_with_empty_axes: none); Squeeze: every 1
        inits.append(numpy_helper.from_array(np.zeros(0, np.int64), "none"))
        nodes += [helper.make_node("ReduceSum", ["x"], ["all"], keepdims=1),               # [1, 1, 1, 1]
                  helper.make_node("ReduceSum", ["x", "none"], ["scalar"], keepdims=0),    # []
                  helper.make_node("ReduceSum", ["x", "ax0"], ["z"], keepdims=0),          # [3, H, 4]
                  helper.make_node("Add", ["z", "scalar"], ["zs"]),                        # [3, H, 4]
                  helper.make_node("ReduceSum", ["x", "none"], ["noop"], noop_with_empty_axes=1),
                  helper.make_node("Squeeze", ["un", "none"], ["sq0"])]                    # N or H may be 1
    outs = [n.output[0] for n in nodes]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", 4])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    sizes = [(1, 2), (2, 5), (3, 3), (4, 7), (6, 1), (5, 6)]
    sess = make_session(model.SerializeToString(), "cpu")[0]
    runs = [dict(zip(outs, sess.run(outs, {"x": np.zeros((n, 3, h, 4), np.float32)}))) for n, h in sizes]
    sym = symbolic_dims(model, {})
    for o in outs:
        for i, e in enumerate(sym.get(o) or []):
            if e is not None:
                assert all(_evaluate(e, (n, 3, h, 4)) == r[o].shape[i] for (n, h), r in zip(sizes, runs)), (o, i, e)
    for o in ("r3", "g", "r5", "k", "sq", "f3", "f4", "mm", "mm3", "gm", "gp", "gs", "se", "y"):
        assert same(sym, o, 0, "x", 0), o
    assert same(sym, "un", 1, "x", 0) and same(sym, "r3", 1, "x", 2) and same(sym, "mm3", 1, "x", 2)
    assert sym["r1"][1] is None and sym["r2"][0] is None and sym["f1"][1] is None and sym["f2"][0] is None
    assert sym["r5"][1] == 12 and sym["se"][1:] == [3, 1, 1] and sym["mm"][1] == 5
    if opset >= 13:  # (an empty axes input was read as no axis at all: zs [N, 3, H, 4], claiming its 3 = N)
        assert sym["all"] == [1, 1, 1, 1] and sym["scalar"] == [] and sym.get("sq0") is None
        assert not same(sym, "zs", 0, "x", 0) and same(sym, "zs", 1, "x", 2) and sym["noop"] == sym["x"]


@pytest.mark.parametrize("opset", [13, 15, 18])
def test_symbolic_dims_through_reshape_targets_read_by_shape(opset):
    """Reshape targets computed from lengths: PyTorch's x.view(x.size(0), -1) (Shape -> Gather ->
    Unsqueeze -> Concat), Shape with start / end (opset 15), tf2onnx's Tensordot for a Keras Dense
    on a map (Shape -> Cast -> Gather -> ReduceProd -> Unsqueeze -> Concat -> Cast, the map
    flattened to [N h w, C], multiplied, and reshaped back to [N, h, w, D]). The batch axis was
    lost there (a Keras ConvNeXt-style model with a dynamic size got a first-stage Grad-CAM
    layer); x.flatten(2) (Shape -> Slice -> Concat with -1). An unknown length read by Shape
    ("wrong": a length of another tensor, [4 H] here) is no particular one of the input's (it was
    taken out of the input's unknown lengths, so the -1 came out as N where it is 3 N), and
    ReduceProd with noop_with_empty_axes (opset 18) is no product. Every expression is checked
    against ONNX Runtime's lengths at six (N, H) sizes."""
    from onnxattr.dims import same, symbolic_dims

    rng = np.random.default_rng(3)
    consts = {"i0": np.array(0, np.int64), "m1": np.array([-1], np.int64), "ax0": np.array([0], np.int64),
              "ax2": np.array([2], np.int64), "free": np.array([0, 1, 2], np.int32), "last": np.array([3], np.int32),
              "d5": np.array([5], np.int32), "twelve": np.array([12], np.int64), "i1": np.array(1, np.int64),
              "s0": np.array([0], np.int64), "s2": np.array([2], np.int64), "one": np.array([1], np.int64)}
    inits = [numpy_helper.from_array(v, k) for k, v in consts.items()]
    inits.append(numpy_helper.from_array(rng.standard_normal((3, 5)).astype(np.float32), "w"))
    mean = (helper.make_node("ReduceMean", ["x", "ax2"], ["gp"], keepdims=0) if opset >= 18 else
            helper.make_node("ReduceMean", ["x"], ["gp"], axes=[2], keepdims=0))          # [N, 3, 4]
    nodes = [mean,
             helper.make_node("Shape", ["gp"], ["s"]),
             helper.make_node("Gather", ["s", "i0"], ["n"]),
             helper.make_node("Unsqueeze", ["n", "ax0"], ["nu"]),
             helper.make_node("Concat", ["nu", "m1"], ["view"], axis=0),
             helper.make_node("Reshape", ["gp", "view"], ["flat"]),                         # [N, 12]
             helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),              # [N, H, 4, 3]
             helper.make_node("Shape", ["t"], ["ts"]),
             helper.make_node("Cast", ["ts"], ["ts32"], to=TensorProto.INT32),
             helper.make_node("Gather", ["ts32", "free"], ["fr"], axis=0),
             helper.make_node("ReduceProd", ["fr"], ["p"], keepdims=0),
             helper.make_node("Unsqueeze", ["p", "ax0"], ["pu"]),
             helper.make_node("Gather", ["ts32", "last"], ["c"], axis=0),
             helper.make_node("Concat", ["pu", "c"], ["two32"], axis=0),
             helper.make_node("Cast", ["two32"], ["two"], to=TensorProto.INT64),
             helper.make_node("Reshape", ["t", "two"], ["rows"]),                           # [N H 4, 3]
             helper.make_node("MatMul", ["rows", "w"], ["mm"]),                             # [N H 4, 5]
             helper.make_node("Concat", ["fr", "d5"], ["back32"], axis=0),
             helper.make_node("Cast", ["back32"], ["back"], to=TensorProto.INT64),
             helper.make_node("Reshape", ["mm", "back"], ["dense"]),                        # [N, H, 4, 5]
             helper.make_node("Shape", ["x"], ["xs"]),
             helper.make_node("Slice", ["xs", "s0", "s2"], ["lead"]),
             helper.make_node("Concat", ["lead", "m1"], ["f2"], axis=0),
             helper.make_node("Reshape", ["x", "f2"], ["flat2"]),                           # [N, 3, 4 H]
             helper.make_node("Flatten", ["x"], ["fa"], axis=1),                            # [N, 12 H]
             helper.make_node("Flatten", ["x"], ["fb"], axis=2),                            # [3 N, 4 H]
             helper.make_node("Shape", ["fb"], ["fbs"]),
             helper.make_node("Gather", ["fbs", "i1"], ["wh"]),
             helper.make_node("Unsqueeze", ["wh", "ax0"], ["whu"]),
             helper.make_node("Concat", ["whu", "m1"], ["t2"], axis=0),
             helper.make_node("Reshape", ["fa", "t2"], ["wrong"])]                          # [4 H, 3 N]
    if opset >= 15:
        nodes += [helper.make_node("Shape", ["x"], ["s_n"], end=1),
                  helper.make_node("Shape", ["x"], ["s_h"], start=-2, end=-1),
                  helper.make_node("Concat", ["s_n", "s_h", "twelve"], ["nh12"], axis=0),
                  helper.make_node("Reshape", ["x", "nh12"], ["hv"])]                      # [N, H, 12]
    if opset >= 18:  # ReduceProd([1, N]) with noop_with_empty_axes and no axes: [1, N] itself
        nodes += [helper.make_node("Concat", ["one", "s_n"], ["one_n"], axis=0),
                  helper.make_node("ReduceProd", ["one_n"], ["noop"], noop_with_empty_axes=1),
                  helper.make_node("Gather", ["noop", "i0"], ["first"]),
                  helper.make_node("Unsqueeze", ["first", "ax0"], ["fu"]),
                  helper.make_node("Concat", ["fu", "m1"], ["t3"], axis=0),
                  helper.make_node("Reshape", ["gp", "t3"], ["one_row"])]                  # [1, 12 N]
    outs = [n.output[0] for n in nodes]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", 4])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                               for o in outs if o in ("flat", "rows", "mm", "dense", "hv", "flat2", "wrong", "one_row")],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    outs = [o.name for o in graph.output]
    sizes = [(1, 2), (2, 5), (3, 3), (4, 7), (6, 1), (5, 6)]
    sess = make_session(model.SerializeToString(), "cpu")[0]
    runs = [dict(zip(outs, sess.run(outs, {"x": rng.standard_normal((n, 3, h, 4)).astype(np.float32)})))
            for n, h in sizes]
    sym = symbolic_dims(model, {})
    for o in outs:
        for i, e in enumerate(sym.get(o) or []):
            if e is not None:
                assert all(_evaluate(e, (n, 3, h, 4)) == r[o].shape[i] for (n, h), r in zip(sizes, runs)), (o, i, e)
    assert same(sym, "flat", 0, "x", 0) and sym["flat"][1] == 12 and sym["rows"][0] is None
    assert same(sym, "dense", 0, "x", 0) and same(sym, "dense", 1, "x", 2) and sym["dense"][2:] == [4, 5]
    assert same(sym, "flat2", 0, "x", 0) and sym["flat2"][1] == 3 and sym["flat2"][2] is None
    assert sym["wrong"] == [None, None]
    if opset >= 15:
        assert same(sym, "hv", 0, "x", 0) and same(sym, "hv", 1, "x", 2) and sym["hv"][2] == 12
    if opset >= 18:
        assert (sym.get("one_row") or [1, None])[1] is None  # (it was 12: the noop taken for a product)


@pytest.mark.parametrize("opset", [9, 13])
def test_symbolic_dims_through_slices(opset):
    """A Slice keeps the lengths of the axes it does not slice, and of those it takes whole, also
    where its bounds are computed at run time, as PyTorch writes x.chunk(2, dim=1) at a dynamic
    size: after a channel shuffle's chunk the batch axis was lost, so Grad-CAM's default layer fell
    to a map before the shuffle and the right one was refused ("its first axis is not the input's
    batch axis"). Every expression is checked against ONNX Runtime's lengths at six sizes."""
    from onnxattr.dims import same, symbolic_dims

    big = np.iinfo(np.int64).max
    consts = {"z": [0], "a1": [1], "a2": [2], "two": [2], "big": [big], "a01": [0, 1], "z0": [0, 0], "bb": [big, 2]}
    inits = [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in consts.items()]
    if opset < 10:
        nodes = [helper.make_node("Slice", ["x"], ["half"], starts=[0], ends=[2], axes=[1]),         # [N, 2, H, W]
                 helper.make_node("Slice", ["x"], ["whole"], starts=[0, 0], ends=[big, 2], axes=[0, 1]),
                 helper.make_node("Slice", ["x"], ["crop"], starts=[1], ends=[-1], axes=[2])]      # [N, 6, H-2, W]
    else:
        nodes = [helper.make_node("Shape", ["x"], ["s"]),
                 helper.make_node("Gather", ["s", "a1"], ["c"]),
                 helper.make_node("Div", ["c", "two"], ["h"]),                                       # run-time bound
                 helper.make_node("Slice", ["x", "z", "h", "a1"], ["half"]),                          # [N, 3, H, W]
                 helper.make_node("Slice", ["x", "z0", "bb", "a01"], ["whole"]),                      # [N, 2, H, W]
                 helper.make_node("Slice", ["x", "a1", "big", "a2", "two"], ["crop"])]                # [N, 6, ~H/2, W]
    outs = ["half", "whole", "crop"]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, "H", "W"])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)
    sizes = [(1, 3, 2), (2, 5, 4), (3, 3, 3), (4, 7, 1), (6, 4, 5), (5, 6, 2)]
    sess = make_session(model.SerializeToString(), "cpu")[0]
    runs = [dict(zip(outs, sess.run(outs, {"x": np.zeros((n, 6, h, w), np.float32)}))) for n, h, w in sizes]
    sym = symbolic_dims(model, {})
    for o in outs:
        for i, e in enumerate(sym.get(o) or []):
            if e is not None:
                want = [r[o].shape[i] for r in runs]
                assert [_evaluate(e, (n, 6, h, w)) if not isinstance(e, int) else e for n, h, w in sizes] == want, (o, i, e)
    for o in outs:
        assert same(sym, o, 0, "x", 0) and same(sym, o, 3, "x", 3), o
    assert same(sym, "half", 2, "x", 2) and same(sym, "whole", 2, "x", 2) and sym["crop"][2] is None
    if opset >= 10:  # (bounds computed at run time: that length is unknown)
        assert sym["half"][1] is None


def test_a_static_length_the_shape_trials_contradict_is_unknown():
    """ONNX's data propagation gets a Reshape target read through a 2-D Gather wrong: it calls t5
    [1, 1] where it is [1, 4 N] (a dims audit's fuzzed graph). The shape trials work the shapes
    out at two sizes and see 24 and 140: that length is now unknown (it was taken for 1, and
    dims.py claimed it), and the gradient through it is right at several sizes."""
    from onnxattr.graph import Builder

    def i64(v, n):
        return numpy_helper.from_array(np.array(v, np.int64), n)

    inits = [i64([1, -1], "nf_at"), i64([0], "ax0"), i64([1], "one"), i64([-1], "m1"), i64(0, "i0"), i64([-1], "last")]
    nodes = [helper.make_node("Shape", ["x"], ["s0"]),
             helper.make_node("Cast", ["s0"], ["s0i"], to=TensorProto.INT32),
             helper.make_node("Gather", ["s0i", "nf_at"], ["nf"], axis=0),
             helper.make_node("ReduceProd", ["nf"], ["p"], axes=[0], keepdims=0),
             helper.make_node("Unsqueeze", ["p", "ax0"], ["pu"]),
             helper.make_node("Cast", ["pu"], ["pl"], to=TensorProto.INT64),
             helper.make_node("Concat", ["one", "m1", "pl"], ["t0s"], axis=0),
             helper.make_node("Reshape", ["x", "t0s"], ["t0"]),                    # [1, 1, 4N]
             helper.make_node("Shape", ["t0"], ["s1"]),
             helper.make_node("Unsqueeze", ["s1", "ax0"], ["u"]),                  # [[1, 1, 4N]]
             helper.make_node("Gather", ["u", "i0"], ["row"]),
             helper.make_node("Gather", ["row", "last"], ["l"]),                   # [4N]
             helper.make_node("Concat", ["m1", "l"], ["t5s"], axis=0),
             helper.make_node("Reshape", ["t0", "t5s"], ["t5"]),                   # [1, 4N]
             helper.make_node("Relu", ["t5"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)
    b = Builder(model, TensorProto.FLOAT)
    assert b.shapes["t5"][1] is None and b.shapes["y"][1] is None
    from onnxattr.api import vjp_model
    vm, cots, grads = vjp_model(model)
    sess = make_session(vm.SerializeToString(), "cpu")[0]
    rng = np.random.default_rng(0)
    for n in (6, 3, 1):
        x = rng.standard_normal((1, n, 4)).astype(np.float32)
        c = rng.standard_normal((1, 4 * n)).astype(np.float32)
        (gx,) = sess.run([grads["x"]], {"x": x, cots["y"]: c})
        np.testing.assert_array_equal(gx, c.reshape(1, n, 4) * (x > 0))


@pytest.mark.parametrize("start, end, step, whole", [
    (0, 2 ** 31 - 1, 1, True), (0, 2 ** 63 - 1, 1, True), (-(2 ** 63), 2 ** 63 - 1, 1, True), (-(2 ** 31), 2 ** 31 - 1, 1, True),
    (1, 2 ** 31 - 1, 1, False), (0, 2 ** 31 - 2, 1, False), (0, 2 ** 31 - 1, 2, False), (-1, 2 ** 31 - 1, 1, False),
])
def test_a_whole_axis_slice_keeps_its_length_symbol(start, end, step, whole):
    """tf2onnx's x[:, a:b] slices axis 0 from 0 to INT32_MAX: the output's unknown length is the
    input's (the Builder declares the input's symbol there), so an Add with a tensor of that
    length needs no run-time broadcast check. A slice that may drop elements keeps ONNX's fresh
    symbol. The claim is checked against ONNX Runtime at three lengths."""
    from onnxattr.graph import Builder

    inits = [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in
             dict(s=[start, 2], e=[end, 6], a=[0, 1], st=[step, 1]).items()]
    nodes = [helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"]), helper.make_node("Relu", ["y"], ["r"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("r", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    b = Builder(model, TensorProto.FLOAT)
    assert b.shapes["r"][1] == 4
    assert (b.shape_protos["r"].dim[0].dim_param == "N") == whole  # (0 .. 2**31 - 2 might drop elements: not claimed)
    sess = make_session(model.SerializeToString(), "cpu")[0]
    lengths = [sess.run(None, {"x": np.zeros((n, 8), np.float32)})[0].shape[0] for n in (1, 5, 12)]
    assert lengths == [1, 5, 12] or not whole
