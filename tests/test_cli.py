"""The CLI through click's CliRunner: the commands, their outputs and their one-line errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from onnxattr.cli import main

FIX = Path(__file__).resolve().parent.parent / "fixtures"
MODEL = FIX / "shapes_cnn.onnx"


def run(*args, cwd=None):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_export_then_run(tmp_path):
    out = tmp_path / "att.onnx"
    r = run("export", MODEL, "-o", out, "--method", "guided")
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and out.exists()
    m = onnx.load(out)
    onnx.checker.check_model(m, full_check=True)
    x = np.load(FIX / "default_input.npy")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits, att = sess.run(None, {"image": x, "target": np.zeros(4, np.int64)})
    assert att.shape == x.shape and logits.shape == (4, 4)


def test_sigterm_while_writing_leaves_nothing(tmp_path, monkeypatch):
    """SIGTERM (kill, timeout, docker stop) mid-write: the command unwinds like Ctrl-C, exit
    128 + 15, and the temporary file goes (the default action left a partial hidden
    .out.onnx.*.tmp of 54 MB behind a 414 MB export)."""
    import os
    import signal

    import onnxattr.io as oio

    real = oio._write_bytes

    def interrupted(path, data):
        real(path, data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(oio, "_write_bytes", interrupted)
    before = signal.getsignal(signal.SIGTERM)
    try:
        r = CliRunner().invoke(main, ["export", str(MODEL), "-o", str(tmp_path / "out.onnx")])
    finally:
        signal.signal(signal.SIGTERM, before)
    assert r.exit_code == 128 + signal.SIGTERM, r.output
    assert list(tmp_path.iterdir()) == []


def test_export_tuned_for_cuda(tmp_path):
    out = tmp_path / "att.onnx"
    r = run("export", MODEL, "-o", out, "--method", "guided", "--tune-for", "cuda")
    assert r.exit_code == 0, r.output
    m = onnx.load(out)
    assert {p.key: p.value for p in m.metadata_props}["onnxattr.tuned_for"] == "cuda"
    assert "Sign" in {n.op_type for n in m.graph.node}
    assert run("export", MODEL, "-o", tmp_path / "b.onnx", "--tune-for", "tpu").exit_code == 2


def test_export_argmax_mode(tmp_path):
    out = tmp_path / "att.onnx"
    assert run("export", MODEL, "-o", out, "--target", "argmax").exit_code == 0
    names = [i.name for i in onnx.load(out).graph.input]
    assert "target" not in names


def test_explain_default_runs_bundled_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run("explain")
    assert r.exit_code == 0, r.output
    assert "bundled example" in r.output and "provider: " in r.output and "onnxattr_out" in r.output
    for shape in ("circle", "square", "triangle", "cross"):
        assert f"{shape}.png: {shape} (" in r.output  # the trained example predicts every shape right
    out = tmp_path / "onnxattr_out"
    a = np.load(out / "circle.saliency.npy")
    assert a.shape == (3, 64, 64) and np.abs(a).sum() > 0
    assert (out / "grid.png").exists()


def test_explain_images_writes_heatmaps(tmp_path):
    from PIL import Image
    out = tmp_path / "maps"
    r = run("explain", MODEL, FIX / "images" / "circle.png", FIX / "images", "--method", "gradcam",
            "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--provider", "cpu", "-o", out)
    assert r.exit_code == 0, r.output
    assert "Grad-CAM layer:" in r.output
    pngs = sorted(out.glob("*.gradcam.png"))
    assert [p.name for p in pngs] == [f"{n}.gradcam.png" for n in ("circle", "cross", "square", "triangle")]
    for p in pngs:
        img = np.asarray(Image.open(p))
        assert img.shape == (64, 64, 3) and img.std() > 1  # the image's size, and not constant
    assert np.load(out / "circle.gradcam.npy").shape == (1, 64, 64)


def test_explain_grid(tmp_path):
    from PIL import Image
    out = tmp_path / "g"
    r = run("explain", MODEL, FIX / "images", "--grid", "--provider", "cpu", "-o", out, "--labels", FIX / "labels.txt",
            "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--samples", "4", "--steps", "8")
    assert r.exit_code == 0, r.output
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape[0] > 4 * 64 and grid.shape[1] > 8 * 64 and grid.std() > 1


def test_explain_runs_copying_methods_in_parts(tmp_path, monkeypatch):
    """SmoothGrad and integrated gradients copy each row (samples + 1, steps + 2 copies): images
    run in parts of at most report.COPIES_PER_RUN copies (8 ResNet-50 images at 32 steps took
    14 GB in one run), one method at a time. The parts join into what one run gives."""
    import onnxattr.report

    args = [MODEL, FIX / "images", "--grid", "--provider", "cpu", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25",
            "--samples", "4", "--steps", "8", "--target", "0,1,2,3"]
    runs = []
    real_run = onnxattr.report.Explainer.run

    def counted(self, x, *a, **kw):
        runs.append((self.method, len(x)))
        return real_run(self, x, *a, **kw)

    monkeypatch.setattr(onnxattr.report.Explainer, "run", counted)
    results = {}
    for budget in (64, 20, 1):
        monkeypatch.setattr(onnxattr.report, "COPIES_PER_RUN", budget)
        runs.clear()
        r = run("explain", *args, "-o", tmp_path / str(budget))
        assert r.exit_code == 0, r.output
        results[budget] = (r.output.splitlines()[1:-1], {p.name: np.load(p) for p in (tmp_path / str(budget)).glob("*.npy")})
        rows = {m: [n for mm, n in runs if mm == m] for m in ("saliency", "smoothgrad", "integrated-gradients")}
        if budget == 20:  # 5 copies a row: 4 rows a run; 10 copies: 2 rows a run
            assert rows == {"saliency": [4], "smoothgrad": [4], "integrated-gradients": [2, 2]}
        if budget == 1:
            assert rows == {"saliency": [1] * 4, "smoothgrad": [1] * 4, "integrated-gradients": [1] * 4}
    lines, arrays = results[64]
    assert len(arrays) == 4 * 7
    for budget in (20, 1):
        assert results[budget][0] == lines
        for name, a in arrays.items():
            np.testing.assert_allclose(results[budget][1][name], a, rtol=0, atol=1e-6 * np.abs(a).max(), err_msg=name)


def test_explain_images_prints_the_explained_scores_not_the_first_output(tmp_path):
    """A model whose first output is not the scores explained (--output): the printed probability
    is the explained scores' (it was the first output's: another column's value, or an IndexError
    for a class past its width)."""
    m = onnx.load(MODEL)
    logits = m.graph.output[0].name
    m.graph.node.append(onnx.helper.make_node("Slice", [logits, "s0", "s2", "s1"], ["aux"]))
    m.graph.initializer.extend(onnx.numpy_helper.from_array(np.array([v], np.int64), n)
                               for n, v in (("s0", 0), ("s2", 2), ("s1", 1)))
    m.graph.output.insert(0, onnx.helper.make_tensor_value_info("aux", onnx.TensorProto.FLOAT, ["N", 2]))
    onnx.save(m, tmp_path / "two.onnx")
    image = FIX / "images" / "cross.png"  # class 3, past the first output's two columns
    r = run("explain", tmp_path / "two.onnx", image, "--output", logits, "-o", tmp_path)
    assert r.exit_code == 0, r.output
    from onnxattr.images import load_images
    x, _ = load_images([image], (64, 64), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "NCHW")
    y = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"]).run(None, {m.graph.input[0].name: x})[0]
    p = np.exp(y - y.max()) / np.exp(y - y.max()).sum()
    assert f"class {p.argmax()} ({p.max():.3f})" in r.output, r.output


def test_explain_refuses_a_resize_past_pillows_limit(tmp_path, monkeypatch):
    """--resize is a size before the crop: one that makes an image larger than Pillow's
    decompression-bomb limit is refused before resizing (--resize 100000 held 23 GB, then the
    process was killed). The limit is lowered here so that the test runs small without the check."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    r = run("explain", MODEL, FIX / "images", "--resize", "1000", "-o", tmp_path)
    assert r.exit_code != 0 and "--resize 1000 makes a" in r.output and "give a smaller --resize" in r.output, r.output
    assert not list(tmp_path.iterdir())


