"""ONNX Runtime sessions, with providers given as short names ("auto", "cpu", "cuda")."""

from __future__ import annotations

import functools

import onnxruntime as ort
from onnx import TensorProto, helper

from .errors import ProviderError

SHORT = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
PROVIDERS = ("auto", "cpu", "cuda")


# ONNX Runtime's Pad_Fusion (level 1; 1.31.1 at least) folds a constant Pad into the MaxPool after it
# as if MaxPool padded with the Pad's value: MaxPool pads with -inf, so a window whose values are
# all below the Pad's 0 gets their maximum instead of 0 (onnx/optimizer's pass and onnxsim have the
# same fault). tf2onnx writes Keras' ZeroPadding2D + MaxPooling2D so; in ResNet50V2's stem no ReLU
# comes before it: its scores came out 7.1e-3 off the model's function, and Grad-CAM, whose graph
# leaves that Pad one reader, 1.0e-2 off float64 TensorFlow (5.8e-7 unfused). The attribution
# graphs of the gradient methods read the Pad's output twice, which blocks the fold. Off in every
# session onnxattr makes, and in session_options(); a Pad before a Conv, where the fold is right,
# then runs as a node of its own.
DISABLED_OPTIMIZERS = ("Pad_Fusion",)


def session_options() -> ort.SessionOptions:
    """The options onnxattr runs attribution models with. ONNX Runtime's memory pattern (one
    static plan for all intermediate tensors) over-allocates for a forward + backward graph: with
    it off, the batch-8 peak fell from 1177 to 789 MiB (ResNet-50), 483 to 317 (MobileNetV2) and
    464 to 257 (ViT-Tiny) on the CPU at the same speed (within 2%). DISABLED_OPTIMIZERS are off."""
    opts = ort.SessionOptions()
    # failed provider loads and kernels are reported by us, as one line (at 3, ONNX Runtime also
    # logged a failing kernel's error on stderr before it)
    opts.log_severity_level = 4
    opts.enable_mem_pattern = False
    opts.add_session_config_entry("optimization.disable_specified_optimizers", ",".join(DISABLED_OPTIMIZERS))
    return opts


@functools.lru_cache(maxsize=None)
def usable_provider(provider: str = "auto") -> str:
    """The provider ("cpu" or "cuda") that `make_session(model, provider)` would run on, probed
    once per process with a one-node model; "cpu" where "cuda" cannot run (make_session says why)."""
    if provider not in ("auto", "cuda") or SHORT["cuda"] not in ort.get_available_providers():
        return "cpu"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    probe = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y]),
                              ir_version=7, opset_imports=[helper.make_opsetid("", 13)])
    try:
        return make_session(probe.SerializeToString(), "auto")[1]
    except Exception:  # noqa: BLE001  (a provider that cannot start: make_session reports it for the real model)
        return "cpu"


# ONNX Runtime's ConvBNFusion (level 1) folds a BatchNormalization into the Conv before it in the
# model's float type: in a float16 model the folded weights W * scale / sqrt(var + eps) are rounded
# to float16, or overflow to inf. Measured: a random MobileNetV2 (BatchNormalization nodes kept)
# scored 2.8e-2 off its own function (2.1e-4 unfused) and its saliency 0.44 off float64 autograd
# (ReLU6 masks flipped far from their bounds; 6.6e-3 unfused); W = 1000 over var = 1e-6 gave NaN
# scores where the model's are finite.
FLOAT16_DISABLED_OPTIMIZERS = ("ConvBNFusion",)


def make_session(model_bytes: bytes, provider: str = "auto", float16: bool = False) -> tuple[ort.InferenceSession, str]:
    """A session on `provider`; returns it with the short name of the provider it really uses.

    "auto" takes CUDA when ONNX Runtime can run it here, else the CPU; "cuda" where CUDA cannot
    run is an error, never a silent fallback. `float16`: the model is float16, so ONNX Runtime
    must not fold its normalisations into float16 weights (FLOAT16_DISABLED_OPTIMIZERS).
    DISABLED_OPTIMIZERS are off in every session (session_options(); a list given here replaces it).
    """
    disabled = list(DISABLED_OPTIMIZERS + FLOAT16_DISABLED_OPTIMIZERS) if float16 else None
    if provider not in PROVIDERS:
        raise ProviderError(f"unknown provider '{provider}' (choose from {', '.join(PROVIDERS)})")
    available = ort.get_available_providers()
    if provider in ("auto", "cuda") and SHORT["cuda"] in available:
        ort.set_default_logger_severity(4)  # a missing CUDA library is reported below, in one line
        try:
            sess = ort.InferenceSession(model_bytes, session_options(), providers=[SHORT["cuda"], SHORT["cpu"]],
                                        disabled_optimizers=disabled)
        finally:
            ort.set_default_logger_severity(2)
        if sess.get_providers()[0] == SHORT["cuda"]:
            return sess, "cuda"
    if provider == "cuda":
        why = "its libraries could not be loaded" if SHORT["cuda"] in available else "this onnxruntime build lacks it"
        raise ProviderError(
            f"the CUDA provider is not usable here ({why}); available: {', '.join(available)}; use --provider cpu"
        )
    return ort.InferenceSession(model_bytes, session_options(), providers=[SHORT["cpu"]],
                                disabled_optimizers=disabled), "cpu"
