"""The `onnxattr` command: a thin click layer over the Python API."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import click
import numpy as np

from . import api
from .errors import InputError, OnnxAttrError
from .explainer import Explainer
from .io import save_array, save_model
from .recipes import ALL_METHODS, IG_METHODS
from .runtime import PROVIDERS

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
DEFAULT_MODEL = FIXTURES / "shapes_cnn.onnx"
DEFAULT_INPUT = FIXTURES / "default_input.npy"


def user_errors(fn):
    """Turn onnxattr's own errors into one-line click errors (exit status 1)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OnnxAttrError as e:
            raise click.ClickException(f"{type(e).__name__}: {e}") from None

    return wrapped


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
                     help="gradcam: the 4-D activation (default: the last one before global pooling)."),
    ]):
        fn = opt(fn)
    return fn


def _options(samples, noise, seed, steps, baseline, ig_method, layer) -> dict:
    try:
        base = float(baseline)
    except ValueError:
        try:
            base = np.load(baseline, allow_pickle=False)
        except Exception as e:
            raise InputError(f"--baseline '{baseline}' is neither a number nor a readable .npy file ({e})".splitlines()[0]) from None
    return dict(samples=samples, noise=noise, seed=seed, steps=steps, baseline=base, ig_method=ig_method, layer=layer)
relu_like_option = click.option("--relu-like", is_flag=True,
                                 help="Apply the deconvnet/guided rule to LeakyRelu, PRelu and ReLU6-style Clip too.")
output_option = click.option("--output", "output", default=None, metavar="NAME",
                             help="Class-score tensor [N, C] to explain (default: the first rank-2 float output).")


@click.group()
@click.version_option(package_name="onnxattr")
def main():
    """Turn an ONNX classifier into an ONNX model that also explains itself."""


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Where to write the new model.")
@method_option
@output_option
@click.option("--target", "target_mode", type=click.Choice(["input", "argmax"]), default="input", show_default=True,
              help="'input': add an int64 input `target` [N]; 'argmax': explain the predicted class.")
@relu_like_option
@method_options
@user_errors
def export(model, out, method, output, target_mode, relu_like, wrt, **opts):
    """Write MODEL plus an `attribution` output (and a `target` input) to OUT."""
    proto = api.attribution_model(model, method=method, output=output, target=target_mode, relu_like=relu_like,
                                  wrt=wrt, **_options(**opts))
    path = save_model(proto, out, source=model)
    click.echo(f"wrote {path} ({method}; inputs: {', '.join(i.name for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer})}; "
               f"outputs: {', '.join(o.name for o in proto.graph.output)})")


def _parse_target(text: str):
    if text == "argmax":
        return text
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"'{text}' is neither 'argmax' nor class indices like 3 or 1,0,2") from None
    return values[0] if len(values) == 1 else values


@main.command()
@click.argument("model", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=False), help="Input batch as a .npy file.")
@click.option("--target", default="argmax", show_default=True, help="Class index, comma-separated indices per row, or 'argmax'.")
@method_option
@click.option("--provider", type=click.Choice(PROVIDERS), default="auto", show_default=True,
              help="ONNX Runtime execution provider ('auto': CUDA when usable, else CPU).")
@output_option
@relu_like_option
@method_options
@click.option("-o", "--out", type=click.Path(dir_okay=False), default="attribution.npy", show_default=True,
              help="Where to write the attribution (.npy).")
@user_errors
def explain(model, input_path, target, method, provider, output, relu_like, out, wrt, **opts):
    """Run MODEL on an input batch and write the attribution. With no MODEL: the bundled example."""
    if model is None:
        model, input_path = DEFAULT_MODEL, input_path or DEFAULT_INPUT
        click.echo(f"no model given: using the bundled example {model}")
    if input_path is None:
        raise click.UsageError("--input X.npy is required when a model is given")
    try:
        x = np.load(input_path, allow_pickle=False)
    except Exception as e:
        raise InputError(f"cannot read '{input_path}' as a .npy array ({e})".splitlines()[0]) from None
    ex = Explainer(model, method=method, provider=provider, output=output, relu_like=relu_like, wrt=wrt,
                   **_options(**opts))
    click.echo(f"provider: {ex.provider}" + (f"; Grad-CAM layer: {ex.layer}" if ex.layer else ""))
    result = ex.run(x, _parse_target(target))
    if "completeness_gap" in result:
        click.echo(f"completeness gap sum(attribution) - (y(x) - y(baseline)): {np.round(result['completeness_gap'], 5).tolist()}")
    path = save_array(result[api.ATTRIBUTION], out, model, input_path)
    shown = result.get(api.TARGET, np.broadcast_to(np.asarray(_parse_target(target)), (x.shape[0],)))
    click.echo(f"wrote {method} attribution {list(result[api.ATTRIBUTION].shape)} for classes "
               f"{np.asarray(shown).tolist()} to {path}")


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@method_option
@relu_like_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@user_errors
def coverage(model, method, relu_like, as_json):
    """List MODEL's op types: count, on the differentiable path, rule, method override. Exit 1 if a rule is missing."""
    rows = api.coverage(model, method=method, relu_like=relu_like)
    missing = [r for r in rows if r["missing_nodes"]]
    if as_json:
        click.echo(json.dumps({"ops": rows, "missing": sum(len(r["missing_nodes"]) for r in missing)}, indent=2))
    else:
        click.echo(f"{'op type':<24}{'count':>6}{'on path':>9}  {'rule':<8}override")
        for r in rows:
            rule = "yes" if r["has_rule"] else "MISSING" if r["missing_nodes"] else "no"
            click.echo(f"{r['op_type']:<24}{r['count']:>6}{r['on_path']:>9}  {rule:<8}{method if r['overridden'] else ''}")
    if missing:
        names = "; ".join(f"{r['op_type']}: {', '.join(r['missing_nodes'][:5])}" for r in missing)
        raise click.ClickException(f"no gradient rule for nodes on the differentiable path: {names}")