def test_explain_resize_before_the_crop(tmp_path):
    """--resize N: the shorter side resized to N (bilinear), then the centre crop, as torchvision's
    Resize(N) + CenterCrop evaluation; checked against the same steps in PIL by hand."""
    from PIL import Image

    import onnxattr

    img = FIX / "images" / "circle.png"
    r = run("explain", MODEL, img, "--resize", "96", "--method", "saliency", "--provider", "cpu", "--target", "1",
            "--mean", "0.5", "--std", "0.25", "-o", tmp_path / "o")
    assert r.exit_code == 0, r.output
    with Image.open(img) as im:
        big = im.convert("RGB").resize((96, 96), Image.Resampling.BILINEAR)
    crop = np.asarray(big, np.float32)[16:80, 16:80] / np.float32(255.0)
    x = ((crop - 0.5) / 0.25).transpose(2, 0, 1)[None].astype(np.float32)
    want = onnxattr.Explainer(MODEL, provider="cpu")(x, 1)[0]
    np.testing.assert_array_equal(np.load(tmp_path / "o" / "circle.saliency.npy"), want)
    r = run("explain", MODEL, "--input", FIX / "default_input.npy", "--resize", "96", "-o", tmp_path / "a.npy")
    assert r.exit_code == 2 and "--resize applies to images" in r.output


