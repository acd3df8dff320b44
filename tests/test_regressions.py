"""Named regression tests: one per bug found by the gradient fuzzer (tests/test_fuzz.py) or by the
bad-input tests, each on the smallest graph that showed it. Graphs are float64 and go through the
fuzzer's checks (finite differences, numpy interpreter, float32 ONNX Runtime) where they export."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxattr
from test_fuzz import check_model_attributions

D = TensorProto.DOUBLE


def model(nodes, x_shape, classes, inits, opset=13, dtype=D):
    g = helper.make_graph(nodes, "regression", [helper.make_tensor_value_info("x", dtype, x_shape)],
                          [helper.make_tensor_value_info("y", dtype, [x_shape[0], classes])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def weights(name, *shape, dtype=np.float64, seed=0):
    return numpy_helper.from_array(np.random.default_rng(seed).standard_normal(shape).astype(dtype), name)


# ---------------------------------------------------------------------------------------------------
# Fuzzer, ceil_mode pools: ONNX shape inference (onnx 1.23) sizes a ceil_mode pool without the spec's
# "no window starts in the end padding" rule that ONNX Runtime and the reference evaluator follow
# (kernel 2, stride 2, pads 1 on 5: inference says 4, ONNX Runtime computes 3). The rules sized the
# backward from the inferred shape: AveragePool then divided by the wrong window counts and a
# following GlobalAveragePool by 16 instead of 9 -- a silently wrong attribution -- and MaxPool's
# backward failed inside ONNX Runtime. Fix (graph.py): the runtime size is fed back to shape
# inference, and such a node on the path is refused by name (ONNX Runtime's own load-time inference
# would reject a backward graph sized for the real output).
def _ceil_pool(op, size=5, kernel=2, stride=2, pads=1, dtype=D, np_dtype=np.float64):
    nodes = [helper.make_node(op, ["x"], ["p"], kernel_shape=[kernel] * 2, strides=[stride] * 2, pads=[pads] * 4,
                              ceil_mode=1, name="pool"),
             helper.make_node("GlobalAveragePool", ["p"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "W"], ["y"])]
    return model(nodes, [1, 2, size, size], 3, [weights("W", 2, 3, dtype=np_dtype)], dtype=dtype)


@pytest.mark.parametrize("op", ["AveragePool", "MaxPool"])
def test_ceil_mode_pool_where_onnx_and_onnxruntime_disagree_is_refused(op):
    m = _ceil_pool(op, dtype=TensorProto.FLOAT, np_dtype=np.float32)
    x = np.random.default_rng(0).random((1, 2, 5, 5)).astype(np.float32)
    assert ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0].shape == (1, 3)  # the model itself runs
    with pytest.raises(onnxattr.UnsupportedModelError, match=rf"{op} node 'pool': ceil_mode output size \[4, 4\] by "
                                                             r"ONNX shape inference, \[3, 3\] in ONNX Runtime"):
        onnxattr.attribution_model(m)
    from onnxattr.graph import Builder
    b = Builder(m, TensorProto.FLOAT)
    assert b.shapes["p"] == [1, 2, 3, 3] and b.shapes["g"] == [1, 2, 1, 1]  # the shapes the rules see are right


@pytest.mark.parametrize("op", ["AveragePool", "MaxPool"])
def test_ceil_mode_pool_where_they_agree_is_exact(op):
    m = _ceil_pool(op, size=6, kernel=3, stride=2, pads=1)  # ceil((6 + 2 - 3) / 2) + 1 = 4 everywhere
    assert check_model_attributions(m)["fd"] > 0


def test_ceil_mode_pool_conflict_is_named_before_the_batch_axis_it_hides():
    """PyTorch's dynamo exporter at opset 18, dynamic batch: after a ceil_mode AvgPool1d whose
    length ONNX and ONNX Runtime disagree on, the batch's dim does not reach the scores, and the
    error blamed the input ("'x' [?, 3, 18] has no batch axis", a NotAClassifierError: an audit's
    finding). The pool is now named, as with a fixed batch."""
    torch = pytest.importorskip("torch")
    import contextlib
    import io

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.l = torch.nn.Conv1d(3, 4, 3), torch.nn.Linear(24, 5)
            self.p = torch.nn.AvgPool1d(4, 3, padding=2, count_include_pad=False, ceil_mode=True)

        def forward(self, x):
            return self.l(self.p(torch.relu(self.c(x))).flatten(1))

    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        m = torch.onnx.export(M().eval(), (torch.randn(2, 3, 18),), dynamo=True, opset_version=18, input_names=["x"],
                              output_names=["y"], dynamic_shapes={"x": {0: torch.export.Dim("N")}}).model_proto
    with pytest.raises(onnxattr.UnsupportedModelError, match=r"AveragePool node '.*': ceil_mode output size \[7\] by "
                                                             r"ONNX shape inference, \[6\] in ONNX Runtime"):
        onnxattr.attribution_model(m)


# ---------------------------------------------------------------------------------------------------
# Resize with sizes computed in the graph (F.interpolate(x, size=...): Concat(Shape(x)[:k], [h, w])):
# dims.py did not follow those sizes, so with two dynamic dims (shape trials prove nothing then) the
# copied axes were not known to stay the same, and the error named axis 0 (the batch) where the cause
# was a dynamic length resized to a fixed one (an audit's finding).
def _interpolated(size, dynamic):
    torch = pytest.importorskip("torch")
    import contextlib
    import io

    import onnx
    import torch.nn.functional as F

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.l = torch.nn.Conv3d(2, 3, 3, padding=1), torch.nn.Linear(3, 4)

        def forward(self, x):
            h = F.interpolate(self.c(x), size=size(x), mode="trilinear", align_corners=False)
            return self.l(torch.relu(h).mean((2, 3, 4)))

    torch.manual_seed(0)
    m, f = M().eval(), io.BytesIO()
    with contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(m, (torch.randn(2, 2, 4, 6, 6),), f, dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": dynamic, "y": {0: "N"}})
    return m, onnx.load_from_string(f.getvalue())


def test_resize_to_sizes_copied_from_the_input_with_two_dynamic_dims():
    torch = pytest.importorskip("torch")
    m, proto = _interpolated(lambda x: (x.shape[2], 3, 5), {0: "N", 2: "D"})  # depth kept, height and width fixed
    x = np.random.default_rng(0).standard_normal((3, 2, 5, 6, 6)).astype(np.float32)
    t = np.array([0, 3, 1])
    got = onnxattr.Explainer(proto, provider="cpu")(x, t)  # refused before
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    m.double()(xt)[torch.arange(3), torch.tensor(t)].sum().backward()
    want = xt.grad.numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())  # measured 1.5e-7


def test_resize_to_another_tensors_shape_names_every_unproven_axis():
    """Sizes from another input's Shape: the error named axis 0 (the batch) alone, where the axes
    at issue are the resized ones too (an adversarial review)."""
    f = TensorProto.FLOAT
    nodes = [helper.make_node("Shape", ["u"], ["s"]), helper.make_node("Resize", ["x", "", "", "s"], ["r"], mode="linear", name="r"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["fl"]),
             helper.make_node("MatMul", ["fl", "W"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f, ["N", 2, "H", "W"]),
                                       helper.make_tensor_value_info("u", f, ["M", 2, "H2", "W2"])],
                          [helper.make_tensor_value_info("y", f, ["N", 3])], [weights("W", 2, 3, dtype=np.float32)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    with pytest.raises(onnxattr.UnsupportedModelError, match=r"Resize node 'r': .* the length of axes \[0, 2, 3\] is not known"):
        onnxattr.attribution_model(m)


def test_resize_of_a_dynamic_length_to_a_fixed_one_names_that_axis():
    _, proto = _interpolated(lambda x: (4, 3, 5), {0: "N", 2: "D", 3: "H", 4: "W"})
    with pytest.raises(onnxattr.UnsupportedModelError, match="Resize node '/Resize': axis 2 goes from a length known "
                                                             "only at run time to 4.*fixed input size"):
        onnxattr.attribution_model(proto)


# ---------------------------------------------------------------------------------------------------
# Fuzzer (seed 2026, 16 ops): a MaxPool window holding only padding (kernel 2, dilation 2, pads 1 over
# a length-1 axis, as PyTorch's MaxPool2d(2, dilation=2, padding=1) allows): its output is the lowest
# float whatever x is, so it passes no gradient, but ONNX Runtime's Indices there are garbage (-4, -1)
# and the opset-16 scatter-add put the gradient on x's last elements (0.54 off finite differences).
# The numpy interpreter had the same fault (it routed such a window to x[0, 0]). Fix (vjp/pool.py):
# the gradient of windows without an input element is zeroed before it is routed.
@pytest.mark.parametrize("opset, height", [(11, 1), (16, 1), (16, "H")])
def test_max_pool_window_of_padding_only_passes_no_gradient(opset, height):
    """(With a dynamic height the windows are found at run time: the output is the lowest float.)"""
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], dilations=[2, 2], pads=[1, 0, 1, 0]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("MatMul", ["f", "W"], ["y"])]
    m = model(nodes, ["N", 2, height, 3], 3, [weights("W", 2, 3, dtype=np.float32)], opset=opset, dtype=TensorProto.FLOAT)
    sess = ort.InferenceSession(onnxattr.attribution_model(m).SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((2, 2, 1, 3)).astype(np.float32)
    y, att = sess.run(["y", "attribution"], {"x": x, "target": np.array([1, 2])})
    assert np.all(np.abs(y) > 1e30)  # the lowest float, times W: x does not reach the scores
    np.testing.assert_array_equal(att, np.zeros_like(x))


# ---------------------------------------------------------------------------------------------------
# Control flow: an If/Loop/Scan body that reads the input (or anything computed from it) by
# name from the outer scope has no such input in `node.input`, so the differentiable path left
# it out: with y = x @ W + If(c, x @ A, x @ B), the attribution silently dropped the branch (1
# instead of 1 + 2 or 1 + 3 per element below). Fix (backward.py `reads`): a node also reads the
# outer-scope names its subgraphs capture (refused by name until If had a rule, vjp/branch.py).
def test_control_flow_capturing_the_input_is_differentiated():
    f = TensorProto.FLOAT

    def branch(name, w):
        return helper.make_graph([helper.make_node("MatMul", ["x", w], [name])], name, [],
                                 [helper.make_tensor_value_info(name, f, [1, 3])])

    # the condition depends on the input (a constant one is inlined: tests/test_inline.py)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["a"]),
             helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0), helper.make_node("Greater", ["total", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["b"], then_branch=branch("t", "A"), else_branch=branch("e", "B"), name="branch"),
             helper.make_node("Add", ["a", "b"], ["y"])]
    inits = [numpy_helper.from_array(np.full((4, 3), v, np.float32), n) for n, v in (("W", 1), ("A", 2), ("B", 3))]
    inits.append(numpy_helper.from_array(np.float32(0), "zero"))
    m = model(nodes, [1, 4], 3, inits, dtype=f)
    explain = onnxattr.Explainer(m, provider="cpu")
    for sign, per_element in ((1, 3), (-1, 4)):
        x = sign * np.abs(np.random.default_rng(0).standard_normal((1, 4))).astype(np.float32)
        np.testing.assert_array_equal(explain(x, [1]), np.full((1, 4), per_element, np.float32))
    rows = {r["op_type"]: r for r in onnxattr.coverage(m)}
    assert rows["If"]["on_path"] == 1 and rows["If"]["missing_nodes"] == [] and rows["MatMul"]["on_path"] == 3


# ---------------------------------------------------------------------------------------------------
# Float16 Conv + BatchNormalization: ONNX Runtime's ConvBNFusion folded the normalisation into the
# Conv's float16 weights, W * scale / sqrt(var + eps) = 1000 / sqrt(1.1e-5) = 3.0e5 > 65504: inf
# weights and a NaN scores and attribution where the model's function is finite (331 and 414).
# Fix (runtime.py `make_session`): sessions of a float16 model run without ConvBNFusion.
def test_float16_batchnorm_is_not_folded_into_float16_weights():
    f16 = TensorProto.FLOAT16
    inits = [numpy_helper.from_array(np.full(shape, v, np.float16), n) for n, shape, v in
             (("W", (1, 1, 1, 1), 1000), ("g", (1,), 1), ("b", (1,), 0), ("m", (1,), 1000), ("v", (1,), 1e-6),
              ("fc", (3, 1), 0.5))]
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["bn"], epsilon=1e-5),
             helper.make_node("Relu", ["bn"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f16, ["N", 1, 4, 4])],
                          [helper.make_tensor_value_info("y", f16, ["N", 3])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = (1 + 0.01 * np.random.default_rng(0).standard_normal((2, 1, 4, 4))).astype(np.float16)
    out = onnxattr.Explainer(m, provider="cpu").run(x, [0, 1])
    # float64 of the float16 parameters: bn = (1000 x - 1000) / sqrt(1e-6 + 1e-5), both in float16
    inv = 1 / np.sqrt(np.float64(np.float16(1e-6)) + np.float64(np.float32(1e-5)))
    bn = (1000 * x.astype(np.float64) - 1000) * inv
    y = np.maximum(bn, 0).mean(axis=(1, 2, 3)) * 0.5
    att = (bn > 0) * 1000 * inv * 0.5 / 16
    np.testing.assert_allclose(out["y"][:, 0], y, rtol=2e-3)
    assert np.linalg.norm(out["attribution"] - att) / np.linalg.norm(att) < 2e-3  # measured 9.1e-4


# ---------------------------------------------------------------------------------------------------
# Audit, older ONNX Runtime: Sin's gradient was g cos(x), and ONNX Runtime 1.15 to 1.28 have a
# double Sin kernel but no double Cos one, so a float64 model with Sin on the path loaded there and
# its attribution model did not ("Could not find an implementation for Cos(7)"). Fix
# (vjp/elementwise.py): in float64, cos x is 1 - 2 sin^2(x / 2) (an identity at every x; sin(x + pi/2)
# would lose it where x + pi/2 rounds to x).
def test_float64_sin_gradient_needs_no_double_cos():
    nodes = [helper.make_node("Gemm", ["x", "W"], ["h"]), helper.make_node("Sin", ["h"], ["s"]),
             helper.make_node("Gemm", ["s", "V"], ["y"])]
    m = model(nodes, ["N", 4], 3, [weights("W", 4, 5, seed=1), weights("V", 5, 3, seed=2)])
    att = onnxattr.attribution_model(m, method="saliency")
    assert "Cos" not in {n.op_type for n in att.graph.node}
    x = np.random.default_rng(3).standard_normal((2, 4)) * 3
    sess = ort.InferenceSession(att.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(["attribution"], {"x": x, "target": np.array([0, 2])})[0]
    W, V = (numpy_helper.to_array(t) for t in m.graph.initializer)
    want = np.stack([(np.cos(x[n] @ W) * V[:, c]) @ W.T for n, c in enumerate([0, 2])])
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-14)


# ---------------------------------------------------------------------------------------------------
# Rare-op fuzzer: ONNX shape inference (onnx 1.23) gives GroupNormalization (opset 21, a function
# op without an inference function, onnx/onnx#7157) no output type at all, so a Flatten or MatMul
# after it had no rank and the model was refused ("the rank of tensor 'f' ... is unknown").
# Fix (shapes.ml_shapes): its output is declared with the input's type and shape.
@pytest.mark.parametrize("opset", [21, 23])
def test_group_normalization_inside_the_graph_is_differentiated(opset):
    from vjp_check import reference
    rng = np.random.default_rng(0)
    c, groups = 4, 2
    s, b = 1 + 0.3 * rng.standard_normal(c), 0.3 * rng.standard_normal(c)
    w = rng.standard_normal((c * 9, 3))
    nodes = [helper.make_node("GroupNormalization", ["x", "s", "b"], ["g"], num_groups=groups, epsilon=1e-3),
             helper.make_node("Flatten", ["g"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])]
    m = model(nodes, ["N", c, 3, 3], 3, [numpy_helper.from_array(v, k) for k, v in {"s": s, "b": b, "w": w}.items()],
              opset=opset)

    def scores(x):  # numpy GroupNorm, scale and bias per channel
        xg = x.reshape(len(x), groups, -1)
        z = ((xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + 1e-3)).reshape(x.shape)
        return (z * s.reshape(1, -1, 1, 1) + b.reshape(1, -1, 1, 1)).reshape(len(x), -1) @ w

    x, target = rng.standard_normal((2, c, 3, 3)), np.array([0, 2])
    fd = np.zeros(x.shape)
    for i in np.ndindex(*x.shape):
        e = np.zeros(x.shape)
        e[i] = 1e-6
        fd[i] = (scores(x + e)[[0, 1], target].sum() - scores(x - e)[[0, 1], target].sum()) / 2e-6
    att = onnxattr.attribution_model(m, method="saliency")
    got = reference(att).run(["attribution"], {"x": x, "target": target})[0]
    assert np.abs(got - fd).max() < 1e-6 * np.abs(fd).max()


def test_zero_pad_before_max_pool_is_not_fused_by_onnx_runtime():
    """ONNX Runtime's Pad_Fusion folds Pad(0) into the next MaxPool (pads of -inf), as tf2onnx writes
    Keras' ZeroPadding2D + MaxPooling2D (ResNet50V2's stem): with all-negative windows the scores
    and Grad-CAM (the Pad then has one reader) followed the fused function. Explainer's sessions
    and onnxattr.session_options() turn the rule off; the model's function is Pad then max."""
    import warnings

    import onnxattr
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Pad", ["x", "pads", "zero"], ["p"], mode="constant"),
         helper.make_node("MaxPool", ["p"], ["m"], kernel_shape=[3, 3], strides=[2, 2]),
         helper.make_node("Flatten", ["m"], ["f"]),
         helper.make_node("MatMul", ["f", "w"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
         numpy_helper.from_array(np.array(0, np.float32), "zero"), numpy_helper.from_array(w, "w")])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    x = -np.arange(1, 33, dtype=np.float32).reshape(2, 1, 4, 4)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    m = np.array([[xp[n, 0, i:i + 3, j:j + 3].max() for i in (0, 2) for j in (0, 2)] for n in range(2)])
    t = np.array([0, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # maps 0 for some rows
        out = onnxattr.Explainer(proto, method="gradcam", provider="cpu", layer="m").run(x, t)
    np.testing.assert_allclose(out["y"], m @ w, rtol=1e-6, atol=1e-6)
    cam = np.maximum((w[:, t].T.mean(1, keepdims=True) * m), 0).reshape(2, 1, 2, 2)
    np.testing.assert_allclose(out["cam"], cam, rtol=1e-5, atol=1e-6)
    # the model itself in a session of the user's with onnxattr.session_options(), as README says
    import onnxruntime as ort
    sess = ort.InferenceSession(proto.SerializeToString(), onnxattr.session_options(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], m @ w, rtol=1e-6, atol=1e-6)
    # and where a float16 model's list of disabled optimizers replaces the options' one
    sess = onnxattr.runtime.make_session(proto.SerializeToString(), "cpu", float16=True)[0]
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], m @ w, rtol=1e-6, atol=1e-6)


