"""Exception types: every user-facing failure is one of these, with a one-line message."""


class OnnxAttrError(Exception):
    """Base class of all errors onnxattr raises on purpose."""


class ModelLoadError(OnnxAttrError):
    """The file is missing, not ONNX, corrupt, or its external data cannot be read safely."""


class UnsupportedModelError(OnnxAttrError):
    """The graph cannot be differentiated: a missing rule, control flow, an unknown shape."""


class NotAClassifierError(OnnxAttrError):
    """No floating-point input, or no rank-2 floating-point output to differentiate."""


class TargetError(OnnxAttrError):
    """A target class index that is out of range or has the wrong length."""


class InputError(OnnxAttrError):
    """An input array of the wrong shape or dtype for the model."""


class OptionError(OnnxAttrError, ValueError):
    """A method parameter out of its range (samples, steps, seed, noise, baseline)."""


class ProviderError(OnnxAttrError):
    """The requested ONNX Runtime execution provider cannot be used."""


class OutputError(OnnxAttrError):
    """An output cannot be written: no such folder, it is the input, the disk is full, ..."""


class ExecutionError(OnnxAttrError):
    """ONNX Runtime cannot load or run the attribution model (its own message, on one line)."""


class AttributionWarning(RuntimeWarning):
    """Something about a result the user should know (the CLI prints these as `Warning:` lines)."""


class NonFiniteWarning(AttributionWarning):
    """NaN or Inf in the input, the scores or the attribution (they propagate; this says how many)."""


class EmptyMapWarning(AttributionWarning):
    """A Grad-CAM map that is 0 everywhere for some rows."""
