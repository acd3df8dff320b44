"""Hostile and broken inputs: each gets a one-line error naming the cause (and the node, where
there is one), exit status 1 from the CLI and a specific exception type from the API; nothing is
written, nothing is changed. README.md's "Bad inputs" table lists these cases."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnxattr
from onnxattr import io as oio
from onnxattr.cli import main
from onnxattr.vjp import RULES

FIX = Path(__file__).resolve().parent.parent / "fixtures"
MODEL = FIX / "shapes_cnn.onnx"
F = TensorProto.FLOAT


# ------------------------------------------------------------------------------------------ helpers
def model(nodes, inputs, outputs, inits=(), opset=13, functions=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8, functions=list(functions))


def tiny(classes=3, features=4, batch="N", mid=None):
    """x [N, 4] -> Gemm -> Relu -> (mid) -> y [N, classes]."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "W"], ["h"], name="fc"), helper.make_node("Relu", ["h"], ["r"], name="relu")]
    nodes += mid or [helper.make_node("Identity", ["r"], ["y"])]
    return model(nodes, [helper.make_tensor_value_info("x", F, [batch, features])],
                 [helper.make_tensor_value_info("y", F, [batch, classes])],
                 [numpy_helper.from_array(rng.standard_normal((features, classes)).astype(np.float32), "W")])


def cli(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def assert_one_line_error(r, kind: str, *words):
    """Exit status 1; stderr one line `Error: <kind>: ...` holding `words`; no traceback."""
    assert r.exit_code == 1, (r.exit_code, r.output)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"Error: {kind}"), r.stderr
    for w in words:
        assert w in err[0], (w, err[0])
    assert r.exception is None or isinstance(r.exception, SystemExit)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------------ not a model
def _bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    good = MODEL.read_bytes()
    (tmp / "folder.onnx").mkdir()
    cases = {
        "missing": ("missing.onnx", None, "does not exist"),
        "folder": ("folder.onnx", None, "is a folder"),
        "text": ("text.onnx", b"this is not an ONNX model\n", "not an ONNX model"),
        "png": ("picture.onnx", (FIX / "images" / "circle.png").read_bytes(), "not an ONNX model"),
        "empty file": ("empty.onnx", b"", "not an ONNX model"),
        "truncated": ("truncated.onnx", good[: len(good) // 2], "truncated or corrupt"),
        "corrupt": ("corrupt.onnx", good[:200] + bytes(range(256)) * 4 + good[1224:], "corrupt"),
        "empty graph": ("nodes.onnx", model([], [], []).SerializeToString(), "empty graph"),
    }
    out = {}
    for key, (name, data, words) in cases.items():
        if data is not None:
            (tmp / name).write_bytes(data)
        out[key] = (tmp / name, words)
    return out


BAD_FILES = ["missing", "folder", "text", "png", "empty file", "truncated", "corrupt", "empty graph"]


@pytest.mark.parametrize("case", BAD_FILES)
def test_not_a_model(case, tmp_path):
    path, words = _bad_files(tmp_path)[case]
    with pytest.raises(onnxattr.ModelLoadError, match=words):
        onnxattr.attribution_model(path)
    with pytest.raises(onnxattr.ModelLoadError):
        onnxattr.Explainer(path, provider="cpu")
    before = listing(tmp_path)
    for args in (["export", path, "-o", tmp_path / "out.onnx"], ["coverage", path],
                 ["explain", path, "--input", FIX / "default_input.npy", "-o", tmp_path / "a.npy"]):
        assert_one_line_error(cli(*args), "ModelLoadError", words)
    assert listing(tmp_path) == before  # nothing written


def test_not_a_model_object():
    with pytest.raises(onnxattr.ModelLoadError, match="expected a path or an onnx.ModelProto"):
        onnxattr.attribution_model(42)


def test_protobuf_parsing_is_not_a_model(tmp_path):
    """Bytes protobuf parses without complaint, but with neither a graph nor an opset."""
    path = tmp_path / "m.onnx"
    path.write_bytes(onnx.TensorProto(name="w").SerializeToString())
    with pytest.raises(onnxattr.ModelLoadError):
        onnxattr.attribution_model(path)


# ------------------------------------------------------------------------------------------ not a classifier
def test_no_float_input():
    m = model([helper.make_node("Cast", ["x"], ["f"], to=F), helper.make_node("MatMul", ["f", "W"], ["y"])],
              [helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 4])],
              [helper.make_tensor_value_info("y", F, ["N", 3])], [numpy_helper.from_array(np.ones((4, 3), np.float32), "W")])
    with pytest.raises(onnxattr.NotAClassifierError, match="no floating-point input"):
        onnxattr.attribution_model(m)


def test_no_rank2_output():
    m = model([helper.make_node("Relu", ["x"], ["y"])], [helper.make_tensor_value_info("x", F, ["N", 3, 4])],
              [helper.make_tensor_value_info("y", F, ["N", 3, 4])])
    with pytest.raises(onnxattr.NotAClassifierError, match=r"no rank-2 floating-point output.*name one with --output"):
        onnxattr.attribution_model(m)


def test_output_option_errors(tmp_path):
    m = tiny(mid=[helper.make_node("Identity", ["r"], ["y"]), helper.make_node("ArgMax", ["r"], ["cls"], axis=1)])
    m.graph.output.append(helper.make_tensor_value_info("cls", TensorProto.INT64, ["N"]))
    with pytest.raises(onnxattr.NotAClassifierError, match="'nope' is not a tensor of the model"):
        onnxattr.attribution_model(m, output="nope")
    with pytest.raises(onnxattr.NotAClassifierError, match="'cls' is not a rank-2 floating-point tensor"):
        onnxattr.attribution_model(m, output="cls")
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    assert_one_line_error(cli("export", path, "-o", tmp_path / "o.onnx", "--output", "nope"), "NotAClassifierError", "nope")
    assert not (tmp_path / "o.onnx").exists()


def test_input_option_errors():
    with pytest.raises(onnxattr.NotAClassifierError, match="'nope' is not a floating-point input"):
        onnxattr.attribution_model(tiny(), input="nope")


# ------------------------------------------------------------------------------------------ what it cannot differentiate
def test_op_without_rule_names_the_node(monkeypatch, tmp_path):
    monkeypatch.delitem(RULES, "Relu")  # any op without a rule: pretend Relu has none
    with pytest.raises(onnxattr.UnsupportedModelError, match="no gradient rule for 1 node.*Relu node 'relu'"):
        onnxattr.attribution_model(tiny())
    path = tmp_path / "m.onnx"
    onnx.save(tiny(), path)
    assert_one_line_error(cli("export", path, "-o", tmp_path / "o.onnx"), "UnsupportedModelError", "Relu node 'relu'")
    r = cli("coverage", path)
    assert r.exit_code == 1 and "MISSING" in r.output and "relu" in r.stderr


def test_custom_domain_names_the_node():
    m = tiny(mid=[helper.make_node("FancyAct", ["r"], ["y"], domain="com.example", name="fancy")])
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(onnxattr.UnsupportedModelError, match="FancyAct node 'fancy' \\(custom domain 'com.example'\\)"):
        onnxattr.attribution_model(m)


def test_opset_below_7_is_refused(tmp_path):
    """ONNX Runtime runs an opset-6 forward, but has no kernels for the opset-6 Mul/Sub/Add the
    backward would need: refused at export, with the fix, not a model that fails to load."""
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    m = model([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
              [helper.make_tensor_value_info("x", F, ["N", 4])], [helper.make_tensor_value_info("y", F, ["N", 3])],
              [w], opset=6)
    m.ir_version = 3
    ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])  # the forward loads
    with pytest.raises(onnxattr.UnsupportedModelError, match="opset 6: .*opset 7 or later"):
        onnxattr.attribution_model(m)
    path = tmp_path / "old.onnx"
    onnx.save(m, path)
    r = cli("export", path, "-o", tmp_path / "out.onnx")
    assert_one_line_error(r, "UnsupportedModelError", "opset 6")
    assert not (tmp_path / "out.onnx").exists()


def test_mixed_precision_is_refused_naming_the_node():
    """float32 in and out, float16 inside (onnxconverter-common's keep_io_types): the backward's
    constants would meet tensors of two float types, and ONNX Runtime refused the model it
    made. Refused at export instead, naming the node where the type changes."""
    H = TensorProto.FLOAT16
    m = tiny(mid=[helper.make_node("Cast", ["r"], ["half"], to=H, name="to_half"), helper.make_node("Sigmoid", ["half"], ["s"]),
                  helper.make_node("Cast", ["s"], ["y"], to=F)])
    with pytest.raises(onnxattr.UnsupportedModelError,
                       match="Cast node 'to_half': its output 'half' is float16 on the differentiable path of a float32 input"):
        onnxattr.attribution_model(m)


