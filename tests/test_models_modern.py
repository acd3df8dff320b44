"""Modern classifiers end to end, from every common exporter: the attribution model's float32
output (ONNX Runtime, CPU) against a float64 reference of the same method.

* timm / torchvision models with random weights, exported by PyTorch's TorchScript exporter
  (`dynamo=False`, several opsets, once with local functions) and by the dynamo exporter,
  against PyTorch autograd in float64 (DeconvNet / guided backprop: the Relu backward swapped
  the way onnxattr defines it, see `Rules`);
* a Keras CNN converted by tf2onnx (NHWC input) against tf.GradientTape in float64;
* scikit-learn MLPClassifier converted by skl2onnx (with and without ZipMap) against the
  analytic gradient of predict_proba in numpy;
* a model-zoo-style graph at opsets 7, 8, 9 written with onnx.helper, against the same network
  written with torch.nn.functional in float64.

Every model is also checked to have no op without a gradient rule (`onnxattr coverage`).
Tolerances: relative L2 error ||onnx - ref|| / ||ref||. The float32 error itself was measured
per model (numbers in comments: the largest over methods and exporters, next to PyTorch's own
float32 autograd against its float64 one); each tolerance is 5-20x the measured error.
Slow cases (the larger models, most dynamo exports) are marked `slow`: ONNXATTR_EXTENDED=1.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxattr
from onnxattr.api import coverage

torch = pytest.importorskip("torch")
from torch_reference import _Clip  # noqa: E402  (the clamp whose backward follows a method)

F = torch.nn.functional
slow = pytest.mark.slow
TARGET = np.array([3, 7])
METHODS = ("saliency", "deconvnet", "guided")


# ---------------------------------------------------------------- references
class Pinned:
    """The outputs of the forward Relu and Clip nodes in ONNX Runtime's float32 run of the
    attribution model: the masks its backward graph used. A pre-activation within float32
    rounding of a kink (measured: EfficientNet-Lite0 at 64 px has one |z| = 5.6e-8 next to an
    rms of 2.9, which ORT's NCHWc Conv puts on the other side) flips one mask between float32
    and float64 and changes the gradient by O(1) around it, so the float64 reference takes ORT's
    mask wherever the two differ, after checking each difference is such a near-tie. Each
    PyTorch call is matched to the ONNX tensor of its shape holding the closest values, so the
    exporter need not keep the call order. (MaxPool and HardSwish kinks are not pinned.)"""

    NEAR = 1e-5  # a near-tie: |z - kink| <= NEAR * rms(z)

    def __init__(self, outputs: list[np.ndarray]):
        self.outputs = outputs
        self.flips = 0

    def mask(self, z, lo: float, hi: float, own):
        want = torch.clamp(z, lo, hi).numpy()
        best, dist = None, np.inf
        for a in self.outputs:
            if a.shape == want.shape:
                d = float(np.max(np.abs(a - want)))
                if d < dist:
                    best, dist = a, d
        scale = float(z.pow(2).mean().sqrt()) or 1.0
        if best is None or dist > 1e-3 * max(scale, 1.0):
            return own  # no ONNX counterpart
        theirs = torch.from_numpy((best > lo) & (best < hi))
        differ = theirs != own
        if differ.any():
            gap = torch.minimum((z - lo).abs(), (z - hi).abs())[differ]
            assert bool((gap <= self.NEAR * scale).all()), f"a float32 mask differs beyond a near-tie ({gap.max():.2e})"
            self.flips += int(differ.sum())
        return theirs


class Rules:
    """Context manager: F.relu / torch.relu (and relu_, Tensor.relu) use the method's backward, and so does ReLU6
    (F.hardtanh with min 0) when `relu_like`; other hardtanh calls stay exact. Every other
    nonlinearity (GELU, SiLU, HardSwish, HardSigmoid, ...) keeps autograd's exact derivative,
    as onnxattr documents. Counts the calls, so a test can check every Relu was reached.
    With `pinned`, the masks are ONNX Runtime's where they differ at a near-tie (see Pinned)."""

    def __init__(self, method: str, relu_like: bool = False, pinned: Pinned | None = None):
        self.method, self.relu_like, self.pinned = method, relu_like, pinned
        self.relu = self.relu6 = 0

    def _apply(self, z, lo: float, hi: float, mode: str):
        inside = (z.detach() > lo) & (z.detach() < hi)
        if self.pinned is not None:
            inside = self.pinned.mask(z.detach(), lo, hi, inside)
        return _Clip.apply(z, lo, hi, inside, "exact" if mode == "saliency" else mode)

    def _relu(self, input, inplace=False):
        self.relu += 1
        return self._apply(input, 0.0, float("inf"), self.method)

    def _hardtanh(self, input, min_val=-1.0, max_val=1.0, inplace=False):
        if min_val == 0:
            self.relu6 += 1
        mode = self.method if self.relu_like and min_val == 0 else "saliency"
        return self._apply(input, float(min_val), float(max_val), mode)

    def __enter__(self):
        self._saved = (F.relu, torch.relu, F.relu_, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.hardtanh)
        F.relu = torch.relu = F.relu_ = torch.relu_ = self._relu
        torch.Tensor.relu = torch.Tensor.relu_ = lambda x: self._relu(x)
        F.hardtanh = self._hardtanh
        return self

    def __exit__(self, *exc):
        F.relu, torch.relu, F.relu_, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.hardtanh = self._saved
        return False


def torch_gradient(model, x: np.ndarray, method: str, relu_like: bool = False, pinned: Pinned | None = None,
                   target=TARGET):
    """Row n: the method's gradient of model(x)[n, target[n]] w.r.t. x[n], in float64."""
    model = model.double()
    with Rules(method, relu_like, pinned) as rules:
        xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
        y = model(xt)
        (g,) = torch.autograd.grad(y.gather(1, torch.from_numpy(target)[:, None]).sum(), xt)
    return g.detach().numpy(), rules


def rel_err(a, ref) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - ref) / np.linalg.norm(ref))


# ---------------------------------------------------------------- running onnxattr
def attribution(proto: onnx.ModelProto, feeds: dict, method: str, relu_like: bool = False, target=TARGET,
                pin: bool = False, **kw):
    """The attribution from ONNX Runtime (float32, CPU); with `pin`, also the Pinned masks."""
    am = onnxattr.attribution_model(proto, method=method, relu_like=relu_like, **kw)
    onnx.checker.check_model(am)
    kinks = [n.output[0] for n in am.graph.node
             if pin and n.op_type in ("Relu", "Clip") and not n.name.startswith("onnxattr/")]
    have = {o.name for o in am.graph.output}
    am.graph.output.extend(helper.make_tensor_value_info(k, TensorProto.FLOAT, None) for k in kinks if k not in have)
    sess = ort.InferenceSession(am.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(["attribution", *kinks], {**feeds, "target": target})
    return (got[0], Pinned(got[1:])) if pin else got[0]


def assert_covered(proto: onnx.ModelProto):
    missing = {r["op_type"]: r["missing_nodes"] for r in coverage(proto) if r["missing_nodes"]}
    assert not missing, f"ops without a gradient rule: {missing}"


def ops(proto: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in onnxattr.api.load_model(proto).graph.node}


def relu6_count(proto: onnx.ModelProto) -> int:
    """Clip nodes clipping below at 0 (ReLU6 and friends), attribute or input form."""
    consts = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in proto.graph.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    count = 0
    for n in proto.graph.node:
        if n.op_type == "Clip":
            a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
            lo = a.get("min") if len(n.input) < 2 or not n.input[1] else consts.get(n.input[1])
            count += lo is not None and float(np.asarray(lo)) == 0.0
    return count


# ---------------------------------------------------------------- PyTorch models
def _timm(name, **kw):
    def make():
        import timm

        return timm.create_model(name, num_classes=10, **kw)

    return make


def _mixer():
    from timm.models.mlp_mixer import MlpMixer

    return MlpMixer(num_classes=10, img_size=32, patch_size=8, num_blocks=2, embed_dim=64)


def _tv(name):
    def make():
        import torchvision

        return getattr(torchvision.models, name)(num_classes=10)

    return make


# name: (builder, input size). Random weights, small inputs: ViT/DeiT at 32 px (2 x 2 patches and
# the class / distillation tokens), Swin at 64 px with 4 x 4 windows so that stages 1-2 shift
# their windows (the attention mask, the roll as Slice + Concat) and 3-4 clamp the window.
MODELS = {
    "vit_tiny": (_timm("vit_tiny_patch16_224", img_size=32), 32),
    "deit_tiny_distilled": (_timm("deit_tiny_distilled_patch16_224", img_size=32), 32),
    "swin_tiny_w4": (_timm("swin_tiny_patch4_window7_224", img_size=64, window_size=4, embed_dim=24,
                           depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4)), 64),
    "convnext_atto": (_timm("convnext_atto"), 64),
    "mixer_small": (_mixer, 32),
    "efficientnet_b0": (_timm("efficientnet_b0"), 64),
    "efficientnet_lite0": (_timm("efficientnet_lite0"), 64),
    "mobilenetv3_small": (_timm("mobilenetv3_small_100"), 64),
    "tv_mobilenet_v3_small": (_tv("mobilenet_v3_small"), 64),
    "tv_mobilenet_v2": (_tv("mobilenet_v2"), 64),
    "regnetx_002": (_timm("regnetx_002"), 64),
    "tv_regnet_y_400mf": (_tv("regnet_y_400mf"), 64),
    "resnet18d": (_timm("resnet18d"), 64),
    "resnet50d": (_timm("resnet50d"), 64),
    "inception_v3": (_timm("inception_v3"), 75),  # the smallest input its stem and pools allow
    "poolformer_s12": (_timm("poolformer_s12"), 64),
    "tf_mobilenetv3_small_100": (_timm("tf_mobilenetv3_small_100"), 64),  # TensorFlow's "same" padding by F.pad
    "hrnet_w18_small": (_timm("hrnet_w18_small"), 64),  # nearest upsampling in its fuse layers
    "tiny_vit_5m_224": (_timm("tiny_vit_5m_224"), 64),  # attention windows padded, then cropped by Slice
    "mvitv2_tiny": (_timm("mvitv2_tiny", img_size=64), 64),
    "volo_d1": (_timm("volo_d1_224", img_size=64), 64),  # outlook attention: Unfold and Fold (Col2Im, opset 18)
    # from session 17's sweep of 46 more timm families (all agreed; these cover structures the
    # ones above do not):
    "sequencer2d_s": (_timm("sequencer2d_s", layers=(1, 1, 1, 1)), 56),  # bidirectional LSTMs over rows and columns
    "dm_nfnet_f0": (_timm("dm_nfnet_f0"), 64),  # weights standardised in the graph (ScaledStdConv)
    "levit_128s": (_timm("levit_128s", img_size=64), 64),  # BatchNorm over linear layers, attention biases
    "crossvit_tiny_240": (_timm("crossvit_tiny_240", img_size=120), 120),  # two branches, bicubic Resize
    "dpn68": (_timm("dpn68"), 64),  # dual paths: channel Slices and Concats, grouped convs, 72 Relus
    "eva02_tiny": (_timm("eva02_tiny_patch14_224", img_size=56, depth=4), 56),  # rotary position embedding
    "mobilevit_xxs": (_timm("mobilevit_xxs"), 64),  # unfolding into patches by Reshape / Transpose
}


