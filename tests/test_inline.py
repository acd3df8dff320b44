"""If nodes with a condition the shape trials find constant are inlined (onnxattr/inline.py);
the others stay Ifs, differentiated at run time (onnxattr/vjp/branch.py)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxattr
from onnxattr.runtime import make_session

F = TensorProto.FLOAT


def _squeeze_if(axis: int, then_out: str = "sq") -> onnx.ModelProto:
    """y = If(Shape(h)[axis] == 1, squeeze(h, axis), h) @ w, as TorchScript writes x.squeeze(d)
    for a tensor whose shape it lost; h = x * 2 [N, 1, 3] (axis 1 static, axis 0 the batch)."""
    then = helper.make_graph([helper.make_node("Squeeze", ["h", "ax"], ["sq"])], "then", [],
                             [helper.make_tensor_value_info(then_out, F, None)],
                             [numpy_helper.from_array(np.array([axis], np.int64), "ax"),
                              numpy_helper.from_array(np.zeros((1, 3), np.float32), "c")])
    other = helper.make_graph([helper.make_node("Reshape", ["h", "flat"], ["r"])], "else", [],
                              [helper.make_tensor_value_info("r", F, None)],
                              [numpy_helper.from_array(np.array([-1, 3], np.int64), "flat")])
    nodes = [helper.make_node("Mul", ["x", "two"], ["h"]), helper.make_node("Shape", ["h"], ["s"]),
             helper.make_node("Gather", ["s", "k"], ["d"]), helper.make_node("Equal", ["d", "one"], ["cond"]),
             helper.make_node("If", ["cond"], ["picked"], then_branch=then, else_branch=other, name="maybe_squeeze"),
             helper.make_node("MatMul", ["picked", "w"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, ["N", 1, 3])],
                          [helper.make_tensor_value_info("y", F, ["N", 4])],
                          [numpy_helper.from_array(np.float32(2), "two"), numpy_helper.from_array(np.array(axis, np.int64), "k"),
                           numpy_helper.from_array(np.array(1, np.int64), "one"),
                           numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32), "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_if_on_a_static_dim_is_inlined():
    m = _squeeze_if(axis=1)
    am = onnxattr.attribution_model(m)
    assert "If" not in {n.op_type for n in am.graph.node}
    onnx.checker.check_model(am, full_check=True)
    x = np.random.default_rng(1).standard_normal((2, 1, 3)).astype(np.float32)
    y, att = make_session(am.SerializeToString(), "cpu")[0].run(["y", "attribution"], {"x": x, "target": np.array([0, 3])})
    w = numpy_helper.to_array(m.graph.initializer[-1])
    np.testing.assert_allclose(y, 2 * x[:, 0] @ w, rtol=1e-6)
    np.testing.assert_allclose(att[:, 0], 2 * w[:, [0, 3]].T, rtol=1e-6)
    assert [n.op_type for n in m.graph.node].count("If") == 1  # the caller's model is not changed


def test_if_on_the_batch_stays_an_if():
    """Shape(h)[0] == 1 depends on the batch: no branch is taken in every run, so the If stays
    (refused as control flow before vjp/branch.py); batch 1 squeezes, batch 2 reshapes."""
    m = _squeeze_if(axis=0)
    am = onnxattr.attribution_model(m)
    assert [n.op_type for n in am.graph.node].count("If") == 2  # the model's, and its backward
    w = numpy_helper.to_array(m.graph.initializer[-1])
    sess = make_session(am.SerializeToString(), "cpu")[0]
    for n in (1, 2):
        x = np.random.default_rng(n).standard_normal((n, 1, 3)).astype(np.float32)
        target = np.array([0, 3][:n])
        y, att = sess.run(["y", "attribution"], {"x": x, "target": target})
        np.testing.assert_allclose(y, 2 * x[:, 0] @ w, rtol=1e-6)
        np.testing.assert_allclose(att[:, 0], 2 * w[:, target].T, rtol=1e-6)


def test_coverage_sees_the_inlined_branch():
    rows = {r["op_type"]: r for r in onnxattr.coverage(_squeeze_if(axis=1))}
    assert "If" not in rows and rows["Squeeze"]["on_path"] == 1 and "Reshape" not in rows  # axis 1 is 1
    assert not any(r["missing_nodes"] for r in rows.values())
    rows = {r["op_type"]: r for r in onnxattr.coverage(_squeeze_if(axis=0))}
    assert rows["If"]["on_path"] == rows["Squeeze"]["on_path"] == rows["Reshape"]["on_path"] == 1
    assert not any(r["missing_nodes"] for r in rows.values())


def _check_torchscript_export(torch, m, x):
    """m exported by TorchScript (opset 17, dynamic batch) has an If, and its saliency for
    targets [1, 4] matches float64 autograd."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x,), buf, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    proto = onnx.load_from_string(buf.getvalue())
    assert "If" in {n.op_type for n in proto.graph.node}
    t = [1, 4]
    att = onnxattr.Explainer(proto, provider="cpu")(x.numpy(), t)
    xd = x.double().requires_grad_(True)
    (want,) = torch.autograd.grad(m.double()(xd)[[0, 1], t].sum(), xd)
    err = np.abs(att - want.numpy()).max() / np.abs(want.numpy()).max()
    assert err < 1e-5, err


