"""In-process runner: one ONNX Runtime session per target mode, reused across calls."""

from __future__ import annotations

import re
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from .api import ATTRIBUTION, BATCH_AXIS, TARGET, WRT_BATCH_AXIS, _float_input, _one_line, attribution_model, load_model
from .errors import (EmptyMapWarning, ExecutionError, InputError, NonFiniteWarning, OnnxAttrError, OptionError,
                     TargetError)
from .recipes import Options, check_baseline
from .io import SINGLE_FILE_LIMIT, save_model, tensor_bytes
from .runtime import make_session, usable_provider

NUMPY_INPUT = {"tensor(double)": np.float64, "tensor(float)": np.float32, "tensor(float16)": np.float16}
NUMPY_IDS = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}  # token ids, attributed at --wrt
OTHER_TYPES = {**NUMPY_INPUT, **NUMPY_IDS, "tensor(bool)": np.bool_, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
               "tensor(int16)": np.int16, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32,
               "tensor(uint64)": np.uint64}
NONFINITE = ("warn", "raise", "ignore")


def _is_runtime_error(e: Exception) -> bool:
    return type(e).__module__.startswith("onnxruntime")


class Explainer:
    """Explain a classifier with ONNX Runtime.

    >>> ex = Explainer("model.onnx", method="guided", provider="cpu")
    >>> attribution = ex(x, target=3)          # or target=[...] per row, or "argmax"
    >>> attribution = ex(ids, [0, 2], inputs={"attention_mask": mask})  # the model's other inputs

    `provider` is "auto" (CUDA when ONNX Runtime can use it, else CPU), "cpu" or "cuda";
    `self.provider` says which one runs. The graph is tuned for that provider (see
    `attribution_model`'s `tune_for`) unless `tune_for` names one.

    NaN/Inf in an input propagate into the scores and the attribution (rows are independent, so
    other rows are unaffected). `nonfinite` says what a call then does: "warn" (default) issues
    an `onnxattr.NonFiniteWarning` with the counts, "raise" raises InputError before running,
    "ignore" says nothing. `Explainer.nonfinite_counts(result)` gives the counts.

    One Explainer may serve calls from several threads at once (ONNX Runtime's `run` is
    thread-safe; the lazily built "argmax" session is created under a lock).

    `copies_per_row` is how many forward copies one input row costs (SmoothGrad's samples,
    integrated gradients' points and baseline, plus the row itself; 1 otherwise).

    `batch_axis` is the input's batch axis, the one `target` and the rows follow (1 for a
    time-major [T, N, F] input), `attribution_batch_axis` the attribution's (that of the --wrt
    tensor), as the exported model's metadata says (`onnxattr.batch_axis`, `onnxattr.wrt_batch_axis`).
    """

    def __init__(self, model, method: str = "saliency", provider: str = "auto", output: str | None = None,
                 input: str | None = None, relu_like: bool = False, wrt: str | None = None,
                 nonfinite: str = "warn", tune_for: str | None = None, **options):
        if nonfinite not in NONFINITE:
            raise OptionError(f"nonfinite must be one of {', '.join(NONFINITE)}, not {nonfinite!r}")
        self.nonfinite = nonfinite
        self.source = load_model(model)
        self.method = method
        self._build = dict(method=method, output=output, input=input, relu_like=relu_like, wrt=wrt, **options)
        self._sessions: dict[str, object] = {}
        self._lock = threading.Lock()
        self._tmp = None  # a folder for models too large to pass to ONNX Runtime as bytes
        self.tune_for = tune_for or usable_provider(provider)
        self.model = self._model("input")
        sess, self.provider = self._make_session(self.model, provider)
        opts = Options(**{k: v for k, v in options.items() if k in Options.__dataclass_fields__})
        self.copies_per_row = {"smoothgrad": opts.samples + 1, "integrated-gradients": opts.steps + 2}.get(method, 1)
        self._sessions["input"] = sess
        meta = {p.key: p.value for p in self.model.metadata_props}
        self.input_name = _float_input(self.source, input, allow_int=wrt is not None).name
        # the model's other inputs (a padding mask): given to each call as `inputs`
        self.other_inputs = {i.name: i.type for i in sess.get_inputs() if i.name not in (self.input_name, TARGET)}
        self.scores_name = meta["onnxattr.scores"]
        self.batch_axis = int(meta.get(BATCH_AXIS, 0))
        self.attribution_batch_axis = int(meta.get(WRT_BATCH_AXIS, 0)) if wrt is not None else self.batch_axis
        self._input_meta = next(i for i in sess.get_inputs() if i.name == self.input_name)
        scores = next((o for o in self.model.graph.output if o.name == self.scores_name), None)
        self.layer = meta.get("onnxattr.layer")
        self.num_classes = None
        if scores is not None:
            dims = scores.type.tensor_type.shape.dim
            self.num_classes = dims[1].dim_value if len(dims) == 2 and dims[1].HasField("dim_value") else None

    def _path_dims(self, x: np.ndarray) -> list:
        """The shape of the tensor the integrated-gradients path runs at, for the batch x: x's own,
        or with --wrt that tensor's declared dims (its attribution's) with x's batch size."""
        if self._build.get("wrt") is None:
            return list(x.shape)
        att = next(o for o in self.model.graph.output if o.name == ATTRIBUTION)
        dims = [d.dim_value if d.HasField("dim_value") else None for d in att.type.tensor_type.shape.dim]
        dims[self.attribution_batch_axis] = x.shape[self.batch_axis]
        return dims

    def _model(self, mode: str) -> onnx.ModelProto:
        return attribution_model(self.source, target=mode, tune_for=self.tune_for, **self._build)

    def _make_session(self, model: onnx.ModelProto, provider: str):
        if tensor_bytes(model) > SINGLE_FILE_LIMIT:  # too large for one protobuf: external data in a temp folder
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="onnxattr-")
            path = Path(self._tmp.name) / f"model-{len(list(Path(self._tmp.name).iterdir()))}.onnx"
            source = str(save_model(model, path, external_data=True))
        else:
            source = model.SerializeToString()
        float16 = any(i.type.tensor_type.elem_type == TensorProto.FLOAT16 for i in model.graph.input)
        try:
            return make_session(source, provider, float16=float16)
        except OnnxAttrError:
            raise
        except Exception as e:
            if not _is_runtime_error(e):
                raise
            text = _one_line(f"ONNX Runtime cannot load the attribution model: {e}")
            node = re.search(r"node with name '([^']*)'", str(e))
            if node and any(n.name == node.group(1) for n in self.source.graph.node):
                # (a missing kernel of the model's own, say float64 Conv on the CPU provider)
                text = f"{text} ('{node.group(1)}' is a node of the model itself, not one onnxattr added)"
            raise ExecutionError(text) from None

    def _session(self, mode: str):
        with self._lock:
            if mode not in self._sessions:
                self._sessions[mode] = self._make_session(self._model(mode), self.provider)[0]
            return self._sessions[mode]

    def _check_input(self, x) -> np.ndarray:
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as e:
            raise InputError(_one_line(f"input is not an array ({e})")) from None
        want = NUMPY_INPUT.get(self._input_meta.type)
        ids = NUMPY_IDS.get(self._input_meta.type)
        if want is None and ids is None:
            raise InputError(f"the model's input '{self.input_name}' is {self._input_meta.type}, which numpy cannot feed")
        if ids is not None:  # token ids
            if not np.issubdtype(x.dtype, np.integer):
                raise InputError(f"input must be an integer array (the model's input '{self.input_name}' is "
                                 f"{self._input_meta.type}), got dtype {x.dtype}")
            x = x.astype(ids)
        elif x.dtype != want:
            if not np.issubdtype(x.dtype, np.floating):
                raise InputError(f"input must be a floating-point array, got dtype {x.dtype}")
            x = x.astype(want)
        shape = self._input_meta.shape
        if x.ndim != len(shape) or any(isinstance(d, int) and d != s for d, s in zip(shape, x.shape)):
            raise InputError(f"input shape {list(x.shape)} does not match the model's input "
                             f"'{self.input_name}' {list(shape)}")
        if x.shape[self.batch_axis] == 0:
            where = f" (axis {self.batch_axis} of {list(x.shape)})" if self.batch_axis else ""
            raise InputError(f"input batch is empty{where}")
        if self.nonfinite == "raise" and not np.isfinite(x).all():
            bad = ~np.isfinite(x)
            raise InputError(f"input has {int(bad.sum())} NaN/Inf values (rows {_rows(bad, self.batch_axis)})")
        return x

    def _check_target(self, target, n: int) -> np.ndarray:
        try:
            t = np.asarray(target)
        except (ValueError, TypeError):
            raise TargetError(f"target must be integer class indices or 'argmax', got {target!r}") from None
        if not np.issubdtype(t.dtype, np.integer):
            raise TargetError(f"target must be integer class indices or 'argmax', got {target!r}")
        if t.dtype == np.uint64 and t.size and t.max() > np.iinfo(np.int64).max:  # (astype would wrap it negative)
            raise TargetError(f"target {t.max()} is out of range" + (f" for {self.num_classes} classes" if self.num_classes else ""))
        t = np.broadcast_to(t.astype(np.int64), (n,)) if t.ndim == 0 else t.astype(np.int64)
        if t.ndim > 1:
            raise TargetError(f"target must be one class or a 1-D array of one class per row, got shape {list(t.shape)}")
        if t.shape != (n,):
            raise TargetError(f"target has {t.size} entries for a batch of {n}")
        if self.num_classes is not None:
            _check_range(t, self.num_classes)
        return np.ascontiguousarray(t)

    def _check_others(self, inputs) -> dict[str, np.ndarray]:
        """The model's other inputs by name, as the types it declares."""
        if inputs is not None and not isinstance(inputs, dict):
            raise InputError(f"inputs must be a dict of the model's other inputs by name, got {type(inputs).__name__}")
        inputs = dict(inputs or {})
        unknown = sorted(set(inputs) - set(self.other_inputs))
        missing = [n for n in self.other_inputs if n not in inputs]
        if unknown:
            known = f"its other inputs are {', '.join(self.other_inputs)}" if self.other_inputs else "it has no other inputs"
            raise InputError(f"'{unknown[0]}' is not an input of the model to feed ({known})")
        if missing:
            raise InputError(f"the model has inputs besides '{self.input_name}' ({', '.join(missing)}): give them as "
                             f"inputs={{'{missing[0]}': array, ...}} (CLI: --feed {missing[0]}=FILE.npy)")
        feeds = {}
        for name, value in inputs.items():
            want = OTHER_TYPES.get(self.other_inputs[name])
            if want is None:
                raise InputError(f"the model's input '{name}' is {self.other_inputs[name]}, which numpy cannot feed")
            try:
                v = np.asarray(value)
            except (ValueError, TypeError) as e:
                raise InputError(_one_line(f"input '{name}' is not an array ({e})")) from None
            if v.dtype.kind not in "biuf" or (v.dtype.kind == "f" and np.dtype(want).kind in "biu"):
                raise InputError(f"input '{name}' must be a {self.other_inputs[name]} array, got dtype {v.dtype}")
            feeds[name] = np.ascontiguousarray(v.astype(want, copy=False))
        return feeds

    def run(self, x, target, row_names: list[str] | None = None, inputs: dict | None = None) -> dict[str, np.ndarray]:
        """All outputs (the model's own, `attribution`, and `target` for "argmax") by name.
        `row_names` (the images' file names, say) name the rows in warnings; `inputs` are the
        model's other inputs by name (a padding mask), as the model declares them."""
        x = self._check_input(x)
        others = self._check_others(inputs)
        if self.method == "integrated-gradients" and self._build.get("baseline") is not None:
            check_baseline(np.asarray(self._build["baseline"]), self._path_dims(x), self._build.get("wrt"))  # this batch
        if isinstance(target, str):
            if target != "argmax":
                raise TargetError(f"target must be class indices or 'argmax', got {target!r}")
            sess = self._session("argmax")
            feeds = {self.input_name: x, **others}
            t = None
        else:
            sess = self._sessions["input"]
            t = self._check_target(target, x.shape[self.batch_axis])
            feeds = {self.input_name: x, TARGET: t, **others}
        names = [o.name for o in sess.get_outputs()]
        try:
            result = dict(zip(names, sess.run(names, feeds)))
        except Exception as e:
            if not _is_runtime_error(e):
                raise
            hint = ""
            if self.copies_per_row > 1 and self.other_inputs:  # (README: which other inputs go along with the copies)
                hint = (f" [{self.method} runs its copies of '{self.input_name}' as one batch, and copies "
                        f"{', '.join(self.other_inputs)} along only where its batch dim is named like the input's or "
                        "the graph broadcasts it against the batch: a dim named apart by the user is taken as shared]")
            raise ExecutionError(_one_line(f"ONNX Runtime failed: {e}") + hint) from None
        if t is not None and self.scores_name in result:
            # the class count the scores have at run time: where it was not declared, or declared
            # wrong (skl2onnx declares a binary RidgeClassifier's one score column as two)
            _check_range(t, result[self.scores_name].shape[1])
        if self.nonfinite == "warn":
            counts = self.nonfinite_counts(result, x)
            if any(counts.values()):
                warnings.warn(NonFiniteWarning(describe_nonfinite(counts)), stacklevel=2)
        if "cam" in result:
            cam = result["cam"]
            empty = np.flatnonzero(~cam.reshape(len(cam), -1).any(axis=1)).tolist()
            if empty:
                which = f"rows {empty}" if row_names is None else ", ".join(row_names[i] for i in empty)
                warnings.warn(EmptyMapWarning(
                    f"the Grad-CAM map at '{self.layer}' is 0 everywhere for {which}: the class's gradient there is 0 "
                    "(a layer that does not reach the scores, such as image tokens under a class-token head) or the "
                    "weighted activations are <= 0; another --layer may show more"), stacklevel=2)
        return result

    def nonfinite_counts(self, result: dict, x=None) -> dict[str, int]:
        """How many NaN/Inf values the input (if given), the scores and the attribution hold."""
        arrays = {"input": x, "scores": result.get(self.scores_name), ATTRIBUTION: result.get(ATTRIBUTION)}
        return {k: int(np.size(v) - np.count_nonzero(np.isfinite(v))) for k, v in arrays.items() if v is not None}

    def __call__(self, x, target, inputs: dict | None = None) -> np.ndarray:
        """The attribution for input batch `x` and `target` (index, per-row indices, or "argmax");
        `inputs`: the model's other inputs by name, if it has any."""
        return self.run(x, target, inputs=inputs)[ATTRIBUTION]


def _check_range(t: np.ndarray, classes: int) -> None:
    if t.size and (t.min() < 0 or t.max() >= classes):
        raise TargetError(f"target {t.tolist()} is out of range for {classes} classes")


def _rows(bad: np.ndarray, axis: int = 0) -> list[int]:
    """The rows (indices along the batch axis `axis`) that hold a True."""
    return np.flatnonzero(np.moveaxis(bad, axis, 0).reshape(bad.shape[axis], -1).any(axis=1)).tolist()


def describe_nonfinite(counts: dict[str, int]) -> str:
    """One line: 'NaN/Inf values: 3 in the input, 4 in the scores, 120 in the attribution'."""
    parts = [f"{n} in the {k}" for k, n in counts.items() if n]
    return "NaN/Inf values (they propagate): " + ", ".join(parts)