def build_torch(name: str, seed: int = 0):
    """The model with seeded random weights, in eval mode. Parameters an initialiser sets to one
    constant (zero heads, LayerScale 1e-6, BN/LN affine 1 and 0, zero-init last BN) get noise,
    and BatchNorm running statistics are random, so every layer shapes the gradient."""
    torch.manual_seed(seed)
    model = MODELS[name][0]()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            flat = p.flatten()
            if p.numel() > 1 and bool((flat == flat[0]).all()):
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


def export_torch(model, x: np.ndarray, exporter: str, opset: int) -> onnx.ModelProto:
    """ts: TorchScript exporter; ts-fn: the same with every module of the model's top-level
    block types exported as ONNX local functions; dynamo: torch.export based. Batch axis dynamic."""
    xt = torch.from_numpy(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            prog = torch.onnx.export(model, (xt,), dynamo=True, opset_version=opset, input_names=["input"],
                                     output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                     verbose=False)
            return prog.model_proto
        functions = False
        if exporter == "ts-fn":
            return _export_as_functions(model, xt, opset)
        buf = io.BytesIO()
        torch.onnx.export(model, (xt,), buf, dynamo=False, opset_version=opset, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          export_modules_as_functions=functions)
    return onnx.load_from_string(buf.getvalue())


_AS_FUNCTIONS = """
import sys, warnings
import torch
model, xt = torch.load(sys.argv[1], weights_only=False)
functions = {type(m) for m in model.modules() if type(m).__name__.endswith(("Block", "Layer"))}
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torch.onnx.export(model, (xt,), sys.argv[2], dynamo=False, opset_version=int(sys.argv[3]), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      export_modules_as_functions=functions)
"""


def _export_as_functions(model, xt, opset: int) -> onnx.ModelProto:
    """The TorchScript export with modules as ONNX local functions, in a child process: PyTorch's
    function extraction pass (torch._C._jit_pass_onnx_function_extraction) crashed the whole
    test run with a segfault twice in full-suite runs on a clean clone (after ~937 tests; never
    when the case runs alone). A crash is retried once, then the case is skipped, naming PyTorch's
    pass."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "model.pt", Path(tmp) / "model.onnx"
        torch.save((model, xt), src)
        for _ in range(2):
            r = subprocess.run([sys.executable, "-c", _AS_FUNCTIONS, str(src), str(out), str(opset)], capture_output=True,
                               text=True, timeout=600)
            if r.returncode == 0:
                return onnx.load(str(out))
            if r.returncode >= 0:  # an error, not a crash: report it
                raise RuntimeError(f"export with local functions failed: {r.stderr[-2000:]}")
        pytest.skip(f"PyTorch's TorchScript function extraction crashed twice (signal {-r.returncode}); not onnxattr")


def _case(model, exporter, opset, tol, relu_like=False, expect=(), marks=()):
    rl = "-relu_like" if relu_like else ""
    return pytest.param(model, exporter, opset, tol, relu_like, set(expect), id=f"{model}-{exporter}{opset}{rl}",
                        marks=marks)


# Measured float32 error: relative L2 of onnxattr (ORT float32) against the float64 reference, the
# worst over methods and exporters, and in brackets PyTorch's own float32 autograd against it:
TORCH_CASES = [
    # ViT: attention (batched MatMul, Softmax), LayerNormalization / its opset-14 decomposition,
    # Gelu (opset 20) / its Erf form, class token Concat + Gather; 5.1e-7 (5.4e-7)
    _case("vit_tiny", "ts", 20, 5e-6, expect={"LayerNormalization", "Gelu", "Softmax", "MatMul", "Gather"}),
    _case("vit_tiny", "ts", 14, 5e-6, expect={"ReduceMean", "Pow", "Sqrt", "Erf", "Where", "Expand"}),
    _case("vit_tiny", "dynamo", 18, 5e-6, expect={"LayerNormalization", "Erf"}, marks=slow),
    # DeiT with the distillation token (two heads averaged); 5.0e-7 (5.6e-7)
    _case("deit_tiny_distilled", "dynamo", 20, 5e-6, expect={"Gelu", "Slice"}),
    _case("deit_tiny_distilled", "ts", 17, 5e-6, expect={"LayerNormalization", "Erf"}, marks=slow),
    # Swin: window partition (Reshape/Transpose), shifted windows (Slice + Concat), the
    # TorchScript export's window padding computed from the shape (Pad, Mod); 4.3e-7 (4.5e-7)
    _case("swin_tiny_w4", "ts", 17, 5e-6, expect={"Pad", "LayerNormalization", "Slice", "Concat"}),
    _case("swin_tiny_w4", "dynamo", 20, 5e-6, expect={"Pad", "Gelu"}, marks=slow),
    # ConvNeXt: LayerNorm over channels with permutes, depthwise 7x7, GELU, LayerScale; the
    # dynamo export flattens its head through as_strided (Gather with computed indices); 4.8e-7 (4.7e-7)
    _case("convnext_atto", "ts", 13, 5e-6, expect={"ReduceMean", "Erf", "Transpose"}),
    _case("convnext_atto", "ts-fn", 17, 5e-6, expect={"LayerNormalization"}),
    _case("convnext_atto", "dynamo", 20, 5e-6, expect={"LayerNormalization", "Gather", "Gelu"}),
    # MLP-Mixer: token-mixing MatMul over transposed tokens; 3.4e-7 (3.9e-7)
    _case("mixer_small", "ts", 20, 5e-6, expect={"LayerNormalization", "MatMul", "Gelu"}),
    _case("mixer_small", "dynamo", 21, 5e-6, expect={"LayerNormalization", "Gelu"}, marks=slow),
    # EfficientNet-B0: SiLU as Sigmoid * Mul, squeeze-excite; 1.1e-6 (1.0e-6)
    _case("efficientnet_b0", "ts", 20, 1e-5, expect={"Sigmoid", "Mul", "ReduceMean"}),
    _case("efficientnet_b0", "dynamo", 20, 1e-5, expect={"Sigmoid"}, marks=slow),
    # EfficientNet-Lite0: ReLU6 only (Clip 0..6, the attribute form at opset 9); 1.0e-6 with one mask
    # pinned (PyTorch float32, unpinned, flips it too: 1.4e-3)
    _case("efficientnet_lite0", "ts", 9, 1e-5, relu_like=True, expect={"Clip"}),
    _case("efficientnet_lite0", "ts", 20, 1e-5, expect={"Clip"}),
    _case("efficientnet_lite0", "dynamo", 20, 1e-5, relu_like=True, expect={"Clip"}, marks=slow),
    # MobileNetV3: Relu, HardSwish, HardSigmoid (HardSwish decomposed before opset 14); timm 1.6e-6
    # (1.2e-6), torchvision 8.5e-7 (9.7e-7)
    _case("mobilenetv3_small", "ts", 20, 1e-5, expect={"Relu", "HardSwish", "HardSigmoid"}),
    _case("mobilenetv3_small", "ts", 13, 1e-5, relu_like=True, expect={"Relu", "HardSigmoid"}),
    _case("mobilenetv3_small", "dynamo", 20, 1e-5, expect={"Relu", "HardSwish"}, marks=slow),
    _case("tv_mobilenet_v3_small", "ts", 17, 1e-5, relu_like=True, expect={"Relu", "HardSwish", "HardSigmoid"}),
    # MobileNetV2: ReLU6 only: the rule applies with relu_like, else deconvnet = guided = saliency;
    # 8.5e-7 (9.5e-7)
    _case("tv_mobilenet_v2", "ts", 20, 1e-5, relu_like=True, expect={"Clip"}),
    _case("tv_mobilenet_v2", "ts", 11, 1e-5, expect={"Clip"}, marks=slow),
    # RegNet: grouped convs (RegNetY: squeeze-excite with Sigmoid); 7.9e-7 (7.8e-7)
    _case("regnetx_002", "ts", 20, 1e-5, expect={"Relu", "Conv"}),
    _case("regnetx_002", "dynamo", 20, 1e-5, expect={"Relu"}, marks=slow),
    _case("tv_regnet_y_400mf", "ts", 17, 1e-5, expect={"Sigmoid", "Relu"}, marks=slow),
    # ResNet-D: the avg-pool downsampling shortcut (AveragePool ceil_mode, count_include_pad=0); 4.8e-7
    # (5.6e-7)
    _case("resnet18d", "ts", 9, 1e-5, expect={"AveragePool", "MaxPool", "Relu"}),
    _case("resnet18d", "dynamo", 20, 1e-5, expect={"AveragePool", "MaxPool"}, marks=slow),
    _case("resnet50d", "ts", 17, 1e-5, expect={"AveragePool"}, marks=slow),
    # Inception-v3: factorised asymmetric convs, pools of several kinds, 94 Relus; 8.8e-7 (1.0e-6)
    _case("inception_v3", "ts", 20, 1e-5, expect={"AveragePool", "MaxPool", "Concat"}, marks=slow),
    _case("inception_v3", "dynamo", 20, 1e-5, expect={"AveragePool", "MaxPool"}, marks=slow),
    # MViTv2: pooled attention, relative positions written by index_put (the TorchScript export's
    # ScatterND, indices computed from shapes: the run-time winner test); 8.1e-7 (1.0e-6)
    _case("mvitv2_tiny", "ts", 17, 1e-5, expect={"ScatterND", "MaxPool", "Einsum"}),
    # VOLO: outlook attention gathers each window with Unfold and adds them back with Fold, which
    # only torch.export exports (Col2Im); 8.7e-7 (7.5e-7)
    _case("volo_d1", "dynamo", 18, 1e-5, expect={"Col2Im", "Softmax"}),
    # Session 17's sweep (46 timm families, TorchScript opset 17 and dynamo 18, 4.1e-6 at most,
    # each as PyTorch's own float32): a few whose structure the cases above lack, in the extended
    # suite. Sequencer2D: bidirectional LSTMs along rows and columns; 7.3e-7
    _case("sequencer2d_s", "ts", 17, 1e-5, expect={"LSTM", "Transpose"}, marks=slow),
    # NFNet: each Conv's weight standardised in the graph by a BatchNormalization over the
    # reshaped weight (not on the input's path), GELU, squeeze-excite; 1.2e-6
    _case("dm_nfnet_f0", "dynamo", 18, 1e-5, expect={"BatchNormalization", "Relu", "Sigmoid"}, marks=slow),
    # LeViT: BatchNorm after linear layers, HardSwish, attention with learned biases; 5.8e-7
    _case("levit_128s", "dynamo", 23, 1e-5, expect={"BatchNormalization", "HardSwish", "Softmax"}, marks=slow),
    # CrossViT: two patch sizes, the second branch's input resized bicubically; 7.1e-7
    _case("crossvit_tiny_240", "dynamo", 18, 1e-5, expect={"Resize", "Softmax"}, marks=slow),
    # DPN: dual paths, channel Slices and Concats, grouped Convs, 72 Relus; 9.6e-7
    _case("dpn68", "ts", 17, 1e-5, expect={"Relu", "Slice", "Concat", "MaxPool"}, marks=slow),
    # EVA-02: rotary position embedding written out (Neg, Concat), opset 23's Attention; 2.7e-7
    _case("eva02_tiny", "dynamo", 23, 5e-6, expect={"Attention", "Neg"}, marks=slow),
    # MobileViT: feature maps unfolded into patches and back by Reshape / Transpose; 1.9e-6
    _case("mobilevit_xxs", "ts", 17, 1e-5, expect={"Softmax", "Transpose"}, marks=slow),
]


@pytest.mark.parametrize("name, exporter, opset, tol, relu_like, expect", TORCH_CASES)
def test_torch_model(name, exporter, opset, tol, relu_like, expect):
    model = build_torch(name)
    size = MODELS[name][1]
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    proto = export_torch(model, x, exporter, opset)
    assert {i.version for i in proto.opset_import if i.domain in ("", "ai.onnx")} == {opset}
    if exporter == "ts-fn":
        assert proto.functions, "the export has no local functions to inline"
    kinds = ops(proto)
    assert expect <= kinds, f"the export lacks {expect - kinds}: the case no longer tests what it says"
    assert_covered(proto)
    inlined = onnxattr.api.load_model(proto)
    relus, clips0 = sum(n.op_type == "Relu" for n in inlined.graph.node), relu6_count(inlined)
    methods = METHODS if relus or (relu_like and clips0) else ("saliency",)
    for method in methods:
        got, pinned = attribution(proto, {"input": x}, method, relu_like, pin=True)
        ref, rules = torch_gradient(model, x, method, relu_like, pinned)
        if method != "saliency":  # every Relu (and ReLU6) of the graph got the rule in PyTorch too
            assert rules.relu == relus and rules.relu6 >= (clips0 if relu_like else 0), (rules.relu, relus)
        err = rel_err(got, ref)
        assert err < tol, f"{method}: relative error {err:.2e} (tolerance {tol:.0e})"


@pytest.mark.parametrize("name, opset", [
    ("resnet18", 17),  # strided Convs, MaxPool with pads, residual Adds
    ("mobilenet_v2", 13),  # strided depthwise Convs, ReLU6
    ("mobilenet_v2", 11),  # residual Adds with ReduceSum axes as attributes: their lengths proven equal
    pytest.param("densenet121", 17, marks=slow),  # AveragePool in the transitions
    pytest.param("efficientnet_b0", 17, marks=slow),  # SiLU, squeeze-excitation
    # timm (MODELS): AveragePool whose windows count different numbers of elements
    ("resnet18d", 17),  # shortcut AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)
    pytest.param("resnet50d", 17, marks=slow),
    ("poolformer_s12", 17),  # AvgPool2d(3, 1, 1, count_include_pad=False)
    ("tf_mobilenetv3_small_100", 17),  # Pads whose amounts are computed from the size at run time
    ("tiny_vit_5m_224", 17),  # Slices whose ends are computed from the size at run time
])
def test_dynamic_image_size(name, opset):
    """torchvision classifiers (timm ones where MODELS has them) exported with the image's height
    and width dynamic (as tutorials export them), run at even and odd sizes: every method against
    float64 autograd, masks pinned at float32 near-ties (ResNet-18 at 67 x 71 has one). They were
    refused ("needs a static shape"; ResNet-D and PoolFormer: "only windows that all count the
    same elements"; timm's TensorFlow ports, whose Pads are computed from the size: "pads must be
    a constant"; TinyViT, whose Slices are: "ends must be a constant"). Measured: 7.6e-7 at most
    (EfficientNet-B0), 6.1e-7 for ResNet-18, 3.5e-7 ResNet-18-D, 4.7e-7 ResNet-50-D, 6.5e-7
    PoolFormer-S12, 1.7e-6 tf_mobilenetv3_small_100, 7.5e-7 TinyViT-5M."""
    import torchvision

    torch.manual_seed(0)
    model = build_torch(name) if name in MODELS else getattr(torchvision.models, name)(num_classes=10).eval()
    xt = torch.randn(1, 3, 64, 64)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (xt,), buf, dynamo=False, opset_version=opset, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "N", 2: "H", 3: "W"}})
    proto = onnx.load_from_string(buf.getvalue())
    assert [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim] == ["N", "", "H", "W"]
    has_relu = any(n.op_type == "Relu" for n in proto.graph.node)
    for h, w in ((64, 64), (67, 71), (80, 59)):
        x = np.random.default_rng(h).standard_normal((2, 3, h, w)).astype(np.float32)
        for method in METHODS if has_relu else ("saliency",):
            got, pinned = attribution(proto, {"input": x}, method, pin=True)
            ref, _ = torch_gradient(model, x, method, pinned=pinned)
            err = rel_err(got, ref)
            assert err < 1e-5, f"{method} at {h}x{w}: relative error {err:.2e}"


def test_hrnet_dynamic_image_size():
    """HRNet fuses its branches by nearest upsampling (Resize by scales 2, 4, 8): exported with the
    image's size dynamic it was refused ("needs a static shape"); the upsampling's gradient sums
    each copied block. Every method against float64 autograd at two sizes (multiples of 32, as
    HRNet needs), masks pinned. Measured: 7.7e-7 at most."""
    model = build_torch("hrnet_w18_small")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), buf, dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "N", 2: "H", 3: "W"}})
    proto = onnx.load_from_string(buf.getvalue())
    assert "Resize" in ops(proto)
    for h, w in ((64, 64), (96, 128)):
        x = np.random.default_rng(h).standard_normal((2, 3, h, w)).astype(np.float32)
        for method in METHODS:
            got, pinned = attribution(proto, {"input": x}, method, pin=True)
            ref, _ = torch_gradient(model, x, method, pinned=pinned)
            err = rel_err(got, ref)
            assert err < 1e-5, f"{method} at {h}x{w}: relative error {err:.2e}"


def test_relu_like_rule_changes_relu6_models_only():
    """MobileNetV2 has ReLU6 (Clip) and no Relu: deconvnet is the exact gradient by default and
    differs from it with relu_like; the PyTorch reference applies the rule at F.hardtanh(0, 6)."""
    model = build_torch("tv_mobilenet_v2")
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    proto = export_torch(model, x, "ts", 17)
    plain = attribution(proto, {"input": x}, "deconvnet")
    exact = attribution(proto, {"input": x}, "saliency")
    np.testing.assert_array_equal(plain, exact)
    rule, pinned = attribution(proto, {"input": x}, "deconvnet", relu_like=True, pin=True)
    ref, rules = torch_gradient(model, x, "deconvnet", relu_like=True, pinned=pinned)
    assert rules.relu6 == relu6_count(proto) > 0
    assert rel_err(rule, ref) < 1e-5 and rel_err(rule, exact) > 0.1


def test_coverage_cli_on_an_export(tmp_path):
    from click.testing import CliRunner

    from onnxattr.cli import main

    model = build_torch("vit_tiny")
    x = np.zeros((1, 3, 32, 32), np.float32)
    path = tmp_path / "vit.onnx"
    onnx.save(export_torch(model, x, "ts", 17), str(path))
    res = CliRunner().invoke(main, ["coverage", str(path), "--json"])
    assert res.exit_code == 0, res.output
    import json

    report = json.loads(res.output)
    assert report["missing"] == 0
    assert {"LayerNormalization", "Softmax", "MatMul"} <= {r["op_type"] for r in report["ops"] if r["has_rule"]}


# ---------------------------------------------------------------- Keras via tf2onnx
def _keras_model(tf, dtype: str, relu):
    """A small NHWC CNN: zero padding, Conv2D + ReLU, asymmetric ZeroPadding2D before MaxPool
    (a standalone Pad), strided 'same' Conv2D, BatchNormalization, Dense layers, softmax."""
    L = tf.keras.layers
    inp = tf.keras.Input((16, 16, 3), name="image", dtype=dtype)
    x = L.ZeroPadding2D(1, dtype=dtype)(inp)
    x = L.Conv2D(8, 3, dtype=dtype)(x)
    x = L.Activation(relu, dtype=dtype)(x)
    x = L.ZeroPadding2D(((0, 1), (1, 0)), dtype=dtype)(x)
    x = L.MaxPooling2D(2, dtype=dtype)(x)
    x = L.Conv2D(8, 3, padding="same", strides=2, dtype=dtype)(x)
    x = L.BatchNormalization(dtype=dtype)(x)
    x = L.Activation(relu, dtype=dtype)(x)
    x = L.Flatten(dtype=dtype)(x)
    x = L.Dense(16, dtype=dtype)(x)
    x = L.Activation(relu, dtype=dtype)(x)
    out = L.Dense(5, activation="softmax", dtype=dtype)(x)
    return tf.keras.Model(inp, out)


def _tf_gradient(tf, model64, x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """d sum_n model64(x)[n, target[n]] / d x in float64, by tf.GradientTape."""
    xt = tf.constant(x.astype(np.float64))
    with tf.GradientTape() as tape:
        tape.watch(xt)
        picked = tf.reduce_sum(tf.gather(model64(xt), target, axis=1, batch_dims=1))
    return tape.gradient(picked, xt).numpy()


def _keras_twins(keras, build, seed: int):
    """(model32, model64): build() with Keras' random initial weights drawn from `seed`, and again
    in float64 holding the same weights."""
    keras.utils.set_random_seed(seed)
    model32 = build()
    keras.config.set_dtype_policy("float64")
    try:
        model64 = build()
    finally:
        keras.config.set_dtype_policy("float32")
    model64.set_weights([w.astype(np.float64) for w in model32.get_weights()])
    return model32, model64


def _tf_gradcam(tf, keras, model64, layer: str, x: np.ndarray, target) -> np.ndarray:
    """Grad-CAM [N, 1, ...] at the channels-last Keras layer `layer` in float64 (GradientTape)."""
    sub = keras.Model(model64.inputs, [model64.get_layer(layer).output, model64.output])
    with tf.GradientTape() as tape:
        act, y = sub(tf.constant(x.astype(np.float64)))
        picked = tf.reduce_sum(tf.gather(y, target, axis=1, batch_dims=1))
    g, act = tape.gradient(picked, act).numpy(), act.numpy()
    spatial = tuple(range(1, act.ndim - 1))
    return np.maximum((g.mean(spatial, keepdims=True) * act).sum(-1), 0)[:, None]


def _tf_rule_relu(tf, method):
    @tf.custom_gradient
    def relu(z):
        y = tf.nn.relu(z)

        def grad(g):
            mask = tf.cast(z > 0, g.dtype)
            if method == "saliency":
                return g * mask
            return tf.nn.relu(g) * (mask if method == "guided" else 1.0)

        return y, grad

    return relu


@pytest.mark.parametrize("opset", [9, 13, pytest.param(17, marks=slow)])
def test_keras_tf2onnx(opset):
    # Measured: 1.0e-7 to 1.1e-7 (every method and opset).
    tf = pytest.importorskip("tensorflow")
    tf2onnx = pytest.importorskip("tf2onnx")
    model32 = _keras_model(tf, "float32", "relu")
    rng = np.random.default_rng(1)
    weights = []
    for w in model32.get_weights():
        weights.append((rng.standard_normal(w.shape) * (0.3 if w.ndim > 1 else 0.2)).astype(np.float32))
    bn = next(layer for layer in model32.layers if isinstance(layer, tf.keras.layers.BatchNormalization))
    var_index = [id(v) for v in model32.weights].index(id(bn.moving_variance))
    weights[var_index] = (rng.random(weights[var_index].shape) + 0.5).astype(np.float32)
    model32.set_weights(weights)
    spec = [tf.TensorSpec((None, 16, 16, 3), tf.float32, name="image")]
    proto, _ = tf2onnx.convert.from_keras(model32, input_signature=spec, opset=opset)
    assert {"Transpose", "Pad", "MatMul", "Add", "Softmax", "Relu", "MaxPool"} <= ops(proto)
    assert_covered(proto)
    x = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
    name, target = proto.graph.input[0].name, np.array([1, 3])
    for method in METHODS:
        model64 = _keras_model(tf, "float64", _tf_rule_relu(tf, method))
        model64.set_weights([w.astype(np.float64) for w in weights])
        ref = _tf_gradient(tf, model64, x, target)
        err = rel_err(attribution(proto, {name: x}, method, target=target), ref)
        assert err < 2e-6, f"{method}: relative error {err:.2e}"


def _keras_dynamic_model(tf, dtype: str, relu):
    """An NHWC CNN over any image size, Input((None, None, 3)): padding="same" everywhere, which
    tf2onnx writes as auto_pad SAME_UPPER: strided 3x3 Conv2D, strided DepthwiseConv2D, a 3x3
    stride-2 MaxPooling2D, a stride-1 Conv2D and a residual Add, a 1x1 stride-2 Conv2D, a 3x3
    stride-2 AveragePooling2D (pads not counted), a 3x2 Conv2D of stride 3x2, then global average
    pooling."""
    L = tf.keras.layers
    inp = tf.keras.Input((None, None, 3), name="image", dtype=dtype)
    x = L.Activation(relu, dtype=dtype)(L.Conv2D(8, 3, strides=2, padding="same", dtype=dtype)(inp))
    x = L.Activation(relu, dtype=dtype)(L.DepthwiseConv2D(3, strides=2, padding="same", dtype=dtype)(x))
    x = L.MaxPooling2D(3, strides=2, padding="same", dtype=dtype)(x)
    r = L.Conv2D(8, 3, padding="same", dtype=dtype)(x)
    x = L.Activation(relu, dtype=dtype)(L.Add(dtype=dtype)([x, r]))
    x = L.Activation(relu, dtype=dtype)(L.Conv2D(6, 1, strides=2, padding="same", dtype=dtype)(x))
    x = L.AveragePooling2D(3, strides=2, padding="same", dtype=dtype)(x)
    x = L.Conv2D(6, (3, 2), strides=(3, 2), padding="same", dtype=dtype)(x)
    x = L.GlobalAveragePooling2D(dtype=dtype)(x)
    out = L.Dense(5, dtype=dtype)(x)
    return tf.keras.Model(inp, out)


def test_keras_tf2onnx_dynamic_image_size():
    """Keras CNNs over a dynamic image size were refused at their first padding="same" layer
    (auto_pad SAME_UPPER: the pads depend on the run-time size); now the gradient takes its crop
    (and an average's counts) from the run-time size. One export, checked at three sizes (odd,
    even, mixed: different pads) against float64 GradientTape for every method. Measured: 8.0e-8
    to 1.2e-7."""
    tf = pytest.importorskip("tensorflow")
    tf2onnx = pytest.importorskip("tf2onnx")
    model32 = _keras_dynamic_model(tf, "float32", "relu")
    rng = np.random.default_rng(2)
    weights = [(rng.standard_normal(w.shape) * (0.4 if w.ndim > 1 else 0.2)).astype(np.float32)
               for w in model32.get_weights()]
    model32.set_weights(weights)
    spec = [tf.TensorSpec((None, None, None, 3), tf.float32, name="image")]
    proto, _ = tf2onnx.convert.from_keras(model32, input_signature=spec, opset=17)
    same = [n for n in proto.graph.node if any(a.name == "auto_pad" and a.s == b"SAME_UPPER" for a in n.attribute)]
    assert len(same) == 7, [n.op_type for n in same]  # tf2onnx writes the 1x1 one as VALID (the same lengths)
    name, target = proto.graph.input[0].name, np.array([1, 3])
    for method in METHODS:
        model64 = _keras_dynamic_model(tf, "float64", _tf_rule_relu(tf, method))
        model64.set_weights([w.astype(np.float64) for w in weights])
        for h, w in ((45, 37), (32, 32), (19, 50)):
            x = rng.standard_normal((2, h, w, 3)).astype(np.float32)
            ref = _tf_gradient(tf, model64, x, target)
            err = rel_err(attribution(proto, {name: x}, method, target=target), ref)
            assert err < 1e-6, f"{method} {h}x{w}: relative error {err:.2e}"


@pytest.mark.parametrize("app", [pytest.param(a, marks=slow) for a in
                                 ("MobileNetV2", "EfficientNetB0", "InceptionV3", "Xception")])
def test_keras_applications_dynamic_image_size(app):
    """Keras applications built for any image size (input_shape=(None, None, 3), random weights,
    average pooling and a Dense head), through tf2onnx with the image's size dynamic: saliency at
    two sizes against float64 GradientTape (the same weights in a float64 build). They were
    refused at their first padding="same" layer. Measured: 1.1e-6 to 2.7e-6, as TensorFlow's own
    float32 gradient (1.2e-6 to 3.1e-6). ResNet50 is left out: at these sizes one of its residual
    sums is a float32 near-tie (0 in one float32 evaluation, 2.2e-8 in another, of values up to
    0.8), whose ReLU mask flips with the order of the additions, and Keras models give no way to
    pin the masks as the PyTorch tests do; its fixed-size export agrees with float64 to 9.5e-7."""
    tf = pytest.importorskip("tensorflow")
    tf2onnx = pytest.importorskip("tf2onnx")
    keras = tf.keras

    def build():
        base = getattr(keras.applications, app)(include_top=False, weights=None, input_shape=(None, None, 3),
                                                 pooling="avg")
        return keras.Model(base.input, keras.layers.Dense(10)(base.output))

    model32, model64 = _keras_twins(keras, build, 3)
    rng = np.random.default_rng(3)
    spec = [tf.TensorSpec((None, None, None, 3), tf.float32, name="image")]
    proto, _ = tf2onnx.convert.from_keras(model32, input_signature=spec, opset=17)
    name, target = proto.graph.input[0].name, np.array([3])
    for h, w in ((97, 113), (80, 80)):
        x = rng.uniform(-1, 1, (1, h, w, 3)).astype(np.float32)
        ref = _tf_gradient(tf, model64, x, target)
        err = rel_err(attribution(proto, {name: x}, "saliency", target=target), ref)
        assert err < 5e-6, f"{app} {h}x{w}: relative error {err:.2e}"


def _keras_cam_model(keras, head: str):
    """Small Keras CNNs whose last activation tf2onnx leaves as the Keras models have them:
    "hard_swish", MobileNetV3's head (x * relu6(x + 3) / 6, left channels-last before
    GlobalAveragePooling2D(keepdims=True), then a 1x1 Conv2D to the classes and Flatten);
    "se_dynamic", EfficientNet's squeeze-and-excitation block and swish with the image's size
    dynamic (the SE block's pool written as GlobalAveragePool -> Squeeze -> Reshape [-1, C, 1, 1]);
    "convnext_dynamic", ConvNeXt's block (DepthwiseConv2D, LayerNormalization, Dense layers on the
    map, residual sum), dynamic size."""
    L = keras.layers
    dynamic = head.endswith("dynamic")
    inp = keras.Input((None, None, 3) if dynamic else (24, 24, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same")(inp)
    if head == "convnext_dynamic":  # its Dense layers on the map: tf2onnx's Tensordot, Reshape targets from Shape
        r = x
        x = L.LayerNormalization()(L.DepthwiseConv2D(3, padding="same")(x))
        x = L.Activation("relu", name="mid")(L.Dense(20)(x))
        x = L.Add(name="last")([r, L.Dense(8)(x)])
        return keras.Model(inp, L.Dense(5)(L.GlobalAveragePooling2D()(x)))
    if dynamic:
        x = L.Activation("swish")(x)
        s = L.GlobalAveragePooling2D()(x)
        s = L.Reshape((1, 1, 8))(s)
        s = L.Conv2D(4, 1, activation="swish")(s)
        s = L.Conv2D(8, 1, activation="sigmoid")(s)
        x = L.Multiply()([x, s])
        x = L.Conv2D(12, 1)(x)
        x = L.Activation("swish", name="last")(x)
        return keras.Model(inp, L.Dense(5)(L.GlobalAveragePooling2D()(x)))
    x = L.Conv2D(12, 3, padding="same")(x)
    x = L.Multiply(name="last")([x, L.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)])
    x = L.GlobalAveragePooling2D(keepdims=True)(x)
    x = L.Conv2D(5, 1)(x)
    return keras.Model(inp, L.Flatten()(x))


@pytest.mark.parametrize("head", ["hard_swish", "se_dynamic", "convnext_dynamic"])
def test_keras_gradcam_default_layer(head):
    """Grad-CAM on Keras models through tf2onnx: the default layer is the last activation (its
    ONNX tensor channels-last [N, h, w, K] for MobileNetV3's head; channels-first after tf2onnx's
    Transposes for the other), against float64 GradientTape Grad-CAM at that Keras layer. Before,
    MobileNetV3's head gave the classes' 1x1 Conv (a constant map), and with a dynamic size the
    squeeze-and-excitation block's Reshape lost the batch axis, so the default fell back to the
    first activation. In the ConvNeXt block (its Dense layers on the map as tf2onnx's Tensordot,
    Reshape targets read by Shape: test_shapes follows those lengths) the channels-last activation
    between the Dense layers ("mid") is also asked for explicitly (it was read channels-first:
    cam [N, 1, w, C]). Measured: cam 2.1e-7
    (hard_swish), 1.7e-7 (se_dynamic), 1.8e-7 and 3.3e-7 (convnext_dynamic, default and mid)."""
    tf = pytest.importorskip("tensorflow")
    tf2onnx = pytest.importorskip("tf2onnx")
    keras = tf.keras
    model32, model64 = _keras_twins(keras, lambda: _keras_cam_model(keras, head), 4)
    size = None if head == "se_dynamic" else 24
    spec = [tf.TensorSpec((None, size, size, 3), tf.float32, name="image")]
    proto, _ = tf2onnx.convert.from_keras(model32, input_signature=spec, opset=17)
    x = np.random.default_rng(5).uniform(-1, 1, (2, 20 if size is None else 24, 24, 3)).astype(np.float32)
    t = [1, 4]
    layers = {"last": None}
    if head == "convnext_dynamic":
        layers["mid"] = next(n.output[0] for n in proto.graph.node if n.op_type == "Relu" and "mid" in n.output[0])
    for keras_layer, name in layers.items():
        ex = onnxattr.Explainer(proto, method="gradcam", provider="cpu", layer=name)
        assert "last" in ex.layer if name is None else ex.layer == name, ex.layer
        out = ex.run(x, t)
        cam = _tf_gradcam(tf, keras, model64, keras_layer, x, t)  # [N, 1, h, w]
        assert out["cam"].shape == cam.shape and out["attribution"].shape == x.shape[:3] + (1,)
        assert (cam.reshape(2, -1).max(1) > 1e-3 * np.abs(cam).max()).all()
        assert rel_err(out["cam"], cam) < 2e-6, (keras_layer, rel_err(out["cam"], cam))


@pytest.mark.parametrize("between", ["dense", "layernorm"])
def test_keras_conv1d_gradcam(between):
    """A Keras Conv1D classifier (signal [N, L, C], channels-last) with a Dense or a
    LayerNormalization between its Conv1D and GlobalAveragePooling1D, through tf2onnx (the Conv1D
    as Unsqueeze, Transpose, 2-D Conv, Transpose, Squeeze; the LayerNorm's means as
    GlobalAveragePools over the last axis). The default layer is the Conv1D's activation (it was
    refused: no trail from the Squeeze was followed), and the LayerNorm's output asked for
    explicitly is read channels-last (the global pools' weak hint of axis 1 disagreed with the
    Conv's, so it was read channels-first: cam [N, 1, K]). Against float64 GradientTape."""
    tf = pytest.importorskip("tensorflow")
    tf2onnx = pytest.importorskip("tf2onnx")
    keras = tf.keras
    L = keras.layers

    def build():
        inp = keras.Input((60, 4))
        h = L.Conv1D(8, 5, strides=2, activation="relu", name="conv")(inp)
        h = L.Dense(6, name="pre")(h) if between == "dense" else L.LayerNormalization(name="pre")(h)
        return keras.Model(inp, L.Dense(6)(L.GlobalAveragePooling1D()(h)))

    model32, model64 = _keras_twins(keras, build, 6)
    proto, _ = tf2onnx.convert.from_keras(model32, input_signature=[tf.TensorSpec((None, 60, 4), tf.float32, name="x")],
                                          opset=17)
    x = np.random.default_rng(6).normal(size=(2, 60, 4)).astype(np.float32)
    t = [1, 4]
    layers = {"conv": None}
    if between == "layernorm":
        pool = next(n for n in proto.graph.node if n.op_type == "ReduceMean")
        layers["pre"] = pool.input[0]
    for keras_layer, name in layers.items():
        ex = onnxattr.Explainer(proto, method="gradcam", provider="cpu", layer=name)
        out = ex.run(x, t)
        cam = _tf_gradcam(tf, keras, model64, keras_layer, x, t)  # [N, 1, l]
        assert out["cam"].shape == cam.shape, (keras_layer, ex.layer)
        assert (cam.reshape(2, -1).max(1) > 1e-3 * np.abs(cam).max()).all()
        assert rel_err(out["cam"], cam) < 2e-6, (keras_layer, rel_err(out["cam"], cam))


# ---------------------------------------------------------------- scikit-learn via skl2onnx
def _mlp():
    sk = pytest.importorskip("sklearn.neural_network")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 6)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] ** 2 > 0.5).astype(int) + (X[:, 2] > 0)  # 3 classes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not converged: irrelevant for a gradient test
        return sk.MLPClassifier(hidden_layer_sizes=(16, 8), max_iter=50, random_state=0).fit(X, y), X[:4]


