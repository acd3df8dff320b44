"""PyTorch references for the whole-model tests: torchvision builders, TorchScript export, and
input gradients under the saliency / DeconvNet / guided-backprop rules, by float64 autograd.

The DeconvNet and guided rules are applied the way onnxattr defines them, at every ReLU:
  deconvnet: backward g -> relu(g)             (the forward mask is ignored)
  guided:    backward g -> relu(g) * 1[z > 0]
by swapping `torch.nn.functional.relu` (which `nn.ReLU.forward` calls, and which DenseNet and
GoogLeNet call directly) and `torch.relu` for an autograd Function with that backward. With
`relu_like=True` the rule also applies to ReLU6 (`F.hardtanh(x, 0, 6)`), as in
`attribution_model(..., relu_like=True)`: deconvnet relu(g), guided relu(g) * 1[0 < z < 6].
`Rules` counts the calls it replaced, so tests can check it saw every ReLU of the graph.

Kinks and float32. A float32 forward pass puts a pre-activation within ~1e-5 (relative to its
tensor's RMS; measured maximum) of where float64 puts it, so elements that close to 0 (ReLU) or
to a bound (ReLU6), and max-pool windows whose top two values are that close, can take the other
branch than in float64. Each such flip moves one element's share of the gradient, which early in
a network is 1e-3 to 1e-2 of the whole: measured, ONNX Runtime's float32 run of googlenet flips one
max-pool near-tie (input gradient off by 2.1e-2 from plain float64), of resnet50 one ReLU element
(1.3e-2); PyTorch's float32 run of densenet121 flips a different max-pool window (1.8e-3).
Rounding alone is ~1e-6. Every large model has a few such elements, and which ones flip depends
on the float32 kernels (CPU type, ONNX Runtime or PyTorch, fused or not). So the reference can be
*pinned*: still float64 autograd, but at each ReLU, ReLU6 and max pool it takes the branch the
float32 run of the exported graph in ONNX Runtime took (`Instrumented` exposes those). `Rules`
checks that every pinned branch differs from float64's own only within TIE_MARGIN of a tie (and
never at an exact tie, such as an all-zero max-pool window after a ReLU, which must go to the
first maximum as in PyTorch), so pinning hides no real disagreement; what remains is float32
rounding, which the tests can then bound tightly.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

# A pinned branch may differ from float64's choice only this close to the tie, relative to the
# RMS of the tensor: 10x the largest float32-vs-float64 pre-activation error measured (~1e-5).
TIE_MARGIN = 1e-4


# ---------------------------------------------------------------- architectures
@dataclass(frozen=True)
class Arch:
    build: Callable[[], nn.Module]
    size: int  # input height = width
    # Whether every ReLU of the model is an nn.ReLU module, so Captum's Deconvolution and
    # GuidedBackprop (which hook nn.ReLU modules only) apply the rule wherever onnxattr does.
    captum: bool = True


def _tv():
    import torchvision.models as tvm

    return tvm


def _narrow_classifier(model: nn.Module, width: int = 256) -> nn.Module:
    """AlexNet/VGG with the hidden width of their classifier cut from 4096 to `width`: the same
    Linear-ReLU-Dropout-Linear-ReLU-Dropout-Linear graph without the 200-500 MB of weights, which
    only cost export, copy and session-load time here."""
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    layers = []
    for m in model.classifier:
        if isinstance(m, nn.Linear):
            first, last = m is linears[0], m is linears[-1]
            m = nn.Linear(m.in_features if first else width, m.out_features if last else width)
        layers.append(m)
    model.classifier = nn.Sequential(*layers)
    return model


# Input sizes: the smallest that keep every stage meaningful. AlexNet's and VGG's
# AdaptiveAvgPool2d((6, 6)) / ((7, 7)) exports (as AveragePool) only when the feature map is a
# multiple of its output size, so they need 224 x 224 (feature maps 6 x 6 and 7 x 7; smaller inputs
# fail to export). The others end in a global average pool and get 64 x 64 (2 x 2 before it).
ARCHS: dict[str, Arch] = {
    "resnet18": Arch(lambda: _tv().resnet18(num_classes=10), 64),
    "resnet50": Arch(lambda: _tv().resnet50(num_classes=10), 64),
    "vgg11_bn": Arch(lambda: _narrow_classifier(_tv().vgg11_bn(num_classes=10)), 224),
    "alexnet": Arch(lambda: _narrow_classifier(_tv().alexnet(num_classes=10)), 224),
    "squeezenet1_1": Arch(lambda: _tv().squeezenet1_1(num_classes=10), 64),
    # DenseNet applies its last ReLU with F.relu, GoogLeNet all of them: Captum misses those.
    "densenet121": Arch(lambda: _tv().densenet121(num_classes=10), 64, captum=False),
    "googlenet": Arch(lambda: _tv().googlenet(num_classes=10, aux_logits=False, init_weights=True), 64,
                      captum=False),
    "shufflenet_v2_x1_0": Arch(lambda: _tv().shufflenet_v2_x1_0(num_classes=10), 64),
    # Only ReLU6 (exported as Clip), which Captum does not hook.
    "mobilenet_v2": Arch(lambda: _tv().mobilenet_v2(num_classes=10), 64, captum=False),
}


def make_input(name: str, batch: int, seed: int = 0) -> np.ndarray:
    s = ARCHS[name].size
    return np.random.default_rng(seed).standard_normal((batch, 3, s, s)).astype(np.float32)


def set_batchnorm_stats(model: nn.Module, name: str, seed: int) -> None:
    """Non-trivial BatchNorm: running statistics measured on random inputs (so each layer stays
    at unit scale whatever the weight init), then random affine weight and bias. Random statistics
    unrelated to the activations left GoogLeNet (weights ~ N(0, 0.01)) with near-constant
    activations and near-tied max-pool windows (float32 vs float64 error 2e-2)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the calibration pass
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(make_input(name, 8, seed=seed + 1000)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in bns:
            m.momentum = 0.1
            m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
    model.eval()


def build(name: str, seed: int = 0) -> nn.Module:
    """The architecture with seeded random weights and BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = ARCHS[name].build()
    set_batchnorm_stats(model, name, seed)
    return model.eval()


def export(model: nn.Module, x: np.ndarray, opset: int) -> bytes:
    """TorchScript export (dynamo=False) with a dynamic batch axis; the serialized model."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.from_numpy(x),), buf, dynamo=False, opset_version=opset,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return buf.getvalue()


# ---------------------------------------------------------------- branches ONNX Runtime took
@dataclass
class Pinned:
    """Branches a float32 run of the exported graph took, per node in graph order: the output of
    each Relu (> 0 is its mask), the input and bounds of each Clip, and the indices (flat over
    [N, C, H, W]) of each MaxPool."""

    relu: list[np.ndarray] = field(default_factory=list)
    clip: list[tuple[np.ndarray, float, float]] = field(default_factory=list)
    pool: list[np.ndarray] = field(default_factory=list)


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return values


def _clip_bounds(node: onnx.NodeProto, consts: dict) -> tuple[float, float]:
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    ins = list(node.input) + ["", ""]
    lo = float(consts[ins[1]]) if ins[1] else a.get("min", -np.inf)
    hi = float(consts[ins[2]]) if ins[2] else a.get("max", np.inf)
    return lo, hi


class Instrumented:
    """The attribution model plus outputs exposing the branches its float32 run takes: every
    original Relu's output, Clip's input, and the indices of every original MaxPool (read from
    the MaxPool the backward graph re-runs with an indices output)."""

    def __init__(self, att: onnx.ModelProto, original: onnx.ModelProto):
        nodes = list(original.graph.node)
        consts = _constants(original)
        self.relu = [n.output[0] for n in nodes if n.op_type == "Relu"]
        clips = [n for n in nodes if n.op_type == "Clip"]
        self.clip = [n.input[0] for n in clips]
        self.bounds = [_clip_bounds(n, consts) for n in clips]
        self.pool = []
        for pool in (n for n in nodes if n.op_type == "MaxPool"):
            twins = [n for n in att.graph.node if n.op_type == "MaxPool" and n.input[0] == pool.input[0]
                     and len(n.output) > 1 and n.output[1]]
            assert len(twins) == 1, f"no unique MaxPool with indices for {pool.name} in the attribution graph"
            self.pool.append(twins[0].output[1])
        self.model = onnx.ModelProto()
        self.model.CopyFrom(att)
        extra = [(n, onnx.TensorProto.FLOAT) for n in self.relu + self.clip]
        extra += [(n, onnx.TensorProto.INT64) for n in self.pool]
        have = {o.name for o in att.graph.output}
        for name, elem in extra:
            if name not in have:
                have.add(name)
                self.model.graph.output.append(helper.make_tensor_value_info(name, elem, None))

    def pinned(self, outputs: dict[str, np.ndarray]) -> Pinned:
        return Pinned(relu=[outputs[n] for n in self.relu],
                      clip=[(outputs[n],) + b for n, b in zip(self.clip, self.bounds)],
                      pool=[outputs[n] for n in self.pool])


# ---------------------------------------------------------------- modified backward passes
class _Relu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, mask, mode: str):
        ctx.save_for_backward(z > 0 if mask is None else mask)
        ctx.mode = mode
        return torch.clamp_min(z, 0)

    @staticmethod
    def backward(ctx, g):
        (m,) = ctx.saved_tensors
        if ctx.mode == "exact":
            return g * m, None, None
        gx = torch.clamp_min(g, 0)
        return (gx * m if ctx.mode == "guided" else gx), None, None


