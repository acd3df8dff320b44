"""Ops that ONNX defines as functions (Swish, MeanVarianceNormalization, CenterCropPad) in a
whole classifier: the attribution against PyTorch autograd of the same function, the coverage
report, the caller's model left as it was. Op by op they are in test_vjp_ops."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from click.testing import CliRunner
from onnxattr import attribution_model, coverage
from onnxattr.cli import main
from onnxattr.errors import UnsupportedModelError

torch = pytest.importorskip("torch")

RNG = np.random.default_rng(5)
W = RNG.standard_normal((6, 3, 3, 3)).astype(np.float32) * 0.4
B = RNG.standard_normal(6).astype(np.float32) * 0.1
FC = RNG.standard_normal((5, 6)).astype(np.float32) * 0.5


def _model(opset: int = 24) -> onnx.ModelProto:
    """Conv -> Swish(alpha 0.8) -> MeanVarianceNormalization over (C, H, W) -> CenterCropPad to
    6 x 10 (crops H, pads W) -> ReduceMean over H, W -> MatMul: scores [N, 5]."""
    N = helper.make_node
    nodes = [
        N("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        N("Swish", ["c"], ["s"], alpha=0.8),
        N("MeanVarianceNormalization", ["s"], ["m"], axes=[1, 2, 3]),
        N("CenterCropPad", ["m", "crop"], ["p"], axes=[2, 3]),
        N("ReduceMean", ["p", "hw"], ["r"], keepdims=0),
        N("MatMul", ["r", "fc"], ["scores"]),
    ]
    inits = [numpy_helper.from_array(W, "w"), numpy_helper.from_array(B, "b"),
             numpy_helper.from_array(np.array([6, 10], np.int64), "crop"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "hw"), numpy_helper.from_array(FC.T.copy(), "fc")]
    g = helper.make_graph(nodes, "functions", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 5])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def _torch_scores(x):
    c = torch.nn.functional.conv2d(x, torch.from_numpy(W).double(), torch.from_numpy(B).double(), padding=1)
    s = c * torch.sigmoid(0.8 * c)
    mean = s.mean(dim=(1, 2, 3), keepdim=True)
    std = torch.sqrt((s * s).mean(dim=(1, 2, 3), keepdim=True) - mean * mean)  # the spec's E[x^2] - E[x]^2
    m = (s - mean) / (std + 1e-9)
    p = torch.nn.functional.pad(m[:, :, 1:7, :], (1, 1))  # 8 -> 6 rows (crop), 8 -> 10 columns (pad)
    return p.mean(dim=(2, 3)) @ torch.from_numpy(FC.T.copy()).double()


def test_attribution_matches_autograd_and_the_model_is_unchanged():
    model = _model()
    before = model.SerializeToString()
    att_model = attribution_model(model, "saliency")
    assert model.SerializeToString() == before
    onnx.checker.check_model(att_model, full_check=True)
    ops = {n.op_type for n in att_model.graph.node}
    assert not ops & {"Swish", "MeanVarianceNormalization", "CenterCropPad"}, "not differentiated through its body"
    x = RNG.standard_normal((3, 3, 8, 8)).astype(np.float32)
    target = np.array([0, 4, 2], np.int64)
    sess = ort.InferenceSession(att_model.SerializeToString(), providers=["CPUExecutionProvider"])
    scores, att = sess.run(["scores", "attribution"], {"x": x, "target": target})
    plain = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(scores, plain, rtol=0, atol=1e-6)  # the body computes the op (measured 6e-8)
    xt = torch.from_numpy(x).double().requires_grad_(True)
    ys = _torch_scores(xt)
    np.testing.assert_allclose(scores, ys.detach().numpy(), rtol=0, atol=1e-6)  # measured 7e-8
    (want,) = torch.autograd.grad(ys[torch.arange(3), torch.from_numpy(target)].sum(), xt)
    want = want.numpy()
    err = np.max(np.abs(att - want)) / np.max(np.abs(want))
    assert err < 2e-6, err  # measured 1.8e-7 (float32 against float64)


def test_coverage_counts_the_ops_not_their_bodies():
    rows = {r["op_type"]: r for r in coverage(_model())}
    assert set(rows) == {"Conv", "Swish", "MeanVarianceNormalization", "CenterCropPad", "ReduceMean", "MatMul"}
    for op in ("Swish", "MeanVarianceNormalization", "CenterCropPad"):
        assert rows[op]["function"] and rows[op]["has_rule"] and rows[op]["count"] == 1 and rows[op]["on_path"] == 1
    assert not rows["Conv"]["function"] and rows["Conv"]["on_path"] == 1


def test_cli_coverage_names_function_ops(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model(), path)
    r = CliRunner().invoke(main, ["coverage", str(path)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if ln.startswith("Swish"))
    assert line.split()[:4] == ["Swish", "1", "1", "function"]


def test_before_the_function_opset_the_op_is_refused():
    # Swish is an op only from opset 24: at 23 it is an unknown op, refused by name
    model = _model(23)
    with pytest.raises(UnsupportedModelError, match="Swish node"):
        attribution_model(model, "saliency")