def _mlp_gradient(clf, X, target, method):
    """The method's gradient of predict_proba(X)[n, target[n]] w.r.t. X, by hand, in float64."""
    Ws = [w.astype(np.float64) for w in clf.coefs_]
    bs = [b.astype(np.float64) for b in clf.intercepts_]
    h, pre = X.astype(np.float64), []
    for W, b in zip(Ws[:-1], bs[:-1]):
        pre.append(h @ W + b)
        h = np.maximum(pre[-1], 0)
    z = h @ Ws[-1] + bs[-1]
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(p.shape[1])[target]
    g = p * (onehot - p[np.arange(len(p)), target][:, None])  # d p_t / d z = p_t (e_t - p)
    g = g @ Ws[-1].T
    for W, a in zip(reversed(Ws[:-1]), reversed(pre)):
        mask = (a > 0).astype(np.float64)
        g = g * mask if method == "saliency" else np.maximum(g, 0) * (mask if method == "guided" else 1)
        g = g @ W.T
    return g


@pytest.mark.parametrize("opset", [9, 13, 21])
def test_sklearn_mlp_skl2onnx(opset):
    # Measured: 6.7e-8 to 7.6e-8 (every method and opset).
    skl2onnx = pytest.importorskip("skl2onnx")
    clf, X = _mlp()
    target = np.array([0, 2, 1, 2])
    proto = skl2onnx.to_onnx(clf, X[:1], options={id(clf): {"zipmap": False}}, target_opset=opset)
    assert [o.name for o in proto.graph.output] == ["label", "probabilities"]  # label first: an int64 [N]
    assert_covered(proto)
    am_feeds = {proto.graph.input[0].name: X}
    for method in METHODS:
        am = onnxattr.attribution_model(proto, method=method)
        sess = ort.InferenceSession(am.SerializeToString(), providers=["CPUExecutionProvider"])
        got = sess.run(["attribution"], {**am_feeds, "target": target})[0]
        err = rel_err(got, _mlp_gradient(clf, X, target, method))
        assert err < 2e-6, f"{method}: relative error {err:.2e}"


