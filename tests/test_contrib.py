"""ONNX Runtime's fused ops (com.microsoft) written back as standard ops (onnxattr/contrib.py).

Per op and attribute variant, a one-node model: (1) the standard form computes what ONNX Runtime's
own kernel computes (float32; the form runs with ONNX Runtime's optimiser off, so it is not fused
back into the same kernel), and a float64 reimplementation written from the op's definition
(torch / numpy) agrees with that kernel; (2) onnxattr's VJP of the node (float64, on the ONNX
reference evaluator) matches central differences of that reimplementation. Whole models: the
saliency of torchvision's ResNet-18 and timm's ViT-Tiny saved after ONNX Runtime's optimisation
(FusedConv, BiasGelu) is that of their plain exports. Other contrib ops and attributes stay refused.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxattr
from onnxattr.api import vjp_model
from onnxattr.contrib import expand_contrib
from onnxattr.errors import UnsupportedModelError
from vjp_check import EPS, reference

torch = pytest.importorskip("torch")
F = torch.nn.functional
MS = "com.microsoft"
RNG = np.random.default_rng(11)


def _w(*shape, scale=0.5):
    return RNG.standard_normal(shape) * scale


def f32(v: float) -> float:
    """An attribute's value as the node holds it (a float32)."""
    return float(np.float32(v))


# ---------------------------------------------------------------- float64 definitions (torch)
def _t(a):
    return torch.from_numpy(np.asarray(a, np.float64))


def _act(kind, params):
    return {None: lambda v: v, "Relu": torch.relu, "Tanh": torch.tanh, "Sigmoid": torch.sigmoid,
            "LeakyRelu": lambda v: F.leaky_relu(v, params[0]) if params else v,
            "Clip": lambda v: torch.clamp(v, params[0], params[1]) if params else v,
            "HardSigmoid": lambda v: torch.clamp(params[0] * v + params[1], 0, 1) if params else v}[kind]


def _conv_ref(kind=None, params=(), group=1, pads=(1, 1, 1, 1), strides=(1, 1)):
    def f(X, W, B, Z=None):
        y = F.conv2d(F.pad(_t(X), (pads[1], pads[3], pads[0], pads[2])), _t(W), _t(B), stride=strides, groups=group)
        return _act(kind, params)(y if Z is None else y + _t(Z))
    return f


def _gemm_ref(kind=None, params=(), alpha=1.0, beta=1.0, transA=0, transB=0):
    def f(A, B, C):
        a, b = _t(A), _t(B)
        return _act(kind, params)(alpha * (a.T if transA else a) @ (b.T if transB else b) + beta * _t(C))
    return f


def _gelu(v):
    return 0.5 * v * (1 + torch.erf(v / math.sqrt(2)))


def _fast_gelu(v):
    return 0.5 * v * (1 + torch.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))


def _matmul_ref(alpha=1.0, transA=0, transB=0, transBatchA=0, transBatchB=0):
    def op(v, trans, batch):
        r = v.dim()
        rows, cols = (0, r - 1) if batch else (r - 2, r - 1)
        return v.permute(*[i for i in range(r) if i not in (rows, cols)], *((cols, rows) if trans else (rows, cols)))

    return lambda A, B: alpha * (op(_t(A), transA, transBatchA) @ op(_t(B), transB, transBatchB))


def _ln(s, gamma, beta=None, eps=1e-12, axis=-1):
    dims = tuple(range(axis % s.dim(), s.dim()))
    d = s - s.mean(dim=dims, keepdim=True)
    y = d / torch.sqrt((d * d).mean(dim=dims, keepdim=True) + eps) * _t(gamma)
    return y if beta is None else y + _t(beta)


def _rms(s, gamma, eps=1e-12, axis=-1):
    dims = tuple(range(axis % s.dim(), s.dim()))
    return s / torch.sqrt((s * s).mean(dim=dims, keepdim=True) + eps) * _t(gamma)


