"""Models with external data: they load and export (the output keeps its weights in OUT.data);
a `location` that is absolute, climbs out with `..`, or resolves outside the model's folder
through a symbolic link is refused before anything is read (compare the ONNX advisories on
external-data path traversal); truncated or missing data files are one-line errors.

The > 2 GB case is marked `slow` (ONNXATTR_EXTENDED=1): it writes ~2.3 GB to the temp folder and
holds about 3 GB of memory at its peak (the weights once, plus one tensor in flight)."""

from __future__ import annotations

import builtins
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnxattr
from onnxattr import io as oio
from onnxattr.cli import main

FIX = Path(__file__).resolve().parent.parent / "fixtures"
MODEL = FIX / "shapes_cnn.onnx"
EXTENDED = bool(os.environ.get("ONNXATTR_EXTENDED"))


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def save_external(folder: Path, location="weights.bin", name="m.onnx", model=None) -> Path:
    """The bundled model saved as `name` with every initializer in `location` (relative)."""
    m = onnx.load(MODEL) if model is None else model
    (folder / location).parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(m, folder / name, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return folder / name


def inline_bytes(m: onnx.ModelProto) -> bytes:
    """A model loaded with its external data, serialized as if it had never had any (onnx.load
    leaves an explicit `data_location: DEFAULT` behind)."""
    for t in m.graph.initializer:
        t.ClearField("data_location")
    return m.SerializeToString()


def external_tensors(path: Path) -> list[TensorProto]:
    m = onnx.load(path, load_external_data=False)
    return [t for t in m.graph.initializer if t.data_location == TensorProto.EXTERNAL]


def set_location(path: Path, location: str, tensor: int | None = None) -> str:
    """Point the external tensors (or one of them) of the model file at `location`; returns the
    name of the (first) tensor changed."""
    m = onnx.load(path, load_external_data=False)
    ext = [t for t in m.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    for t in ext if tensor is None else [ext[tensor]]:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    path.write_bytes(m.SerializeToString())
    return ext[0 if tensor is None else tensor].name


@pytest.fixture
def opened(monkeypatch):
    """The files onnxattr.io opens (io.py reads external data with the builtin open)."""
    seen = []
    real = builtins.open

    def spy(file, *a, **k):
        seen.append(Path(file).resolve())
        return real(file, *a, **k)

    monkeypatch.setattr(oio, "open", spy, raising=False)
    return seen


# ------------------------------------------------------------------------------------------ loads and exports
@pytest.mark.parametrize("location", ["weights.bin", "sub/dir/weights.bin"])
def test_external_data_loads_and_exports(tmp_path, location):
    src = save_external(tmp_path, location)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert len(external_tensors(src)) > 0 and src.stat().st_size < 20_000

    out = tmp_path / "att.onnx"
    r = cli("export", src, "-o", out, "--method", "guided")
    assert r.exit_code == 0, r.output
    assert "external data" in r.output
    data = tmp_path / "att.onnx.data"
    assert data.is_file() and out.stat().st_size < 100_000  # the weights went to att.onnx.data
    ext = external_tensors(out)
    assert ext and all(dict((e.key, e.value) for e in t.external_data)["location"] == "att.onnx.data" for t in ext)
    assert {p: p.read_bytes() for p in before} == before  # the input, weights included, is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        {"m.onnx", "att.onnx", "att.onnx.data", location.split("/")[0]})  # no temporary files left

    # The same model as the self-contained export, and it runs from its folder.
    loaded = onnx.load(out)
    inline = onnxattr.attribution_model(MODEL, method="guided")
    assert inline_bytes(loaded) == inline.SerializeToString()
    onnx.checker.check_model(str(out), full_check=True)
    x = np.load(FIX / "default_input.npy")
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        ["attribution"], {"image": x, "target": np.arange(4)})[0]
    want = onnxattr.Explainer(MODEL, method="guided", provider="cpu")(x, np.arange(4))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(onnxattr.Explainer(src, method="guided", provider="cpu")(x, np.arange(4)), want)


def test_external_export_is_deterministic(tmp_path):
    src = save_external(tmp_path)
    for i in (1, 2):
        assert cli("export", src, "-o", tmp_path / f"a{i}.onnx").exit_code == 0
    assert (tmp_path / "a1.onnx").read_bytes().replace(b"a1.onnx", b"aX.onnx") == \
        (tmp_path / "a2.onnx").read_bytes().replace(b"a2.onnx", b"aX.onnx")
    assert (tmp_path / "a1.onnx.data").read_bytes() == (tmp_path / "a2.onnx.data").read_bytes()


def test_save_model_external_data_api(tmp_path):
    """`external_data=True` on a self-contained model; the ModelProto passed in is not changed."""
    att = onnxattr.attribution_model(MODEL)
    raw = att.SerializeToString()
    oio.save_model(att, tmp_path / "o.onnx", external_data=True)
    assert att.SerializeToString() == raw
    assert (tmp_path / "o.onnx.data").is_file() and inline_bytes(onnx.load(tmp_path / "o.onnx")) == raw


def test_explainer_hands_large_models_to_onnxruntime_as_files(tmp_path, monkeypatch):
    """Over protobuf's 2 GB the Explainer cannot pass bytes: it writes the attribution model with
    external data to a temporary folder and loads that (pretend every model is that large)."""
    x = np.load(FIX / "default_input.npy")
    want = onnxattr.Explainer(MODEL, provider="cpu")(x, [0, 1, 2, 3])
    monkeypatch.setattr("onnxattr.explainer.SINGLE_FILE_LIMIT", 0)
    monkeypatch.setattr(oio, "SINGLE_FILE_LIMIT", 0)
    ex = onnxattr.Explainer(save_external(tmp_path), provider="cpu")
    files = sorted(p.name for p in Path(ex._tmp.name).iterdir())
    assert files == ["model-0.onnx", "model-0.onnx.data"]
    np.testing.assert_array_equal(ex(x, [0, 1, 2, 3]), want)
    ex.run(x, "argmax")  # the second session goes there too
    assert len(list(Path(ex._tmp.name).iterdir())) == 4


def test_modelproto_with_unloaded_external_data(tmp_path):
    src = save_external(tmp_path)
    m = onnx.load(src, load_external_data=False)
    with pytest.raises(onnxattr.ModelLoadError, match="refers to external data that is not loaded"):
        onnxattr.attribution_model(m)


# ------------------------------------------------------------------------------------------ refused
def _outside(tmp_path: Path) -> Path:
    """A real file outside the model's folder, the size of the weights (a tempting target)."""
    secret = tmp_path / "secret.bin"
    (tmp_path / "model").mkdir()
    src = save_external(tmp_path / "model")
    shutil.copy(src.parent / "weights.bin", secret)
    return secret


@pytest.mark.parametrize("kind, words", [
    ("absolute", "is an absolute path; refused"),
    ("dotdot", "climbs out of the model's folder"),
    ("nested dotdot", "climbs out of the model's folder"),
    ("symlink", "outside the model's folder"),
    ("symlinked folder", "outside the model's folder"),
    ("windows absolute", "is an absolute path"),
])
def test_location_outside_the_folder_is_refused_unread(tmp_path, opened, kind, words):
    secret = _outside(tmp_path)
    folder = tmp_path / "model"
    src = folder / "m.onnx"
    location = {"absolute": str(secret), "dotdot": "../secret.bin", "nested dotdot": "a/../../secret.bin",
                "symlink": "link.bin", "symlinked folder": "out/secret.bin", "windows absolute": "C:\\secret.bin"}[kind]
    if kind == "symlink":
        (folder / "link.bin").symlink_to(secret)
    if kind == "symlinked folder":
        (folder / "out").symlink_to(tmp_path, target_is_directory=True)
    name = set_location(src, location, tensor=-1)  # the last tensor only: all are checked before any is read
    with pytest.raises(onnxattr.ModelLoadError, match=words) as e:
        onnxattr.attribution_model(src)
    assert f"tensor '{name}'" in str(e.value) and location in str(e.value)
    assert secret.resolve() not in opened and not opened  # nothing read, not even the good tensors
    r = cli("export", src, "-o", folder / "o.onnx")
    assert r.exit_code == 1 and r.stderr.startswith("Error: ModelLoadError") and len(r.stderr.splitlines()) == 1
    assert not (folder / "o.onnx").exists()


@pytest.mark.parametrize("kind, words", [
    ("missing", "does not exist"),
    ("truncated", "truncated"),
    ("wrong length", "needs"),
    ("bad offset", "not integers"),
    ("no location", "without a location"),
])
def test_broken_external_data(tmp_path, kind, words):
    src = save_external(tmp_path)
    m = onnx.load(src, load_external_data=False)
    t = [t for t in m.graph.initializer if t.data_location == TensorProto.EXTERNAL][-1]
    info = {e.key: e for e in t.external_data}
    if kind == "missing":
        info["location"].value = "nope.bin"
    elif kind == "truncated":
        data = tmp_path / "weights.bin"
        data.write_bytes(data.read_bytes()[:-8])
    elif kind == "wrong length":
        info["length"].value = str(int(info["length"].value) - 4)
    elif kind == "bad offset":
        info["offset"].value = "12abc"
    else:
        info["location"].value = ""
    src.write_bytes(m.SerializeToString())
    with pytest.raises(onnxattr.ModelLoadError, match=words):
        onnxattr.attribution_model(src)


def test_output_must_not_overwrite_the_inputs_data(tmp_path):
    src = save_external(tmp_path, location="att.onnx.data")  # the data file OUT.data would be
    before = (tmp_path / "att.onnx.data").read_bytes()
    r = cli("export", src, "-o", tmp_path / "att.onnx.data")
    assert r.exit_code == 1 and "is the input file" in r.stderr
    r = cli("export", src, "-o", tmp_path / "att.onnx")
    assert r.exit_code == 1 and "is the input file" in r.stderr and "att.onnx.data" in r.stderr
    assert (tmp_path / "att.onnx.data").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["att.onnx.data", "m.onnx"]


# ------------------------------------------------------------------------------------------ > 2 GB
def _huge_model(folder: Path, tensors: int = 3, elements: int = 190_000_000) -> Path:
    """x [1, 4] -> MatMul -> y [1, 3] plus the sums of `tensors` big float32 initializers
    (3 x 760 MB = 2.28 GB), their data a sparse file of zeros (no memory needed to make it)."""
    nbytes = elements * 4
    data = folder / "big.bin"
    with open(data, "wb") as f:
        f.truncate(tensors * nbytes)
    inits = [numpy_helper.from_array(np.eye(4, 3, dtype=np.float32), "W")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y0"])]
    for i in range(tensors):
        t = TensorProto(name=f"big{i}", data_type=TensorProto.FLOAT, dims=[elements])
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", "big.bin"), ("offset", str(i * nbytes)), ("length", str(nbytes))):
            e = t.external_data.add()
            e.key, e.value = k, v
        inits.append(t)
        nodes += [helper.make_node("ReduceSum", [f"big{i}"], [f"s{i}"], keepdims=0),
                  helper.make_node("Add", [f"y{i}", f"s{i}"], [f"y{i + 1}" if i + 1 < tensors else "y"])]
    g = helper.make_graph(nodes, "huge", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    path = folder / "huge.onnx"
    path.write_bytes(m.SerializeToString())
    return path


@pytest.mark.slow
@pytest.mark.skipif(not EXTENDED, reason="writes ~2.3 GB and needs ~3 GB of memory: ONNXATTR_EXTENDED=1")
def test_over_2gb_with_external_data(tmp_path):
    src = _huge_model(tmp_path)
    r = cli("export", src, "-o", tmp_path / "att.onnx")
    assert r.exit_code == 0, r.output
    out, data = tmp_path / "att.onnx", tmp_path / "att.onnx.data"
    assert out.stat().st_size < 1_000_000 and data.stat().st_size >= 3 * 760_000_000
    ext = {t.name: dict((e.key, e.value) for e in t.external_data) for t in external_tensors(out)}
    assert set(ext) == {"big0", "big1", "big2"} and all(int(v["length"]) == 760_000_000 for v in ext.values())
    m = onnx.load(out, load_external_data=False)
    assert [o.name for o in m.graph.output] == ["y", "attribution"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["att.onnx", "att.onnx.data", "big.bin", "huge.onnx"]
