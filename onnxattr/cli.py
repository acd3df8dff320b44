"""The `onnxattr` command: a thin click layer over the Python API."""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import warnings
from pathlib import Path

import click
import numpy as np

from . import api
from .api import _one_line
from .errors import AttributionWarning, InputError, OnnxAttrError, OutputError, UnsupportedModelError
from .explainer import Explainer
from .graph import TUNE_FOR
from .protos import FLOAT_TYPES
from .io import check_output_path, external_data_files, save_array, save_model
from .images import expand_paths
from .recipes import ALL_METHODS, IG_METHODS
from .report import GRID_METHODS, explain_images, read_labels
from .runtime import PROVIDERS

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
DEFAULT_MODEL = FIXTURES / "shapes_cnn.onnx"
DEFAULT_INPUT = FIXTURES / "default_input.npy"


def user_errors(fn):
    """Every failure as one line on stderr and exit status 1, never a traceback:

    * onnxattr's own errors: `Error: ModelLoadError: ...`;
    * failures of ONNX Runtime or ONNX, out of memory, and OS errors: `Error: <what>: ...`;
    * anything else is a bug in onnxattr: `Error: internal error ...`, unless ONNXATTR_DEBUG is
      set or pytest is running (PYTEST_CURRENT_TEST), where the exception propagates, so that
      tests never hide a programming error.
    """

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except OnnxAttrError as e:
            raise click.ClickException(_one_line(f"{type(e).__name__}: {e}", limit=2000)) from None
        except MemoryError:
            raise click.ClickException("out of memory (try a smaller --batch-size or batch)") from None
        except OSError as e:
            where = f" '{e.filename}'" if getattr(e, "filename", None) else ""
            raise click.ClickException(_one_line(f"{type(e).__name__}{where}: {e.strerror or e}")) from None
        except Exception as e:
            module = type(e).__module__
            if module.startswith("onnxruntime"):
                raise click.ClickException(_one_line(f"ONNX Runtime failed: {e}")) from None
            if module.split(".")[0] == "onnx":
                raise click.ClickException(_one_line(f"ONNX failed: {type(e).__name__}: {e}")) from None
            if os.environ.get("ONNXATTR_DEBUG") or "PYTEST_CURRENT_TEST" in os.environ:
                raise
            raise click.ClickException(_one_line(
                f"internal error, please report it (ONNXATTR_DEBUG=1 shows the traceback): {type(e).__name__}: {e}"
            )) from None

    return wrapped


def _warn_nonfinite(caught) -> None:
    """Echo AttributionWarnings (NaN/Inf, empty Grad-CAM maps) as one `Warning:` line each on
    stderr (others as Python would)."""
    for w in caught:
        if issubclass(w.category, AttributionWarning):
            click.echo(f"Warning: {w.message}", err=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


method_option = click.option("--method", type=click.Choice(ALL_METHODS), default="saliency", show_default=True,
                             help="Attribution method.")


def method_options(fn):
    """The options of the composed methods and --wrt, shared by export and explain."""
    for opt in reversed([
        click.option("--wrt", default=None, metavar="NAME", help="Attribute to this intermediate tensor instead of the input."),
        click.option("--samples", default=16, show_default=True, help="smoothgrad: number of noisy copies."),
        click.option("--noise", default=0.15, show_default=True, help="smoothgrad: noise std as a fraction of the input's range."),
        click.option("--seed", default=0, show_default=True, help="smoothgrad: noise seed (the noise is deterministic)."),
        click.option("--steps", default=32, show_default=True, help="integrated-gradients: points on the path."),
        click.option("--baseline", default="0", show_default=True, metavar="VALUE|X.npy",
                     help="integrated-gradients: the path's start, a number or a .npy array."),
        click.option("--ig-method", type=click.Choice(IG_METHODS), default="gausslegendre", show_default=True,
                     help="integrated-gradients: quadrature rule (as Captum's)."),
        click.option("--layer", default=None, metavar="NAME",
                     help="gradcam: the activation [N, K, ...] (default: the last one before global pooling)."),
    ]):
        fn = opt(fn)
    return fn


def _options(samples, noise, seed, steps, baseline, ig_method, layer) -> dict:
    try:
        base = float(baseline)
    except ValueError:
        path = Path(baseline)
        if path.exists() and not path.is_file():  # a FIFO or device: reading it could block forever
            raise InputError(f"--baseline '{baseline}' is not a regular file") from None
        try:
            base = np.load(baseline, allow_pickle=False)
        except Exception as e:
            raise InputError(f"--baseline '{baseline}' is neither a number nor a readable .npy file ({e})".splitlines()[0]) from None
        if not isinstance(base, np.ndarray):  # an .npz archive
            raise InputError(f"--baseline '{baseline}' is an .npz archive; give one array in a .npy file") from None
    return dict(samples=samples, noise=noise, seed=seed, steps=steps, baseline=base, ig_method=ig_method, layer=layer)


def _baseline_file(opts: dict) -> str | None:
    """The --baseline file, if it is one (an input that -o must not overwrite)."""
    try:
        float(opts.get("baseline", 0))
        return None
    except ValueError:
        return opts["baseline"]
relu_like_option = click.option("--relu-like", is_flag=True,
                                 help="Apply the deconvnet/guided rule to LeakyRelu, PRelu and ReLU6-style Clip too.")
output_option = click.option("--output", "output", default=None, metavar="NAME",
                             help="Class-score tensor [N, C] to explain (default: the first rank-2 float output).")
input_name_option = click.option("--input-name", default=None, metavar="NAME",
                                 help="The floating-point input to attribute to (default: the model's first).")


@click.group()
@click.version_option(package_name="onnxattr")
def main():
    """Turn an ONNX classifier into an ONNX model that also explains itself."""
    if threading.current_thread() is threading.main_thread():
        # `kill` / `timeout` / `docker stop`: unwind like Ctrl-C, so no temporary file or partly
        # written output stays behind (the default action ends the process on the spot)
        signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum, frame):
    raise SystemExit(128 + signum)