# ---------------------------------------------------------------- cases
# id, op (domain), opset, differentiated inputs {name: shape}, constant inputs {name: array},
# input order, attributes, float64 definition (arrays by input order), number of outputs
X4, W3, B4, H = (1, 4, 5, 5), _w(4, 4, 3, 3), _w(4, scale=0.2), 8
CASES = [
    ("FusedConv/Relu", MS, "FusedConv", 17, {"X": X4}, {"W": W3, "B": B4}, ["X", "W", "B"],
     dict(activation="Relu", pads=[1, 1, 1, 1], kernel_shape=[3, 3]), _conv_ref("Relu")),
    ("FusedConv/Relu+Z", MS, "FusedConv", 17, {"X": X4, "Z": X4}, {"W": W3, "B": B4}, ["X", "W", "B", "Z"],
     dict(activation="Relu", pads=[1, 1, 1, 1]), lambda X, W, B, Z: _conv_ref("Relu")(X, W, B, Z)),
    ("FusedConv/none+Z", MS, "FusedConv", 17, {"X": X4, "Z": X4}, {"W": W3, "B": B4}, ["X", "W", "B", "Z"],
     dict(pads=[1, 1, 1, 1]), lambda X, W, B, Z: _conv_ref()(X, W, B, Z)),
    ("FusedConv/Clip-depthwise-stride2", MS, "FusedConv", 17, {"X": X4}, {"W": _w(4, 1, 3, 3) * 4, "B": B4},
     ["X", "W", "B"], dict(activation="Clip", activation_params=[0.0, 6.0], group=4, pads=[1, 1, 1, 1], strides=[2, 2]),
     _conv_ref("Clip", (0.0, 6.0), group=4, strides=(2, 2))),
    ("FusedConv/HardSigmoid", MS, "FusedConv", 17, {"X": X4}, {"W": W3, "B": B4}, ["X", "W", "B"],
     dict(activation="HardSigmoid", activation_params=[1 / 6, 0.5], pads=[1, 1, 1, 1]),
     _conv_ref("HardSigmoid", (f32(1 / 6), 0.5))),
    ("FusedConv/LeakyRelu", MS, "FusedConv", 17, {"X": X4}, {"W": W3, "B": B4}, ["X", "W", "B"],
     dict(activation="LeakyRelu", activation_params=[0.1], pads=[1, 1, 1, 1]), _conv_ref("LeakyRelu", (f32(0.1),))),
    ("FusedConv/Tanh", MS, "FusedConv", 17, {"X": X4}, {"W": W3, "B": B4}, ["X", "W", "B"],
     dict(activation="Tanh", pads=[1, 1, 1, 1]), _conv_ref("Tanh")),
    ("FusedConv/Sigmoid-opset10", MS, "FusedConv", 10, {"X": X4}, {"W": W3, "B": B4}, ["X", "W", "B"],
     dict(activation="Sigmoid", pads=[1, 1, 1, 1]), _conv_ref("Sigmoid")),
    ("FusedConv/Clip-opset10", MS, "FusedConv", 10, {"X": X4}, {"W": W3, "B": B4}, ["X", "W", "B"],
     dict(activation="Clip", activation_params=[-0.5, 0.5], pads=[1, 1, 1, 1]), _conv_ref("Clip", (-0.5, 0.5))),
    ("FusedGemm/Tanh-transB", MS, "FusedGemm", 17, {"A": (3, 6)}, {"B": _w(5, 6), "C": _w(5, scale=0.2)},
     ["A", "B", "C"], dict(activation="Tanh", transB=1), _gemm_ref("Tanh", transB=1)),
    ("FusedGemm/Relu-alpha-beta", MS, "FusedGemm", 17, {"A": (6, 3)}, {"B": _w(6, 5), "C": _w(3, 5, scale=0.2)},
     ["A", "B", "C"], dict(activation="Relu", alpha=0.7, beta=1.5, transA=1),
     _gemm_ref("Relu", alpha=f32(0.7), beta=1.5, transA=1)),
    ("FusedGemm/LeakyRelu", MS, "FusedGemm", 17, {"A": (3, 6)}, {"B": _w(6, 5), "C": _w(5, scale=0.2)},
     ["A", "B", "C"], dict(activation="LeakyRelu", activation_alpha=0.2), _gemm_ref("LeakyRelu", (f32(0.2),))),
    ("FusedGemm/Sigmoid", MS, "FusedGemm", 17, {"A": (3, 6)}, {"B": _w(6, 5), "C": _w(5, scale=0.2)},
     ["A", "B", "C"], dict(activation="Sigmoid"), _gemm_ref("Sigmoid")),
    ("FusedGemm/HardSigmoid", MS, "FusedGemm", 17, {"A": (3, 6)}, {"B": _w(6, 5), "C": _w(5, scale=0.2)},
     ["A", "B", "C"], dict(activation="HardSigmoid", activation_alpha=0.3, activation_beta=0.4),
     _gemm_ref("HardSigmoid", (f32(0.3), f32(0.4)))),
    ("Gelu/opset17", MS, "Gelu", 17, {"X": (2, 3, H)}, {}, ["X"], {}, lambda X: _gelu(_t(X))),
    ("Gelu/opset20", MS, "Gelu", 20, {"X": (2, 3, H)}, {}, ["X"], {}, lambda X: _gelu(_t(X))),
    ("BiasGelu/opset17", MS, "BiasGelu", 17, {"A": (2, 3, H)}, {"B": _w(H)}, ["A", "B"], {},
     lambda A, B: _gelu(_t(A) + _t(B))),
    ("BiasGelu/opset20", MS, "BiasGelu", 20, {"A": (2, 3, H)}, {"B": _w(H)}, ["A", "B"], {},
     lambda A, B: _gelu(_t(A) + _t(B))),
    ("FastGelu/bias-opset17", MS, "FastGelu", 17, {"X": (2, 3, H)}, {"bias": _w(H)}, ["X", "bias"], {},
     lambda X, bias: _fast_gelu(_t(X) + _t(bias))),
    ("FastGelu/opset20", MS, "FastGelu", 20, {"X": (2, 3, H)}, {}, ["X"], {}, lambda X: _fast_gelu(_t(X))),
    ("QuickGelu/default", MS, "QuickGelu", 17, {"X": (2, 3, H)}, {}, ["X"], {},
     lambda X: _t(X) * torch.sigmoid(f32(1.702) * _t(X))),
    ("QuickGelu/alpha", MS, "QuickGelu", 17, {"X": (2, 3, H)}, {}, ["X"], dict(alpha=0.6),
     lambda X: _t(X) * torch.sigmoid(f32(0.6) * _t(X))),
    ("FusedMatMul/alpha", MS, "FusedMatMul", 17, {"A": (2, 3, 4, 5)}, {"B": _w(2, 3, 5, 6)}, ["A", "B"],
     dict(alpha=0.25), _matmul_ref(alpha=0.25)),
    ("FusedMatMul/transA-transB", MS, "FusedMatMul", 17, {"A": (2, 5, 4), "B": (2, 6, 5)}, {}, ["A", "B"],
     dict(transA=1, transB=1, alpha=0.5), _matmul_ref(0.5, 1, 1)),
    ("FusedMatMul/transBatchA", MS, "FusedMatMul", 17, {"A": (4, 2, 5)}, {"B": _w(2, 5, 3)}, ["A", "B"],
     dict(transBatchA=1), _matmul_ref(transBatchA=1)),
    ("FusedMatMul/transBatchB-transB", MS, "FusedMatMul", 17, {"A": (2, 3, 4, 5)}, {"B": _w(6, 2, 3, 5)}, ["A", "B"],
     dict(transBatchB=1, transB=1), _matmul_ref(transB=1, transBatchB=1)),
    ("SkipLayerNormalization/beta-bias", MS, "SkipLayerNormalization", 17, {"input": (2, 3, H), "skip": (2, 3, H)},
     {"gamma": _w(H) + 1, "beta": _w(H), "bias": _w(H)}, ["input", "skip", "gamma", "beta", "bias"], dict(epsilon=1e-5),
     lambda input, skip, gamma, beta, bias: _ln(_t(input) + _t(skip) + _t(bias), gamma, beta, f32(1e-5))),
    ("SkipLayerNormalization/opset14", MS, "SkipLayerNormalization", 14, {"input": (2, 3, H), "skip": (2, 3, H)},
     {"gamma": _w(H) + 1}, ["input", "skip", "gamma"], {},
     lambda input, skip, gamma: _ln(_t(input) + _t(skip), gamma, eps=f32(1e-12))),
    ("SkipSimplifiedLayerNormalization/bias", MS, "SkipSimplifiedLayerNormalization", 17,
     {"input": (2, 3, H), "skip": (2, 3, H)}, {"gamma": _w(H) + 1, "bias": _w(H)}, ["input", "skip", "gamma", "bias"],
     dict(epsilon=1e-6), lambda input, skip, gamma, bias: _rms(_t(input) + _t(skip) + _t(bias), gamma, f32(1e-6))),
    ("SkipSimplifiedLayerNormalization/opset23", MS, "SkipSimplifiedLayerNormalization", 23,
     {"input": (2, 3, H), "skip": (2, 3, H)}, {"gamma": _w(H) + 1}, ["input", "skip", "gamma"], {},
     lambda input, skip, gamma: _rms(_t(input) + _t(skip), gamma, f32(1e-12))),
    ("LayerNormalization/ort-opset14", "", "LayerNormalization", 14, {"X": (2, 3, H)}, {"S": _w(H) + 1, "B": _w(H)},
     ["X", "S", "B"], {}, lambda X, S, B: _ln(_t(X), S, B, f32(1e-5))),
    ("LayerNormalization/ort-opset14-axis1", "", "LayerNormalization", 14, {"X": (2, 3, H)},
     {"S": _w(3, H) + 1}, ["X", "S"], dict(axis=1, epsilon=1e-3), lambda X, S: _ln(_t(X), S, None, f32(1e-3), axis=1)),
    ("SimplifiedLayerNormalization/ort", "", "SimplifiedLayerNormalization", 17, {"X": (2, 3, H)}, {"S": _w(H) + 1},
     ["X", "S"], {}, lambda X, S: _rms(_t(X), S, f32(1e-5))),
]