def _rank_four_beside_scores():
    """Scores y [N, 3] and a second output aux [N, 1, 2, 2] after an op without a rule (LpPool)."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"]),
         helper.make_node("LpPool", ["x"], ["aux"], kernel_shape=[2, 2], strides=[2, 2], p=2)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("aux", TensorProto.FLOAT, ["N", 1, 2, 2])], [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_an_output_of_known_type_and_rank_is_refused_for_that_not_for_a_rule():
    """--output naming a tensor whose type and rank are known and not [N, C] float: that is the
    cause, not an op without a rule on its way (the missing-rule refusal of unknown-typed outputs
    named LpPool, though the model's scores y explain fine), and coverage refuses it as export
    does (it listed the path to it, and for an int64 label exited 0)."""
    import onnxattr

    m = _rank_four_beside_scores()
    with pytest.raises(onnxattr.NotAClassifierError, match="'aux' is not a rank-2 floating-point tensor"):
        onnxattr.attribution_model(m, output="aux")
    with pytest.raises(onnxattr.NotAClassifierError, match="'aux' is not a rank-2 floating-point tensor"):
        onnxattr.api.coverage(m, output="aux")
    onnxattr.attribution_model(m)


@pytest.mark.parametrize("kind", ["logistic", "svc"])
def test_sklearn_zipmap_output_named_as_output(kind):
    """--output naming skl2onnx's ZipMap output (output_probability) points at the tensor before
    it, or names the op without a rule before that (SVMClassifier), not ZipMap; the int64 label
    is refused as not [N, C] float, by coverage too."""
    import onnxattr

    pytest.importorskip("sklearn")
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 4)).astype(np.float32)
    est = (LogisticRegression() if kind == "logistic" else SVC()).fit(X, np.arange(40) % 3)
    proto = skl2onnx.to_onnx(est, X[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    if kind == "logistic":
        with pytest.raises(onnxattr.NotAClassifierError, match="ZipMap's sequence of maps.*pass --output probabilities"):
            onnxattr.attribution_model(proto, output="output_probability")
    else:
        with pytest.raises(onnxattr.UnsupportedModelError, match=r"no gradient rule for 1 node\(s\).*: SVMClassifier"):
            onnxattr.attribution_model(proto, output="output_probability")
    for f in (onnxattr.attribution_model, onnxattr.api.coverage):
        with pytest.raises(onnxattr.NotAClassifierError, match="'output_label' is not a rank-2 floating-point tensor"):
            f(proto, output="output_label")


def test_no_gradient_names_the_cut_of_the_float_path_not_a_mask_beside_it():
    """Dropout's mask reaches the scores beside its values, whose float path a Floor cuts: the
    refusal names the Floor (it said the output depends on x 'only through' the Dropout)."""
    import onnxattr
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Dropout", ["x"], ["d", "mask"]), helper.make_node("Floor", ["d"], ["fl"]),
         helper.make_node("Cast", ["mask"], ["mc"], to=TensorProto.FLOAT), helper.make_node("Add", ["fl", "mc"], ["s"]),
         helper.make_node("MatMul", ["s", "w"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    with pytest.raises(onnxattr.UnsupportedModelError, match="only through Floor node 'fl'"):
        onnxattr.attribution_model(m)