def test_undecodable_image(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    r = run("explain", MODEL, bad, "--provider", "cpu", "-o", tmp_path / "o")
    assert r.exit_code != 0 and "cannot decode image" in r.output


def test_explain_with_input_and_target(tmp_path):
    out = tmp_path / "a.npy"
    r = run("explain", MODEL, "--input", FIX / "default_input.npy", "--target", "0,1,2,3", "--method", "deconvnet",
            "--provider", "cpu", "-o", out)
    assert r.exit_code == 0, r.output
    assert "classes [0, 1, 2, 3]" in r.output
    assert np.load(out).shape == (4, 3, 64, 64)


def test_explain_out_of_range_target_fails(tmp_path):
    r = run("explain", MODEL, "--input", FIX / "default_input.npy", "--target", "9", "--provider", "cpu",
            "-o", tmp_path / "a.npy")
    assert r.exit_code != 0
    assert "out of range" in r.output and not (tmp_path / "a.npy").exists()


def test_coverage_table_and_json():
    r = run("coverage", MODEL, "--method", "guided")
    assert r.exit_code == 0, r.output
    assert "Relu" in r.output and "guided" in r.output
    r = run("coverage", MODEL, "--json")
    data = json.loads(r.output)
    assert data["missing"] == 0 and {row["op_type"] for row in data["ops"]} >= {"Conv", "Relu", "MaxPool"}


def test_refuses_to_overwrite_input(tmp_path):
    model = tmp_path / "m.onnx"
    shutil.copy(MODEL, model)
    before = model.read_bytes()
    r = run("export", model, "-o", model)
    assert r.exit_code != 0 and "is the input file" in r.output
    assert model.read_bytes() == before


def test_missing_output_folder(tmp_path):
    r = run("export", MODEL, "-o", tmp_path / "nope" / "out.onnx")
    assert r.exit_code != 0 and "does not exist" in r.output


def test_corrupt_model_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(MODEL.read_bytes()[:1000])
    r = run("export", bad, "-o", tmp_path / "out.onnx")
    assert r.exit_code != 0
    assert r.output.startswith("Error: ModelLoadError") and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "out.onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.onnx"]


def test_coverage_accepts_every_method():
    """`--method` offers all eight; the composed ones use their base method's rules (gradcam,
    smoothgrad, ... were an internal error: coverage only knew the three base methods)."""
    for method, override in (("gradcam", ""), ("integrated-gradients", ""), ("guided-gradcam", "guided-gradcam")):
        r = run("coverage", MODEL, "--method", method)
        assert r.exit_code == 0, r.output
        relu = next(line for line in r.output.splitlines() if line.startswith("Relu"))
        assert relu.split()[-1] == (override or "yes"), relu


