"""The exported model's contract, on the bundled model: names, shapes, validity, size, runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxattr
from onnxattr import api

FIX = Path(__file__).resolve().parent.parent / "fixtures"
MODEL = FIX / "shapes_cnn.onnx"


@pytest.fixture(scope="module")
def x():
    return np.load(FIX / "default_input.npy")


def session(proto):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("method", onnxattr.METHODS)
def test_contract(method, x):
    src = onnx.load(MODEL)
    before = src.SerializeToString()
    att = onnxattr.attribution_model(src, method=method)
    assert src.SerializeToString() == before, "the input model was changed"
    onnx.checker.check_model(att, full_check=True)
    assert {n.domain for n in att.graph.node} <= {"", "ai.onnx"}
    assert att.ir_version == src.ir_version
    assert [(o.domain, o.version) for o in att.opset_import] == [(o.domain, o.version) for o in src.opset_import]
    assert len(att.graph.initializer) == len(src.graph.initializer)
    size, orig = len(att.SerializeToString()), len(before)
    assert size <= 1.01 * orig + 64 * 1024
    # Inputs/outputs: originals first, unchanged; then target and attribution.
    assert [i.name for i in att.graph.input] == [i.name for i in src.graph.input] + ["target"]
    assert [o.name for o in att.graph.output] == [o.name for o in src.graph.output] + ["attribution"]
    t = att.graph.input[-1].type.tensor_type
    assert t.elem_type == onnx.TensorProto.INT64 and t.shape.dim[0].dim_param == "batch"
    a = att.graph.output[-1].type.tensor_type
    assert a.shape == src.graph.input[0].type.tensor_type.shape
    # The original outputs keep their values; the dynamic batch axis stays dynamic.
    for n in (1, 4):
        xs = x[:n]
        ref = session(src).run(None, {"image": xs})[0]
        logits, attribution = session(att).run(None, {"image": xs, "target": np.arange(n) % 4})
        np.testing.assert_array_equal(logits, ref)
        assert attribution.shape == xs.shape and np.abs(attribution).sum() > 0


def test_rows_are_independent(x):
    """Row n depends only on input n and target n."""
    sess = session(onnxattr.attribution_model(str(MODEL)))
    full = sess.run(["attribution"], {"image": x, "target": np.array([3, 2, 1, 0])})[0]
    for n, t in enumerate([3, 2, 1, 0]):
        one = sess.run(["attribution"], {"image": x[n:n + 1], "target": np.array([t])})[0]
        np.testing.assert_allclose(one[0], full[n], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", ["saliency", "integrated-gradients", "gradcam"])
def test_bare_model_gives_zeros_for_a_target_out_of_range(method, x):
    """The exported model does not check target: out of range, negative ones included (no
    counting from the end, as OneHot or Gather would), selects no class: that row's attribution,
    cam and completeness_gap are 0, the other rows unchanged."""
    sess = session(onnxattr.attribution_model(str(MODEL), method=method, steps=4))
    names = [o.name for o in sess.get_outputs()]
    ref = dict(zip(names, sess.run(None, {"image": x, "target": np.array([3, 2, 1, 0])})))
    for bad in (4, 11, -1, -4, -5, 2**40):
        out = dict(zip(names, sess.run(None, {"image": x, "target": np.array([3, bad, 1, 0])})))
        for k in ("attribution", "cam", "completeness_gap"):
            if k in out:
                assert not np.any(out[k][1]), (bad, k)
                np.testing.assert_array_equal(np.delete(out[k], 1, axis=0), np.delete(ref[k], 1, axis=0))
    with pytest.raises(Exception, match="int64"):
        sess.run(None, {"image": x, "target": np.array([3, 2, 1, 0], dtype=np.int32)})


def test_argmax_target_equals_explicit(x):
    ex = onnxattr.Explainer(MODEL, provider="cpu")
    out = ex.run(x, "argmax")
    pred = out["logits"].argmax(1)
    np.testing.assert_array_equal(out["target"], pred)
    np.testing.assert_array_equal(out["attribution"], ex(x, pred))


def test_methods_differ_as_defined(x):
    """deconvnet and guided change only the Relu backward: on a Relu-free model all three agree,
    and on this model they differ from saliency and from each other."""
    outs = {m: onnxattr.Explainer(MODEL, method=m, provider="cpu")(x, 0) for m in onnxattr.METHODS}
    assert not np.allclose(outs["saliency"], outs["guided"])
    assert not np.allclose(outs["deconvnet"], outs["guided"])


def test_explainer_reuses_one_session(x):
    ex = onnxattr.Explainer(MODEL, provider="cpu")
    first = ex._sessions["input"]
    a1, a2 = ex(x, 1), ex(x, 1)
    assert ex._sessions["input"] is first
    np.testing.assert_array_equal(a1, a2)


def test_sessions_run_without_the_memory_pattern(x):
    """The Explainer's sessions skip ONNX Runtime's static memory plan (it over-allocates for
    forward + backward graphs); results equal those of a session with default options."""
    ex = onnxattr.Explainer(MODEL, provider="cpu")
    got = ex(x, 1)
    assert ex._sessions["input"].get_session_options().enable_mem_pattern is False
    assert onnxattr.session_options().enable_mem_pattern is False
    default = session(onnxattr.attribution_model(MODEL))
    want = default.run(["attribution"], {"image": x, "target": np.full(len(x), 1)})[0]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("target, error", [
    ([0, 1], onnxattr.TargetError),      # wrong length
    (4, onnxattr.TargetError),           # out of range (4 classes)
    (-1, onnxattr.TargetError),
    ("first", onnxattr.TargetError),
])
def test_bad_targets(target, error, x):
    with pytest.raises(error):
        onnxattr.Explainer(MODEL, provider="cpu")(x, target)


def test_bad_input_shape():
    with pytest.raises(onnxattr.InputError, match="does not match"):
        onnxattr.Explainer(MODEL, provider="cpu")(np.zeros((1, 3, 32, 32), np.float32), 0)


def test_cuda_request_without_cuda_is_an_error():
    if "CUDAExecutionProvider" in ort.get_available_providers():
        try:
            onnxattr.Explainer(MODEL, provider="cuda")
            pytest.skip("CUDA works on this machine")
        except onnxattr.ProviderError as e:
            assert "CUDA" in str(e)
    else:
        with pytest.raises(onnxattr.ProviderError):
            onnxattr.Explainer(MODEL, provider="cuda")


def test_auto_provider_says_which(x):
    ex = onnxattr.Explainer(MODEL, provider="auto")
    assert ex.provider in ("cpu", "cuda")
    assert ex.tune_for == ex.provider  # the graph is tuned for the provider that runs it


@pytest.mark.parametrize("method", onnxattr.METHODS)
def test_tuning_for_cuda_computes_the_same(method, x):
    """Both tunings hold exact formulations of one backward: on one provider their attributions
    agree to float32 rounding (measured max 0 here), and the model says what it was tuned for."""
    cpu = onnxattr.Explainer(MODEL, method=method, provider="cpu")
    cuda = onnxattr.Explainer(MODEL, method=method, provider="cpu", tune_for="cuda")
    assert (cpu.tune_for, cuda.tune_for) == ("cpu", "cuda")
    meta = {p.key: p.value for p in cuda.model.metadata_props}
    assert meta["onnxattr.tuned_for"] == "cuda"
    assert cpu.model.graph.SerializeToString() != cuda.model.graph.SerializeToString()
    a, b = cpu(x, 2), cuda(x, 2)
    assert np.abs(a).sum() > 0
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6 * float(np.abs(a).max()))


def test_missing_rule_is_refused_before_work():
    from onnx import helper
    g = helper.make_graph(
        [helper.make_node("Det", ["x"], ["d"], name="odd"), helper.make_node("Unsqueeze", ["d", "one"], ["h"]),
         helper.make_node("MatMul", ["h", "w"], ["y"])],
        "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 2])],
        [onnx.numpy_helper.from_array(np.ones((1, 2), np.float32), "w"), onnx.numpy_helper.from_array(np.array([1]), "one")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    with pytest.raises(onnxattr.UnsupportedModelError, match="Det node 'odd'"):
        onnxattr.attribution_model(m)


def test_not_a_classifier():
    from onnx import helper
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3, 4])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    with pytest.raises(onnxattr.NotAClassifierError, match="rank-2"):
        onnxattr.attribution_model(m)
    with pytest.raises(onnxattr.NotAClassifierError, match="not a tensor"):
        onnxattr.attribution_model(m, output="nope")


def test_vjp_matches_numpy_on_the_bundled_model(x):
    """The three Relu rules against a slow numpy re-implementation of the whole backward pass."""
    from numpy_cnn import numpy_attribution
    src = onnx.load(MODEL)
    for method in onnxattr.METHODS:
        got = onnxattr.Explainer(src, method=method, provider="cpu")(x, [0, 1, 2, 3])
        want = numpy_attribution(src, x.astype(np.float64), np.array([0, 1, 2, 3]), method)
        err = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert err < 1e-5, (method, err)


def test_backward_reads_shapes_of_forward_tensors_early():
    """A gradient reshaped to a forward tensor of two unknown dims needs Shape(that tensor): the
    Shape node comes before the backward's other nodes, so the tensor itself is not kept alive for
    the backward; with at most one unknown dim the target is a constant and no Shape is read."""
    f32 = onnx.TensorProto.FLOAT
    nodes = [onnx.helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             onnx.helper.make_node("Relu", ["c"], ["r"]),
             onnx.helper.make_node("Reshape", ["r", "to3"], ["flat"]),      # [N, 4, H * W]
             onnx.helper.make_node("ReduceMean", ["flat"], ["pooled"], axes=[2], keepdims=0),
             onnx.helper.make_node("Gemm", ["pooled", "Wf"], ["y"], transB=1)]
    rng = np.random.default_rng(0)
    inits = [onnx.numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W"),
             onnx.numpy_helper.from_array(np.array([0, 0, -1], np.int64), "to3"),
             onnx.numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "Wf")]
    graph = onnx.helper.make_graph(nodes, "g", [onnx.helper.make_tensor_value_info("x", f32, ["N", 3, "H", "W"])],
                                   [onnx.helper.make_tensor_value_info("y", f32, ["N", 5])], inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    model.ir_version = 8
    att = onnxattr.attribution_model(model)
    added = list(att.graph.node)[len(nodes):]
    shapes = [i for i, n in enumerate(added) if n.op_type == "Shape"]
    assert sorted(added[i].input[0] for i in shapes) == ["flat", "r"]  # Reshape's and ReduceMean's VJPs
    assert all(n.op_type in ("Shape", "Constant") for n in added[: max(shapes)])
    others = [i for n in added if n.op_type != "Shape" for i in n.input]
    assert "flat" not in others and "c" not in others and "r" in others  # r: the Relu mask
    for h, w in ((6, 7), (9, 5)):  # H and W really are dynamic
        xs = rng.standard_normal((2, 3, h, w)).astype(np.float32)
        _, a = session(att).run(None, {"x": xs, "target": np.array([1, 4])})
        assert a.shape == xs.shape and np.isfinite(a).all() and np.abs(a).sum() > 0


def _text_model():
    """Token ids [N, 6] (int64, the only input) -> embedding [N, 6, 8] -> mean -> scores [N, 4]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    emb = numpy_helper.from_array(rng.standard_normal((50, 8)).astype(np.float32), "E")
    w = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "W")
    g = helper.make_graph([helper.make_node("Gather", ["E", "ids"], ["emb"]),
                           helper.make_node("ReduceMean", ["emb"], ["pooled"], axes=[1], keepdims=0),
                           helper.make_node("MatMul", ["pooled", "W"], ["scores"])],
                          "text", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 6])],
                          [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 4])], [emb, w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), numpy_helper.to_array(w)


