"""Images in, pictures out: batches of images through one or more Explainers, then per-image
attribution arrays, heatmap overlays and an optional side-by-side grid."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from . import viz
from .api import ATTRIBUTION, TARGET
from .errors import InputError, OnnxAttrError
from .explainer import Explainer
from .images import input_geometry, load_images
from .io import save_array

DISPLAY = {"deconvnet": "signed", "guided": "signed", "guided-gradcam": "signed", "gradcam": "cam"}
GRID_METHODS = ("saliency", "deconvnet", "guided", "smoothgrad", "integrated-gradients", "gradcam", "guided-gradcam")


def display_kind(method: str) -> str:
    """How a method's attribution is shown: |.| max over channels, a signed map, or a CAM."""
    return DISPLAY.get(method, "gradient")


def read_labels(path) -> list[str]:
    try:
        return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as e:
        raise InputError(f"cannot read labels file '{path}': {e.strerror}") from None


def _probabilities(scores: np.ndarray) -> np.ndarray:
    if scores.min() >= 0 and np.allclose(scores.sum(1), 1, atol=1e-3):
        return scores
    e = np.exp(scores - scores.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def explain_images(model, paths: list[Path], methods: list[str], outdir: Path, target="argmax",
                   size=None, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), batch_size: int = 8,
                   labels: list[str] | None = None, grid: bool = False, progress=None, **explainer_kw) -> dict:
    """Explain every image with every method; write OUTDIR/<image>.<method>.npy and .png (and
    OUTDIR/grid.png with `grid`). Returns {"files": [...], "predictions": [(label, score), ...]}."""
    if not outdir.is_dir():
        raise OnnxAttrError(f"output folder '{outdir}' does not exist")
    explainers = {m: Explainer(model, method=m, **explainer_kw) for m in methods}
    first = next(iter(explainers.values()))
    shape = first._input_meta.shape
    layout, channels, (h, w) = input_geometry(shape)
    size = size or (h, w)
    if size[0] is None or size[1] is None:
        raise InputError(f"the model's input {shape} has no fixed size: give --size")
    files, shown, maps, predictions = [], [], {m: [] for m in methods}, []
    chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    try:
        with (progress(chunks) if progress else contextlib.nullcontext(chunks)) as steps:
            for chunk in steps:
                _explain_chunk(chunk, explainers, methods, outdir, target, size, mean, std, layout, channels, labels,
                               files, shown, maps, predictions)
        if grid:
            titles = [f"{name} ({score:.2f})" for name, score in predictions]
            picture = viz.grid(shown, [(m, maps[m]) for m in methods], titles)
            files.append(viz.save_png(picture, outdir / "grid.png"))
    except BaseException:  # a later image failed: the command writes all of its files or none
        for f in files:
            Path(f).unlink(missing_ok=True)
        raise
    return {"files": files, "predictions": predictions, "layer": first.layer, "provider": first.provider}


def _explain_chunk(chunk, explainers, methods, outdir, target, size, mean, std, layout, channels, labels,
                   files, shown, maps, predictions):
    x, images = load_images(chunk, size, mean, std, layout, channels=channels or 3)
    shown.extend(images)
    for m, ex in explainers.items():
        out = ex.run(x, target)
        if m == methods[0]:
            t = out.get(TARGET, np.broadcast_to(np.asarray(target), (len(chunk),)))
            probs = _probabilities(out[next(o.name for o in ex.model.graph.output)])
            for row, k in enumerate(np.asarray(t)):
                name = labels[k] if labels and k < len(labels) else f"class {k}"
                predictions.append((name, float(probs[row, k])))
        for row, path in enumerate(chunk):
            att = out[ATTRIBUTION][row]
            files.append(save_array(att, outdir / f"{path.stem}.{m}.npy"))
            kind = display_kind(m)
            maps[m].append(viz.overlay(images[row], viz.to_map(att, kind, layout), kind))
            files.append(viz.save_png(maps[m][-1], outdir / f"{path.stem}.{m}.png"))
