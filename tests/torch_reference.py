"""PyTorch references for whole-model tests: torchvision builders, ONNX export, and gradients
under the saliency / DeconvNet / guided-backprop rules computed by autograd.

The DeconvNet and guided rules are applied the way onnxattr defines them, at every ReLU:
  deconvnet: backward g -> relu(g)             (the forward mask is ignored)
  guided:    backward g -> relu(g) * 1[z > 0]
by swapping `torch.nn.functional.relu` (which `nn.ReLU.forward` calls, and which DenseNet and
GoogLeNet call directly) and `torch.relu` for an autograd Function with that backward. With
`relu_like=True` the rule is also applied to ReLU6 (`F.hardtanh(x, 0, 6)`), matching
`attribution_model(..., relu_like=True)`: deconvnet relu(g), guided relu(g) * 1[0 < z < 6].
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# ---------------------------------------------------------------- architectures
@dataclass(frozen=True)
class Arch:
    build: Callable[[], nn.Module]
    size: int  # input height = width
    # Whether every ReLU of the model is an nn.ReLU module, so Captum's DeconvNet/guided hooks
    # (which only hook nn.ReLU modules) apply the rule everywhere the reference does.
    captum: bool


def _tv():
    import torchvision.models as tvm

    return tvm


# Input sizes are the smallest that keep the exported graph meaningful: AlexNet's and VGG's
# AdaptiveAvgPool2d((6, 6)) / ((7, 7)) only exports (as AveragePool) when the feature map is a
# multiple of the output size, so they need 224 x 224 (223 is the smallest that works for
# AlexNet, 224 for VGG); the others end in a global average pool and get 64 x 64 (a 2 x 2 map
# before it, so the last pools still have real windows).
ARCHS: dict[str, Arch] = {
    "resnet18": Arch(lambda: _tv().resnet18(num_classes=10), 64, True),
    "resnet50": Arch(lambda: _tv().resnet50(num_classes=10), 64, True),
    "vgg11_bn": Arch(lambda: _tv().vgg11_bn(num_classes=10), 224, True),
    "alexnet": Arch(lambda: _tv().alexnet(num_classes=10), 224, True),
    "squeezenet1_1": Arch(lambda: _tv().squeezenet1_1(num_classes=10), 64, True),
    # DenseNet applies its last ReLU with F.relu, GoogLeNet all of them: Captum misses those.
    "densenet121": Arch(lambda: _tv().densenet121(num_classes=10), 64, False),
    "googlenet": Arch(lambda: _tv().googlenet(num_classes=10, aux_logits=False, init_weights=True), 64, False),
    "shufflenet_v2_x1_0": Arch(lambda: _tv().shufflenet_v2_x1_0(num_classes=10), 64, True),
    # Only ReLU6 (exported as Clip): Captum hooks none of them.
    "mobilenet_v2": Arch(lambda: _tv().mobilenet_v2(num_classes=10), 64, False),
}


def randomize_batchnorm(model: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial inference statistics and affine parameters for every BatchNorm layer, so a
    wrong normalisation (or a wrong fold into the Conv) shows up in the outputs and gradients."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) * 1.0 + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.2)


def build(name: str, seed: int = 0) -> nn.Module:
    """The architecture with seeded random weights and BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = ARCHS[name].build()
    randomize_batchnorm(model, torch.Generator().manual_seed(seed + 1))
    return model.eval()


def make_input(name: str, batch: int, seed: int = 0) -> np.ndarray:
    s = ARCHS[name].size
    return np.random.default_rng(seed).standard_normal((batch, 3, s, s)).astype(np.float32)


def export(model: nn.Module, x: np.ndarray, opset: int) -> bytes:
    """TorchScript export (dynamo=False) with a dynamic batch axis; the serialized model."""
    buf = io.BytesIO()
    with warnings_off():
        torch.onnx.export(
            model, (torch.from_numpy(x),), buf, dynamo=False, opset_version=opset,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return buf.getvalue()


@contextlib.contextmanager
def warnings_off():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ---------------------------------------------------------------- modified ReLU backward
class _RuleRelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, guided: bool):
        y = torch.clamp_min(z, 0)
        ctx.save_for_backward(y)
        ctx.guided = guided
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        gx = torch.clamp_min(g, 0)
        if ctx.guided:
            gx = gx * (y > 0).to(g.dtype)
        return gx, None