def test_input_no_gradient_reaches_is_named():
    """An input the output depends on only through its shape: the error says no gradient
    reaches it."""
    from onnxattr.api import vjp_model

    m = model([helper.make_node("Shape", ["v"], ["s"]), helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape")],
              [helper.make_tensor_value_info("x", F, [2, 3]), helper.make_tensor_value_info("v", F, [3, 2])],
              [helper.make_tensor_value_info("y", F, [3, 2])], [])
    with pytest.raises(onnxattr.UnsupportedModelError, match="no gradient reaches input 'v': the output depends on it only "
                       "through Shape node 's', whose output 's' is int64"):
        vjp_model(m)


def test_quantized_model_names_the_quantization(tmp_path):
    """A quantized (QDQ) model: x is rounded to int8 on its way, so no gradient reaches it (zero
    almost everywhere); the error names the QuantizeLinear node. The CLI exits non-zero and
    writes nothing."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="quant"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dequant"),
             helper.make_node("MatMul", ["xd", "W"], ["y"], name="mm")]
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z"),
             numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "W")]
    m = model(nodes, [helper.make_tensor_value_info("x", F, ["N", 4])], [helper.make_tensor_value_info("y", F, ["N", 3])], inits)
    ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])  # a valid model
    words = ("no gradient reaches input 'x': the output depends on it only through QuantizeLinear node 'quant', whose "
             "output 'xq' is int8 (no gradient passes); explain the float model it was quantized from")
    with pytest.raises(onnxattr.UnsupportedModelError, match=re.escape(words)):
        onnxattr.attribution_model(m)
    onnx.save(m, tmp_path / "int8.onnx")
    r = cli("export", tmp_path / "int8.onnx", "-o", tmp_path / "out.onnx")
    assert r.exit_code != 0 and "QuantizeLinear node 'quant'" in r.output and not (tmp_path / "out.onnx").exists()


def test_operand_without_gradient_rule_is_named(monkeypatch):
    """A float operand on the differentiable path to which its rule gives no gradient is refused,
    naming the node and the operand, never dropped: a Clip bound or a Pad value computed from the
    input silently lost its share of the gradient that way. Shown with a Mul rule that forgets
    its second operand."""
    from onnxattr import methods
    from onnxattr.api import vjp_model

    forgetful = methods.Method("saliency", {"Mul": lambda b, node, gys: [b.op("Mul", [gys[0], node.input[1]]), None]})
    monkeypatch.setattr("onnxattr.api.get_method", lambda *a, **k: forgetful)
    m = model([helper.make_node("ReduceMean", ["x"], ["s"], axes=[1]), helper.make_node("Mul", ["x", "s"], ["y"], name="scale")],
              [helper.make_tensor_value_info("x", F, [2, 3])], [helper.make_tensor_value_info("y", F, [2, 3])], [])
    with pytest.raises(onnxattr.UnsupportedModelError, match="Mul node 'scale': its input 1 \\('s'\\) depends on the input"):
        vjp_model(m)


@pytest.mark.parametrize("method, options, words", [
    ("smoothgrad", dict(samples=0), "samples 0: must be in [1, 10000]"),
    ("integrated-gradients", dict(steps=0), "steps 0: must be at least 1"),
    ("integrated-gradients", dict(steps=1, ig_method="riemann_trapezoid"), "at least 2 for riemann_trapezoid"),
    ("integrated-gradients", dict(ig_method="simpson"), "ig_method 'simpson': must be one of"),
    ("smoothgrad", dict(seed=-1), "seed -1: must be in [0, 2147483647)"),
    ("smoothgrad", dict(seed=2**50), "seed 1125899906842624"),
    ("smoothgrad", dict(noise=float("nan")), "noise nan: must be a number >= 0, finite in float32"),
    ("integrated-gradients", dict(baseline=np.zeros(5, np.float32)), "baseline of shape [5] does not broadcast"),
])
def test_method_options_out_of_range(method, options, words):
    """Parameters the graph cannot use are refused at export (they exported a model ONNX Runtime
    could not run, or raised an internal ValueError/OverflowError)."""
    with pytest.raises(onnxattr.OptionError) as e:
        onnxattr.attribution_model(tiny(), method=method, **options)
    assert words in str(e.value) and isinstance(e.value, ValueError)


def test_cli_method_options_out_of_range(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(tiny(), path)
    r = cli("export", path, "-o", tmp_path / "out.onnx", "--method", "integrated-gradients", "--steps", "0")
    assert_one_line_error(r, "OptionError", "steps 0")
    assert not (tmp_path / "out.onnx").exists()


def _if_model(capture: bool, constant: bool = False):
    """y = r + If(cond, r @ A, r @ B): the branches read r by name from the outer scope
    (capture) or the If is fed nothing differentiable at all (its branches are constant). The
    condition depends on the input (sum(r) > 0), or is a constant True."""
    def branch(name, w):
        src = "r" if capture else "k"
        return helper.make_graph([helper.make_node("MatMul", [src, w], [name])], name, [],
                                 [helper.make_tensor_value_info(name, F, None)])
    mid = [] if constant else [helper.make_node("ReduceSum", ["r"], ["total"], keepdims=0),
                               helper.make_node("Greater", ["total", "zero"], ["cond"])]
    mid += [helper.make_node("If", ["cond"], ["b"], then_branch=branch("t", "A"), else_branch=branch("e", "B"), name="choose"),
            helper.make_node("Add", ["r", "b"], ["y"])]
    m = tiny(mid=mid)
    m.graph.initializer.extend([numpy_helper.from_array(np.eye(3, dtype=np.float32) * 2, "A"),
                                numpy_helper.from_array(np.eye(3, dtype=np.float32) * 3, "B"),
                                numpy_helper.from_array(np.ones((1, 3), np.float32), "k"),
                                numpy_helper.from_array(np.float32(0), "zero")]
                               + ([numpy_helper.from_array(np.array(True), "cond")] if constant else []))
    return m


def test_if_on_the_path_is_differentiated():
    """cond = sum(r) > 0 at run time (r = relu(...) >= 0: true unless all of r is 0), so the then
    branch r @ 2I is taken: 3 times the plain gradient. (Refused by name before vjp/branch.py.)"""
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    got = onnxattr.Explainer(_if_model(capture=True), provider="cpu")(x, [0, 2])
    plain = onnxattr.Explainer(tiny(mid=[helper.make_node("Identity", ["r"], ["y"])]), provider="cpu")(x, [0, 2])
    assert np.abs(plain).max() > 0
    np.testing.assert_allclose(got, 3 * plain, rtol=1e-6)


def test_dynamically_quantized_model_says_so(tmp_path):
    """ONNX Runtime's quantize_dynamic: DynamicQuantizeLinear's float scale output keeps the path
    going, so the error is a missing rule; it names the nodes and says what the model is."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    W = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    m = model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [helper.make_tensor_value_info("x", F, ["N", 4])],
              [helper.make_tensor_value_info("y", F, ["N", 3])], [numpy_helper.from_array(W, "W")])
    onnx.save(m, tmp_path / "f32.onnx")
    quantize_dynamic(tmp_path / "f32.onnx", tmp_path / "int8.onnx", weight_type=QuantType.QInt8)
    with pytest.raises(onnxattr.UnsupportedModelError, match=r"no gradient rule for .*DynamicQuantizeLinear node .*"
                       r"a quantized model: explain the float model it was quantized from"):
        onnxattr.attribution_model(str(tmp_path / "int8.onnx"))


def test_control_flow_without_a_rule_is_refused_naming_the_node():
    """A SequenceMap on the path (r split into rows, each doubled, joined again): no rule for it
    or for the sequence ops around it, all named."""
    body = helper.make_graph([helper.make_node("Add", ["row", "row"], ["twice"])], "body",
                             [helper.make_tensor_value_info("row", F, None)], [helper.make_tensor_value_info("twice", F, None)])
    m = tiny(mid=[helper.make_node("SplitToSequence", ["r"], ["rows"], axis=0, name="split"),
                  helper.make_node("SequenceMap", ["rows"], ["doubled"], body=body, name="map"),
                  helper.make_node("ConcatFromSequence", ["doubled"], ["y"], axis=0, name="join")])
    m.opset_import[0].version = 17
    ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])  # a valid model
    with pytest.raises(onnxattr.UnsupportedModelError, match=r"3 node\(s\).*SplitToSequence node 'split'; "
                       r"SequenceMap node 'map' \(control flow\); ConcatFromSequence node 'join'"):
        onnxattr.attribution_model(m)


def test_scan_over_columns_is_differentiated():
    """Scan nodes have a rule now (tests/test_scan.py): y = r + the running sum of r's columns
    from sum(r) on, the attribution of the same model written with CumSum."""
    body = helper.make_graph([helper.make_node("Add", ["acc", "col"], ["acc2"]), helper.make_node("Identity", ["acc2"], ["out"])],
                             "body", [helper.make_tensor_value_info(n, F, [None]) for n in ("acc", "col")],
                             [helper.make_tensor_value_info(n, F, [None]) for n in ("acc2", "out")])
    mid = [helper.make_node("Transpose", ["r"], ["cols"], perm=[1, 0]),
           helper.make_node("ReduceSum", ["r", "one_1d"], ["acc0"], keepdims=0),
           helper.make_node("Scan", ["acc0", "cols"], ["total", "sums"], body=body, num_scan_inputs=1, name="running"),
           helper.make_node("Transpose", ["sums"], ["sums_t"], perm=[1, 0]), helper.make_node("Add", ["r", "sums_t"], ["y"])]
    same = [helper.make_node("ReduceSum", ["r", "one_1d"], ["acc0"], keepdims=1),
            helper.make_node("CumSum", ["r", "one"], ["cum"]), helper.make_node("Add", ["acc0", "cum"], ["sums_t"]),
            helper.make_node("Add", ["r", "sums_t"], ["y"])]
    scanned, cumsum = tiny(mid=mid), tiny(mid=same)
    for m in (scanned, cumsum):
        m.graph.initializer.extend([numpy_helper.from_array(np.array(1, np.int64), "one"),
                                    numpy_helper.from_array(np.array([1], np.int64), "one_1d")])
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    got = onnxattr.Explainer(scanned, provider="cpu")(x, [0, 2])
    want = onnxattr.Explainer(cumsum, provider="cpu")(x, [0, 2])
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_if_with_a_constant_condition_is_inlined():
    """The same If with cond a constant True: its then branch (r @ 2I) replaces it."""
    m = _if_model(capture=True, constant=True)
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    got = onnxattr.Explainer(m, provider="cpu")(x, [0, 2])
    plain = onnxattr.Explainer(tiny(mid=[helper.make_node("Identity", ["r"], ["y"])]), provider="cpu")(x, [0, 2])
    np.testing.assert_allclose(got, 3 * plain, rtol=1e-6)


def test_control_flow_off_the_path_is_fine():
    """An If whose branches do not depend on x is a constant: no gradient passes through it."""
    m = _if_model(capture=False)
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    got = onnxattr.Explainer(m, provider="cpu")(x, [0, 2])
    plain = onnxattr.Explainer(tiny(mid=[helper.make_node("Identity", ["r"], ["y"])]), provider="cpu")(x, [0, 2])
    np.testing.assert_allclose(got, plain, rtol=1e-6)