def test_explain_option_errors_leave_nothing(tmp_path):
    """--batch-size 0 was an internal error; --size abc left the empty output folder it made;
    an output folder that cannot be made was an untyped OSError."""
    img = FIX / "images" / "circle.png"
    r = run("explain", MODEL, img, "--batch-size", "0", "--provider", "cpu", "-o", tmp_path / "a")
    assert r.exit_code == 2 and "--batch-size" in r.output and not (tmp_path / "a").exists()
    r = run("explain", MODEL, img, "--size", "abc", "--provider", "cpu", "-o", tmp_path / "b")
    assert r.exit_code == 2 and "--size" in r.output and not (tmp_path / "b").exists()
    r = run("explain", MODEL, img, "--provider", "cpu", "-o", "/proc/onnxattr-maps")
    assert r.exit_code == 1 and "OutputError: could not create the output folder '/proc/onnxattr-maps'" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_no_arguments_without_the_bundled_example_is_a_usage_error(tmp_path, monkeypatch):
    """An installed wheel has no fixtures/: the no-argument run said "cannot read labels file
    .../fixtures/labels.txt"; now a usage error saying where the example lives."""
    import onnxattr.cli

    monkeypatch.setattr(onnxattr.cli, "DEFAULT_MODEL", tmp_path / "fixtures" / "shapes_cnn.onnx")
    monkeypatch.setattr(onnxattr.cli, "FIXTURES", tmp_path / "fixtures")
    monkeypatch.chdir(tmp_path)
    r = run("explain")
    assert r.exit_code == 2 and "the bundled example is not here" in r.output and "pip install -e ." in r.output
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_folder_fails_before_any_work():
    """An existing folder it cannot write into (here procfs's /proc/sys, read-only even for root,
    which bypasses permission bits) is named before the model is loaded or run."""
    if os.access("/proc/sys", os.W_OK):
        pytest.skip("/proc/sys is writable on this machine")
    r = run("explain", MODEL, FIX / "images" / "circle.png", "--provider", "cpu", "-o", "/proc/sys")
    assert r.exit_code == 1, r.output
    assert r.output.strip() == ("Error: OutputError: cannot write into the output folder '/proc/sys' (permission denied "
                                "or a read-only file system); nothing was written")


def test_gradcam_refuses_wrt(tmp_path):
    """--wrt was ignored by gradcam, and guided-gradcam declared the wrt tensor's shape for an
    attribution at the input (the export failed onnx's full check)."""
    for method in ("gradcam", "guided-gradcam"):
        r = run("export", MODEL, "-o", tmp_path / "g.onnx", "--method", method, "--wrt", "x")
        assert r.exit_code == 1 and f"OptionError: --wrt does not apply to {method}" in r.output
        assert not (tmp_path / "g.onnx").exists()


def test_per_row_baseline_of_another_batch_is_an_option_error(tmp_path):
    """A baseline [2, ...] for a batch of 4: ONNX Runtime failed inside (its log lines, then
    ExecutionError); now one OptionError before running."""
    x = np.load(FIX / "default_input.npy")
    np.save(tmp_path / "base.npy", x[:2] * 0)
    r = run("explain", MODEL, "--input", FIX / "default_input.npy", "--method", "integrated-gradients", "--steps", "4",
            "--baseline", tmp_path / "base.npy", "--provider", "cpu", "-o", tmp_path / "a.npy")
    assert r.exit_code == 1 and "OptionError: baseline of shape [2, 3, 64, 64] does not broadcast against the input [4, 3, 64, 64]" in r.output
    assert not (tmp_path / "a.npy").exists()


def test_explain_images_wrt_a_tensor_with_its_batch_second(tmp_path):
    """Images attributed (--wrt) at a sequence-first tensor [L, N, K] (a CNN's feature map as
    L = h * w tokens, as nn.MultiheadAttention(batch_first=False) takes them): each image's
    <name>.<method>.npy is its column [:, n] of the attribution, [L, K]. It was row n, [N, K]:
    token n's attribution for all images."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxattr import Explainer
    from onnxattr.images import load_images

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "W"], ["f"]), helper.make_node("Reshape", ["f", "s"], ["r"]),
             helper.make_node("Transpose", ["r"], ["tokens"], perm=[2, 0, 1]),  # [36, N, 4]
             helper.make_node("Relu", ["tokens"], ["a"]), helper.make_node("ReduceMean", ["a"], ["m"], axes=[0], keepdims=0),
             helper.make_node("MatMul", ["m", "V"], ["y"])]
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(np.array([0, 4, -1], np.int64), "s"),
             numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "V")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), tmp_path / "m.onnx")
    out = tmp_path / "maps"
    r = run("explain", tmp_path / "m.onnx", FIX / "images", "--wrt", "tokens", "--target", "1,0,2,1", "--size", "8",
            "--provider", "cpu", "-o", out)
    assert r.exit_code == 0, r.output
    paths = sorted((FIX / "images").glob("*.png"))
    x, _ = load_images(paths, (8, 8), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "NCHW")
    ex = Explainer(tmp_path / "m.onnx", wrt="tokens", provider="cpu")
    att = ex(x, [1, 0, 2, 1])
    assert ex.attribution_batch_axis == 1 and att.shape == (36, 4, 4)
    for n, p in enumerate(paths):
        np.testing.assert_array_equal(np.load(out / f"{p.stem}.saliency.npy"), att[:, n])
    assert np.abs(att[:, 0] - att[:, 3]).max() > 1e-3 and np.abs(att[:, 0] - att[0, 0]).max() > 1e-3  # columns, tokens differ