@main.command()
@click.argument("model", type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(), help="Where to write the new model.")
@method_option
@output_option
@click.option("--target", "target_mode", type=click.Choice(["input", "argmax"]), default="input", show_default=True,
              help="'input': add an int64 input `target` [N]; 'argmax': explain the predicted class.")
@relu_like_option
@click.option("--tune-for", type=click.Choice(TUNE_FOR), default="cpu", show_default=True,
              help="The ONNX Runtime provider the graph's formulation is tuned for (both run anywhere, same results).")
@input_name_option
@method_options
@user_errors
def export(model, out, method, output, target_mode, relu_like, tune_for, input_name, wrt, **opts):
    """Write MODEL plus an `attribution` output (and a `target` input) to OUT."""
    proto = api.attribution_model(model, method=method, output=output, target=target_mode, relu_like=relu_like,
                                  input=input_name, wrt=wrt, tune_for=tune_for, **_options(**opts))
    path = save_model(proto, out, source=model, inputs=[_baseline_file(opts)])
    if output is None:
        _announce_scores(proto)
    _announce_input(proto, input_name)
    layer = next((p.value for p in proto.metadata_props if p.key == "onnxattr.layer"), None)
    if layer is not None:
        click.echo(f"Grad-CAM layer: {layer}")
    data = path.with_name(path.name + ".data")
    if external_data_files(path):
        click.echo(f"weights in external data: {data}")
    click.echo(f"wrote {path} ({method}; inputs: {', '.join(i.name for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer})}; "
               f"outputs: {', '.join(o.name for o in proto.graph.output)})")


def _announce_input(proto, input_name: str | None) -> None:
    """Say which input is explained when the model has several floating-point ones."""
    floats = api.float_inputs(proto)
    if len(floats) > 1 and input_name is None:
        click.echo(f"attributing to input '{floats[0]}', the first of the floating-point inputs {', '.join(floats)} "
                   "(choose with --input-name)")


def _announce_scores(proto) -> None:
    """Say which output is explained when the model has several that could be the scores."""
    scores = [o.name for o in proto.graph.output if o.name not in api.ADDED_OUTPUTS and o.type.tensor_type.elem_type
              in FLOAT_TYPES and len(o.type.tensor_type.shape.dim) == 2]
    if len(scores) > 1:
        chosen = next(p.value for p in proto.metadata_props if p.key == "onnxattr.scores")
        click.echo(f"explaining output '{chosen}', the first of the rank-2 floating-point outputs {', '.join(scores)} "
                   "(choose with --output)")


def _parse_target(text: str):
    if text == "argmax":
        return text
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"'{text}' is neither 'argmax' nor class indices like 3 or 1,0,2") from None
    return values[0] if len(values) == 1 else values


def _written_here(outdir: Path, path: Path) -> bool:
    """Whether an image found in a folder is one of explain's own pictures in the output folder
    (<image>.<method>.png, grid.png): a rerun into the images' folder does not explain them."""
    if path.suffix != ".png" or not outdir.is_dir() or not path.parent.resolve() == outdir.resolve():
        return False
    return path.name == "grid.png" or path.stem.rsplit(".", 1)[-1] in ALL_METHODS