def test_loop_reading_an_outer_tensor_whole_is_differentiated():
    """Loop nodes have a rule now (tests/test_loop.py): y = r + 3 r, r read whole at each step,
    gets 4 times the plain model's attribution."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["acc_in", "r"], ["acc_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("acc_in", F, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("acc_out", F, None)])
    mid = [helper.make_node("Loop", ["trips", "", "r"], ["y"], body=body, name="repeat")]
    m = tiny(mid=mid)
    m.graph.initializer.append(numpy_helper.from_array(np.array(3, np.int64), "trips"))
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    got = onnxattr.Explainer(m, provider="cpu")(x, [0, 2])
    plain = onnxattr.Explainer(tiny(), provider="cpu")(x, [0, 2])
    assert np.abs(plain).max() > 0
    np.testing.assert_allclose(got, 4 * plain, rtol=1e-6)


def test_scan_over_the_batch_is_differentiated():
    """A Scan over the rows of r (the batch): y = the running sum of the rows, the attribution of
    the same model written with CumSum along the batch."""
    body = helper.make_graph([helper.make_node("Add", ["s_in", "row"], ["s_out"]), helper.make_node("Identity", ["s_out"], ["o"])],
                             "body", [helper.make_tensor_value_info("s_in", F, [3]), helper.make_tensor_value_info("row", F, [3])],
                             [helper.make_tensor_value_info("s_out", F, [3]), helper.make_tensor_value_info("o", F, [3])])
    m = tiny(mid=[helper.make_node("Scan", ["zero", "r"], ["last", "y"], body=body, num_scan_inputs=1, name="scan")])
    m.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), "zero"))
    cumsum = tiny(mid=[helper.make_node("CumSum", ["r", "zero_axis"], ["y"])])
    cumsum.graph.initializer.append(numpy_helper.from_array(np.array(0, np.int64), "zero_axis"))
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    got = onnxattr.Explainer(m, provider="cpu")(x, [0, 2, 1])
    want = onnxattr.Explainer(cumsum, provider="cpu")(x, [0, 2, 1])
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-6)


def _lstm_model(opset=13, extra_inputs=(), w_from_x=False, **attrs):
    """x [N, 3, 2] -> Transpose to time-major -> LSTM 'cell' -> last hidden state -> MatMul -> y [N, 3]."""
    rng = np.random.default_rng(0)
    nodes = []
    if w_from_x:  # weights scaled by the input's mean: they depend on what is explained
        nodes += [helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0), helper.make_node("Mul", ["W", "m"], ["Wx"])]
    nodes += [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
              helper.make_node("LSTM", ["xt", "Wx" if w_from_x else "W", "R", "", *extra_inputs], ["", "h"],
                               hidden_size=4, name="cell", **attrs),
              helper.make_node("Transpose", ["h"], ["h_t"], perm=[1, 0, 2]), helper.make_node("Flatten", ["h_t"], ["hf"]),
              helper.make_node("MatMul", ["hf", "V"], ["y"])]
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("W", (1, 16, 2)), ("R", (1, 16, 4)), ("V", (4, 3)))]
    inits.append(numpy_helper.from_array(np.array([3, 3], np.int32), "lens"))
    m = model(nodes, [helper.make_tensor_value_info("x", F, [2, 3, 2])], [helper.make_tensor_value_info("y", F, [2, 3])],
              inits, opset=opset)
    onnx.checker.check_model(m)
    return m


@pytest.mark.parametrize("kwargs, words", [  # the LSTM/GRU/RNN attribute refusals: tests/test_recurrent.py
    (dict(extra_inputs=["lens"]), "sequence_lens"),
    (dict(opset=8), "needs Scan-9"),
    (dict(w_from_x=True), "weights are not supported"),
])
def test_recurrent_refusals_name_the_node(kwargs, words):
    m = _lstm_model(**kwargs)
    ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])  # a valid model
    with pytest.raises(onnxattr.UnsupportedModelError, match=f"LSTM node 'cell': .*{re.escape(words)}"):
        onnxattr.attribution_model(m)


def test_recurrent_model_is_explained():
    """The same model without the refused features: the LSTM gradient against central differences of
    the original model in ONNX Runtime (float32, step 1e-2; measured max error 5.3e-5 of values up to 0.78)."""
    m = _lstm_model()
    x = np.random.default_rng(1).standard_normal((2, 3, 2)).astype(np.float32)
    got = onnxattr.Explainer(m, provider="cpu")(x, [0, 2])
    fwd = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    want = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[idx] = 1e-2
        yp, ym = fwd.run(None, {"x": x + step})[0], fwd.run(None, {"x": x - step})[0]
        want[idx] = (yp[idx[0], [0, 2][idx[0]]] - ym[idx[0], [0, 2][idx[0]]]) / 2e-2
    np.testing.assert_allclose(got, want, atol=1e-3)


# ------------------------------------------------------------------------------------------ targets
@pytest.fixture(scope="module")
def x():
    return np.load(FIX / "default_input.npy")


@pytest.fixture(scope="module")
def explainer():
    return onnxattr.Explainer(MODEL, provider="cpu")


@pytest.mark.parametrize("target, words", [
    (4, "out of range for 4 classes"), (-1, "out of range"), ([0, 1, 2, 4], "out of range"),
    ([0, 1], "2 entries for a batch of 4"), ([[0, 1, 2, 3]], r"a 1-D array of one class per row, got shape \[1, 4\]"),
    (np.zeros((4, 1), int), r"got shape \[4, 1\]"),  # (said "target has 4 entries for a batch of 4")
    (np.full(4, 2 ** 63, np.uint64), "target 9223372036854775808 is out of range"),  # (was shown as -2**63)
    (1.5, "integer class indices"), ("best", "'argmax'"), ([0, "a", 1, 2], "integer class indices"),
])
def test_bad_targets(explainer, x, target, words):
    with pytest.raises(onnxattr.TargetError, match=words):
        explainer(x, target)


def test_target_checked_when_the_class_count_is_dynamic():
    """With y [N, C] symbolic, the range is checked against the scores once they are known."""
    m = tiny()
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "C"
    ex = onnxattr.Explainer(m, provider="cpu")
    assert ex.num_classes is None
    xs = np.ones((2, 4), np.float32)
    assert ex(xs, [0, 2]).shape == (2, 4)
    with pytest.raises(onnxattr.TargetError, match="out of range for 3 classes"):
        ex(xs, [0, 3])


def test_bare_exported_model_gives_zeros_for_out_of_range_target(x):
    """Documented: the exported model itself does not check `target`; an index outside
    [0, C) matches no class, so that row's attribution is all zeros (the runner refuses it)."""
    sess = ort.InferenceSession(onnxattr.attribution_model(MODEL).SerializeToString(), providers=["CPUExecutionProvider"])
    att = sess.run(["attribution"], {"image": x, "target": np.array([0, 4, -1, 99])})[0]
    assert np.abs(att[0]).sum() > 0
    assert not att[1:].any()


def test_cli_target_errors(tmp_path):
    for target, words in (("9", "out of range"), ("0,1", "2 entries for a batch of 4")):
        r = cli("explain", MODEL, "--input", FIX / "default_input.npy", "--target", target, "--provider", "cpu",
                "-o", tmp_path / "a.npy")
        assert_one_line_error(r, "TargetError", words)
    assert listing(tmp_path) == []


# ------------------------------------------------------------------------------------------ inputs
@pytest.mark.parametrize("bad, words", [
    (np.zeros((1, 3, 32, 32), np.float32), "does not match"),                 # wrong size
    (np.zeros((1, 64, 64, 3), np.float32), "does not match"),                 # NHWC for an NCHW model
    (np.zeros((3, 64, 64), np.float32), "does not match"),                    # no batch axis
    (np.zeros((1, 3, 64, 64), np.int64), "floating-point"),                   # integers
    (np.zeros((1, 3, 64, 64), bool), "floating-point"),
    (np.full((1, 3, 64, 64), "a"), "floating-point"),
    (np.zeros((0, 3, 64, 64), np.float32), "empty"),
])
def test_bad_inputs(explainer, bad, words):
    with pytest.raises(onnxattr.InputError, match=words):
        explainer(bad, 0)


def test_float64_and_float16_inputs_are_cast(explainer, x):
    want = explainer(x, 1)
    np.testing.assert_array_equal(explainer(x.astype(np.float64), 1), want)
    half = explainer(x.astype(np.float16), 1)  # rounded input: a few switches flip, the map stays
    assert half.dtype == np.float32 and np.linalg.norm(half - want) < 0.3 * np.linalg.norm(want)


@pytest.mark.parametrize("content, words", [
    (b"not numpy", "cannot read"),
    (None, "cannot read"),                     # a pickled object array: refused, never unpickled
    ("int", "floating-point"),
    ("shape", "does not match"),
])
def test_cli_bad_input_files(tmp_path, content, words):
    path = tmp_path / "x.npy"
    if content is None:
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif content == "int":
        np.save(path, np.zeros((1, 3, 64, 64), np.int32))
    elif content == "shape":
        np.save(path, np.zeros((1, 64, 64, 3), np.float32))
    else:
        path.write_bytes(content)
    r = cli("explain", MODEL, "--input", path, "--provider", "cpu", "-o", tmp_path / "a.npy")
    assert_one_line_error(r, "InputError", words)
    assert not (tmp_path / "a.npy").exists()


def test_cli_missing_input_file(tmp_path):
    r = cli("explain", MODEL, "--input", tmp_path / "nope.npy", "--provider", "cpu", "-o", tmp_path / "a.npy")
    assert_one_line_error(r, "InputError", "cannot read")


@pytest.mark.parametrize("data", [b"not an image", None])
def test_cli_undecodable_images(tmp_path, data):
    img = tmp_path / "bad.png"
    img.write_bytes(data if data is not None else (FIX / "images" / "circle.png").read_bytes()[:100])  # truncated PNG
    r = cli("explain", MODEL, img, "--provider", "cpu", "-o", tmp_path / "o")
    assert_one_line_error(r, "InputError", "cannot decode image")