def test_sklearn_mlp_zipmap():
    skl2onnx = pytest.importorskip("skl2onnx")
    clf, X = _mlp()
    proto = skl2onnx.to_onnx(clf, X[:1])  # default: probabilities as a ZipMap (sequence of maps)
    zipmap = next(n for n in proto.graph.node if n.op_type == "ZipMap")
    with pytest.raises(onnxattr.NotAClassifierError) as err:
        onnxattr.attribution_model(proto)
    assert f"--output {zipmap.input[0]}" in str(err.value) and "ZipMap" in str(err.value)
    am = onnxattr.attribution_model(proto, output=zipmap.input[0])  # the original outputs stay
    sess = ort.InferenceSession(am.SerializeToString(), providers=["CPUExecutionProvider"])
    target = np.array([1, 0, 2, 1])
    out = dict(zip([o.name for o in am.graph.output], sess.run(None, {proto.graph.input[0].name: X, "target": target})))
    assert isinstance(out["output_probability"], list) and len(out["output_probability"]) == len(X)
    assert rel_err(out["attribution"], _mlp_gradient(clf, X, target, "saliency")) < 2e-6


def test_sklearn_logistic_regression_through_zipmap():
    """LogisticRegression (LinearClassifier + Normalizer, domain ai.onnx.ml: tests/test_ml.py)
    with skl2onnx's default ZipMap: without --output the error points at the probability tensor
    (ZipMap makes maps of it); with it, the attribution is that of the model without ZipMap (ONNX
    infers no shape for the Normalizer's output there: declared by shapes.ml_shapes). Before the
    rules, the ai.onnx.ml node was named as the cause."""
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.linear_model import LogisticRegression

    X = np.random.default_rng(0).standard_normal((30, 4)).astype(np.float32)
    clf = LogisticRegression(max_iter=200).fit(X, np.arange(30) % 3)
    proto = skl2onnx.to_onnx(clf, X[:1])
    zipmap = next(n for n in proto.graph.node if n.op_type == "ZipMap")
    with pytest.raises(onnxattr.NotAClassifierError, match=f"ZipMap .*pass --output {zipmap.input[0]}"):
        onnxattr.attribution_model(proto)
    plain = skl2onnx.to_onnx(clf, X[:1], options={id(clf): {"zipmap": False}})
    target = np.array([0, 1, 2, 1])
    got = onnxattr.Explainer(proto, provider="cpu", output=zipmap.input[0])(X[:4], target)
    want = onnxattr.Explainer(plain, provider="cpu")(X[:4], target)
    assert np.abs(want).max() > 1e-3
    np.testing.assert_array_equal(got, want)


