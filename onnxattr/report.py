"""Images in, pictures out: batches of images through one or more Explainers, then per-image
attribution arrays, heatmap overlays and an optional side-by-side grid."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import numpy as np

from . import viz
from .api import ATTRIBUTION, TARGET
from .errors import InputError, OutputError, TargetError
from .explainer import Explainer
from .recipes import CAM_METHODS
from .images import input_geometry, load_images
from .io import check_output_path, external_data_files, save_array

DISPLAY = {"deconvnet": "signed", "guided": "signed", "guided-gradcam": "signed", "gradcam": "cam"}
COPIES_PER_RUN = 64  # forward copies of the model per ONNX Runtime run, at most (one row may exceed it)
GRID_METHODS = ("saliency", "deconvnet", "guided", "smoothgrad", "integrated-gradients", "gradcam", "guided-gradcam")


def display_kind(method: str) -> str:
    """How a method's attribution is shown: |.| max over channels, a signed map, or a CAM."""
    return DISPLAY.get(method, "gradient")


def read_labels(path) -> list[str]:
    """Class names, line k for class k: a blank line keeps its place (shown as 'class k'), a
    byte-order mark is dropped, blank lines at the end are not classes."""
    if Path(path).exists() and not Path(path).is_file():  # a FIFO or device: reading it could block forever
        raise InputError(f"cannot read labels file '{path}': not a regular file")
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
        names = [line.strip() for line in re.split(r"\r\n|\r|\n", text)]  # not at \f, \v, U+2028 ...
        while names and not names[-1]:
            names.pop()
        return names
    except OSError as e:
        raise InputError(f"cannot read labels file '{path}': {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"cannot read labels file '{path}': not UTF-8 text ({e.reason} at byte {e.start})") from None


def _probabilities(scores: np.ndarray) -> np.ndarray:
    if scores.min() >= 0 and np.allclose(scores.sum(1), 1, atol=1e-3):
        return scores
    e = np.exp(scores - scores.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def explain_images(model, paths: list[Path], methods: list[str], outdir: Path, target="argmax",
                   size=None, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), batch_size: int = 8, resize=None,
                   labels: list[str] | None = None, grid: bool = False, progress=None, **explainer_kw) -> dict:
    """Explain every image with every method; write OUTDIR/<image>.<method>.npy and .png (and
    OUTDIR/grid.png with `grid`). Returns {"files": [...], "predictions": [(label, score), ...],
    "classes": the number of class scores, ...}. `target` is "argmax", one class, or one per image."""
    if not outdir.is_dir():
        raise OutputError(f"output '{outdir}' exists and is not a folder" if outdir.exists()
                          else f"output folder '{outdir}' does not exist")
    if not os.access(outdir, os.W_OK | os.X_OK):  # (before any work; a full disk still shows only when writing)
        raise OutputError(f"cannot write into the output folder '{outdir}' (permission denied or a read-only file "
                          "system); nothing was written")
    targets = np.asarray(target) if not isinstance(target, str) else None
    if targets is not None and targets.ndim == 1 and len(targets) != len(paths):
        raise TargetError(f"target has {len(targets)} entries for {len(paths)} images (one class for all, or one per image)")
    cams = any(m in CAM_METHODS for m in methods)  # (--layer: the Grad-CAMs'; with none of them, refused as at export)

    def explainer(m: str) -> Explainer:
        return Explainer(model, method=m, **{k: v for k, v in explainer_kw.items()
                                             if k != "layer" or m in CAM_METHODS or not cams})

    first = explainer(methods[0])
    if first.other_inputs:
        raise InputError(f"the model has inputs besides '{first.input_name}' ({', '.join(first.other_inputs)}), which "
                         "images cannot give: explain a .npy batch with --input and --feed NAME=FILE.npy")
    shape = first._input_meta.shape
    if first.batch_axis:  # the images are stacked along axis 0
        raise InputError(f"the model's input {shape} has its batch on axis {first.batch_axis}: images need it first")
    layout, channels, (h, w) = input_geometry(shape)
    size = size or (h, w)
    if size[0] is None or size[1] is None:
        raise InputError(f"the model's input {shape} has no fixed size: give --size")
    _check_names(paths, methods, outdir, grid, model)
    files, shown, maps, predictions = [], [], {m: [] for m in methods}, []
    chunks = [(paths[i:i + batch_size], target if targets is None or targets.ndim == 0 else targets[i:i + batch_size].tolist())
              for i in range(0, len(paths), batch_size)]
    # one method at a time over all images, so that one Explainer's sessions live at a time (all
    # seven of the grid's at once held 5.9 GB for ResNet-50 before any run); each chunk's images
    # are read once, and kept until the last method has run on them
    steps = [(m, k) for m in methods for k in range(len(chunks))]
    provider, layers, ex, loaded = first.provider, {}, first, {}
    del first
    try:  # every file is staged under a hidden name and renamed into place once all are written
        with (progress(steps) if progress else contextlib.nullcontext(steps)) as steps:
            for m, k in steps:
                if ex.method != m:
                    ex = None  # (the previous method's sessions go first)
                    ex = explainer(m)
                layers[m] = ex.layer
                chunk, chunk_target = chunks[k]
                batch = loaded.pop(k, None) or load_images(chunk, size, mean, std, layout, resize=resize,
                                                           channels=channels or 3)
                if m != methods[-1]:
                    loaded[k] = batch
                classes = _explain_chunk(chunk, *batch, ex, m == methods[0], outdir, chunk_target, layout, labels,
                                         files, shown, maps, predictions)
        ex = None
        if grid:
            titles = [f"{name} ({score:.2f})" for name, score in predictions]
            picture = viz.grid(shown, [(m, maps[m]) for m in methods], titles)
            files.append((_as(outdir / "grid.png", viz.save_png, picture), outdir / "grid.png"))
        for staged, final in files:
            os.replace(staged, final)
    except BaseException:  # the command writes all of its files or none, and leaves older ones alone
        for staged, _ in files:
            Path(staged).unlink(missing_ok=True)
        raise
    layer = next((v for v in layers.values() if v), None)  # (the grid's Grad-CAM's too)
    return {"files": [final for _, final in files], "predictions": predictions, "layer": layer,
            "provider": provider, "classes": classes}


def _staged(final: Path) -> Path:
    return final.with_name(f".{final.stem}.onnxattr-part{final.suffix}")


def _as(final: Path, write, data) -> Path:
    """write(data, the staged name of `final`); a failure names `final`, the file the user asked for."""
    staged = _staged(final)
    try:
        return write(data, staged)
    except OutputError as e:
        raise OutputError(str(e).replace(str(staged), str(final))) from None


def _check_names(paths: list[Path], methods: list[str], outdir: Path, grid: bool, model) -> None:
    """Before any work: no two images may write the same files, and none may be written over
    the model, its external data or an input image."""
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise InputError(f"images '{seen[path.stem]}' and '{path}' would write the same files "
                             f"({path.stem}.<method>.npy/png); rename one or explain them separately")
        seen[path.stem] = path
    sources = ([model] + external_data_files(model) if isinstance(model, (str, os.PathLike)) else []) + list(paths)
    names = [f"{stem}.{m}.{ext}" for stem in seen for m in methods for ext in ("npy", "png")] + (["grid.png"] if grid else [])
    for name in names:
        check_output_path(outdir / name, *sources)


def _run_in_parts(ex: Explainer, x: np.ndarray, target, names: list[str]) -> dict:
    """ex.run over the rows of x in parts of at most COPIES_PER_RUN forward copies (SmoothGrad
    and integrated gradients copy each row: 8 images x 34 copies of ResNet-50 took 14 GB in one
    run), with the outputs the report reads joined again. Exact: a row's result does not depend
    on its batch."""
    step = max(1, COPIES_PER_RUN // ex.copies_per_row)
    if step >= len(x):
        return ex.run(x, target, row_names=names)
    parts = [ex.run(x[i:i + step], target if np.ndim(target) == 0 else target[i:i + step], row_names=names[i:i + step])
             for i in range(0, len(x), step)]
    axes = {ATTRIBUTION: ex.attribution_batch_axis, TARGET: 0, ex.scores_name: 0}
    return {k: np.concatenate([p[k] for p in parts], axis=a) for k, a in axes.items() if k in parts[0]}


def _explain_chunk(chunk, x, images, ex, first, outdir, target, layout, labels, files, shown, maps, predictions) -> int:
    """One method (ex) on one chunk of images (x as the model reads them, images as shown); the
    first method also gives the predictions and the images shown. Returns the number of classes."""
    m = ex.method
    out = _run_in_parts(ex, x, target, [p.name for p in chunk])
    probs = _probabilities(out[ex.scores_name])  # (the explained scores, not the first output)
    if first:
        shown.extend(images)
        t = out.get(TARGET, np.broadcast_to(np.asarray(target), (len(chunk),)))
        for row, k in enumerate(np.asarray(t)):
            name = labels[k] if labels and k < len(labels) and labels[k] else f"class {k}"
            predictions.append((name, float(probs[row, k])))
    for row, path in enumerate(chunk):
        att = np.take(out[ATTRIBUTION], row, axis=ex.attribution_batch_axis)
        final = outdir / f"{path.stem}.{m}.npy"
        files.append((_as(final, save_array, att), final))
        kind = display_kind(m)
        maps[m].append(viz.overlay(images[row], viz.to_map(att, kind, layout), kind))
        final = outdir / f"{path.stem}.{m}.png"
        files.append((_as(final, viz.save_png, maps[m][-1]), final))
    return probs.shape[1]