def test_torchscript_local_response_norm_matches_pytorch():
    """TorchScript exports nn.LocalResponseNorm with an If (a squeeze of a dim it lost track of);
    it was refused as control flow."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.LocalResponseNorm(3), torch.nn.Flatten(),
                            torch.nn.Linear(6 * 6 * 6, 5)).eval()
    x = torch.randn(2, 3, 8, 8)
    _check_torchscript_export(torch, m, x)


def test_torchscript_diagonal_matches_pytorch():
    """torch.diagonal exports (TorchScript) as an If around a GatherND with batch_dims: refused as
    control flow, then as batch_dims > 0; both are handled now."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    class Diag(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Linear(4 * 6, 5)

        def forward(self, x):
            return self.fc(torch.diagonal(torch.tanh(self.conv(x)), dim1=2, dim2=3).flatten(1))

    m = Diag().eval()
    x = torch.randn(2, 3, 6, 6)
    _check_torchscript_export(torch, m, x)


def test_a_condition_the_trials_only_sample_stays_an_if():
    """N % 8 != 0 is True at every shape-trial size (6, 35, 1, 1009): taking the trials' value
    inlined the then branch, and at N = 8 the exported model's own scores were doubled. Only
    conditions folded from static dims are inlined; this one stays an If (at N = 8 the scores
    and the attribution are not doubled, at N = 6 they are)."""
    then = helper.make_graph([helper.make_node("Mul", ["h", "two"], ["t"])], "then", [], [helper.make_tensor_value_info("t", F, None)])
    other = helper.make_graph([helper.make_node("Identity", ["h"], ["e"])], "else", [], [helper.make_tensor_value_info("e", F, None)])
    nodes = [helper.make_node("Mul", ["x", "one_f"], ["h"]), helper.make_node("Shape", ["h"], ["s"]),
             helper.make_node("Gather", ["s", "k"], ["d"]), helper.make_node("Mod", ["d", "eight"], ["r"]),
             helper.make_node("Equal", ["r", "zero"], ["eq"]), helper.make_node("Not", ["eq"], ["cond"]),
             helper.make_node("If", ["cond"], ["p"], then_branch=then, else_branch=other, name="padif"),
             helper.make_node("MatMul", ["p", "w"], ["y"])]
    inits = [numpy_helper.from_array(np.float32(1), "one_f"), numpy_helper.from_array(np.float32(2), "two"),
             numpy_helper.from_array(np.array(0, np.int64), "k"), numpy_helper.from_array(np.array(8, np.int64), "eight"),
             numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.ones((3, 4), np.float32), "w")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, ["N", 3])],
                          [helper.make_tensor_value_info("y", F, ["N", 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    am = onnxattr.attribution_model(m)
    assert "If" in {n.op_type for n in am.graph.node}
    sess = make_session(am.SerializeToString(), "cpu")[0]
    for n, factor in ((8, 1), (6, 2)):
        x = np.random.default_rng(n).standard_normal((n, 3)).astype(np.float32)
        y, att = sess.run(["y", "attribution"], {"x": x, "target": np.zeros(n, np.int64)})
        np.testing.assert_allclose(y, factor * x @ np.ones((3, 4)), rtol=1e-6)
        np.testing.assert_array_equal(att, np.full((n, 3), factor, np.float32))


def test_an_if_inside_a_taken_branch_is_inlined_too():
    """The outer If's then branch holds another If on a static condition: after the first round
    the inner one is at top level, and is inlined in the next."""
    inner_then = helper.make_graph([helper.make_node("Mul", ["h", "three"], ["it"])], "it", [],
                                   [helper.make_tensor_value_info("it", F, None)])
    inner_else = helper.make_graph([helper.make_node("Identity", ["h"], ["ie"])], "ie", [],
                                   [helper.make_tensor_value_info("ie", F, None)])
    then = helper.make_graph([helper.make_node("If", ["cond"], ["t"], then_branch=inner_then, else_branch=inner_else,
                                               name="inner")], "then", [], [helper.make_tensor_value_info("t", F, None)])
    other = helper.make_graph([helper.make_node("Identity", ["h"], ["e"])], "else", [], [helper.make_tensor_value_info("e", F, None)])
    nodes = [helper.make_node("Mul", ["x", "two"], ["h"]), helper.make_node("Shape", ["h"], ["s"]),
             helper.make_node("Gather", ["s", "k"], ["d"]), helper.make_node("Equal", ["d", "one"], ["cond"]),
             helper.make_node("If", ["cond"], ["p"], then_branch=then, else_branch=other, name="outer"),
             helper.make_node("Flatten", ["p"], ["q"]), helper.make_node("MatMul", ["q", "w"], ["y"])]
    w = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, ["N", 1, 3])],
                          [helper.make_tensor_value_info("y", F, ["N", 4])],
                          [numpy_helper.from_array(np.float32(2), "two"), numpy_helper.from_array(np.float32(3), "three"),
                           numpy_helper.from_array(np.array(1, np.int64), "k"), numpy_helper.from_array(np.array(1, np.int64), "one"),
                           numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    am = onnxattr.attribution_model(m)
    assert "If" not in {n.op_type for n in am.graph.node}
    x = np.random.default_rng(1).standard_normal((2, 1, 3)).astype(np.float32)
    y, att = make_session(am.SerializeToString(), "cpu")[0].run(["y", "attribution"], {"x": x, "target": np.array([0, 3])})
    np.testing.assert_allclose(y, 6 * x[:, 0] @ w, rtol=1e-5)
    np.testing.assert_allclose(att[:, 0], 6 * w[:, [0, 3]].T, rtol=1e-5)