class _Clip(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, lo: float, hi: float, mask, mode: str):
        ctx.save_for_backward((z > lo) & (z < hi) if mask is None else mask)
        ctx.mode = mode
        return torch.clamp(z, lo, hi)

    @staticmethod
    def backward(ctx, g):
        (m,) = ctx.saved_tensors
        if ctx.mode == "exact":
            gx = g * m
        else:
            gx = torch.clamp_min(g, 0)
            gx = gx * m if ctx.mode == "guided" else gx
        return gx, None, None, None, None


def _rms(t: torch.Tensor) -> float:
    return float(t.detach().double().pow(2).mean().sqrt())


class Rules:
    """Context manager: F.relu and torch.relu (and F.hardtanh, the functional form of ReLU6) run
    with the backward of `method` (see the module docstring; ReLU6 keeps its exact derivative
    unless `relu_like`); with `pinned`, every ReLU/ReLU6 mask and F.max_pool2d choice is taken
    from the float32 run instead of from this pass. Counts the calls it handled."""

    def __init__(self, method: str, relu_like: bool = False, pinned: Pinned | None = None):
        assert method in ("saliency", "deconvnet", "guided")
        self.mode = "exact" if method == "saliency" else method
        self.relu_like, self.pinned = relu_like, pinned
        self.relu_calls = self.clip_calls = self.pool_calls = 0
        self.flips = {"relu": 0, "clip": 0, "pool": 0}  # pinned branches float64 would not take

    def _pin(self, kind: str, i: int, shape) -> np.ndarray | None:
        if self.pinned is None:
            return None
        seen = getattr(self.pinned, kind)
        assert i < len(seen), f"more {kind} calls in PyTorch than {kind} nodes in the ONNX graph"
        value = seen[i][0] if kind == "clip" else seen[i]
        assert tuple(value.shape) == tuple(shape), f"{kind} #{i}: ONNX {value.shape} vs PyTorch {tuple(shape)}"
        return seen[i]

    def _relu(self, input, inplace: bool = False):
        i, self.relu_calls = self.relu_calls, self.relu_calls + 1
        seen = self._pin("relu", i, input.shape)
        mask = None
        if seen is not None:
            mask = torch.from_numpy(seen > 0)
            z = input.detach()
            wrong = mask != (z > 0)
            assert (z[wrong].abs() <= TIE_MARGIN * _rms(z)).all(), f"ReLU #{i}: float32 mask differs beyond a near-tie"
            self.flips["relu"] += int(wrong.sum())
        return _Relu.apply(input, mask, self.mode)

    def _hardtanh(self, input, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False):
        i, self.clip_calls = self.clip_calls, self.clip_calls + 1
        seen = self._pin("clip", i, input.shape)
        mask = None
        if seen is not None:
            x, lo, hi = seen
            assert (lo, hi) == (min_val, max_val), f"Clip #{i}: ONNX bounds {(lo, hi)} vs {(min_val, max_val)}"
            mask = torch.from_numpy((x > lo) & (x < hi))
            z = input.detach()
            wrong = mask != ((z > min_val) & (z < max_val))
            near = torch.minimum((z - min_val).abs(), (z - max_val).abs()) <= TIE_MARGIN * _rms(z)
            assert near[wrong].all(), f"Clip #{i}: float32 mask differs beyond a near-tie"
            self.flips["clip"] += int(wrong.sum())
        mode = self.mode if self.relu_like and min_val == 0 else "exact"
        return _Clip.apply(input, min_val, max_val, mask, mode)

    def _max_pool2d(self, input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                    return_indices=False):
        i, self.pool_calls = self.pool_calls, self.pool_calls + 1
        best, idx = self._orig[3](input.detach(), kernel_size, stride, padding, dilation, ceil_mode=ceil_mode,
                                  return_indices=True)
        chosen = torch.from_numpy(self._pin("pool", i, best.shape) % (input.shape[2] * input.shape[3]))
        out = input.flatten(2).gather(2, chosen.flatten(2)).view(best.shape)
        short, moved = best - out.detach(), chosen != idx
        assert (short <= TIE_MARGIN * _rms(input)).all(), f"MaxPool #{i}: float32 choice is not a near-maximum"
        # Exact ties (all-zero windows after a ReLU) go to the first maximum, as in PyTorch: only
        # windows whose top values differ (by float32 noise) may be pinned elsewhere.
        assert not (moved & (short == 0)).any(), f"MaxPool #{i}: an exact tie not resolved to the first maximum"
        self.flips["pool"] += int(moved.sum())
        return (out, chosen) if return_indices else out

    def __enter__(self):
        self._orig = (F.relu, torch.relu, F.hardtanh, F.max_pool2d)
        F.relu = torch.relu = self._relu
        F.hardtanh = self._hardtanh
        if self.pinned is not None:
            F.max_pool2d = self._max_pool2d
        return self

    def __exit__(self, *exc):
        F.relu, torch.relu, F.hardtanh, F.max_pool2d = self._orig
        return False