def _size(text: str) -> tuple[int, int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 1:
        raise click.BadParameter(f"'{text}' is not H or H,W (positive integers)", param_hint="--size")
    return (values * 2)[:2]


def _floats(text: str, name: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a comma-separated list of numbers", param_hint=name) from None


@main.command()
@click.argument("model", required=False, type=click.Path())
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--input", "input_path", type=click.Path(), help="Input batch as a .npy file.")
@click.option("--target", default="argmax", show_default=True, help="Class index, comma-separated indices per row, or 'argmax'.")
@method_option
@click.option("--provider", type=click.Choice(PROVIDERS), default="auto", show_default=True,
              help="ONNX Runtime execution provider ('auto': CUDA when usable, else CPU).")
@output_option
@relu_like_option
@method_options
@click.option("-o", "--out", type=click.Path(), default=None,
              help="With --input: the .npy to write (default attribution.npy). With images: the output folder "
                   "(default onnxattr_out).")
@click.option("--size", default=None, metavar="H[,W]", help="Images: crop size (default: the model's input size).")
@click.option("--resize", default=None, type=click.IntRange(min=1), metavar="N",
              help="Images: shorter side before the centre crop (default: just enough to cover it; torchvision's "
                   "ImageNet evaluation: --resize 256 with a 224 crop).")
@click.option("--mean", default="0.485,0.456,0.406", show_default=True, help="Images: per-channel mean.")
@click.option("--std", default="0.229,0.224,0.225", show_default=True, help="Images: per-channel std.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1), help="Images: batch size.")
@click.option("--labels", type=click.Path(), help="Images: class names, one per line.")
@click.option("--grid", is_flag=True, help="Images: also write grid.png comparing several methods per image.")
@click.option("--feed", multiple=True, metavar="NAME=FILE.npy",
              help="With --input: another input of the model (a padding mask), repeatable.")
@input_name_option
@user_errors
def explain(model, images, input_path, target, method, provider, output, relu_like, out, wrt, size, resize, mean, std,
            batch_size, labels, grid, feed, input_name, **opts):
    """Explain MODEL on images (files or folders) or on a .npy batch (--input).

    With no arguments: the bundled example model and images (fixtures/), heatmaps and a grid
    written to onnxattr_out/.
    """
    kw = dict(provider=provider, output=output, input=input_name, relu_like=relu_like, wrt=wrt, **_options(**opts))
    if model is None and input_path is not None:
        raise click.UsageError("--input X.npy needs a MODEL (the bundled example runs on its own images)")
    if model is None:
        if not DEFAULT_MODEL.is_file():  # an installed wheel: fixtures/ stays in the source tree
            raise click.UsageError(f"no MODEL given, and the bundled example is not here ({FIXTURES}/ ships with a "
                                   "checkout of the source, installed with `pip install -e .`)")
        click.echo(f"no model given: using the bundled example {DEFAULT_MODEL} and {FIXTURES / 'images'}")
        model, images, grid = DEFAULT_MODEL, (str(FIXTURES / "images"),), True
        mean, std, labels = "0.5,0.5,0.5", "0.25,0.25,0.25", labels or FIXTURES / "labels.txt"
    if images and input_path:
        raise click.UsageError("give images or --input X.npy, not both")
    if feed and not input_path:
        raise click.UsageError("--feed goes with --input X.npy")
    feeds = {}
    for item in feed:
        name, eq, path = item.partition("=")
        if not eq or not name or not path:
            raise click.BadParameter(f"'{item}' is not NAME=FILE.npy", param_hint="--feed")
        if name in feeds:
            raise click.BadParameter(f"input '{name}' is fed twice", param_hint="--feed")
        feeds[name] = path
    if images:
        hw = None if size is None else _size(size)
        outdir = Path(out or "onnxattr_out")
        names = read_labels(labels) if labels else None  # inputs first: a failure here makes no folder
        paths = expand_paths(images, skip=functools.partial(_written_here, outdir))
        created = outdir.parent.is_dir() and not outdir.exists()
        if created:
            try:
                outdir.mkdir()
            except OSError as e:
                raise OutputError(f"could not create the output folder '{outdir}': {e.strerror}; nothing was written") from None
        methods = [method] + [m for m in GRID_METHODS if m != method] if grid else [method]
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", AttributionWarning)
                result = explain_images(model, paths, methods, outdir, target=_parse_target(target),
                                        size=hw, resize=resize, mean=_floats(mean, "--mean"), std=_floats(std, "--std"),
                                        batch_size=batch_size, labels=names,
                                        grid=grid, progress=lambda chunks: click.progressbar(
                                            chunks, label="explaining", show_pos=True), **kw)
        except BaseException:  # nothing written: not even the folder made for it
            if created and not any(outdir.iterdir()):
                outdir.rmdir()
            raise
        _warn_nonfinite(caught)
        named = sum(1 for name in (names or [])[:result["classes"]] if name)
        if labels and named < result["classes"]:
            click.echo(f"Warning: '{labels}' names {named} of the {result['classes']} classes; the others are "
                       "shown as 'class k'", err=True)
        click.echo(f"provider: {result['provider']}" + (f"; Grad-CAM layer: {result['layer']}" if result["layer"] else ""))
        for path, (name, score) in zip(paths, result["predictions"]):
            click.echo(f"{path.name}: {name} ({score:.3f})")
        click.echo(f"wrote {len(result['files'])} files to {outdir}/" + (" (grid.png compares methods)" if grid else ""))
        return
    if input_path is None:
        raise click.UsageError("give images, or --input X.npy")
    ctx = click.get_current_context()
    given = [f"--{p.replace('_', '-')}" for p in ("size", "resize", "mean", "std", "batch_size", "labels", "grid")
             if ctx.get_parameter_source(p) not in (None, click.core.ParameterSource.DEFAULT)]
    if given:
        raise click.UsageError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to images, not to --input X.npy")
    data = external_data_files(model) if model is not None else []
    data.append(_baseline_file(opts))
    out = check_output_path(out or "attribution.npy", model, input_path, *data, *feeds.values())
    x = _load_npy(input_path)
    others = {name: _load_npy(path) for name, path in feeds.items()}
    ex = Explainer(model, method=method, **kw)
    if output is None:
        _announce_scores(ex.model)
    _announce_input(ex.model, input_name)
    click.echo(f"provider: {ex.provider}" + (f"; Grad-CAM layer: {ex.layer}" if ex.layer else ""))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AttributionWarning)
        result = ex.run(x, _parse_target(target), inputs=others)
    _warn_nonfinite(caught)
    if "completeness_gap" in result:
        click.echo(f"completeness gap sum(attribution) - (y(x) - y(baseline)): {np.round(np.asarray(result['completeness_gap'], np.float64), 5).tolist()}")
    path = save_array(result[api.ATTRIBUTION], out, model, input_path, *data)
    shown = result.get(api.TARGET, np.broadcast_to(np.asarray(_parse_target(target)), (x.shape[ex.batch_axis],)))
    click.echo(f"wrote {method} attribution {list(result[api.ATTRIBUTION].shape)} for classes "
               f"{np.asarray(shown).tolist()} to {path}")


def _load_npy(path: str) -> np.ndarray:
    """One array from a .npy file (never a pickle), or a one-line InputError."""
    if not Path(path).is_file():
        raise InputError(f"cannot read '{path}': " + ("not a regular file" if Path(path).exists() else "no such file"))
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":
        what = "an .npz archive" if magic[:4] == b"PK\x03\x04" else "not a .npy file"
        raise InputError(f"cannot read '{path}' as a .npy array: it is {what}; save one array with numpy.save")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:
        raise InputError(_one_line(f"cannot read '{path}' as a .npy array ({e})")) from None


@main.command()
@click.argument("model", type=click.Path())
@method_option
@relu_like_option
@output_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@user_errors
def coverage(model, method, relu_like, output, as_json):
    """List MODEL's op types: count, on the differentiable path, rule, method override. Exit 1 if a rule is missing."""
    rows = api.coverage(model, method=method, relu_like=relu_like, output=output)
    missing = [r for r in rows if r["missing_nodes"]]
    if as_json:
        click.echo(json.dumps({"ops": rows, "missing": sum(len(r["missing_nodes"]) for r in missing)}, indent=2))
    else:
        click.echo(f"{'op type':<24}{'count':>6}{'on path':>9}  {'rule':<8}override")
        for r in rows:
            rule = "function" if r["function"] else "yes" if r["has_rule"] else "MISSING" if r["missing_nodes"] else "no"
            click.echo(f"{r['op_type']:<24}{r['count']:>6}{r['on_path']:>9}  {rule:<8}{method if r['overridden'] else ''}")
    if missing:
        names = "; ".join(f"{r['op_type']}: {', '.join(r['missing_nodes'][:5])}" for r in missing)
        hint = ""
        if any(r["op_type"] == "ZipMap" for r in missing):  # (on the path to all outputs, or to ZipMap's)
            hint = " (ZipMap turns the probabilities into maps: pass --output with the probability tensor)"
        raise UnsupportedModelError(f"no gradient rule for nodes on the differentiable path: {names}{hint}")