def test_cli_explain_failing_late_writes_nothing(tmp_path):
    """A good image, then one that cannot be decoded, one per batch: the first batch's files were
    left behind; now the command writes all of its files or none, not even its folder."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    shutil.copy(FIX / "images" / "circle.png", imgs / "a.png")
    (imgs / "b.png").write_bytes(b"not an image")
    r = cli("explain", MODEL, imgs, "--provider", "cpu", "--batch-size", "1", "-o", tmp_path / "o")
    assert_one_line_error(r, "InputError", "cannot decode image")
    assert not (tmp_path / "o").exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "old.txt").write_text("mine")
    r = cli("explain", MODEL, imgs, "--provider", "cpu", "--batch-size", "1", "-o", tmp_path / "kept")
    assert r.exit_code == 1 and sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["old.txt"]
    r = cli("explain", tmp_path / "nope.onnx", imgs / "a.png", "-o", tmp_path / "o2")
    assert_one_line_error(r, "ModelLoadError", "does not exist")
    assert not (tmp_path / "o2").exists()


def test_cli_missing_image(tmp_path):
    r = cli("explain", MODEL, tmp_path / "nope.png", "--provider", "cpu", "-o", tmp_path / "o")
    assert_one_line_error(r, "InputError", "no such file")


# ------------------------------------------------------------------------------------------ NaN and Inf
def test_nonfinite_input_propagates_and_is_reported(explainer, x):
    bad = x.copy()
    bad[0, 0, 10, 10] = np.nan
    bad[2, 1, 5, 5] = np.inf
    clean = explainer(x, [0, 1, 2, 3])
    with pytest.warns(onnxattr.NonFiniteWarning, match=r"2 in the input.*in the attribution") as rec:
        att = explainer(bad, [0, 1, 2, 3])
    assert len(rec) == 1
    assert not np.isfinite(att[0]).all() and not np.isfinite(att[2]).all()  # NaN/Inf where they flow
    np.testing.assert_array_equal(att[[1, 3]], clean[[1, 3]])  # the other rows are untouched
    counts = explainer.nonfinite_counts({"attribution": att}, bad)
    assert counts["input"] == 2 and counts["attribution"] > 0


def test_finite_input_is_silent(explainer, x):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explainer(x, 0)


def test_nonfinite_raise_and_ignore(x):
    bad = x.copy()
    bad[1, 0, 0, 0] = -np.inf
    with pytest.raises(onnxattr.InputError, match=r"1 NaN/Inf values \(rows \[1\]\)"):
        onnxattr.Explainer(MODEL, provider="cpu", nonfinite="raise")(bad, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        onnxattr.Explainer(MODEL, provider="cpu", nonfinite="ignore")(bad, 0)


def test_cli_reports_nonfinite(tmp_path, x):
    bad = x.copy()
    bad[0, :, :2, :2] = np.nan
    np.save(tmp_path / "x.npy", bad)
    r = cli("explain", MODEL, "--input", tmp_path / "x.npy", "--target", "0", "--provider", "cpu", "-o", tmp_path / "a.npy")
    assert r.exit_code == 0, r.output
    warn = [line for line in r.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warn) == 1 and "12 in the input" in warn[0] and "in the attribution" in warn[0], r.stderr
    assert np.isnan(np.load(tmp_path / "a.npy")[0]).any()


# ------------------------------------------------------------------------------------------ outputs
def test_output_is_the_input(tmp_path):
    src = tmp_path / "m.onnx"
    shutil.copy(MODEL, src)
    link = tmp_path / "link.onnx"
    link.symlink_to(src)
    before = src.read_bytes()
    for out in (src, link, tmp_path / "." / "m.onnx"):
        assert_one_line_error(cli("export", src, "-o", out), "OutputError", "is the input")
    np.save(tmp_path / "x.npy", np.load(FIX / "default_input.npy"))
    r = cli("explain", src, "--input", tmp_path / "x.npy", "--provider", "cpu", "-o", tmp_path / "x.npy")
    assert_one_line_error(r, "OutputError", "is the input")
    assert src.read_bytes() == before and listing(tmp_path) == ["link.onnx", "m.onnx", "x.npy"]


def test_output_folder_problems(tmp_path):
    assert_one_line_error(cli("export", MODEL, "-o", tmp_path / "nope" / "o.onnx"), "OutputError", "does not exist")
    (tmp_path / "dir.onnx").mkdir()
    assert_one_line_error(cli("export", MODEL, "-o", tmp_path / "dir.onnx"), "OutputError", "is a folder")
    r = cli("explain", MODEL, "--input", FIX / "default_input.npy", "--provider", "cpu", "-o", tmp_path / "no" / "a.npy")
    assert_one_line_error(r, "OutputError", "does not exist")


def _disk_full(monkeypatch, after: int = 100):
    """Make every file write fail with ENOSPC once `after` bytes have gone to the file."""
    import builtins
    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, data):
            self.n += len(data)
            if self.n > after:
                self.f.write(bytes(data)[: max(0, after - (self.n - len(data)))])  # the part that fitted
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    def fake_open(file, mode="r", *args, **kw):
        f = real_open(file, mode, *args, **kw)
        return Full(f) if "w" in mode and "b" in mode else f

    monkeypatch.setattr(oio, "open", fake_open, raising=False)  # io.py's own writes
    monkeypatch.setattr(np, "save", lambda f, a, **kw: f.write(b"x" * 1000))


@pytest.mark.parametrize("what", ["export", "export-external", "explain"])
def test_full_disk_leaves_nothing(tmp_path, monkeypatch, what):
    src = tmp_path / "m.onnx"
    shutil.copy(MODEL, src)
    np.save(tmp_path / "x.npy", np.load(FIX / "default_input.npy"))
    out = tmp_path / "out"
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    if what == "export-external":
        monkeypatch.setattr(oio, "SINGLE_FILE_LIMIT", 0)  # pretend the model is too large for one file
    _disk_full(monkeypatch)
    if what == "explain":
        r = cli("explain", src, "--input", tmp_path / "x.npy", "--provider", "cpu", "-o", out)
    else:
        r = cli("export", src, "-o", out)
    assert_one_line_error(r, "OutputError", "No space left on device", "nothing was written")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no partial or temp file, input intact


def test_save_model_api_full_disk(tmp_path, monkeypatch):
    _disk_full(monkeypatch)
    with pytest.raises(onnxattr.OutputError, match="No space left"):
        oio.save_model(onnxattr.attribution_model(MODEL), tmp_path / "o.onnx")
    assert listing(tmp_path) == []


# ------------------------------------------------------------------------------------------ the CLI never shows a traceback
def test_onnxruntime_failure_is_one_line(tmp_path, monkeypatch):
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    def broken(*a, **k):
        raise Fail("[ONNXRuntimeError] : 1 : FAIL : something broke\nand a second line")

    monkeypatch.setattr("onnxattr.explainer.make_session", broken)
    r = cli("explain", MODEL, "--input", FIX / "default_input.npy", "--provider", "cpu", "-o", tmp_path / "a.npy")
    assert_one_line_error(r, "ExecutionError", "something broke")
    with pytest.raises(onnxattr.ExecutionError, match="cannot load the attribution model"):
        onnxattr.Explainer(MODEL, provider="cpu")


def test_onnxruntime_run_failure_is_an_execution_error(x, monkeypatch):
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException
    ex = onnxattr.Explainer(MODEL, provider="cpu")
    real = ex._sessions["input"]

    class Sess:
        def get_outputs(self):
            return real.get_outputs()

        def run(self, *a):
            raise RuntimeException("out of device memory")

    ex._sessions["input"] = Sess()
    with pytest.raises(onnxattr.ExecutionError, match="ONNX Runtime failed: out of device memory"):
        ex(x, 0)


def test_internal_errors_are_one_line_for_users_and_raise_in_tests(tmp_path, monkeypatch):
    def bug(*a, **k):
        raise KeyError("oops")

    monkeypatch.setattr("onnxattr.api.attribution_model", bug)
    r = cli("export", MODEL, "-o", tmp_path / "o.onnx")  # under pytest: the bug propagates
    assert isinstance(r.exception, KeyError)
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    r = cli("export", MODEL, "-o", tmp_path / "o.onnx")
    assert_one_line_error(r, "internal error", "KeyError", "ONNXATTR_DEBUG=1")
    r = cli("export", MODEL, "-o", tmp_path / "o.onnx", env={"ONNXATTR_DEBUG": "1"})
    assert isinstance(r.exception, KeyError)


def test_memory_error_is_one_line(tmp_path, monkeypatch):
    def big(*a, **k):
        raise MemoryError()

    monkeypatch.setattr("onnxattr.api.attribution_model", big)
    assert_one_line_error(cli("export", MODEL, "-o", tmp_path / "o.onnx"), "out of memory")


def test_bad_option_values_are_usage_errors(tmp_path):
    r = cli("explain", MODEL, FIX / "images", "--size", "big", "-o", tmp_path / "o")
    assert r.exit_code == 2 and "--size" in r.output and "Traceback" not in r.output


# ------------------------------------------------------------------------------------------ determinism
def test_export_is_deterministic(tmp_path):
    a = onnxattr.attribution_model(MODEL, method="guided").SerializeToString()
    b = onnxattr.attribution_model(MODEL, method="guided").SerializeToString()
    assert a == b
    for i in (1, 2):
        assert cli("export", MODEL, "-o", tmp_path / f"cli{i}.onnx", "--method", "guided").exit_code == 0
    assert (tmp_path / "cli1.onnx").read_bytes() == (tmp_path / "cli2.onnx").read_bytes() == a


def test_export_is_deterministic_across_processes(tmp_path):
    """Separate interpreters with different hash seeds (set and dict orders) write the same bytes."""
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"p{seed}.onnx"
        env = dict(os.environ, PYTHONHASHSEED=seed)
        r = subprocess.run([sys.executable, "-c", "from onnxattr.cli import main; main()", "export", str(MODEL),
                            "-o", str(out), "--method", "smoothgrad", "--samples", "2"],
                           env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert outs[0] == onnxattr.attribution_model(MODEL, method="smoothgrad", samples=2).SerializeToString()


def test_input_never_changed(tmp_path, x):
    src = tmp_path / "m.onnx"
    shutil.copy(MODEL, src)
    before = src.read_bytes()
    proto = onnx.load(src)
    raw = proto.SerializeToString()
    for method in ("saliency", "guided", "gradcam"):
        onnxattr.attribution_model(proto, method=method)
        onnxattr.attribution_model(src, method=method)
        onnxattr.Explainer(proto, method=method, provider="cpu")(x, 0)
    assert proto.SerializeToString() == raw and src.read_bytes() == before


@pytest.mark.parametrize("op, nodes, extra, message", [
    ("Conv", [helper.make_node("Conv", ["x", "w"], ["y"], name="c")], ("w", [2, 2, 1, 1]),
     "Conv node 'c': gradients with respect to weights or bias are not supported"),
    ("BatchNormalization", [helper.make_node("BatchNormalization", ["x", "w", "b", "m", "v"], ["y"], name="bn")], ("w", [2]),
     "BatchNormalization node 'bn': gradients with respect to BatchNormalization parameters are not supported"),
    ("Resize", [helper.make_node("Resize", ["x", "", "w"], ["y"], name="up")], ("w", [4]),
     "Resize node 'up': its scales, sizes and roi must be constants to differentiate it"),
])
def test_operand_gradient_not_supported_is_refused(op, nodes, extra, message):
    """Operands whose gradient onnxattr does not compute, when they are inputs too (or computed
    from the input): refused by name (README, bad inputs)."""
    from onnxattr.api import vjp_model

    inits = [numpy_helper.from_array(np.full([2], v, np.float32), n) for n, v in (("b", 0.0), ("m", 0.0), ("v", 1.0))]
    m = model(nodes, [helper.make_tensor_value_info("x", F, [1, 2, 2, 2]), helper.make_tensor_value_info(extra[0], F, extra[1])],
              [helper.make_tensor_value_info("y", F, None)], inits)
    with pytest.raises(onnxattr.UnsupportedModelError, match=re.escape(message)):
        vjp_model(m)


@pytest.mark.parametrize("x_dims", [[3, 6, 6], ["C", 6, 6]])
def test_input_without_the_scores_batch_axis_is_refused(x_dims):
    """x [3, 6, 6] -> Unsqueeze -> ... -> y [1, 5]: the input has no batch axis. The export
    declared `target` [3] (x's first dim) and ONNX Runtime then refused both a target of 1 and
    of 3; SmoothGrad said 'a fixed batch of 3'. Refused at export, naming both shapes."""
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    wf = numpy_helper.from_array(np.ones((4, 5), np.float32), "wf")
    ax = numpy_helper.from_array(np.array([0], np.int64), "ax0")
    nodes = [helper.make_node("Unsqueeze", ["x", "ax0"], ["xb"]), helper.make_node("Conv", ["xb", "w"], ["c"]),
             helper.make_node("GlobalAveragePool", ["c"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("MatMul", ["f", "wf"], ["y"])]
    m = model(nodes, [helper.make_tensor_value_info("x", F, x_dims)], [helper.make_tensor_value_info("y", F, [1, 5])], [w, wf, ax])
    with pytest.raises(onnxattr.NotAClassifierError, match=re.escape("'x' [") + r".*has no batch axis: its first axis is not "
                       + re.escape("that of the scores 'y' [1, 5]")):
        onnxattr.attribution_model(m)


def test_wrt_without_a_batch_axis_is_refused():
    """--wrt a scalar: the export declared attribution [N] and ONNX Runtime returned the
    gradient summed over the batch (SmoothGrad: an internal error)."""
    nodes = [helper.make_node("Mul", ["x", "k"], ["s"]), helper.make_node("Mul", ["s", "two"], ["y"])]
    inits = [numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    m = model(nodes, [helper.make_tensor_value_info("x", F, ["N", 3]), helper.make_tensor_value_info("k", F, [])],
              [helper.make_tensor_value_info("y", F, ["N", 3])], inits)
    for method in ("saliency", "smoothgrad"):
        with pytest.raises(onnxattr.NotAClassifierError, match=re.escape("'k' [] has no batch axis")):
            onnxattr.attribution_model(m, method=method, wrt="k", input="x")


@pytest.mark.parametrize("op", ["Range", "OneHot"])
def test_range_and_onehot_fed_from_the_input_are_refused(op):
    """Range with a float start, OneHot with float values, computed from the input: linear in
    it, but both were listed as having no gradient, so the term was dropped silently (finite
    differences: -7.0 where onnxattr gave -5.1). Now refused as having no rule."""
    from onnxattr.api import vjp_model

    ints = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("depth", 3), ("idx", [0, 2, 1]))]
    floats = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("limit", 10.0), ("step", 2.5), ("off", 1.0))]
    if op == "Range":
        nodes = [helper.make_node("ReduceMean", ["x"], ["start"], keepdims=0), helper.make_node("Range", ["start", "limit", "step"], ["r"], name="op"),
                 helper.make_node("ReduceSum", ["r"], ["rs"], keepdims=1), helper.make_node("Mul", ["x", "rs"], ["y"])]
    else:
        nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[0, 1], keepdims=0), helper.make_node("Unsqueeze", ["m"], ["m1"], axes=[0]),
                 helper.make_node("Mul", ["m1", "off"], ["v1"]),
                 helper.make_node("Concat", ["m1", "v1"], ["vals"], axis=0),
                 helper.make_node("OneHot", ["idx", "depth", "vals"], ["o"], name="op"),
                 helper.make_node("ReduceSum", ["o"], ["os"], axes=[0], keepdims=0), helper.make_node("Mul", ["x", "os"], ["y"])]
    m = model(nodes, [helper.make_tensor_value_info("x", F, [2, 3])], [helper.make_tensor_value_info("y", F, None)],
              ints + floats, opset=11)
    with pytest.raises(onnxattr.UnsupportedModelError, match=f"no gradient rule for 1 node\\(s\\).*{op} node 'op'"):
        vjp_model(m)


def test_binary_string_attribute_is_not_decoded():
    """tf2onnx leaves StatefulPartitionedCall nodes with a binary config_proto attribute (Keras
    ConvNeXt): a UnicodeDecodeError escaped, even from a side branch. Off the path now ignored;
    on the path the usual no-rule error."""
    from onnxattr.api import vjp_model

    odd = helper.make_node("Foo", ["x"], ["o"], domain="com.example", name="odd", config=b"\xff\xfe\x00binary")
    side = model([odd, helper.make_node("Relu", ["x"], ["y"])], [helper.make_tensor_value_info("x", F, [2, 3])],
                 [helper.make_tensor_value_info("y", F, [2, 3]), helper.make_tensor_value_info("o", F, None)])
    side.opset_import.append(helper.make_opsetid("com.example", 1))
    vjp_model(side, of=["y"])
    on_path = model([odd, helper.make_node("Relu", ["o"], ["y"])], [helper.make_tensor_value_info("x", F, [2, 3])],
                    [helper.make_tensor_value_info("y", F, [2, 3])])
    on_path.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(onnxattr.UnsupportedModelError, match="Foo node 'odd' \\(custom domain 'com.example'\\)"):
        vjp_model(on_path)


# ---------------------------------------------------------------- files (a helper round on files and forms)
def _external(tmp_path, location):
    m = onnx.load(MODEL)
    onnx.save_model(m, tmp_path / "e.onnx", save_as_external_data=True, location=location, size_threshold=0)
    return tmp_path / "e.onnx", tmp_path / location


def test_explain_never_writes_over_the_models_external_data(tmp_path):
    """`explain --input -o` the model's data file overwrote the weights (exit 0), and so did an
    image output named like it; both refused now, the data unchanged."""
    path, data = _external(tmp_path, "e.bin")
    before = data.read_bytes()
    np.save(tmp_path / "x.npy", np.load(FIX / "default_input.npy")[:2])
    r = cli("explain", path, "--input", tmp_path / "x.npy", "-o", data, "--provider", "cpu")
    assert_one_line_error(r, "OutputError", "e.bin")
    path2, data2 = _external(tmp_path, "circle.saliency.npy")
    before2 = data2.read_bytes()
    r = cli("explain", path2, FIX / "images" / "circle.png", "-o", tmp_path, "--provider", "cpu")
    assert_one_line_error(r, "OutputError", "circle.saliency.npy")
    assert data.read_bytes() == before and data2.read_bytes() == before2


def test_output_that_is_a_fifo_is_refused(tmp_path):
    """-o naming a FIFO (or a device) replaced it with a regular file."""
    fifo = tmp_path / "f.onnx"
    os.mkfifo(fifo)
    r = cli("export", MODEL, "-o", fifo)
    assert_one_line_error(r, "OutputError", "is not a regular file")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_fifo_given_as_an_image_or_input_is_refused(tmp_path):
    """A FIFO as an image or as --input blocked forever on the read."""
    for name in ("p.png", "p.npy"):
        os.mkfifo(tmp_path / name)
    r = cli("explain", MODEL, tmp_path / "p.png", "-o", tmp_path / "o", "--provider", "cpu")
    assert_one_line_error(r, "InputError", "is not a regular file")
    r = cli("explain", MODEL, "--input", tmp_path / "p.npy", "-o", tmp_path / "a.npy", "--provider", "cpu")
    assert_one_line_error(r, "InputError", "not a regular file")


def test_images_with_one_stem_are_refused(tmp_path):
    """a.png and a.jpg both wrote a.saliency.*: the first one's files were lost silently."""
    from PIL import Image

    for name in ("a.png", "a.jpg"):
        Image.open(FIX / "images" / "circle.png").convert("RGB").save(tmp_path / name)
    r = cli("explain", MODEL, tmp_path / "a.png", tmp_path / "a.jpg", "-o", tmp_path / "o", "--provider", "cpu")
    assert_one_line_error(r, "InputError", "would write the same files")
    assert not (tmp_path / "o").exists()


def test_labels_not_utf8(tmp_path):
    (tmp_path / "labels.txt").write_bytes(b"cat\n\xe9\xff\n")
    r = cli("explain", MODEL, FIX / "images" / "circle.png", "-o", tmp_path / "o", "--provider", "cpu",
            "--labels", tmp_path / "labels.txt")
    assert_one_line_error(r, "InputError", "not UTF-8")


def test_failed_rerun_keeps_earlier_outputs(tmp_path):
    """A rerun into a folder of earlier outputs that failed on a later image overwrote them, then
    removed them: files are now staged and renamed only when all are written."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    shutil.copy(FIX / "images" / "circle.png", imgs)
    out = tmp_path / "out"
    assert cli("explain", MODEL, imgs, "-o", out, "--provider", "cpu").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (imgs / "zzz.png").write_bytes(b"broken")
    r = cli("explain", MODEL, imgs, "-o", out, "--provider", "cpu", "--batch-size", "1", "--method", "saliency")
    assert_one_line_error(r, "InputError", "cannot decode image")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_long_output_names(tmp_path):
    """A legal 250-character name could not be written (the temporary name went past 255); a
    name over the limit was an untyped OSError."""
    ok = tmp_path / ("x" * 245 + ".onnx")
    assert cli("export", MODEL, "-o", ok).exit_code == 0 and ok.exists()
    r = cli("export", MODEL, "-o", tmp_path / ("y" * 260 + ".onnx"))
    assert_one_line_error(r, "OutputError", "File name too long")


def test_stale_declared_shapes_do_not_size_the_backward(tmp_path):
    """A stale value_info ([N, 9] for [N, 4]) or an output declared [N, 7]: ONNX Runtime runs the
    model, but the export, sized by those shapes, did not load."""
    from onnx import TensorProto as TP

    for vi, yshape in (([helper.make_tensor_value_info("h", TP.FLOAT, ["N", 9])], ["N", 4]), ([], ["N", 7])):
        g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                               helper.make_node("Add", ["r", "B"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TP.FLOAT, ["N", 6])], [helper.make_tensor_value_info("y", TP.FLOAT, yshape)],
                              [numpy_helper.from_array(np.arange(24, dtype=np.float32).reshape(6, 4) - 10, "W"),
                               numpy_helper.from_array(np.ones(4, np.float32), "B")], value_info=vi)
        am = onnxattr.attribution_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8))
        x = np.ones((2, 6), np.float32)
        att = onnxattr.runtime.make_session(am.SerializeToString(), "cpu")[0].run(["attribution"], {"x": x, "target": np.array([3, 0])})[0]
        w = np.arange(24, dtype=np.float32).reshape(6, 4) - 10
        np.testing.assert_array_equal(att, np.stack([w[:, 3] * ((x[0] @ w)[3] > 0), w[:, 0] * ((x[1] @ w)[0] > 0)]))


def test_metadata_keys_are_replaced_not_repeated():
    """A source whose metadata already has onnxattr.method (say, from a pipeline that strips an
    earlier export) got the key twice: onnx's full check refused the export. An earlier export's
    key this one does not write (the batch axis of a time-major model, written only where not 0)
    is dropped, not kept: the Explainer would take the image's channels for its batch."""
    src = onnx.load(MODEL)
    src.metadata_props.add(key="onnxattr.method", value="guided")
    src.metadata_props.add(key="author", value="someone")
    src.metadata_props.add(key="onnxattr.batch_axis", value="1")
    am = onnxattr.attribution_model(src, method="saliency")
    onnx.checker.check_model(am, full_check=True)
    meta = [(p.key, p.value) for p in am.metadata_props]
    assert len(meta) == len(dict(meta)) and dict(meta)["onnxattr.method"] == "saliency" and dict(meta)["author"] == "someone"
    assert "onnxattr.batch_axis" not in dict(meta)
    assert onnxattr.Explainer(src, provider="cpu")(np.load(FIX / "default_input.npy"), [0, 1, 2, 3]).shape == (4, 3, 64, 64)


def test_sparse_initializer_model():
    """Sparse initializers: ONNX shape inference does not read them, and the rank after them was
    lost ('shape inference failed'); they are typed inputs for inference now."""
    from onnx import TensorProto as TP

    idx = np.array([0, 3, 17, 40], np.int64)
    vals = np.array([1.0, -2.0, 3.0, 0.5], np.float32)
    sp = helper.make_sparse_tensor(numpy_helper.from_array(vals, "W"), numpy_helper.from_array(idx, "W_idx"), [16, 5])
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Tanh", ["h"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TP.FLOAT, ["N", 16])], [helper.make_tensor_value_info("y", TP.FLOAT, ["N", 5])],
                          sparse_initializer=[sp])
    am = onnxattr.attribution_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8))
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    att = onnxattr.runtime.make_session(am.SerializeToString(), "cpu")[0].run(["attribution"], {"x": x, "target": np.array([0, 3])})[0]
    w = np.zeros(80, np.float32)
    w[idx] = vals
    w = w.reshape(16, 5)
    want = np.stack([w[:, t] * (1 - np.tanh(x[n] @ w)[t] ** 2) for n, t in enumerate([0, 3])])
    np.testing.assert_allclose(att, want, rtol=1e-5, atol=1e-7)