class _SpatialTransformer(torch.nn.Module):
    """A small localisation net predicts an affine theta (near the identity), affine_grid and
    grid_sample resample the input (AffineGrid and GridSample at opset 20), then a classifier."""

    def __init__(self, mode: str, padding: str):
        super().__init__()
        nn = torch.nn
        self.mode, self.padding = mode, padding
        self.loc = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6))
        self.head = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 8))
        with torch.no_grad():
            self.loc[-1].weight.mul_(0.3)
            self.loc[-1].bias.copy_(torch.tensor([1.0, 0.1, 0.0, -0.1, 0.9, 0.0]))

    def forward(self, x):
        theta = self.loc(x).view(-1, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return self.head(F.grid_sample(x, grid, mode=self.mode, padding_mode=self.padding, align_corners=False))


@pytest.mark.parametrize("mode, padding", [("bilinear", "zeros"), ("bilinear", "border"), ("bilinear", "reflection"),
                                           ("nearest", "zeros")])
def test_spatial_transformer(mode, padding):
    """The grid depends on the input through the localisation net, so both of GridSample's
    gradients (the input's, the grid's) and AffineGrid's reach it; every method, against float64
    autograd. Measured 1.4e-6 (max-relative; PyTorch's own float32 1.2e-6)."""
    torch.manual_seed(0)
    model = _SpatialTransformer(mode, padding).eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    proto = export_torch(model, x, "ts", 20)
    assert {"AffineGrid", "GridSample"} <= ops(proto)
    for method in METHODS:
        got, pinned = attribution(proto, {"input": x}, method, pin=True)
        ref, _ = torch_gradient(model, x, method, False, pinned)
        err = rel_err(got, ref)
        assert err < 1e-5, f"{method}: relative error {err:.2e}"
        model.float()


class _ResizesItsInput(torch.nn.Module):
    """A deployment wrapper's first step: any image resized to 32 x 32 with antialiasing
    (F.interpolate(antialias=True): Resize with antialias=1 at opset 18, through torch.export)."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode
        self.conv, self.fc = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 10)

    def forward(self, x):
        x = F.interpolate(x, size=(32, 32), mode=self.mode, antialias=True, align_corners=False)
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_antialiased_resize_of_the_input(mode):
    """Downsampling 75 x 90 to 32 x 32 (kernels stretched to 3-6 taps), against float64
    autograd."""
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = _ResizesItsInput(mode).eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 75, 90)).astype(np.float32)
    proto = export_torch(model, x, "dynamo", 18)
    assert any(n.op_type == "Resize" and any(a.name == "antialias" and a.i for a in n.attribute) for n in proto.graph.node)
    got = attribution(proto, {"input": x}, "saliency")
    ref, _ = torch_gradient(model, x, "saliency")
    assert rel_err(got, ref) < 1e-5, rel_err(got, ref)  # measured 6.8e-8 and 8.4e-8 (relative L2)


class _Spectrogram(torch.nn.Module):
    """An audio classifier on the raw waveform: log(1 + power spectrogram) (torch.stft, Hann
    window of 64, hop 16: ONNX STFT through torch.export), mean over time, a linear layer."""

    def __init__(self):
        super().__init__()
        self.register_buffer("window", torch.hann_window(64))
        self.fc = torch.nn.Linear(33, 10)

    def forward(self, wav):
        spec = torch.stft(wav, n_fft=64, hop_length=16, window=self.window, center=False, return_complex=True)
        return self.fc(torch.log(spec.abs().pow(2) + 1.0).mean(2))


def test_spectrogram_of_the_waveform():
    """Attribution to the waveform through STFT, |.|^2 (ReduceL2, Pow), Log: 410 samples, 22 frames
    covering the first 400 (the last 10 get no gradient), against float64 autograd. Measured
    4.6e-7 (relative L2; PyTorch float32 2.1e-7)."""
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = _Spectrogram().eval()
    x = np.random.default_rng(0).standard_normal((2, 410)).astype(np.float32)
    proto = export_torch(model, x, "dynamo", 18)
    assert "STFT" in ops(proto)
    got = attribution(proto, {"input": x}, "saliency")
    ref, _ = torch_gradient(model, x, "saliency")
    assert rel_err(got, ref) < 5e-6, rel_err(got, ref)
    assert not got[:, 400:].any() and not ref[:, 400:].any() and np.abs(got).max() > 0


def test_stft_without_its_onesided_attribute():
    """ONNX's shape inference takes an STFT without `onesided` for two-sided (8 bins for frames of
    8), the spec and ONNX Runtime for onesided (5): the backward was sized for 8 and did not run
    ('Incompatible dimensions'). The shape skeleton now writes the default out; the attribution
    equals that of the same model with onesided=1 written."""
    hann = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(8) / 8)).astype(np.float32)

    def model(attrs):
        nodes = [helper.make_node("Unsqueeze", ["x", "ax"], ["x3"]), helper.make_node("STFT", ["x3", "step", "w"], ["s"], **attrs),
                 helper.make_node("ReduceL2", ["s", "last"], ["mag"], keepdims=0),
                 helper.make_node("ReduceMean", ["mag", "one"], ["feat"], keepdims=0), helper.make_node("MatMul", ["feat", "W"], ["y"])]
        inits = [numpy_helper.from_array(np.array([2], np.int64), "ax"), numpy_helper.from_array(np.array(3, np.int64), "step"),
                 numpy_helper.from_array(hann, "w"), numpy_helper.from_array(np.array([3], np.int64), "last"),
                 numpy_helper.from_array(np.array([1], np.int64), "one"),
                 numpy_helper.from_array(np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32), "W")]
        g = helper.make_graph(nodes, "stft", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 37])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)

    x = np.random.default_rng(1).standard_normal((2, 37)).astype(np.float32)
    got = attribution(model({}), {"x": x}, "saliency", target=np.array([0, 1]))
    want = attribution(model({"onesided": 1}), {"x": x}, "saliency", target=np.array([0, 1]))
    assert np.abs(want).max() > 0
    np.testing.assert_array_equal(got, want)


class _Fourier(torch.nn.Module):
    """torch.fft through torch.export (DFT, opset 20): |rfft(x)| features, or a spectrum filtered
    between fft and ifft (complex DFTs both ways)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.fc = torch.nn.Linear(33 if kind == "rfft" else 64, 10)

    def forward(self, x):
        if self.kind == "rfft":
            return self.fc(torch.fft.rfft(x, dim=-1).abs())
        return self.fc(torch.fft.ifft(torch.fft.fft(x, dim=-1) * torch.linspace(0, 1, 64), dim=-1).real)