def _model(case, dtype=TensorProto.DOUBLE, outputs=("y",)) -> onnx.ModelProto:
    _, domain, op, opset, inputs, inits, order, attributes, _ = case
    np_type = helper.tensor_dtype_to_np_dtype(dtype)
    node = helper.make_node(op, order, list(outputs), name="fused", domain=domain, **attributes)
    g = helper.make_graph([node], "contrib",
                          [helper.make_tensor_value_info(k, dtype, list(s)) for k, s in inputs.items()],
                          [helper.make_tensor_value_info(o, dtype, None) for o in outputs if o],
                          [numpy_helper.from_array(np.asarray(v, np_type), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)])
    m.ir_version = 8
    return m


def _inputs(case, rng) -> dict:
    return {k: rng.standard_normal(s) for k, s in case[4].items()}


def _session(m, optimise=True):
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    if not optimise:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _expanded(m: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(m)
    origin = expand_contrib(out)
    assert origin and set(origin.values()) == {(m.graph.node[0].op_type, "fused")}
    assert all(n.domain in ("", "ai.onnx") for n in out.graph.node)
    assert not any(n.op_type in ("LayerNormalization", "SimplifiedLayerNormalization") and default_below(out, 17)
                   for n in out.graph.node)
    return out


def default_below(m, v):
    return next(o.version for o in m.opset_import if o.domain == "") < v


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_standard_form_computes_what_the_kernel_computes(case):
    m = _model(case, TensorProto.FLOAT)
    x = _inputs(case, np.random.default_rng(0))
    feeds = {k: v.astype(np.float32) for k, v in x.items()}
    (kernel,) = _session(m).run(None, feeds)
    (form,) = _session(_expanded(m), optimise=False).run(None, feeds)
    want = case[-1](**{**x, **case[5]}).numpy()
    mag = np.abs(want).max()
    # measured over the table, 10 seeds each, relative to max |y|: the form against the kernel <= 1.1e-6
    # (FusedConv with Clip at opset 10; 0 for most non-convolutions), the float64 definition against
    # the kernel <= 8.6e-7
    assert kernel.shape == form.shape == want.shape
    assert np.abs(form - kernel).max() <= 4e-6 * mag, np.abs(form - kernel).max() / mag
    assert np.abs(kernel - want).max() <= 4e-6 * mag, np.abs(kernel - want).max() / mag


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_vjp_matches_central_differences_of_the_definition(case):
    rng = np.random.default_rng(1)
    x = _inputs(case, rng)
    consts = case[5]
    fwd = case[-1]
    y = fwd(**x, **consts).numpy()
    m = _model(case)
    m.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.DOUBLE, list(y.shape)))
    vm, cots, grads = vjp_model(m)
    assert all(n.domain in ("", "ai.onnx") for n in vm.graph.node)
    ref = reference(vm)
    names = [o.name for o in vm.graph.output]
    for _ in range(2):
        t = {k: rng.standard_normal(v.shape) for k, v in x.items()}
        c = rng.standard_normal(y.shape)
        plus, minus = (fwd(**{k: x[k] + s * EPS * t[k] for k in x}, **consts) for s in (1, -1))
        jt = (plus - minus).numpy() / (2 * EPS)
        res = dict(zip(names, ref.run(None, {**x, cots["y"]: c})))
        np.testing.assert_allclose(res["y"], y, rtol=1e-12, atol=1e-12)
        lhs, rhs = float(np.sum(jt * c)), sum(float(np.sum(t[k] * res[grads[k]])) for k in x)
        scale = float(np.sum(np.abs(jt * c))) + sum(float(np.sum(np.abs(t[k] * res[grads[k]]))) for k in x)
        assert abs(lhs - rhs) <= 1e-8 * scale, (lhs, rhs, abs(lhs - rhs) / scale)  # measured <= 5.5e-11 (10 seeds)