class _RuleRelu6(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, lo: float, hi: float, guided: bool):
        ctx.save_for_backward(z)
        ctx.bounds, ctx.guided = (lo, hi), guided
        return torch.clamp(z, lo, hi)

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        lo, hi = ctx.bounds
        gx = torch.clamp_min(g, 0)
        if ctx.guided:
            gx = gx * ((z > lo) & (z < hi)).to(g.dtype)
        return gx, None, None, None


class ReluRule:
    """Context manager: every F.relu / torch.relu (and, with relu_like, every F.hardtanh with
    min 0, i.e. ReLU6) uses the DeconvNet or guided backward. `calls` counts the patched calls,
    so a test can check the patch was really hit."""

    def __init__(self, method: str, relu_like: bool = False):
        assert method in ("deconvnet", "guided")
        self.guided = method == "guided"
        self.relu_like = relu_like
        self.calls = 0
        self.relu6_calls = 0

    def _relu(self, input, inplace: bool = False):
        self.calls += 1
        return _RuleRelu.apply(input, self.guided)

    def _hardtanh(self, input, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False):
        if min_val != 0:
            return self._orig_hardtanh(input, min_val, max_val, inplace)
        self.relu6_calls += 1
        return _RuleRelu6.apply(input, min_val, max_val, self.guided)

    def __enter__(self):
        self._orig = (F.relu, torch.relu, F.hardtanh)
        self._orig_hardtanh = F.hardtanh
        F.relu = self._relu
        torch.relu = self._relu
        if self.relu_like:
            F.hardtanh = self._hardtanh
        return self

    def __exit__(self, *exc):
        F.relu, torch.relu, F.hardtanh = self._orig
        return False


# ---------------------------------------------------------------- gradients
def input_gradient(model: nn.Module, x: np.ndarray, target: np.ndarray, dtype=torch.float64) -> np.ndarray:
    """Row n: d y[n, target[n]] / d x[n], by autograd in `dtype` (the model is cast in place)."""
    model.to(dtype)
    xt = torch.from_numpy(x).to(dtype).requires_grad_(True)
    y = model(xt)
    picked = y.gather(1, torch.from_numpy(target).long()[:, None]).sum()
    (g,) = torch.autograd.grad(picked, xt)
    return g.detach().to(torch.float64).numpy()


def rule_gradient(model: nn.Module, x: np.ndarray, target: np.ndarray, method: str, relu_like: bool = False,
                  dtype=torch.float64) -> tuple[np.ndarray, ReluRule]:
    """`input_gradient` under a method ("saliency", "deconvnet", "guided"); also the patch
    (None for saliency) so callers can check how many ReLUs it saw."""
    if method == "saliency":
        return input_gradient(model, x, target, dtype), None
    with ReluRule(method, relu_like) as rule:
        g = input_gradient(model, x, target, dtype)
    return g, rule


def captum_gradient(model: nn.Module, x: np.ndarray, target: np.ndarray, method: str,
                    dtype=torch.float64) -> np.ndarray:
    """Captum's Deconvolution / GuidedBackprop (hooks on nn.ReLU modules), in `dtype`.

    Captum's hooks clone each ReLU module's input (so in-place ReLUs are safe) and keep the last
    output gradient per module, which is correct for modules applied several times (ResNet's
    blocks reuse one nn.ReLU), since the backward of each use runs between its two hooks."""
    from captum.attr import Deconvolution, GuidedBackprop

    model.to(dtype)
    algo = (Deconvolution if method == "deconvnet" else GuidedBackprop)(model)
    xt = torch.from_numpy(x).to(dtype)
    with warnings_off():
        a = algo.attribute(xt, target=torch.from_numpy(target).long())
    return a.detach().to(torch.float64).numpy()


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))