@pytest.mark.parametrize("kind", ["rfft", "filtered"])
def test_fourier_features(kind):
    """Against float64 autograd. Measured 3.2e-7 and 1.8e-7 (max-relative)."""
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = _Fourier(kind).eval()
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    proto = export_torch(model, x, "dynamo", 20)
    assert "DFT" in ops(proto)
    got = attribution(proto, {"input": x}, "saliency")
    ref, _ = torch_gradient(model, x, "saliency")
    assert np.abs(got - ref).max() < 5e-6 * np.abs(ref).max(), np.abs(got - ref).max() / np.abs(ref).max()


class _Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv, self.o, self.fc = torch.nn.Linear(8, 24), torch.nn.Linear(8, 8), torch.nn.Linear(8, 3)

    def forward(self, x):  # x [N, L, 8]
        n, length, _ = x.shape
        q, k, v = self.qkv(x).reshape(n, length, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
        a = torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1)
        return self.fc((self.o((a @ v).transpose(1, 2).reshape(n, length, 8)) + x).mean(1))


def test_torch_opset8_export_with_ir3():
    """TorchScript at opset 8 writes IR 3 (every initializer also a graph input); the integers
    onnxattr folds and feeds back to shape inference were ignored there, the rank after the
    attention's Reshape was lost and the model refused. Measured 1.1e-7 against float64."""
    torch.manual_seed(1)
    model = _Attention().eval()
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(x),), buf, dynamo=False, opset_version=8, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    proto = onnx.load_from_string(buf.getvalue())
    assert proto.ir_version == 3
    target = np.array([0, 2])
    got = attribution(proto, {"x": x}, "saliency", target=target)
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    (g,) = torch.autograd.grad(model.double()(xt).gather(1, torch.from_numpy(target[:, None])).sum(), xt)
    assert rel_err(got, g.numpy()) < 1e-5