@pytest.mark.parametrize("method", ["saliency", "gradient-x-input", "smoothgrad", "integrated-gradients"])
def test_text_model_attributed_at_its_embedding(method):
    """README: --wrt a text model's embedding output. A model whose only input is token ids was
    refused ('no floating-point input'); the ids now give the batch and --wrt the float type."""
    model, w = _text_model()
    ids = np.array([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]], np.int64)
    am = onnxattr.attribution_model(model, method=method, wrt="emb", samples=3)
    onnx.checker.check_model(am, full_check=True)
    att = session(am).run(["attribution"], {"ids": ids, "target": np.array([1, 3])})[0]
    assert att.shape == (2, 6, 8)
    if method == "saliency":
        np.testing.assert_allclose(att, np.stack([np.tile(w[:, t] / 6, (6, 1)) for t in (1, 3)]), rtol=1e-6)
    ex = onnxattr.Explainer(model, method=method, wrt="emb", provider="cpu", samples=3)
    np.testing.assert_array_equal(ex(ids.astype(np.int32), target=[1, 3]), att)
    with pytest.raises(onnxattr.InputError, match="input must be an integer array"):
        ex(ids.astype(np.float32), target=1)
    with pytest.raises(onnxattr.NotAClassifierError, match="no floating-point input"):
        onnxattr.attribution_model(model, method=method)
