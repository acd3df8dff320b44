"""In-process runner: one ONNX Runtime session per target mode, reused across calls."""

from __future__ import annotations

import threading

import numpy as np
import onnx

from .api import ATTRIBUTION, TARGET, _float_input, attribution_model, load_model
from .errors import InputError, TargetError
from .runtime import make_session


class Explainer:
    """Explain a classifier with ONNX Runtime.

    >>> ex = Explainer("model.onnx", method="guided", provider="cpu")
    >>> attribution = ex(x, target=3)          # or target=[...] per row, or "argmax"

    `provider` is "auto" (CUDA when ONNX Runtime can use it, else CPU), "cpu" or "cuda";
    `self.provider` says which one runs.
    """

    def __init__(self, model, method: str = "saliency", provider: str = "auto", output: str | None = None,
                 input: str | None = None, relu_like: bool = False, wrt: str | None = None, **options):
        self.source = load_model(model)
        self.method = method
        self._build = dict(method=method, output=output, input=input, relu_like=relu_like, wrt=wrt, **options)
        self._requested = provider
        self._sessions: dict[str, object] = {}
        self._lock = threading.Lock()
        self.model = self._model("input")
        sess, self.provider = make_session(self.model.SerializeToString(), provider)
        self._sessions["input"] = sess
        meta = {p.key: p.value for p in self.model.metadata_props}
        self.input_name = _float_input(self.source, input).name
        self._input_meta = next(i for i in sess.get_inputs() if i.name == self.input_name)
        scores = next(o for o in self.model.graph.output if o.name == meta["onnxattr.scores"]) \
            if any(o.name == meta["onnxattr.scores"] for o in self.model.graph.output) else None
        self.layer = meta.get("onnxattr.layer")
        self.num_classes = None
        if scores is not None:
            dims = scores.type.tensor_type.shape.dim
            self.num_classes = dims[1].dim_value if len(dims) == 2 and dims[1].HasField("dim_value") else None

    def _model(self, mode: str) -> onnx.ModelProto:
        return attribution_model(self.source, target=mode, **self._build)

    def _session(self, mode: str):
        with self._lock:
            if mode not in self._sessions:
                self._sessions[mode] = make_session(self._model(mode).SerializeToString(), self.provider)[0]
            return self._sessions[mode]

    def _check_input(self, x) -> np.ndarray:
        x = np.asarray(x)
        want = np.float64 if self._input_meta.type == "tensor(double)" else np.float32
        if x.dtype != want:
            if not np.issubdtype(x.dtype, np.floating):
                raise InputError(f"input must be a floating-point array, got dtype {x.dtype}")
            x = x.astype(want)
        shape = self._input_meta.shape
        if x.ndim != len(shape) or any(isinstance(d, int) and d != s for d, s in zip(shape, x.shape)):
            raise InputError(f"input shape {list(x.shape)} does not match the model's input "
                             f"'{self.input_name}' {list(shape)}")
        return x

    def _check_target(self, target, n: int) -> np.ndarray:
        t = np.asarray(target)
        if not np.issubdtype(t.dtype, np.integer):
            raise TargetError(f"target must be integer class indices or 'argmax', got {target!r}")
        t = np.broadcast_to(t.astype(np.int64), (n,)) if t.ndim == 0 else t.astype(np.int64)
        if t.shape != (n,):
            raise TargetError(f"target has {t.size} entries for a batch of {n}")
        if self.num_classes is not None and (t.min() < 0 or t.max() >= self.num_classes):
            raise TargetError(f"target {t.tolist()} is out of range for {self.num_classes} classes")
        return np.ascontiguousarray(t)

    def run(self, x, target) -> dict[str, np.ndarray]:
        """All outputs (the model's own, `attribution`, and `target` for "argmax") by name."""
        x = self._check_input(x)
        if isinstance(target, str):
            if target != "argmax":
                raise TargetError(f"target must be class indices or 'argmax', got {target!r}")
            sess = self._session("argmax")
            feeds = {self.input_name: x}
        else:
            sess = self._sessions["input"]
            feeds = {self.input_name: x, TARGET: self._check_target(target, x.shape[0])}
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, feeds)))

    def __call__(self, x, target) -> np.ndarray:
        """The attribution for input batch `x` and `target` (index, per-row indices, or "argmax")."""
        return self.run(x, target)[ATTRIBUTION]