def test_erf_gelu_form_is_differentiated_as_one_gelu():
    """Below opset 20 the GELU of BiasGelu is written as TorchScript writes it, so patterns.py
    fuses it: the attribution model holds no Erf derivative (no Exp of -x^2 / 2 op by op)."""
    case = next(c for c in CASES if c[0] == "BiasGelu/opset17")
    m = _model(case, TensorProto.FLOAT)
    m.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, H]))
    vm, _, _ = vjp_model(m)
    ops = [n.op_type for n in vm.graph.node]
    assert ops.count("Erf") == 2, ops  # the forward's, and the Gelu rule's (op by op: one, and an Exp for erf')


def _skip_ln(outputs):
    case = next(c for c in CASES if c[0] == "SkipLayerNormalization/beta-bias")
    return _model(case, TensorProto.FLOAT, outputs), case


def test_skip_layer_norm_sum_output_and_statistics():
    m, case = _skip_ln(("y", "", "", "sum"))
    x = {k: v.astype(np.float32) for k, v in _inputs(case, np.random.default_rng(2)).items()}
    want = _session(m).run(None, x)
    got = _session(_expanded(m), optimise=False).run(None, x)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=0, atol=2e-6 * np.abs(w).max())
    m, _ = _skip_ln(("y", "mean"))
    with pytest.raises(UnsupportedModelError, match=r"^SkipLayerNormalization node 'fused' \(domain 'com.microsoft'\): "
                                                    r"its output 1 \('mean', a saved statistic\) is read"):
        expand_contrib(m)