# ------------------------------------------------------------------------------------------ session 6
def _skl(clf, X, **options):
    skl2onnx = pytest.importorskip("skl2onnx")
    fitted = clf.fit(X, (X[:, 0] > 0).astype(int))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return skl2onnx.to_onnx(fitted, X[:1], options={id(fitted): options} if options else None)


def test_ml_ops_are_named_before_shapes_and_types():
    """A binary LinearSVC was refused for a 'static shape' it could never have (it has rules now:
    tests/test_ml.py), a float64 random forest for 'mixed precision': the ai.onnx.ml nodes
    without a rule come first now."""
    pytest.importorskip("sklearn")
    from sklearn.ensemble import RandomForestClassifier

    X = np.random.default_rng(0).standard_normal((60, 5))
    forest = _skl(RandomForestClassifier(n_estimators=2, max_depth=2, random_state=0), X, zipmap=False)
    with pytest.raises(onnxattr.UnsupportedModelError, match=r"no gradient rule .*TreeEnsembleClassifier"):
        onnxattr.attribution_model(forest)


def test_coverage_takes_output_and_names_its_error(tmp_path):
    """coverage had no --output, so a skl2onnx model with ZipMap (which export explains with
    --output) failed it; its error line had no error type."""
    pytest.importorskip("sklearn")
    from sklearn.neural_network import MLPClassifier

    X = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = _skl(MLPClassifier(hidden_layer_sizes=(5,), max_iter=50, random_state=0), X)
    path = tmp_path / "mlp.onnx"
    onnx.save(proto, path)
    zipmap = next(n for n in proto.graph.node if n.op_type == "ZipMap")
    r = cli("coverage", path)
    assert_one_line_error(r, "UnsupportedModelError", "ZipMap")
    assert "--output" in r.output
    r = cli("coverage", path, "--output", zipmap.input[0])
    assert r.exit_code == 0, r.output