# ---------------------------------------------------------------- a model-zoo-style old-opset graph
def _zoo_weights(seed=0):
    r = np.random.default_rng(seed)
    return {
        "W1": r.standard_normal((8, 3, 3, 3)) * 0.4, "B1": r.standard_normal(8) * 0.1,
        "bn_s": r.random(8) + 0.5, "bn_b": r.standard_normal(8) * 0.2, "bn_m": r.standard_normal(8) * 0.2,
        "bn_v": r.random(8) + 0.5,
        "W2": r.standard_normal((6, 8, 3, 3)) * 0.3, "B2": r.standard_normal(6) * 0.1 + 0.5,
        "Wf": r.standard_normal((5, 6)) * 0.5, "Bf": r.standard_normal(5) * 0.1,
    }


def zoo_model(opset: int, weights: dict) -> onnx.ModelProto:
    """Conv, BatchNormalization (spatial attribute at opset 7), Relu, MaxPool (AveragePool at
    opset 7: MaxPool's gradient needs its Indices output, opset 8), Pad (attribute form, value
    0.25), Conv, Clip (attributes 0..6), Upsample x2 (attribute scales, nearest; opset 9: scales
    input, linear), Dropout, GlobalAveragePool, Flatten, Gemm, Softmax (2-D coercion at axis 1)."""
    N = helper.make_node
    bn_attrs = {"spatial": 1} if opset < 9 else {}
    pool = (N("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]) if opset >= 8 else
            N("AveragePool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]))
    if opset >= 9:
        up = [N("Upsample", ["c2", "scales"], ["u"], mode="linear")]
        extra = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    else:
        up, extra = [N("Upsample", ["c2"], ["u"], scales=[1.0, 1.0, 2.0, 2.0])], []
    nodes = [
        N("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]),
        N("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["b1"], epsilon=1e-3, **bn_attrs),
        N("Relu", ["b1"], ["r1"]),
        pool,
        N("Pad", ["p1"], ["q"], pads=[0, 0, 1, 0, 0, 0, 0, 2], value=0.25),
        N("Conv", ["q", "W2", "B2"], ["d2"]),
        N("Clip", ["d2"], ["c2"], min=0.0, max=6.0),
        *up,
        N("Dropout", ["u"], ["dr"], ratio=0.3),
        N("GlobalAveragePool", ["dr"], ["g"]),
        N("Flatten", ["g"], ["f"]),
        N("Gemm", ["f", "Wf", "Bf"], ["z"], transB=1),
        N("Softmax", ["z"], ["prob"], axis=1),
    ]
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()] + extra
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])]
    if opset < 8:  # IR 3, as the zoo's opset-7 models: every initializer is also a graph input
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in inits]
    outputs = [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 5])]
    graph = helper.make_graph(nodes, "zoo", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 3 if opset < 8 else 4
    return model


def _upsample_linear_matrix(n: int, scale: int) -> np.ndarray:
    """Upsample-9 linear along one axis: source out / scale, two neighbours, clamped."""
    src = np.arange(n * scale) / scale
    lo = np.minimum(np.floor(src).astype(int), n - 1)
    hi = np.minimum(lo + 1, n - 1)
    m = np.zeros((n * scale, n))
    np.add.at(m, (np.arange(n * scale), lo), 1 - (src - lo))
    np.add.at(m, (np.arange(n * scale), hi), src - lo)
    return m


def zoo_torch(opset: int, w: dict):
    t = {k: torch.from_numpy(v.astype(np.float32).astype(np.float64)) for k, v in w.items()}

    def forward(x):
        c1 = F.conv2d(x, t["W1"], t["B1"], padding=1)
        b1 = F.batch_norm(c1, t["bn_m"], t["bn_v"], t["bn_s"], t["bn_b"], training=False, eps=1e-3)
        r1 = F.relu(b1)
        p1 = F.max_pool2d(r1, 2) if opset >= 8 else F.avg_pool2d(r1, 2)
        q = F.pad(p1, (0, 2, 1, 0), value=0.25)  # ONNX pads [0, 0, 1, 0, 0, 0, 0, 2]: H begin 1, W end 2
        c2 = F.hardtanh(F.conv2d(q, t["W2"], t["B2"]), 0.0, 6.0)
        if opset >= 9:
            mh = torch.from_numpy(_upsample_linear_matrix(c2.shape[2], 2))
            mw = torch.from_numpy(_upsample_linear_matrix(c2.shape[3], 2))
            u = torch.einsum("ph,nchw,qw->ncpq", mh, c2, mw)
        else:
            u = F.interpolate(c2, scale_factor=2, mode="nearest")
        z = F.linear(u.mean(dim=(2, 3)), t["Wf"], t["Bf"])
        return torch.softmax(z, dim=1)

    return forward


class _Fn(torch.nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # so .double() has something to move

    def forward(self, x):
        return self.f(x)


@pytest.mark.parametrize("opset", [7, 8, 9])
@pytest.mark.parametrize("relu_like", [False, True])
def test_zoo_old_opset(opset, relu_like):
    # Measured: 9.0e-8 to 1.6e-7 (every method and opset).
    weights = _zoo_weights()
    proto = zoo_model(opset, weights)
    onnx.checker.check_model(proto, full_check=True)
    assert_covered(proto)
    x, target = np.random.default_rng(2).standard_normal((2, 3, 12, 12)).astype(np.float32), np.array([1, 4])
    ref_model = _Fn(zoo_torch(opset, weights))
    for method in METHODS:
        got, pinned = attribution(proto, {"x": x}, method, relu_like, target=target, pin=True)
        ref, rules = torch_gradient(ref_model, x, method, relu_like, pinned, target=target)
        assert rules.relu == 1 and rules.relu6 == 1
        err = rel_err(got, ref)
        assert err < 2e-6, f"{method}: relative error {err:.2e}"


def test_shape_arithmetic_with_a_dynamic_batch():
    """TorchScript writes `cls.expand(B, -1, -1)` as Shape -> Gather -> Concat -> Equal / Where /
    ConstantOfShape -> Expand, which ONNX shape inference cannot follow: the dims after it come
    out unknown and Add's gradient cannot tell what broadcast. shapes.py recovers them."""
    N = helper.make_node
    i64 = lambda *v: numpy_helper.from_array(np.array(v, np.int64))  # noqa: E731
    nodes = [
        N("Shape", ["x"], ["s"]), N("Gather", ["s", "zero"], ["b"]), N("Unsqueeze", ["b", "ax0"], ["b1"]),
        N("Concat", ["b1", "minus1", "minus1"], ["want"], axis=0),
        N("Shape", ["want"], ["ws"]), N("ConstantOfShape", ["ws"], ["ones"], value=i64(1)),
        N("Mul", ["ones", "minus1"], ["neg"]), N("Equal", ["want", "neg"], ["keep"]),
        N("Where", ["keep", "ones", "want"], ["shape"]), N("Expand", ["cls", "shape"], ["cls_b"]),
        N("Concat", ["cls_b", "x"], ["tokens"], axis=1), N("Add", ["tokens", "pos"], ["t"]),
        N("ReduceMean", ["t"], ["y"], axes=[1], keepdims=0),
    ]
    inits = [numpy_helper.from_array(np.ones((1, 1, 3), np.float32), "cls"),
             numpy_helper.from_array(np.ones((1, 5, 3), np.float32), "pos"),
             numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array([0]), "ax0"),
             numpy_helper.from_array(np.array([-1]), "minus1")]
    graph = helper.make_graph(nodes, "expand", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    proto.ir_version = 8
    inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    dims = {v.name: [d.dim_value or None for d in v.type.tensor_type.shape.dim] for v in inferred.graph.value_info}
    assert dims["tokens"][1] is None  # what ONNX alone knows
    from onnxattr.graph import Builder

    assert Builder(proto, TensorProto.FLOAT).shapes["tokens"] == [None, 5, 3]
    x, target = np.zeros((2, 4, 3), np.float32), np.array([0, 2])
    want = np.zeros_like(x)
    want[0, :, 0] = want[1, :, 2] = 1 / 5
    np.testing.assert_allclose(attribution(proto, {"x": x}, "saliency", target=target), want, rtol=1e-6)
