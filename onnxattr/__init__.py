"""onnxattr: turn an ONNX classifier into an ONNX model that also explains itself."""

from .api import attribution_model, coverage, load_model
from .errors import (AttributionWarning, EmptyMapWarning, ExecutionError, InputError, ModelLoadError, NonFiniteWarning,
                     NotAClassifierError, OnnxAttrError, OptionError, OutputError, ProviderError, TargetError,
                     UnsupportedModelError)
from .explainer import Explainer
from .methods import METHODS
from .runtime import session_options

__all__ = [
    "attribution_model", "coverage", "load_model", "Explainer", "METHODS", "session_options", "OnnxAttrError",
    "ModelLoadError", "UnsupportedModelError", "NotAClassifierError", "TargetError", "InputError",
    "ProviderError", "OutputError", "ExecutionError", "OptionError", "AttributionWarning",
    "NonFiniteWarning", "EmptyMapWarning",
]