def _images(folder: Path, *names: str) -> None:
    from PIL import Image

    for name, src in zip(names, ("circle", "square", "triangle", "cross") * 2):
        Image.open(FIX / "images" / f"{src}.png").convert("RGB").save(folder / name)


def test_failed_explain_leaves_no_output_folder(tmp_path):
    """A missing labels file or image failed after the output folder was made, leaving it empty."""
    for args in (("--labels", tmp_path / "nope.txt"), (tmp_path / "missing.png",)):
        r = cli("explain", MODEL, FIX / "images", *args, "-o", tmp_path / "o", "--provider", "cpu")
        assert_one_line_error(r, "InputError")
        assert not (tmp_path / "o").exists()


def test_size_must_be_one_or_two_positive_ints(tmp_path):
    for size in ("0", "-3", "3,4,5", "4,0"):
        r = cli("explain", MODEL, FIX / "images" / "circle.png", "--size", size, "-o", tmp_path / "o", "--provider", "cpu")
        assert r.exit_code == 2 and "--size" in r.output and "internal error" not in r.output, (size, r.output)
    assert not (tmp_path / "o").exists()


def test_image_output_folder_that_is_a_file_or_has_no_parent(tmp_path):
    (tmp_path / "file.txt").write_text("hi")
    r = cli("explain", MODEL, FIX / "images" / "circle.png", "-o", tmp_path / "file.txt", "--provider", "cpu")
    assert_one_line_error(r, "OutputError", "exists and is not a folder")
    assert (tmp_path / "file.txt").read_text() == "hi"
    r = cli("explain", MODEL, FIX / "images" / "circle.png", "-o", tmp_path / "nope" / "sub", "--provider", "cpu")
    assert_one_line_error(r, "OutputError", "output folder")
    assert "does not exist" in r.output


def test_an_input_image_is_never_written_over(tmp_path):
    """a.png's heatmap a.saliency.png replaced the input image of that name (exit 0)."""
    _images(tmp_path, "a.png", "a.saliency.png")
    before = (tmp_path / "a.saliency.png").read_bytes()
    r = cli("explain", MODEL, tmp_path / "a.png", tmp_path / "a.saliency.png", "-o", tmp_path, "--provider", "cpu")
    assert_one_line_error(r, "OutputError", "is the input file")
    assert (tmp_path / "a.saliency.png").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a.saliency.png"]


def test_rerun_into_the_images_folder_skips_its_own_pictures(tmp_path):
    """A second run into the images' folder explained the first run's heatmaps as new images
    (circle.saliency.saliency.png)."""
    _images(tmp_path, "circle.png", "square.png")
    for _ in range(2):
        r = cli("explain", MODEL, tmp_path, "-o", tmp_path, "--provider", "cpu", "--grid", "--samples", "2", "--steps", "2")
        assert r.exit_code == 0, r.output
    names = sorted(p.name for p in tmp_path.iterdir())
    assert not [n for n in names if n.count(".") > 2], names
    assert "grid.png" in names and "circle.saliency.png" in names


def test_per_image_targets_follow_the_images_across_batches(tmp_path):
    """--target with one class per image failed once the images took more than one --batch-size
    chunk: the whole list was checked against each chunk."""
    out = {}
    for bs in ("8", "3"):
        r = cli("explain", MODEL, FIX / "images", "--target", "0,3,1,2", "--batch-size", bs, "-o", tmp_path / bs,
                "--provider", "cpu", "--mean", "0.5", "--std", "0.25")
        assert r.exit_code == 0, r.output
        out[bs] = {p.name: np.load(p) for p in (tmp_path / bs).glob("*.npy")}
    assert out["8"].keys() == out["3"].keys() and len(out["8"]) == 4
    for name in out["8"]:
        np.testing.assert_array_equal(out["8"][name], out["3"][name])
    r = cli("explain", MODEL, FIX / "images", "--target", "0,3,1", "-o", tmp_path / "bad", "--provider", "cpu")
    assert_one_line_error(r, "TargetError", "3 entries for 4 images")


def test_labels_keep_their_lines(tmp_path):
    """A blank line (or a form feed, a U+2028 inside a name) shifted every later name onto the
    wrong class; a BOM stayed in the first name; too few names were used silently."""
    labels = tmp_path / "labels.txt"
    labels.write_text("\ufeffcircle\n\ntriangle\ncross\n\n", encoding="utf-8")
    r = cli("explain", MODEL, FIX / "images", "-o", tmp_path / "o", "--provider", "cpu", "--labels", labels,
            "--mean", "0.5", "--std", "0.25")
    assert r.exit_code == 0, r.output
    assert "circle.png: circle (" in r.output and "square.png: class 1 (" in r.output
    assert "triangle.png: triangle (" in r.output and "cross.png: cross (" in r.output
    assert "names 3 of the 4 classes" in r.output
    labels.write_text("circ\x0ble\r\nsq\u2028uare\rtriangle\ncross", encoding="utf-8")  # breaks at CR/LF only
    r = cli("explain", MODEL, FIX / "images", "-o", tmp_path / "o1", "--provider", "cpu", "--labels", labels,
            "--mean", "0.5", "--std", "0.25")
    assert r.exit_code == 0 and "Warning" not in r.output, r.output
    assert "triangle.png: triangle (" in r.output and "cross.png: cross (" in r.output
    labels.write_text("circle\nsquare\n", encoding="utf-8")
    r = cli("explain", MODEL, FIX / "images", "-o", tmp_path / "o2", "--provider", "cpu", "--labels", labels,
            "--mean", "0.5", "--std", "0.25")
    assert r.exit_code == 0 and "Warning:" in r.output and "names 2 of the 4 classes" in r.output, r.output