def _classifier(node: onnx.NodeProto) -> onnx.ModelProto:
    g = helper.make_graph([node, helper.make_node("ReduceMean", ["c"], ["y"], axes=[2, 3], keepdims=0)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                          [numpy_helper.from_array(W3.astype(np.float32), "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    m.ir_version = 8
    return m


def test_unsupported_contrib_ops_and_attributes_are_refused_by_name():
    odd = helper.make_node("FusedConv", ["x", "w"], ["c"], name="conv", domain=MS, activation="Softplus",
                           pads=[1, 1, 1, 1])
    with pytest.raises(UnsupportedModelError) as e:
        onnxattr.attribution_model(_classifier(odd))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("FusedConv node 'conv' (domain 'com.microsoft'): activation 'Softplus' "
                                              "is not supported (supported: Relu, Tanh, Sigmoid, LeakyRelu"), msg
    other = helper.make_node("NhwcConv", ["x", "w"], ["c"], name="nhwc", domain=MS, pads=[1, 1, 1, 1])
    with pytest.raises(UnsupportedModelError, match=r"^no gradient rule for 1 node\(s\) on the differentiable path: "
                                                    r"NhwcConv node 'nhwc' \(custom domain 'com.microsoft'\)$"):
        onnxattr.attribution_model(_classifier(other))


# ---------------------------------------------------------------- whole models
def _optimised(tmp_path, module, size):
    x = torch.randn(1, 3, size, size)
    plain, opt = tmp_path / "plain.onnx", tmp_path / "opt.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), x, str(plain), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, opset_version=17, dynamo=False)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(opt)
    ort.InferenceSession(str(plain), so, providers=["CPUExecutionProvider"])
    return plain, opt


def _whole_model(tmp_path, module, size, fused):
    plain, opt = _optimised(tmp_path, module, size)
    assert fused <= {n.op_type for n in onnx.load(str(opt)).graph.node if n.domain == MS}
    x = np.random.default_rng(3).standard_normal((2, 3, size, size)).astype(np.float32)
    out = {}
    for method in ("saliency", "guided"):
        a, b = (_session(onnxattr.attribution_model(str(p), method, target="argmax")).run(["y", "attribution"],
                                                                                        {"x": x}) for p in (plain, opt))
        out[method] = (float(np.abs(a[0] - b[0]).max()), float(np.abs(a[1] - b[1]).max() / np.abs(a[1]).max()))
    return out


def test_ort_optimised_resnet_explained_as_its_export(tmp_path):
    torch.manual_seed(0)
    import torchvision

    errs = _whole_model(tmp_path, torchvision.models.resnet18(num_classes=10), 64, {"FusedConv"})
    for method, (scores, att) in errs.items():  # measured 0 and 0 (ONNX Runtime fuses both forwards alike;
        # ResNet-50 at 64 px: attribution 8.8e-7 of its largest value)
        assert scores <= 1e-6 and att <= 1e-5, (method, scores, att)


def test_ort_optimised_vit_explained_as_its_export(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    errs = _whole_model(tmp_path, timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=10), 32,
                        {"BiasGelu"})
    for method, (scores, att) in errs.items():  # measured 0 and 0
        assert scores <= 1e-6 and att <= 1e-5, (method, scores, att)


def test_a_rank_behind_another_fused_node_is_known_a_round_later():
    """FusedMatMul's transA needs A's rank, which shape inference gives only once the BiasGelu
    before it is standard ops."""
    w, b = _w(3, 5).astype(np.float32), _w(4).astype(np.float32)
    nodes = [helper.make_node("BiasGelu", ["x", "b"], ["h"], name="gelu", domain=MS),
             helper.make_node("FusedMatMul", ["h", "w"], ["y"], name="mm", domain=MS, transA=1, alpha=0.5)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    m.ir_version = 8
    x = np.random.default_rng(4).standard_normal((2, 3, 4)).astype(np.float32)
    (want,) = _session(m).run(None, {"x": x})
    out = onnx.ModelProto()
    out.CopyFrom(m)
    origin = expand_contrib(out)
    assert {v[0] for v in origin.values()} == {"BiasGelu", "FusedMatMul"}
    (got,) = _session(out, optimise=False).run(None, {"x": x})
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())


def test_constants_behind_fused_nodes_take_the_model_float_type():
    """Shape inference cannot type the output of a com.microsoft node: a Gelu behind a QuickGelu
    takes the model's float type (float64 here) for its constants."""
    nodes = [helper.make_node("QuickGelu", ["x"], ["h"], name="quick", domain=MS),
             helper.make_node("Gelu", ["h"], ["y"], name="gelu", domain=MS)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [2, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [2, 5])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    expand_contrib(m)
    onnx.checker.check_model(m, full_check=True)
    x = np.random.default_rng(5).standard_normal((2, 5))
    (got,) = reference(m).run(None, {"x": x})
    want = _gelu(_t(x) * torch.sigmoid(f32(1.702) * _t(x))).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)


def _saved(model: onnx.ModelProto, path, level) -> onnx.ModelProto:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = level
    so.optimized_model_filepath = str(path)
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return onnx.load(str(path))


def _conv_net(dtype) -> onnx.ModelProto:
    np_type = helper.tensor_dtype_to_np_dtype(dtype)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "V"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", dtype, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", dtype, ["N", 4])],
                          [numpy_helper.from_array(_w(16, 3, 3, 3).astype(np_type), "W"),
                           numpy_helper.from_array(_w(16, 4).astype(np_type), "V")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_models_saved_for_one_machine_are_refused_with_what_to_do(tmp_path):
    """ORT_ENABLE_ALL's layout ops (com.microsoft.nchwc) and the casts that the CPU provider's
    optimiser puts around a float16 model's float32-only kernels: refused, saying to explain the
    model as exported (the float16 case said to convert the model to one float type, which it is)."""
    m = _saved(_conv_net(TensorProto.FLOAT), tmp_path / "all.onnx", ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    assert any(n.domain == "com.microsoft.nchwc" for n in m.graph.node)
    with pytest.raises(UnsupportedModelError, match="layout ops of ORT_ENABLE_ALL.*saved at ORT_ENABLE_EXTENDED"):
        onnxattr.attribution_model(m)
    m = _saved(_conv_net(TensorProto.FLOAT16), tmp_path / "f16.onnx", ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    assert any(n.name.startswith("InsertedPrecisionFreeCast_") for n in m.graph.node)
    with pytest.raises(UnsupportedModelError, match="mixed precision.*before ONNX Runtime's optimisation inserted"):
        onnxattr.attribution_model(m)