# ---------------------------------------------------------------- gradients
def input_gradient(model: nn.Module, x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Row n: d y[n, target[n]] / d x[n], by autograd in the model's dtype (plain, no rules)."""
    dtype = next(model.parameters()).dtype
    xt = torch.from_numpy(x).to(dtype).requires_grad_(True)
    y = model(xt)
    picked = y.gather(1, torch.from_numpy(target).long()[:, None]).sum()
    (g,) = torch.autograd.grad(picked, xt)
    return g.detach().to(torch.float64).numpy()


def rule_gradient(model: nn.Module, x: np.ndarray, target: np.ndarray, method: str, relu_like: bool = False,
                  pinned: Pinned | None = None) -> tuple[np.ndarray, Rules]:
    """`input_gradient` under `Rules(method, relu_like, pinned)`; also the Rules, for its counts."""
    with Rules(method, relu_like, pinned) as rules:
        g = input_gradient(model, x, target)
    return g, rules


def captum_gradient(model: nn.Module, x: np.ndarray, target: np.ndarray, method: str) -> np.ndarray:
    """Captum's Deconvolution / GuidedBackprop, in the model's dtype. Their hooks clone each ReLU
    module's input (so in-place ReLUs are fine) and keep each module's last output gradient, which
    is right for modules applied several times (ResNet's blocks reuse one nn.ReLU): the backward of
    each use runs between its two hooks."""
    from captum.attr import Deconvolution, GuidedBackprop

    dtype = next(model.parameters()).dtype
    algo = (Deconvolution if method == "deconvnet" else GuidedBackprop)(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = algo.attribute(torch.from_numpy(x).to(dtype), target=torch.from_numpy(target).long())
    return a.detach().to(torch.float64).numpy()


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))