# ---------------------------------------------------------------- a CLI audit's round (session 12)
def test_output_over_the_baseline_file_is_refused(tmp_path):
    """-o naming the --baseline .npy replaced it (export wrote the model there, explain the
    attribution; exit 0)."""
    x = np.load(FIX / "default_input.npy")[:2]
    np.save(tmp_path / "b.npy", np.zeros(x.shape[1:], np.float32))
    np.save(tmp_path / "x.npy", x)
    before = (tmp_path / "b.npy").read_bytes()
    ig = ["--method", "integrated-gradients", "--baseline", tmp_path / "b.npy"]
    assert_one_line_error(cli("export", MODEL, *ig, "-o", tmp_path / "b.npy"), "OutputError", "is the input file")
    r = cli("explain", MODEL, "--input", tmp_path / "x.npy", *ig, "-o", tmp_path / "b.npy", "--provider", "cpu")
    assert_one_line_error(r, "OutputError", "is the input file")
    assert (tmp_path / "b.npy").read_bytes() == before


def test_fifo_as_baseline_or_labels_is_refused(tmp_path):
    """A FIFO as --baseline or --labels blocked forever on the read (and /dev/zero as labels read
    until memory ran out)."""
    os.mkfifo(tmp_path / "b.npy")
    os.mkfifo(tmp_path / "labels.txt")
    r = cli("export", MODEL, "--method", "integrated-gradients", "--baseline", tmp_path / "b.npy", "-o", tmp_path / "o.onnx")
    assert_one_line_error(r, "InputError", "is not a regular file")
    for labels in (tmp_path / "labels.txt", "/dev/zero"):
        r = cli("explain", MODEL, FIX / "images" / "circle.png", "-o", tmp_path / "o", "--labels", labels, "--provider", "cpu")
        assert_one_line_error(r, "InputError", "not a regular file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.npy", "labels.txt"]


@pytest.mark.parametrize("args, error, words", [
    (["--method", "smoothgrad", "--samples", "99999999999999999999"], "OptionError", "must be in [1, 10000]"),
    (["--method", "integrated-gradients", "--steps", "100000"], "OptionError", "steps 100000: must be at most 2048"),
    (["--method", "smoothgrad", "--noise", "1e308"], "OptionError", "noise 1e+308: must be a number >= 0, finite in float32"),
    (["--method", "integrated-gradients", "--baseline", "1e300"], "OptionError", "baseline 1e+300: must be finite in float32"),
])
def test_option_values_beyond_what_runs_are_option_errors(tmp_path, args, error, words):
    """Reached "internal error" (OverflowError), ran for minutes (Gauss-Legendre nodes of 20000
    steps), or ran to all-NaN attributions (noise 1e308 is inf in float32), exit 0."""
    assert_one_line_error(cli("export", MODEL, *args, "-o", tmp_path / "o.onnx"), error, words)
    assert list(tmp_path.iterdir()) == []


def test_baseline_file_of_strings_or_an_archive_is_refused(tmp_path):
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    np.savez(tmp_path / "z.npz", a=np.zeros(3))
    ig = ["--method", "integrated-gradients", "-o", tmp_path / "o.onnx", "--baseline"]
    assert_one_line_error(cli("export", MODEL, *ig, tmp_path / "s.npy"), "OptionError", "a real number or array")
    assert_one_line_error(cli("export", MODEL, *ig, tmp_path / "z.npz"), "InputError", "an .npz archive")
    for bad in (dict(samples=10**20), dict(noise="abc"), dict(baseline="zero"), dict(baseline=1j)):
        with pytest.raises(onnxattr.OptionError):
            onnxattr.attribution_model(str(MODEL), "integrated-gradients", **bad)
    for bad in (dict(method="foo"), dict(tune_for="tpu")):
        with pytest.raises(onnxattr.OptionError):
            onnxattr.attribution_model(str(MODEL), **bad)


def test_input_file_that_is_not_npy_names_the_cause(tmp_path):
    (tmp_path / "t.npy").write_text("1, 2, 3\n")
    np.savez(tmp_path / "z.npz", a=np.zeros(3))
    for name, words in (("t.npy", "it is not a .npy file"), ("z.npz", "it is an .npz archive")):
        r = cli("explain", MODEL, "--input", tmp_path / name, "-o", tmp_path / "a.npy", "--provider", "cpu")
        assert_one_line_error(r, "InputError", words)
    r = cli("explain", "--input", tmp_path / "t.npy")
    assert r.exit_code == 2 and "needs a MODEL" in r.output and "bundled example" not in r.output.splitlines()[0]


def test_external_data_that_is_a_folder_is_named_so(tmp_path):
    path, data = _external(tmp_path, "e.bin")
    data.unlink()
    data.mkdir()
    assert_one_line_error(cli("export", path, "-o", tmp_path / "o.onnx"), "ModelLoadError", "is not a regular file")


@pytest.mark.parametrize("nodes, words", [
    ([helper.make_node("Add", ["x", "ghost"], ["y"], name="a")], "Add node 'a' reads 'ghost', which no node"),
    ([helper.make_node("Relu", ["x"], ["y"], name="n1"), helper.make_node("Sigmoid", ["x"], ["y"], name="n2")],
     "tensor 'y' is written by two nodes"),
    ([helper.make_node("Relu", ["h"], ["y"], name="late"), helper.make_node("Sigmoid", ["x"], ["h"], name="s")],
     "Relu node 'late' reads 'h', which a later node writes"),
])
def test_a_malformed_graph_is_refused(tmp_path, nodes, words):
    """A node reading an undefined tensor, or two writing one: export wrote a model that fails
    onnx.checker and does not load in ONNX Runtime (exit 0)."""
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.save(m, tmp_path / "m.onnx")
    assert_one_line_error(cli("export", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx"), "ModelLoadError", words)
    assert not (tmp_path / "o.onnx").exists()


def test_export_and_explain_say_which_of_several_float_inputs_they_explain(tmp_path):
    """Two float inputs: export attributed to the first without a word, and the CLI could not
    choose the other (the API's input=)."""
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "w")
    g = helper.make_graph([helper.make_node("Mul", ["a", "b"], ["p"]), helper.make_node("MatMul", ["p", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4]) for n in ("a", "b")],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), tmp_path / "two.onnx")
    r = cli("export", tmp_path / "two.onnx", "-o", tmp_path / "o.onnx")
    assert r.exit_code == 0 and "attributing to input 'a', the first of the floating-point inputs a, b" in r.output
    r = cli("export", tmp_path / "two.onnx", "-o", tmp_path / "o.onnx", "--input-name", "b")
    assert r.exit_code == 0 and "attributing" not in r.output
    a, b = np.ones((1, 4), np.float32), np.full((1, 4), 2.0, np.float32)
    sess = ort.InferenceSession(str(tmp_path / "o.onnx"), providers=["CPUExecutionProvider"])
    att = sess.run(["attribution"], {"a": a, "b": b, "target": np.array([1])})[0]
    np.testing.assert_array_equal(att, a * w.float_data[1::3] if w.float_data else a * np.arange(12).reshape(4, 3)[:, 1])
    # explain: the same announcement, and --input-name to choose (it had no such option: only the
    # first float input could be explained, the other fed with --feed)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    r = cli("explain", tmp_path / "two.onnx", "--input", tmp_path / "a.npy", "--feed", f"b={tmp_path / 'b.npy'}",
            "--target", "1", "--provider", "cpu", "-o", tmp_path / "att_a.npy")
    assert r.exit_code == 0 and "attributing to input 'a', the first of the floating-point inputs a, b" in r.output
    r = cli("explain", tmp_path / "two.onnx", "--input-name", "b", "--input", tmp_path / "b.npy", "--feed",
            f"a={tmp_path / 'a.npy'}", "--target", "1", "--provider", "cpu", "-o", tmp_path / "att_b.npy")
    assert r.exit_code == 0 and "attributing" not in r.output, r.output
    np.testing.assert_array_equal(np.load(tmp_path / "att_a.npy"), b * np.arange(12).reshape(4, 3)[:, 1])
    np.testing.assert_array_equal(np.load(tmp_path / "att_b.npy"), a * np.arange(12).reshape(4, 3)[:, 1])


def test_failed_model_rename_keeps_the_old_external_data(tmp_path, monkeypatch):
    """OUT and OUT.data existing, the final rename of OUT failing: the new OUT.data had replaced
    the old and was then deleted ("nothing was written", the old data gone)."""
    path, _ = _external(tmp_path, "e.bin")
    out = tmp_path / "out.onnx"
    out.write_bytes(b"old model")
    (tmp_path / "out.onnx.data").write_bytes(b"old data")
    import onnxattr.io as oio

    real = os.replace

    def failing(src, dst):
        if str(dst) == str(out):
            raise PermissionError(1, "Operation not permitted")
        return real(src, dst)

    monkeypatch.setattr(oio.os, "replace", failing)
    assert_one_line_error(cli("export", path, "-o", out), "OutputError", "nothing was written")
    assert out.read_bytes() == b"old model" and (tmp_path / "out.onnx.data").read_bytes() == b"old data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.bin", "e.onnx", "out.onnx", "out.onnx.data"]


def test_a_run_time_failure_is_one_line_on_stderr(tmp_path, capfd):
    """A kernel failing at run time (a Gather past the end): ONNX Runtime logged its own coloured
    error line on stderr before the one-line Error."""
    g = helper.make_graph([helper.make_node("Gather", ["x", "idx"], ["y"], name="ga", axis=1)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "D"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
                          [numpy_helper.from_array(np.array([5, 6], np.int64), "idx")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(onnxattr.ExecutionError, match="ONNX Runtime failed"):
        onnxattr.Explainer(model, provider="cpu")(np.ones((2, 4), np.float32), 0)
    assert "onnxruntime" not in capfd.readouterr().err


def test_layer_with_a_method_that_does_not_take_it_is_refused(tmp_path):
    """--layer with saliency (or any method but the Grad-CAMs) was ignored without a word; the
    grid, which runs Grad-CAM among other methods, passes it to the Grad-CAMs only."""
    layer = onnxattr.Explainer(str(MODEL), method="gradcam", provider="cpu").layer
    r = cli("export", MODEL, "-o", tmp_path / "o.onnx", "--method", "saliency", "--layer", layer)
    assert_one_line_error(r, "OptionError", "--layer applies to gradcam and guided-gradcam, not saliency")
    assert not (tmp_path / "o.onnx").exists()
    r = cli("explain", MODEL, FIX / "images" / "circle.png", "-o", tmp_path / "out", "--grid", "--layer", layer,
            "--provider", "cpu", "--method", "saliency")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out" / "grid.png").exists() and f"Grad-CAM layer: {layer}" in r.output
    # images without --grid: refused as at export (it was ignored), before anything is written
    r = cli("explain", MODEL, FIX / "images" / "circle.png", "-o", tmp_path / "out2", "--layer", layer,
            "--provider", "cpu", "--method", "saliency")
    assert_one_line_error(r, "OptionError", "--layer applies to gradcam and guided-gradcam, not saliency")
    assert not (tmp_path / "out2").exists()
    # export prints the layer it took, as explain does (README: "printed and stored in the model's metadata")
    r = cli("export", MODEL, "-o", tmp_path / "g.onnx", "--method", "gradcam")
    assert r.exit_code == 0 and f"Grad-CAM layer: {layer}" in r.output, r.output


@pytest.mark.parametrize("method", ["saliency", "smoothgrad", "integrated-gradients"])
def test_refusals_in_the_batched_copies_name_the_models_nodes(method):
    """SmoothGrad and integrated gradients differentiate a copy of the forward graph; a refusal
    there named the copy's node and tensors ('onnxattr/Slice_135', 'Slice_output_0_copy_132'),
    which the user's model does not have. It names the model's own, as saliency's does."""
    big = np.iinfo(np.int64).max
    inits = [numpy_helper.from_array(np.array(v, np.int64), n) for v, n in (([-3], "s"), ([big], "e"), ([2], "a"),
                                                                             ([2], "k"), ([2, 3], "axes"))]
    inits.append(numpy_helper.from_array(np.ones((3, 2), np.float32), "w"))
    nodes = [helper.make_node("Slice", ["x", "s", "e", "a", "k"], ["sliced"], name="strided"),
             helper.make_node("ReduceMean", ["sliced"], ["m"], axes=[2, 3], keepdims=0),
             helper.make_node("MatMul", ["m", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    with pytest.raises(onnxattr.UnsupportedModelError) as info:
        onnxattr.attribution_model(model, method=method)
    assert str(info.value).startswith("Slice node 'strided': a step of 2 along axis 2"), str(info.value)
    assert "onnxattr/" not in str(info.value) and "_copy" not in str(info.value)


def test_a_kernel_the_model_itself_lacks_is_named_as_the_models(tmp_path):
    """A float64 CNN: ONNX Runtime's CPU provider has no float64 Conv, so the model itself cannot
    run there; the error names the Conv and says it is the model's own node, not onnxattr's."""
    torch = pytest.importorskip("torch")
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                            torch.nn.Linear(4 * 6 * 6, 5)).double().eval()
    path = tmp_path / "f64.onnx"
    torch.onnx.export(m, (torch.zeros(1, 3, 8, 8, dtype=torch.float64),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"])
    conv = next(n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv")
    with pytest.raises(onnxattr.ExecutionError) as e:
        onnxattr.Explainer(str(path), provider="cpu")
    assert f"'{conv}' is a node of the model itself, not one onnxattr added" in str(e.value)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------- a CLI audit's findings (session 15)
def test_image_options_with_input_are_refused_and_labels_kept(tmp_path):
    """With --input X.npy, --labels, --size, --mean, --std, --batch-size and --grid were silently
    ignored, and `-o labels.txt --labels labels.txt` wrote the .npy over the labels file."""
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 32, 32), np.float32))
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    r = cli("explain", MODEL, "--input", tmp_path / "x.npy", "-o", tmp_path / "labels.txt", "--labels",
            tmp_path / "labels.txt", "--provider", "cpu")
    assert r.exit_code == 2 and "--labels applies to images, not to --input X.npy" in r.output, r.output
    assert (tmp_path / "labels.txt").read_text() == "a\nb\nc\n"
    r = cli("explain", MODEL, "--input", tmp_path / "x.npy", "--size", "8", "--grid", "-o", tmp_path / "a.npy")
    assert r.exit_code == 2 and "--size, --grid apply to images" in r.output, r.output
    assert not (tmp_path / "a.npy").exists()


@pytest.mark.parametrize("args, words", [
    (("--std", "nan,1,1"), "std must be finite numbers"), (("--std", "-1,1,1"), "std must be positive"),
    (("--mean", "inf"), "mean must be finite numbers"),
    (("--mean", "0.5,0.5"), "mean has 2 values but the model input has 3 channel(s); give --mean and --std with 3"),
])
def test_mean_and_std_must_be_finite_and_std_positive(tmp_path, args, words):
    """--std nan gave an all-NaN input (exit 0, a warning), --std -1 a mirrored one."""
    r = cli("explain", MODEL, FIX / "images" / "circle.png", *args, "-o", tmp_path / "o", "--provider", "cpu")
    assert_one_line_error(r, "InputError", words)
    assert not (tmp_path / "o").exists()


def test_a_failed_image_write_names_the_file_asked_for(tmp_path):
    """The error named the hidden staging file ('.circle.saliency.onnxattr-part.npy')."""
    out = tmp_path / "o"
    out.mkdir()
    (out / ".circle.saliency.onnxattr-part.npy").mkdir()  # the staging name taken: the write fails
    r = cli("explain", MODEL, FIX / "images" / "circle.png", "-o", out, "--provider", "cpu")
    assert_one_line_error(r, "OutputError", str(out / "circle.saliency.npy"))
    assert "onnxattr-part" not in r.stderr and sorted(p.name for p in out.iterdir()) == [".circle.saliency.onnxattr-part.npy"]


def test_an_opset_newer_than_onnx_knows_is_refused():
    """Opset 30 (onnx 1.23 knows 28) exported without a word, and ONNX Runtime then failed."""
    m = tiny()
    m.opset_import[0].version = onnx.defs.onnx_opset_version() + 2
    with pytest.raises(onnxattr.UnsupportedModelError, match=rf"opset {m.opset_import[0].version} is newer than this onnx"):
        onnxattr.attribution_model(m)


def test_cli_says_which_of_several_score_outputs_it_explains(tmp_path):
    """[probs, logits]: export and explain took probs without a word."""
    m = tiny(mid=[helper.make_node("Identity", ["r"], ["logits"]), helper.make_node("Softmax", ["r"], ["y"], axis=1)])
    m.graph.output.append(helper.make_tensor_value_info("logits", F, ["N", 3]))
    onnx.save(m, tmp_path / "m.onnx")
    r = cli("export", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx")
    assert r.exit_code == 0 and "explaining output 'y', the first of the rank-2 floating-point outputs y, logits" in r.output
    np.save(tmp_path / "x.npy", np.ones((2, 4), np.float32))
    r = cli("explain", tmp_path / "m.onnx", "--input", tmp_path / "x.npy", "-o", tmp_path / "a.npy", "--provider", "cpu")
    assert r.exit_code == 0 and "explaining output 'y'" in r.output
    r = cli("export", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--output", "logits")
    assert r.exit_code == 0 and "explaining output" not in r.output


def test_float16_completeness_gap_is_printed_finite(tmp_path):
    """np.round of a float16 gap overflowed: the CLI printed [nan, ...] and two numpy warnings
    while the model's own completeness_gap output was finite."""
    m = tiny()
    for vi in list(m.graph.input) + list(m.graph.output):
        vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    w = numpy_helper.to_array(m.graph.initializer[0]).astype(np.float16)
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "W"))
    onnx.save(m, tmp_path / "h.onnx")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((3, 4)).astype(np.float16))
    r = cli("explain", tmp_path / "h.onnx", "--input", tmp_path / "x.npy", "--method", "integrated-gradients",
            "--target", "0", "-o", tmp_path / "a.npy", "--provider", "cpu")
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("completeness gap"))
    assert "nan" not in line and r.stderr == "", (line, r.stderr)


def test_an_op_that_is_not_onnx_is_named_so():
    """tf2onnx leaves a TensorFlow op it cannot convert (Erfc, from Keras' exact gelu) in the
    default domain: the error said only 'no gradient rule', as for a valid op."""
    m = tiny(mid=[helper.make_node("Erfc", ["r"], ["y"], name="erfc")])
    with pytest.raises(onnxattr.UnsupportedModelError, match=r"Erfc node 'erfc' \(not an ONNX operator: the model is not "
                                                             r"valid ONNX, a converter left it unconverted\)"):
        onnxattr.attribution_model(m)


def test_an_unknown_option_keyword_is_an_option_error():
    """attribution_model(..., nosie=0.1) raised a bare TypeError from a dataclass."""
    with pytest.raises(onnxattr.OptionError, match="unknown option 'nosie' \\(options: samples, noise,"):
        onnxattr.attribution_model(MODEL, method="smoothgrad", nosie=0.1)


def test_a_wrong_declared_batch_name_on_the_scores_is_not_trusted():
    """x [N, T, 4] -> MatMul -> Reshape [-1, 3]: N T rows of scores, declared ['N', 3]. A declared
    name fills a dim inference lost only where shape trials with distinct sizes agree (a review
    found this model accepted, then failing in ONNX Runtime); refused as before."""
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Reshape", ["h", "s"], ["y"])]
    m = model(nodes, [helper.make_tensor_value_info("x", F, ["N", "T", 4])], [helper.make_tensor_value_info("y", F, ["N", 3])],
              [w, numpy_helper.from_array(np.array([-1, 3]), "s")])
    with pytest.raises(onnxattr.NotAClassifierError, match="'x' .* has no batch axis"):
        onnxattr.attribution_model(m)
