"""Composed methods against independent computations: numpy compositions of saliency, Captum's
IntegratedGradients, and Grad-CAM computed in PyTorch."""

from __future__ import annotations

import io
from pathlib import Path

import re

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import onnxattr
from onnxattr.recipes import gaussian_noise, ig_points

FIX = Path(__file__).resolve().parent.parent / "fixtures"
MODEL = FIX / "shapes_cnn.onnx"
TARGETS = [0, 1, 2, 3]


@pytest.fixture(scope="module")
def x():
    return np.load(FIX / "default_input.npy")


def explain(method, x, target=TARGETS, model=MODEL, **kw):
    return onnxattr.Explainer(model, method=method, provider="cpu", **kw).run(x, target)


def smooth_model():
    """y = (x * x) @ W: smooth, so saliency at noisy points depends on the noise exactly."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(6, 3)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("MatMul", ["sq", "w"], ["y"])],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_gradient_x_input(x):
    sal = explain("saliency", x)["attribution"]
    np.testing.assert_array_equal(explain("gradient-x-input", x)["attribution"], sal * x)


def test_smoothgrad_is_mean_saliency_over_the_documented_noise():
    m = smooth_model()
    xs = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)
    t = [0, 1, 2, 0, 1]
    samples, noise = 7, 0.2
    got = explain("smoothgrad", xs, t, model=m, samples=samples, noise=noise, seed=3)["attribution"]
    z = gaussian_noise((samples, 1) + xs.shape[1:], seed=3)  # one draw per sample and element of a row
    span = xs.max(1) - xs.min(1)
    sal = onnxattr.Explainer(m, provider="cpu")
    want = np.mean([sal(xs + noise * span[:, None] * z[s], t) for s in range(samples)], axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_smoothgrad_row_does_not_depend_on_its_batch():
    """A row explained alone, or at another place in a bigger batch, gets the same noise and so
    the same result (the noise once ran over the whole batch: 0.34 relative difference)."""
    m = smooth_model()
    xs = np.random.default_rng(1).normal(size=(4, 6)).astype(np.float32)
    ex = onnxattr.Explainer(m, method="smoothgrad", provider="cpu", samples=5)
    batch = ex(xs, [0, 1, 2, 0])
    np.testing.assert_allclose(ex(xs[2:3], [2]), batch[2:3], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ex(xs[::-1].copy(), [0, 2, 1, 0])[::-1], batch, rtol=1e-6, atol=1e-7)


def test_smoothgrad_in_float16():
    """A float16 model draws its noise in float32 (2**31 overflowed float16: all NaN before)."""
    m = smooth_model()
    half = onnx.ModelProto()
    half.CopyFrom(m)
    for v in list(half.graph.input) + list(half.graph.output):
        v.type.tensor_type.elem_type = TensorProto.FLOAT16
    w = numpy_helper.to_array(half.graph.initializer[0]).astype(np.float16)
    half.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w"))
    xs = np.random.default_rng(1).normal(size=(3, 6)).astype(np.float32)
    got = explain("smoothgrad", xs.astype(np.float16), [0, 1, 2], model=half, samples=6)["attribution"]
    want = explain("smoothgrad", xs, [0, 1, 2], model=m, samples=6)["attribution"]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=2e-2, atol=2e-2)


def test_smoothgrad_on_cnn_is_reproducible_and_close_to_numpy(x):
    a = explain("smoothgrad", x, samples=8, noise=0.1)["attribution"]
    b = explain("smoothgrad", x, samples=8, noise=0.1)["attribution"]
    np.testing.assert_array_equal(a, b)
    z = gaussian_noise((8, 1) + x.shape[1:], 0)
    span = x.reshape(4, -1).max(1) - x.reshape(4, -1).min(1)
    sal = onnxattr.Explainer(MODEL, provider="cpu")
    want = np.mean([sal(x + 0.1 * span[:, None, None, None] * z[s], TARGETS) for s in range(8)], axis=0)
    # float32 transcendental differences flip a few Relu masks: measured 1.1e-3 relative
    assert np.linalg.norm(a - want) / np.linalg.norm(want) < 5e-3
    assert not np.allclose(a, explain("saliency", x)["attribution"])


def test_noise_statistics():
    z = gaussian_noise((200000,), 0)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 0.01


def test_noise_has_no_mirrored_elements():
    """The hash's first step squared (i A + C + 7919 seed) mod M, so the elements i and
    K - i, with K = -2 (C + 7919 seed) / A mod M, drew the same noise: seed 213 has K = 1823941,
    and every element below K / 2 equalled its mirror (an audit's finding). Now one-to-one."""
    from onnxattr.recipes import _A, _C, _M

    seed = 213
    k = (-2 * (_C + 7919 * seed)) * pow(_A, -1, _M) % _M
    assert k == 1823941
    z = gaussian_noise((k + 1,), seed)
    i = np.arange(1, k // 2)
    assert np.mean(z[i] == z[k - i]) < 1e-4


def test_integrated_gradients_completeness(x):
    sal = explain("saliency", x)
    gaps = {}
    for steps in (8, 32, 128):
        out = explain("integrated-gradients", x, steps=steps)
        gaps[steps] = np.abs(out["completeness_gap"])
    y_x = sal["logits"][np.arange(4), TARGETS]
    y_b = onnxattr.Explainer(MODEL, provider="cpu").run(np.zeros_like(x), TARGETS)["logits"][np.arange(4), TARGETS]
    assert np.all(gaps[128] < 0.01 * np.abs(y_x - y_b))
    assert gaps[128].max() < gaps[32].max() < gaps[8].max()


def tiny_torch_cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(8, 5)).eval()


def export(m, x, opset=13):
    f = io.BytesIO()
    torch.onnx.export(m, torch.from_numpy(x), f, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, opset_version=opset, dynamo=False)
    return onnx.load_from_string(f.getvalue())


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid", "riemann_middle"])
def test_integrated_gradients_equals_captum(method):
    from captum.attr import IntegratedGradients
    m = tiny_torch_cnn()
    x = np.random.default_rng(0).normal(size=(3, 3, 16, 16)).astype(np.float32)
    t = [1, 4, 0]
    got = explain("integrated-gradients", x, t, model=export(m, x), steps=20, ig_method=method, baseline=0.5)
    md = m.double()
    ref, delta = IntegratedGradients(md).attribute(torch.from_numpy(x).double(), baselines=0.5, target=torch.tensor(t),
                                                   n_steps=20, method=method, return_convergence_delta=True)
    ref = ref.numpy()
    err = np.linalg.norm(got["attribution"] - ref) / np.linalg.norm(ref)
    assert err < 1e-4, err  # float32 vs float64: measured ~1e-6
    np.testing.assert_allclose(got["completeness_gap"], delta.numpy(), atol=1e-4)


def test_integrated_gradients_finite_where_the_baseline_gradient_is_not():
    """y = sqrt(|x|) @ W: its gradient at the baseline 0 is inf / NaN, and the baseline's copy
    (run for y(baseline)) was weighted by 0 in the sum: 0 x NaN made every attribution NaN (an
    audit's finding; also a float16 ConvNeXt). Gauss-Legendre's nodes avoid alpha = 0: finite."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 2)).astype(np.float32)
    nodes = [helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Sqrt", ["a"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    x, t = rng.normal(size=(2, 3)).astype(np.float32), np.array([1, 0])
    sess = onnxattr.runtime.make_session(onnxattr.attribution_model(model, method="integrated-gradients", steps=8)
                                         .SerializeToString(), "cpu")[0]
    att, gap = sess.run(["attribution", "completeness_gap"], {"x": x, "target": t})
    alphas, weights = ig_points(8, "gausslegendre")
    x64 = x.astype(np.float64)
    grads = [np.sign(x64) / (2 * np.sqrt(a * np.abs(x64))) * w[:, t].T for a in alphas]  # d y_t / dx at alpha x
    want = x64 * sum(wt * gr for wt, gr in zip(weights, grads))
    assert np.isfinite(att).all() and np.isfinite(gap).all()
    np.testing.assert_allclose(att, want, rtol=1e-6, atol=1e-7)


def test_ig_points_match_captum():
    from captum.attr._utils.approximation_methods import approximation_parameters
    for method in ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"):
        steps_fn, alphas_fn = approximation_parameters(method)
        alphas, weights = ig_points(9, method)
        np.testing.assert_allclose(alphas, alphas_fn(9), atol=1e-12)
        np.testing.assert_allclose(weights, steps_fn(9), atol=1e-12)


def test_gradcam_matches_pytorch_resnet18():
    import torchvision
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10).eval()
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    t = [3, 7]
    out = explain("gradcam", x, t, model=export(m, x))
    md = m.double()
    acts = {}
    md.layer4.register_forward_hook(lambda mod, i, o: acts.setdefault("a", o))
    y = md(torch.from_numpy(x).double())
    a = acts["a"]
    g, = torch.autograd.grad(y[torch.arange(2), torch.tensor(t)].sum(), a)
    cam = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
    up = torch.nn.functional.interpolate(cam, size=(64, 64), mode="bilinear", align_corners=False)
    err = np.linalg.norm(out["cam"] - cam.detach().numpy()) / np.linalg.norm(cam.detach().numpy())
    assert err < 1e-4, err
    err = np.linalg.norm(out["attribution"] - up.detach().numpy()) / np.linalg.norm(up.detach().numpy())
    assert err < 1e-4, err


def _torch_gradcam(model, layer, x, t, mode):
    """Grad-CAM in float64 PyTorch at `layer` (a module), resized by F.interpolate (half-pixel)."""
    md = model.double()
    acts = {}
    hook = layer.register_forward_hook(lambda mod, i, o: acts.setdefault("a", o))
    y = md(torch.from_numpy(x).double())
    hook.remove()
    a = acts["a"]
    g, = torch.autograd.grad(y[torch.arange(len(x)), torch.tensor(t)].sum(), a)
    spatial = tuple(range(2, a.dim()))
    cam = torch.relu((g.mean(spatial, keepdim=True) * a).sum(1, keepdim=True))
    up = torch.nn.functional.interpolate(cam, size=x.shape[2:], mode=mode, align_corners=False)
    model.float()
    return cam.detach().numpy(), up.detach().numpy()


class ToChannelsFirst(torch.nn.Module):
    def forward(self, x):  # (x.movedim(-1, 1) exports a Transpose with perm [0, -1, 1])
        return x.permute(0, x.dim() - 1, *range(1, x.dim() - 1))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dims", [1, 3])
def test_gradcam_on_signals_and_volumes(dims, channels_last):
    """A 1-D CNN on signals [N, C, L] and a 3-D CNN on volumes [N, C, D, H, W] (Captum's
    LayerGradCam takes any [N, K, ...] layer): the default layer is the last activation before
    global pooling, the map is resized linearly / trilinearly (half-pixel) to the input, against
    the same computation in float64 PyTorch. They were refused: "no convolutional 4-D activation".
    Channels-last inputs ([N, L, C], [N, D, H, W, C], moved to channels-first inside, as Keras
    layouts are) get the map laid out [N, L, 1] / [N, D, H, W, 1] (it was resized along the wrong
    axes). Measured (1-D / 3-D): cam 2.1e-7 / 2.8e-7, resized 2.3e-7 / 2.0e-7."""
    conv, pool, bn = {1: (torch.nn.Conv1d, torch.nn.MaxPool1d, torch.nn.BatchNorm1d),
                      3: (torch.nn.Conv3d, torch.nn.MaxPool3d, torch.nn.BatchNorm3d)}[dims]
    torch.manual_seed(dims)
    last = conv(6, 8, 3, padding=1)
    m = torch.nn.Sequential(conv(2, 6, 5, padding=2), bn(6), torch.nn.ReLU(), pool(2), last, torch.nn.ReLU(),
                            torch.nn.AdaptiveAvgPool1d(1) if dims == 1 else torch.nn.AdaptiveAvgPool3d(1),
                            torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    shape = (3, 2, 30) if dims == 1 else (3, 2, 6, 10, 8)
    x = np.random.default_rng(dims).normal(size=shape).astype(np.float32)
    t = [0, 3, 1]
    cam, up = _torch_gradcam(m, m[5], x, t, "linear" if dims == 1 else "trilinear")
    if channels_last:
        m = torch.nn.Sequential(ToChannelsFirst(), m).eval()
        x, up = np.moveaxis(x, 1, -1).copy(), np.moveaxis(up, 1, -1)
    model = export(m, x)
    out = explain("gradcam", x, t, model=model)
    assert out["cam"].shape == cam.shape and out["attribution"].shape == up.shape
    for got, want in ((out["cam"], cam), (out["attribution"], up)):
        err = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert err < 2e-6, err
    guided = explain("guided", x, t, model=model)["attribution"]
    np.testing.assert_allclose(explain("guided-gradcam", x, t, model=model)["attribution"], guided * out["attribution"],
                               rtol=1e-5, atol=1e-8)


def test_gradcam_on_a_sequence_model_asks_for_a_layer():
    """x [N, C, L] read as a sequence of tokens [N, L, d] (a Linear and Relu over the last axis,
    then a mean over L): no activation is channels-first, so none is taken for a map."""
    m = torch.nn.Sequential(Transpose12(), torch.nn.Linear(2, 6), torch.nn.ReLU(), MeanOver1(), torch.nn.Linear(6, 3)).eval()
    x = np.random.default_rng(0).normal(size=(2, 2, 9)).astype(np.float32)
    with pytest.raises(onnxattr.UnsupportedModelError, match=re.escape("no convolutional activation [N, K, l]")):
        onnxattr.attribution_model(export(m, x), method="gradcam")


class Transpose12(torch.nn.Module):
    def forward(self, x):
        return x.transpose(1, 2)


class MeanOver1(torch.nn.Module):
    def forward(self, x):
        return x.mean(1)


def test_guided_gradcam_is_guided_times_cam(x):
    guided = explain("guided", x)["attribution"]
    cam = explain("gradcam", x)["attribution"]
    np.testing.assert_allclose(explain("guided-gradcam", x)["attribution"], guided * cam, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("method", ["saliency", "smoothgrad", "integrated-gradients", "gradcam"])
def test_argmax_equals_explicit(method, x):
    out = explain(method, x, "argmax", samples=4, steps=8)
    pred = out["logits"].argmax(1)
    np.testing.assert_array_equal(out["target"], pred)
    np.testing.assert_allclose(explain(method, x, pred, samples=4, steps=8)["attribution"], out["attribution"],
                               rtol=1e-6, atol=1e-7)


def test_wrt_intermediate_tensor(x):
    """--wrt: the gradient w.r.t. an activation; gradient x input there sums to the same first-order
    picture, and for the Gemm input it is exactly the classifier row."""
    src = onnx.load(MODEL)
    flat = next(n.output[0] for n in src.graph.node if n.op_type == "Flatten")
    out = explain("saliency", x, wrt=flat)
    w = numpy_helper.to_array(next(i for i in src.graph.initializer if i.name == "head.2.weight"))
    np.testing.assert_allclose(out["attribution"], w[TARGETS], rtol=1e-6)
    ig = explain("integrated-gradients", x, wrt=flat, steps=16)
    # the head is linear after Flatten: IG with a zero baseline there is exact
    np.testing.assert_allclose(ig["completeness_gap"], 0, atol=1e-4)


@pytest.mark.parametrize("method", ["smoothgrad", "integrated-gradients"])
def test_batched_methods_refuse_a_fixed_batch(method):
    """Their copies of the input run as one batch: a model exported with batch 1 fixed (its
    Reshapes too) once mixed the copies silently or failed at run time."""
    m = tiny_torch_cnn()
    x = np.random.default_rng(0).normal(size=(1, 3, 16, 16)).astype(np.float32)
    f = io.BytesIO()
    torch.onnx.export(m, torch.from_numpy(x), f, input_names=["x"], output_names=["y"], opset_version=13, dynamo=False)
    with pytest.raises(onnxattr.UnsupportedModelError, match="fixed batch of 1.*dynamic batch axis"):
        onnxattr.attribution_model(onnx.load_from_string(f.getvalue()), method=method)


def test_gradcam_refuses_a_flat_input():
    """x [N, 768] reshaped to an image inside: no input height and width to resize the map to
    (an internal IndexError before)."""
    m = torch.nn.Sequential(torch.nn.Unflatten(1, (3, 16, 16)), tiny_torch_cnn()).eval()
    x = np.random.default_rng(0).normal(size=(2, 768)).astype(np.float32)
    with pytest.raises(onnxattr.UnsupportedModelError, match="gradcam resizes .* rank 2"):
        onnxattr.attribution_model(export(m, x), method="gradcam")


@pytest.mark.parametrize("opset", [9, 10])
def test_gradcam_before_opset_11(opset):
    """The same cam as at opset 11; the map resized by ONNX's only linear Upsample there
    (asymmetric coordinates): checked against numpy's version of that resize."""
    m = tiny_torch_cnn()
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    old, new = (explain("gradcam", x, [1, 4], model=export(m, x, opset=o)) for o in (opset, 11))
    np.testing.assert_allclose(old["cam"], new["cam"], rtol=1e-5, atol=1e-7)
    cam = old["cam"][:, 0]
    h = cam.shape[1]
    src = np.arange(16) * h / 16  # asymmetric: x_in = x_out / scale
    lo = np.floor(src).astype(int)
    hi, fr = np.minimum(lo + 1, h - 1), src - lo
    rows = cam[:, lo] * (1 - fr)[None, :, None] + cam[:, hi] * fr[None, :, None]
    want = rows[:, :, lo] * (1 - fr)[None, None, :] + rows[:, :, hi] * fr[None, None, :]
    np.testing.assert_allclose(old["attribution"][:, 0], want, rtol=1e-5, atol=1e-7)


def _nhwc_model(channels: int, keras_pool: bool):
    """x [N, 8, 8, channels] -> Transpose -> Conv (stride 2) -> Relu r [N, 5, 4, 4] -> global average
    pooling, NCHW (GlobalAveragePool) or Keras-style (Transpose back, ReduceMean over axes 1, 2)."""
    rs = np.random.RandomState(0)
    wc, wd = (rs.randn(5, channels, 3, 3) * .5).astype(np.float32), rs.randn(5, 4).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["xc"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xc", "wc"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"])]
    if keras_pool:
        nodes += [helper.make_node("Transpose", ["r"], ["rh"], perm=[0, 2, 3, 1]),
                  helper.make_node("ReduceMean", ["rh"], ["f"], axes=[1, 2], keepdims=0)]
    else:
        nodes += [helper.make_node("GlobalAveragePool", ["r"], ["gp"]), helper.make_node("Flatten", ["gp"], ["f"])]
    nodes.append(helper.make_node("MatMul", ["f", "wd"], ["y"]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 8, channels])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                          [numpy_helper.from_array(wc, "wc"), numpy_helper.from_array(wd, "wd")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), wc, wd


@pytest.mark.parametrize("channels, keras_pool", [(3, True), (4, False), (4, True)])
def test_gradcam_on_channels_last_models(channels, keras_pool):
    """The default layer is the NCHW activation r, also behind a Keras-style pool over axes 1, 2
    (it was the channels-last copy, read as [N, K, h, w]: 0.98 relative error), and the map is
    laid out like the input whatever its channel count (4 channels were taken for NCHW)."""
    model, wc, wd = _nhwc_model(channels, keras_pool)
    x = np.random.RandomState(1).randn(2, 8, 8, channels).astype(np.float32)
    t = [1, 3]
    out = explain("gradcam", x, t, model=model)
    a = torch.relu(torch.nn.functional.conv2d(torch.tensor(x, dtype=torch.float64).permute(0, 3, 1, 2),
                                              torch.tensor(wc, dtype=torch.float64), stride=2, padding=1))
    a = a.detach().requires_grad_(True)
    (a.mean((2, 3)) @ torch.tensor(wd, dtype=torch.float64)).gather(1, torch.tensor(t)[:, None]).sum().backward()
    cam = torch.relu((a.grad.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
    up = torch.nn.functional.interpolate(cam, size=(8, 8), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    assert onnxattr.Explainer(model, method="gradcam", provider="cpu").layer == "r"
    np.testing.assert_allclose(out["cam"], cam.detach().numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out["attribution"], up.detach().numpy(), rtol=1e-5, atol=1e-7)
    guided = explain("guided", x, t, model=model)["attribution"]
    np.testing.assert_allclose(explain("guided-gradcam", x, t, model=model)["attribution"], guided * out["attribution"],
                               rtol=1e-5, atol=1e-8)


class Normalised(torch.nn.Module):
    """x [N, H, W, C] -> (x - 0.5) * 2 -> channels first -> conv net: the Transpose does not read
    the input itself."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(((x - 0.5) * 2).permute(0, 3, 1, 2))


@pytest.mark.parametrize("case", ["nchw_width_1", "nchw_width_3", "nhwc_normalised"])
def test_gradcam_resizes_over_the_input_spatial_axes(case):
    """The input's layout comes from the first layout-bound node its values reach (a Transpose to
    channels-first after a normalisation, or a Conv). The last-dim heuristic took an NCHW
    [N, 6, 20, 1] (a 1-D CNN on sensor channels as a 2-D conv) and [N, 5, 12, 3] for channels-last
    and an NHWC input normalised before its Transpose for channels-first: the map was resized
    over the wrong axes (guided-gradcam 0.76 to 0.90 off Captum's)."""
    torch.manual_seed(3)
    channels, shape = {"nchw_width_1": (6, (2, 6, 20, 1)), "nchw_width_3": (5, (2, 5, 12, 3)),
                       "nhwc_normalised": (4, (2, 12, 10, 4))}[case]
    kernel = (3, 1) if case == "nchw_width_1" else 3
    net = torch.nn.Sequential(torch.nn.Conv2d(channels, 6, kernel, padding="same"), torch.nn.ReLU(),
                              torch.nn.Conv2d(6, 7, kernel, padding="same"), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(7, 4)).eval()
    x = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    t = [0, 2]
    if case == "nhwc_normalised":
        _, up = _torch_gradcam(net, net[3], np.moveaxis((x - 0.5) * 2, -1, 1).copy(), t, "bilinear")
        m, up = Normalised(net).eval(), np.moveaxis(up, 1, -1)
    else:
        m, (_, up) = net, _torch_gradcam(net, net[3], x, t, "bilinear")
    assert (np.abs(up).reshape(2, -1).max(axis=1) > 1e-4).all()  # no row's map is empty
    model = export(m, x)
    out = explain("gradcam", x, t, model=model)
    assert out["attribution"].shape == up.shape
    np.testing.assert_allclose(out["attribution"], up, rtol=0, atol=2e-6 * np.abs(up).max())  # measured 2.5e-7


class KerasLikeStart(torch.nn.Module):
    """What tf2onnx writes before a Keras model's first layer: a channels-last image padded, then
    moved to channels-first; a Conv1D's signal [N, L, F] unsqueezed, then transposed to
    [N, F, 1, L] for a 2-D conv."""

    def __init__(self, net, kind):
        super().__init__()
        self.net, self.kind = net, kind

    def forward(self, x):
        if self.kind == "padded_nhwc":
            return self.net(torch.nn.functional.pad(x, (0, 0, 1, 1, 2, 2)).permute(0, 3, 1, 2))
        return self.net(x.unsqueeze(1).permute(0, 3, 1, 2))


class Squeeze2(torch.nn.Module):
    def forward(self, x):
        return x.squeeze(2)


@pytest.mark.parametrize("kind", ["padded_nhwc", "conv1d_as_2d"])
def test_gradcam_follows_the_input_axes_through_pads_and_unsqueezes(kind):
    """The input's channels are found by following its axes through Pad / Slice / Unsqueeze /
    Transpose to the first Conv: a Keras model through tf2onnx (ZeroPadding2D first with 4
    channels; any Conv1D) got its map resized over the wrong axes, [N, 1, W, C] and [N, 1, F]
    (a Keras audit's finding). Against float64 PyTorch Grad-CAM at the same layer, resized to the
    input's spatial size."""
    torch.manual_seed(7)
    if kind == "padded_nhwc":
        net = torch.nn.Sequential(torch.nn.Conv2d(4, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                  torch.nn.Flatten(), torch.nn.Linear(6, 3)).eval()
        x = np.random.default_rng(8).normal(size=(2, 12, 10, 4)).astype(np.float32)
        inner = np.pad(x, ((0, 0), (2, 2), (1, 1), (0, 0))).transpose(0, 3, 1, 2).copy()  # [2, 4, 16, 12]
        size, mode = (12, 10), "bilinear"
    else:
        net = torch.nn.Sequential(torch.nn.Conv2d(8, 6, (1, 5), padding=(0, 2)), Squeeze2(), torch.nn.ReLU(),
                                  torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten(), torch.nn.Linear(6, 3)).eval()
        x = np.random.default_rng(8).normal(size=(2, 40, 8)).astype(np.float32)
        inner = x[:, None].transpose(0, 3, 1, 2).copy()  # [2, 8, 1, 40]
        size, mode = (40,), "linear"
    t = [0, 2]
    layer, acts = net[1] if kind == "padded_nhwc" else net[2], {}
    md = net.double()
    hook = layer.register_forward_hook(lambda mod, i, o: acts.setdefault("a", o))
    y = md(torch.from_numpy(inner).double())
    hook.remove()
    a = acts["a"]
    (g,) = torch.autograd.grad(y[torch.arange(2), torch.tensor(t)].sum(), a)
    cam = torch.relu((g.mean(tuple(range(2, a.dim())), keepdim=True) * a).sum(1, keepdim=True))
    up = torch.nn.functional.interpolate(cam, size=size, mode=mode, align_corners=False).detach().numpy()
    net.float()
    want = np.moveaxis(up, 1, -1)  # laid out like the input: [N, H, W, 1], [N, L, 1]
    assert (np.abs(want).reshape(2, -1).max(axis=1) > 1e-4).all()
    out = explain("gradcam", x, t, model=export(KerasLikeStart(net, kind).eval(), x))
    assert out["attribution"].shape == want.shape
    np.testing.assert_allclose(out["attribution"], want, rtol=0, atol=2e-6 * np.abs(want).max())


def test_gradcam_default_layer_is_not_a_squeeze_excitation_input():
    """A squeeze-and-excitation block pools globally mid-network and multiplies its weights back
    into the map; with a Flatten + Linear head there is no other global pool. The default layer
    was the SE block's input (cam [2, 1, 12, 12]); it is the last convolutional activation."""

    class SE(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.fc, self.c2 = torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.Linear(6, 6), torch.nn.Conv2d(6, 4, 3, 2, 1)
            self.head = torch.nn.Linear(4 * 6 * 6, 3)

        def forward(self, x):
            r1 = torch.relu(self.c1(x))
            w = torch.sigmoid(self.fc(r1.mean((2, 3))))[:, :, None, None]
            r2 = torch.relu(self.c2(r1 * w))
            return self.head(r2.flatten(1))

    torch.manual_seed(5)
    m = SE().eval()
    x = np.random.default_rng(5).normal(size=(2, 3, 12, 12)).astype(np.float32)
    model = export(m, x)
    relus = [n.output[0] for n in model.graph.node if n.op_type == "Relu"]
    assert onnxattr.Explainer(model, method="gradcam", provider="cpu").layer == relus[-1]
    assert explain("gradcam", x, [0, 2], model=model)["cam"].shape == (2, 1, 6, 6)


@pytest.mark.parametrize("s_shape", [[3], [], [1, 3], ["K", 3]])
def test_batched_methods_with_a_second_input_without_batch_axis(s_shape):
    """y = ((x * x) @ W) * s, s a second float input without x's batch axis: it is passed as it is
    to the stacked copies, not tiled along its first axis (which failed in ONNX Runtime); also
    where its first axis is dynamic (K, 1 in this run: copied only where it is the batch's length)."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 3)).astype(np.float32)
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("MatMul", ["sq", "w"], ["z"]),
             helper.make_node("Mul", ["z", "s"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6]),
                                       helper.make_tensor_value_info("s", TensorProto.FLOAT, s_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    xs = rng.normal(size=(4, 6)).astype(np.float32)
    s = np.asarray(rng.normal(size=[1 if d == "K" else d for d in s_shape]), np.float32)
    t = np.array([0, 2, 1, 2])
    s3 = np.broadcast_to(s, (1, 3))[0]
    for method in ("integrated-gradients", "smoothgrad"):
        sess = onnxattr.runtime.make_session(onnxattr.attribution_model(model, method=method, samples=5).SerializeToString(), "cpu")[0]
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": xs, "s": s, "target": t})))["attribution"]
        if method == "integrated-gradients":  # exact for this quadratic: x^2 W[:, t] s[t]
            want = xs ** 2 * w[:, t].T * s3[t][:, None]
        else:
            z = gaussian_noise((5, 1, 6), 0)[:, 0]
            span = xs.max(1) - xs.min(1)
            noisy = xs[None] + 0.15 * span[None, :, None] * z[:, None, :]
            want = (2 * noisy * w[:, t].T * s3[t][:, None]).mean(0)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _masked_model(mask_batch: str = "N"):
    """ids [N, T], mask [mask_batch, T] -> y = sum_t mask * E[ids] @ W, linear in the embeddings
    e = E[ids]: the gradient is mask W[:, c], integrated gradients from 0 e * mask W[:, c]."""
    rng = np.random.default_rng(0)
    emb, w = rng.normal(size=(10, 4)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["E", "ids"], ["e"]), helper.make_node("Cast", ["mask"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["mf", "last"], ["m3"]), helper.make_node("Mul", ["e", "m3"], ["me"]),
             helper.make_node("ReduceSum", ["me", "one"], ["pooled"], keepdims=0), helper.make_node("MatMul", ["pooled", "w"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "T"]),
                                       helper.make_tensor_value_info("mask", TensorProto.INT64, [mask_batch, "T"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(emb, "E"), numpy_helper.from_array(w, "w"),
                           numpy_helper.from_array(np.array([2]), "last"), numpy_helper.from_array(np.array([1]), "one")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    ids, mask = rng.integers(0, 10, size=(3, 5)), np.ones((3, 5), np.int64)
    mask[1, 3:] = 0
    return model, emb, w, ids, mask


@pytest.mark.parametrize("mask_batch", ["N", "mask_dynamic_axes_1"])
def test_batched_methods_copy_a_mask_whose_batch_is_named_apart(mask_batch):
    """ids [N, T] and a padding mask whose batch dim has another name (TorchScript's dynamic_axes
    given as lists name each input's dims apart): the mask was not copied with the ids, and
    integrated gradients and SmoothGrad at the embeddings failed in ONNX Runtime (an audit's
    finding). SmoothGrad of this linear model is its gradient."""
    model, emb, w, ids, mask = _masked_model(mask_batch)
    t = np.array([0, 2, 1])
    grad = mask[:, :, None] * w[:, t].T[:, None, :]
    for method, want in (("integrated-gradients", emb[ids] * grad), ("smoothgrad", grad)):
        proto = onnxattr.attribution_model(model, method=method, wrt="e", samples=4, steps=6)
        sess = onnxattr.runtime.make_session(proto.SerializeToString(), "cpu")[0]
        got = sess.run(["attribution"], {"ids": ids, "mask": mask, "target": t})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_explainer_feeds_the_models_other_inputs():
    """A padding mask beside the token ids: the Explainer refused such a model ("inputs besides
    'ids' (mask) that the Explainer cannot feed"); each call now takes them as `inputs`, checked
    by name and cast to the declared type."""
    model, emb, w, ids, mask = _masked_model()
    t = np.array([0, 2, 1])
    grad = mask[:, :, None] * w[:, t].T[:, None, :]
    for method, want in (("saliency", grad), ("integrated-gradients", emb[ids] * grad)):
        ex = onnxattr.Explainer(model, method=method, wrt="e", provider="cpu", steps=6)
        assert list(ex.other_inputs) == ["mask"]
        np.testing.assert_allclose(ex(ids, t, inputs={"mask": mask.astype(np.int32)}), want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ex.run(ids, "argmax", inputs={"mask": mask})["attribution"].shape, want.shape)
    with pytest.raises(onnxattr.InputError, match=r"inputs besides 'ids' \(mask\): give them as inputs=\{'mask'"):
        ex(ids, t)
    with pytest.raises(onnxattr.InputError, match="'masks' is not an input of the model to feed \\(its other inputs are mask\\)"):
        ex(ids, t, inputs={"mask": mask, "masks": mask})
    with pytest.raises(onnxattr.InputError, match="input 'mask' must be a tensor\\(int64\\) array, got dtype float64"):
        ex(ids, t, inputs={"mask": mask * 0.5})


def test_gradcam_default_layer_keeps_the_batch_axis_on_a_vision_transformer():
    """torchvision's ViT pools over tokens: the last 4-D tensor on its path is sequence-first
    inside attention ([tokens, N, ...]: 17 rows came out for a batch of 2). The default is now
    the patch embedding's Conv output; rows follow the batch."""
    import torchvision

    torch.manual_seed(0)
    m = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                             mlp_dim=64, num_classes=10).eval()
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    ex = onnxattr.Explainer(export(m, x, opset=17), method="gradcam", provider="cpu")
    assert ex.layer == "/conv_proj/Conv_output_0"
    out = ex.run(x, [1, 2, 3])
    assert out["attribution"].shape == (3, 1, 32, 32) and out["cam"].shape == (3, 1, 4, 4)
    np.testing.assert_allclose(ex.run(x[1:2], [2])["cam"], out["cam"][1:2], rtol=1e-5, atol=1e-7)


def test_explicit_gradcam_layer_must_keep_the_batch_axis():
    """An explicit --layer inside attention ([tokens, N, heads, d]) gave 17 rows of attribution for
    a batch of 3, without an error."""
    import torchvision

    torch.manual_seed(0)
    m = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                             mlp_dim=64, num_classes=10).eval()
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    proto = export(m, x, opset=17)
    from onnxattr.graph import Builder
    b = Builder(proto, TensorProto.FLOAT)
    inside = next(o for n in proto.graph.node for o in n.output
                  if len(b.shapes.get(o) or []) == 4 and b.shapes[o][0] == 17)  # sequence-first
    for method in ("gradcam", "guided-gradcam"):
        with pytest.raises(onnxattr.NotAClassifierError, match="first axis is not the input's batch axis"):
            onnxattr.attribution_model(proto, method=method, layer=inside)


def test_gradcam_default_layer_is_not_before_a_windowed_pool():
    """Without global pooling the default is the last convolutional activation: a 2x2 MaxPool
    early in the network was taken for the global pooling, and its input (the first Relu) chosen."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                            torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.ReLU(),
                            torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 5)).eval()
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    ex = onnxattr.Explainer(export(m, x), method="gradcam", provider="cpu")
    assert ex.layer == "/4/Relu_output_0"
    assert ex.run(x, [1, 2])["cam"].shape == (2, 1, 8, 8)
    # a windowed pool down to 1 x 1 is global pooling in effect (AvgPool2d(8) here)
    m2 = torch.nn.Sequential(*list(m)[:5], torch.nn.AvgPool2d(8), torch.nn.Flatten(), torch.nn.Linear(8, 5)).eval()
    assert onnxattr.Explainer(export(m2, x), method="gradcam", provider="cpu").layer == "/4/Relu_output_0"


def test_integrated_gradients_baseline_at_the_wrt_tensor(x):
    """With --wrt, the Explainer checked an array baseline against the input's shape (so only
    scalars passed), while export checked it against the --wrt tensor's."""
    src = onnx.load(MODEL)
    flat = next(n.output[0] for n in src.graph.node if n.op_type == "Flatten")
    from onnxattr.graph import Builder
    width = Builder(src, TensorProto.FLOAT).shapes[flat][1]
    base = np.random.default_rng(0).normal(size=(1, width)).astype(np.float32)
    ig = explain("integrated-gradients", x, wrt=flat, steps=4, baseline=base)
    sal = explain("saliency", x, wrt=flat)["attribution"]  # the head is linear after Flatten: IG is exact
    feats = explain("gradient-x-input", x, wrt=flat)["attribution"] / sal  # the Flatten output itself
    np.testing.assert_allclose(ig["attribution"], sal * (feats - base), rtol=1e-4, atol=1e-5)
    with pytest.raises(onnxattr.OptionError, match="does not broadcast against the --wrt tensor"):
        explain("integrated-gradients", x, wrt=flat, steps=4, baseline=np.zeros((1,) + x.shape[1:], np.float32))


def test_gradcam_does_not_need_rules_before_its_layer():
    """Grad-CAM differentiates from the scores back to its layer only: an op without a rule before
    the layer (LpPool here) was refused by the check meant for the input gradients."""
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32) * 0.5  # noqa: E731
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("LpPool", ["c1"], ["n1"], kernel_shape=[1, 1], p=2, name="odd"),
             helper.make_node("Conv", ["n1", "W2"], ["c2"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"]), helper.make_node("Flatten", ["p"], ["fl"]),
             helper.make_node("Gemm", ["fl", "Wf"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                          [numpy_helper.from_array(f(5, 3, 3, 3), "W1"), numpy_helper.from_array(f(6, 5, 3, 3), "W2"),
                           numpy_helper.from_array(f(6, 4), "Wf")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = f(2, 3, 8, 8)
    ex = onnxattr.Explainer(m, method="gradcam", provider="cpu")
    assert ex.layer == "r2"
    cam = ex.run(x, [0, 2])["cam"]
    # Grad-CAM by hand: the head is linear after the pooling, so d y_c / d r2 = Wf[:, c] / 64
    m2 = onnx.ModelProto()
    m2.CopyFrom(m)
    m2.graph.output.append(helper.make_tensor_value_info("r2", TensorProto.FLOAT, None))
    r2 = onnxattr.runtime.make_session(m2.SerializeToString(), "cpu")[0].run(["r2"], {"x": x})[0]
    wf = numpy_helper.to_array(m.graph.initializer[2])
    alpha = wf[:, [0, 2]].T / 64  # [N, K]
    want = np.maximum((alpha[:, :, None, None] * r2).sum(1, keepdims=True), 0)
    np.testing.assert_allclose(cam, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(onnxattr.UnsupportedModelError, match="LpPool node 'odd'"):
        onnxattr.attribution_model(m, method="guided-gradcam")  # its guided part goes to the input


class _ResizedBranch(torch.nn.Module):
    """CrossViT's second branch: the input resized to a fixed size, its Resize sizes computed in
    the graph as Concat(Shape(x)[:2], [h, w])."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Linear(8, 5)

    def forward(self, x):
        small = torch.nn.functional.interpolate(x, size=(12, 12), mode="bilinear", align_corners=False)
        pa = torch.tanh(self.a(x)).mean((2, 3))
        pb = torch.tanh(self.b(small)).mean((2, 3))
        return self.head(torch.cat([pa, pb], 1))


@pytest.mark.parametrize("method", ["integrated-gradients", "smoothgrad"])
def test_batched_methods_through_a_resize_sized_from_the_input_shape(method):
    """The batched copies of the forward lost what the shape trials prove about the original (the
    Resize keeps axis 0): integrated gradients and SmoothGrad were refused on CrossViT."""
    from captum.attr import IntegratedGradients
    m = _ResizedBranch().eval()
    x = np.random.default_rng(0).normal(size=(3, 3, 16, 16)).astype(np.float32)
    t = [1, 4, 0]
    proto = export(m, x)
    assert any(n.op_type == "Resize" for n in proto.graph.node)
    if method == "smoothgrad":
        got = explain("smoothgrad", x, t, model=proto, samples=3, noise=0.1, seed=1)["attribution"]
        z = gaussian_noise((3, 1) + x.shape[1:], seed=1)
        span = (x.max((1, 2, 3)) - x.min((1, 2, 3)))[:, None, None, None]
        sal = onnxattr.Explainer(proto, provider="cpu")
        want = np.mean([sal(x + 0.1 * span * z[s], t) for s in range(3)], axis=0)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
        return
    got = explain("integrated-gradients", x, t, model=proto, steps=8)
    ref = IntegratedGradients(m.double()).attribute(torch.from_numpy(x).double(), target=torch.tensor(t), n_steps=8).numpy()
    err = np.linalg.norm(got["attribution"] - ref) / np.linalg.norm(ref)
    assert err < 1e-4, err


def test_an_empty_gradcam_map_is_reported():
    """CoaT's default layer (a conv on image tokens, under a head reading the class token only)
    gave all-zero maps without a word. A layer whose gradient is 0 now warns, naming the rows."""
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32) * 0.5  # noqa: E731
    # two branches: the scores read only the first; Grad-CAM at the second's activation is 0
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["x", "W2"], ["c2"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Mul", ["r2", "zero"], ["dead"]), helper.make_node("Add", ["r1", "dead"], ["s"]),
             helper.make_node("GlobalAveragePool", ["s"], ["p"]), helper.make_node("Flatten", ["p"], ["fl"]),
             helper.make_node("Gemm", ["fl", "Wf"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                          [numpy_helper.from_array(f(5, 3, 3, 3), "W1"), numpy_helper.from_array(f(5, 3, 3, 3), "W2"),
                           numpy_helper.from_array(np.zeros((1, 5, 1, 1), np.float32), "zero"),
                           numpy_helper.from_array(f(5, 4), "Wf")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    x = f(2, 3, 8, 8)
    with pytest.warns(onnxattr.EmptyMapWarning, match=r"'r2' is 0 everywhere for rows \[0, 1\]"):
        onnxattr.Explainer(m, method="gradcam", provider="cpu", layer="r2").run(x, [0, 1])
    with pytest.warns(onnxattr.EmptyMapWarning, match=r"'r2' is 0 everywhere for a\.png, b\.png"):
        onnxattr.Explainer(m, method="gradcam", provider="cpu", layer="r2").run(x, [0, 1], row_names=["a.png", "b.png"])
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", onnxattr.EmptyMapWarning)
        cam = onnxattr.Explainer(m, method="gradcam", provider="cpu", layer="r1").run(x, [0, 1])["cam"]
    assert cam.reshape(2, -1).any(axis=1).all()


def _channels_last_head_model(opset: int):
    """x [N, 8, 8, 3] -> Transpose -> Conv (stride 2) -> Transpose back: c [N, 4, 4, 5] ->
    hard swish c * clip(c + 3, 0, 6) / 6, channels-last (as tf2onnx leaves Keras MobileNetV3's
    last activation) -> ReduceMean over axes 1, 2 (keepdims) -> Transpose -> 1x1 Conv to the
    classes [N, 4, 1, 1] -> Reshape [N, 4]."""
    rs = np.random.RandomState(5)
    wc, wd = (rs.randn(5, 3, 3, 3) * .5).astype(np.float32), rs.randn(4, 5, 1, 1).astype(np.float32)
    clip = ([helper.make_node("Clip", ["p"], ["q"], min=0.0, max=6.0)] if opset < 11 else
            [helper.make_node("Clip", ["p", "zero", "six"], ["q"])])
    nodes = [helper.make_node("Transpose", ["x"], ["xc"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xc", "wc"], ["cc"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Transpose", ["cc"], ["c"], perm=[0, 2, 3, 1]),
             helper.make_node("Add", ["c", "three"], ["p"]), *clip,
             helper.make_node("Mul", ["q", "sixth"], ["s"]), helper.make_node("Mul", ["c", "s"], ["a"]),
             helper.make_node("ReduceMean", ["a"], ["m"], axes=[1, 2], keepdims=1),
             helper.make_node("Transpose", ["m"], ["mc"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["mc", "wd"], ["logits"]),
             helper.make_node("Reshape", ["logits", "shape"], ["y"])]
    consts = [numpy_helper.from_array(wc, "wc"), numpy_helper.from_array(wd, "wd"),
              numpy_helper.from_array(np.float32(3), "three"), numpy_helper.from_array(np.float32(1 / 6), "sixth"),
              numpy_helper.from_array(np.float32(0), "zero"), numpy_helper.from_array(np.float32(6), "six"),
              numpy_helper.from_array(np.array([-1, 4], np.int64), "shape")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 8, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], consts)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=7), wc, wd


@pytest.mark.parametrize("opset", [10, 13])
@pytest.mark.parametrize("layer", [None, "a", "c", "cc"])
def test_gradcam_at_a_channels_last_activation(opset, layer):
    """A channels-last activation [N, h, w, K] (tf2onnx leaves Keras MobileNetV3's hard swish so,
    before its pooling over axes 1, 2) is the default layer, and a channels-last --layer is read
    channels-last: alpha the mean of its gradient over h, w, the map the sum over K, laid out
    [N, 1, h, w]. Before, the default was the classes' 1x1 Conv output (a 1x1 map: the same value
    everywhere) and an explicit one was read as [N, K, h, w] (mean over w, K; sum over h). The
    channels-first Conv output before the Transpose stays channels-first. Against float64
    PyTorch; opset 10 resizes by scales from the layer's lengths."""
    model, wc, wd = _channels_last_head_model(opset)
    x = np.random.RandomState(6).randn(2, 8, 8, 3).astype(np.float32)
    t = [1, 3]
    ex = onnxattr.Explainer(model, method="gradcam", provider="cpu", **({} if layer is None else {"layer": layer}))
    assert ex.layer == (layer or "a")
    out = ex.run(x, t)
    xt = torch.tensor(x, dtype=torch.float64).permute(0, 3, 1, 2)
    cc = torch.nn.functional.conv2d(xt, torch.tensor(wc, dtype=torch.float64), stride=2, padding=1)
    cc = cc.detach().requires_grad_(True)  # the channels-first Conv output
    c = cc.permute(0, 2, 3, 1)
    a = c * torch.clamp(c + 3, 0, 6) / 6
    y = torch.nn.functional.conv2d(a.mean((1, 2), keepdim=True).permute(0, 3, 1, 2),
                                   torch.tensor(wd, dtype=torch.float64)).reshape(-1, 4)
    act = {"c": c, "cc": cc}.get(layer, a)
    g, = torch.autograd.grad(y.gather(1, torch.tensor(t)[:, None]).sum(), act)
    if layer == "cc":
        cam = torch.relu((g.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True))
    else:
        cam = torch.relu((g.mean((1, 2), keepdim=True) * act).sum(3, keepdim=True)).permute(0, 3, 1, 2)
    assert cam.detach().abs().reshape(2, -1).max(1).values.min() > 1e-3  # no row's map is empty
    np.testing.assert_allclose(out["cam"], cam.detach().numpy(), rtol=1e-5, atol=1e-7)
    assert out["attribution"].shape == (2, 8, 8, 1)
    if opset >= 11:
        up = torch.nn.functional.interpolate(cam, size=(8, 8), mode="bilinear", align_corners=False)
        up = up.permute(0, 2, 3, 1)
        np.testing.assert_allclose(out["attribution"], up.detach().numpy(), rtol=1e-5, atol=1e-7)
    else:  # ONNX's linear Upsample before opset 11 (asymmetric): at the even pixels, the map itself
        np.testing.assert_allclose(out["attribution"][:, ::2, ::2, 0], out["cam"][:, 0], rtol=1e-6, atol=1e-8)


class ConvNeXtLikeHead(torch.nn.Module):
    """ConvNeXt's end in small: a residual block (its sum is the last activation), global
    average pooling, then torchvision's LayerNorm2d on the pooled [N, C, 1, 1] (permute to
    channels-last, LayerNorm, permute back), Flatten, Linear."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.Conv2d(6, 6, 3, padding=1)
        self.norm, self.fc = torch.nn.LayerNorm(6), torch.nn.Linear(6, 4)

    def forward(self, x):
        r = torch.relu(self.c1(x))
        s = r + self.c2(r)
        p = s.mean((2, 3), keepdim=True)
        return self.fc(self.norm(p.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).flatten(1))


def test_gradcam_default_layer_before_a_pool_normalised_channels_last():
    """The pooled [N, C, 1, 1] moved to [N, 1, 1, C] for a LayerNorm (torchvision's ConvNeXt) was
    taken for a map that the pool's result goes back into (a squeeze-and-excitation block), so the
    pool was passed over and the default layer fell back to the residual branch's last Conv; it is
    the residual sum the pool reads (as the block output `features` a Captum user would hook).
    Against float64 PyTorch Grad-CAM at that sum."""
    torch.manual_seed(9)
    m = ConvNeXtLikeHead().eval()
    x = np.random.default_rng(9).normal(size=(2, 3, 10, 10)).astype(np.float32)
    t = [1, 2]
    model = export(m, x)
    adds = [n.output[0] for n in model.graph.node if n.op_type == "Add" and n.input[0].startswith("/Relu")]
    ex = onnxattr.Explainer(model, method="gradcam", provider="cpu")
    assert [ex.layer] == adds
    md, xd = m.double(), torch.from_numpy(x).double()
    y = md(xd)
    r = torch.relu(md.c1(xd))
    s = (r + md.c2(r)).detach().requires_grad_(True)  # the sum, as a leaf: y depends on it through the pool
    head = md.fc(md.norm(s.mean((2, 3), keepdim=True).permute(0, 2, 3, 1)).permute(0, 3, 1, 2).flatten(1))
    assert torch.allclose(head, y)
    g, = torch.autograd.grad(head[torch.arange(2), torch.tensor(t)].sum(), s)
    cam = torch.relu((g.mean((2, 3), keepdim=True) * s).sum(1, keepdim=True)).detach().numpy()
    assert (cam.reshape(2, -1).max(1) > 1e-3).all()
    np.testing.assert_allclose(ex.run(x, t)["cam"], cam, rtol=1e-5, atol=1e-7)


class ConvLayerNormSignal(torch.nn.Module):
    """A 1-D CNN whose LayerNorm over channels is written transpose -> LayerNorm -> transpose (as
    wav2vec2's feature encoder): the map [N, K, l] after it is channels-first."""

    def __init__(self):
        super().__init__()
        self.conv, self.ln, self.fc = torch.nn.Conv1d(4, 16, 5, stride=2), torch.nn.LayerNorm(16), torch.nn.Linear(16, 6)

    def maps(self, x):
        return torch.relu(self.ln(self.conv(x).transpose(1, 2)).transpose(1, 2))

    def forward(self, x):
        return self.fc(self.maps(x).mean(-1))


class ChannelsLastBlock(torch.nn.Module):
    """ConvNeXt's and Swin's block layout: a patchifying Conv, then channels-last [N, h, w, C]
    between permutes: LayerNorm, Linear, GELU, Linear, a residual sum; back to channels-first
    for the pooling. `acts` keeps the channels-last tensors for a float64 reference."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 4, stride=4)
        self.norm, self.up, self.down = torch.nn.LayerNorm(8), torch.nn.Linear(8, 20), torch.nn.Linear(20, 8)
        self.fc = torch.nn.Linear(8, 5)
        self.acts = {}

    def forward(self, x):
        h = self.stem(x).permute(0, 2, 3, 1)
        n = self.norm(h)
        u = torch.nn.functional.gelu(self.up(n))
        s = h + self.down(u)
        self.acts.update(norm=n, gelu=u, sum=s)
        return self.fc(s.permute(0, 3, 1, 2).mean((2, 3)))


@pytest.mark.parametrize("layer", ["norm", "gelu", "sum"])
def test_gradcam_at_channels_last_layers_between_layernorm_and_linear(layer):
    """Where the only hint of a channels-last [N, h, w, C] layer is the LayerNorm over its last
    axis or the Linear (MatMul by a constant matrix) that reads or writes it, as in PyTorch's
    ConvNeXt and Swin blocks (a LayerNorm or a MatMul ended the trail, so Swin's usual layer
    `features.7` gave cam [N, 1, w, C]). Against float64 PyTorch Grad-CAM over axes 1, 2."""
    torch.manual_seed(11)
    m = ChannelsLastBlock().eval()
    x = np.random.default_rng(11).normal(size=(2, 3, 28, 20)).astype(np.float32)
    t = [1, 3]
    model = export(m, x, opset=17)
    md = m.double()
    y = md(torch.from_numpy(x).double())
    want = {k: v for k, v in md.acts.items()}
    act = want[layer]
    g, = torch.autograd.grad(y[torch.arange(2), torch.tensor(t)].sum(), act)
    cam = torch.relu((g.mean((1, 2), keepdim=True) * act).sum(3, keepdim=True)).permute(0, 3, 1, 2)
    cam = cam.detach().numpy()
    assert cam.shape == (2, 1, 7, 5) and (cam.reshape(2, -1).max(1) > 1e-4).all()
    # the ONNX tensor of that layer: the one whose values match
    names = {"norm": "LayerNormalization", "gelu": "Mul", "sum": "Add"}
    full = onnx.load_from_string(model.SerializeToString())
    cands = [o for n in full.graph.node for o in n.output if n.op_type == names[layer]]
    full.graph.output.extend(helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in cands)
    import onnxruntime as ort
    vals = dict(zip(cands, ort.InferenceSession(full.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        cands, {"x": x})))
    name = next(o for o in cands if vals[o].shape == act.shape and np.allclose(vals[o], act.detach().numpy(), atol=1e-5))
    out = onnxattr.Explainer(model, method="gradcam", provider="cpu", layer=name).run(x, t)
    np.testing.assert_allclose(out["cam"], cam, rtol=1e-5, atol=1e-7 * np.abs(cam).max())


def test_gradcam_on_a_signal_with_a_transposed_layernorm():
    """A rank-3 Transpose [0, 2, 1] moves channels either way: the map [N, K, l] made by
    transpose -> LayerNorm -> transpose is channels-first (it was read channels-last when a
    Transpose alone counted as evidence: cam [N, 1, K]). Against float64 PyTorch."""
    torch.manual_seed(12)
    m = ConvLayerNormSignal().eval()
    x = np.random.default_rng(12).normal(size=(2, 4, 64)).astype(np.float32)
    t = [1, 4]
    model = export(m, x, opset=17)
    md = m.double()
    a = md.maps(torch.from_numpy(x).double())
    g, = torch.autograd.grad(md.fc(a.mean(-1))[torch.arange(2), torch.tensor(t)].sum(), a)
    cam = torch.relu((g.mean(2, keepdim=True) * a).sum(1, keepdim=True)).detach().numpy()
    ex = onnxattr.Explainer(model, method="gradcam", provider="cpu")
    assert ex.layer == [n.output[0] for n in model.graph.node if n.op_type == "Relu"][-1]
    np.testing.assert_allclose(ex.run(x, t)["cam"], cam, rtol=1e-5, atol=1e-7 * np.abs(cam).max())


def test_gradcam_default_layer_is_not_a_transformer_over_conv_features():
    """Tokens [N, T, d] from a Conv1d's features transposed, through a transformer layer, then
    mean-pooled over T: the pool reads a sequence, not a convolutional map, so the default stays
    the last convolutional activation, the GELU after the Conv [N, K, l] (not the transformer's
    tokens; nor their mere Transpose of that map). Against float64 PyTorch Grad-CAM there."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv1d(4, 16, 5, stride=2)
            self.enc = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, norm_first=True)
            self.fc = torch.nn.Linear(16, 6)

        def maps(self, x):
            return torch.nn.functional.gelu(self.conv(x))

        def forward(self, x):
            return self.fc(self.enc(self.maps(x).transpose(1, 2)).mean(1))

    torch.manual_seed(13)
    m = Net().eval()
    x = np.random.default_rng(13).normal(size=(2, 4, 64)).astype(np.float32)
    t = [1, 4]
    model = export(m, x, opset=17)
    ex = onnxattr.Explainer(model, method="gradcam", provider="cpu")
    md = m.double()
    a = md.maps(torch.from_numpy(x).double())
    y = md.fc(md.enc(a.transpose(1, 2)).mean(1))
    g, = torch.autograd.grad(y[torch.arange(2), torch.tensor(t)].sum(), a)
    cam = torch.relu((g.mean(2, keepdim=True) * a).sum(1, keepdim=True)).detach().numpy()  # [N, 1, l]
    assert (cam.reshape(2, -1).max(1) > 1e-4).all()
    np.testing.assert_allclose(ex.run(x, t)["cam"], cam, rtol=1e-5, atol=1e-6 * np.abs(cam).max())


class WidthMixing(torch.nn.Module):
    """A channels-first map multiplied by a constant matrix along its width (x @ Rw: a Linear over
    W, a fixed resize), then along its height, then a Conv."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.c1, self.c2 = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.Conv2d(8, 6, 3, padding=1)
        self.register_buffer("rw", torch.rand(10, 15, generator=gen))
        self.register_buffer("rh", torch.rand(20, 14, generator=gen))
        self.fc = torch.nn.Linear(6, 5)

    def mixed(self, x):
        return torch.relu(self.c1(x)) @ self.rw  # [N, 8, 14, 15]

    def forward(self, x):
        return self.fc(torch.relu(self.c2(self.rh @ self.mixed(x))).mean((2, 3)))


def test_gradcam_at_a_map_mixed_along_its_width_by_a_matrix():
    """A MatMul by a constant matrix hints that its last axis is channels, but only weakly: the
    Conv before it says axis 1, and that wins (the map [N, 8, 14, 15] was read channels-last,
    cam [N, 1, 8, 14]). Against float64 PyTorch Grad-CAM over axes 2, 3."""
    torch.manual_seed(14)
    m = WidthMixing().eval()
    x = np.random.default_rng(14).normal(size=(2, 3, 28, 20)).astype(np.float32)
    t = [1, 3]
    model = export(m, x, opset=17)
    layer = next(n.output[0] for n in model.graph.node if n.op_type == "MatMul")
    md = m.double()
    a = md.mixed(torch.from_numpy(x).double())
    y = md.fc(torch.relu(md.c2(md.rh @ a)).mean((2, 3)))
    g, = torch.autograd.grad(y[torch.arange(2), torch.tensor(t)].sum(), a)
    cam = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True)).detach().numpy()
    out = onnxattr.Explainer(model, method="gradcam", provider="cpu", layer=layer).run(x, t)
    np.testing.assert_allclose(out["cam"], cam, rtol=1e-5, atol=1e-6 * np.abs(cam).max())


class ChannelsLastPooled(ChannelsLastBlock):
    """timm Swin's end: the channels-last map normalised by a LayerNorm and pooled over axes 1, 2
    as it is (torchvision permutes it to channels-first first)."""

    def __init__(self):
        super().__init__()
        self.final = torch.nn.LayerNorm(8)

    def forward(self, x):
        h = self.stem(x).permute(0, 2, 3, 1)
        s = h + self.down(torch.nn.functional.gelu(self.up(self.norm(h))))
        f = self.final(s)
        self.acts.update(final=f)
        return self.fc(f.mean((1, 2)))


def test_gradcam_default_layer_is_a_channels_last_map_after_a_layernorm():
    """The pool's input is a channels-last image map [N, h, w, C] right after a LayerNorm (timm
    Swin): it is the default layer (it was passed over as not convolutional, so the default fell
    back to the patchifying Conv). Against float64 PyTorch Grad-CAM over axes 1, 2."""
    torch.manual_seed(15)
    m = ChannelsLastPooled().eval()
    x = np.random.default_rng(15).normal(size=(2, 3, 28, 20)).astype(np.float32)
    t = [0, 4]
    model = export(m, x, opset=17)
    ex = onnxattr.Explainer(model, method="gradcam", provider="cpu")
    assert ex.layer == [n.output[0] for n in model.graph.node if n.op_type == "LayerNormalization"][-1]
    md = m.double()
    y = md(torch.from_numpy(x).double())
    a = md.acts["final"]
    g, = torch.autograd.grad(y[torch.arange(2), torch.tensor(t)].sum(), a)
    cam = torch.relu((g.mean((1, 2), keepdim=True) * a).sum(3, keepdim=True)).permute(0, 3, 1, 2).detach().numpy()
    assert cam.shape == (2, 1, 7, 5) and (cam.reshape(2, -1).max(1) > 1e-4).all()
    np.testing.assert_allclose(ex.run(x, t)["cam"], cam, rtol=1e-5, atol=1e-6 * np.abs(cam).max())


class ShuffleChunk(torch.nn.Module):
    """A channel shuffle, then x.chunk(2, dim=1): at a dynamic size PyTorch writes the chunk as
    Slices whose bounds are computed from Shape."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = torch.nn.Conv2d(3, 12, 3, padding=1), torch.nn.Conv2d(6, 6, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(6, 4)

    def maps(self, x):
        x = torch.relu(self.c1(x))
        b, c, h, w = x.size()
        x = x.view(b, 3, c // 3, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)
        return torch.relu(self.c2(x.chunk(2, dim=1)[0]))

    def forward(self, x):
        return self.fc(self.maps(x).mean((2, 3)))


def test_gradcam_default_layer_after_a_chunk_at_a_dynamic_size():
    """After the chunk the batch axis was lost (dims.py followed no Slice of a tensor), so the
    default layer fell to the map before the shuffle, and the last map asked for by name was
    refused ("its first axis is not the input's batch axis"). Against float64 PyTorch."""
    torch.manual_seed(16)
    m = ShuffleChunk().eval()
    x = np.random.default_rng(16).normal(size=(2, 3, 18, 14)).astype(np.float32)
    t = [1, 2]
    f = io.BytesIO()
    torch.onnx.export(m, torch.from_numpy(x[:1]), f, input_names=["x"], output_names=["y"], opset_version=17,
                      dynamic_axes={"x": {0: "N", 2: "H", 3: "W"}, "y": {0: "N"}}, dynamo=False)
    model = onnx.load_from_string(f.getvalue())
    ex = onnxattr.Explainer(model, method="gradcam", provider="cpu")
    assert ex.layer == [n.output[0] for n in model.graph.node if n.op_type == "Relu"][-1]
    md = m.double()
    a = md.maps(torch.from_numpy(x).double())
    g, = torch.autograd.grad(md.fc(a.mean((2, 3)))[torch.arange(2), torch.tensor(t)].sum(), a)
    cam = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True)).detach().numpy()
    assert (cam.reshape(2, -1).max(1) > 1e-4).all()
    np.testing.assert_allclose(ex.run(x, t)["cam"], cam, rtol=1e-5, atol=1e-6 * np.abs(cam).max())


@pytest.mark.parametrize("steps", [8, 128])
def test_float16_integrated_gradients_do_not_lose_precision_with_the_steps(steps):
    """In float16 arithmetic (the reference evaluator), with the quadrature weights scaling the
    backward's seed, each copy's gradient (about 1e-4 / steps here) was subnormal and the error
    grew with the steps: 3.0e-3 at 8, 2.2e-2 at 128 against float64. The weights apply after the
    backward, in float32, now: 5.6e-4 and 5.3e-4 (the float16 rounding of the inputs and result)."""
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((16, 32)) * 0.3).astype(np.float16)
    w2 = (rng.standard_normal((32, 5)) * 3e-5).astype(np.float16)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Tanh", ["h"], ["t"]),
             helper.make_node("MatMul", ["t", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 5])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x, target = rng.standard_normal((3, 16)).astype(np.float16), np.array([0, 2, 4])
    am = onnxattr.attribution_model(model, method="integrated-gradients", steps=steps)
    got = ReferenceEvaluator(am).run(["attribution"], {"x": x, "target": target})[0].astype(np.float64)
    a, b, xs = w1.astype(np.float64), w2.astype(np.float64), x.astype(np.float64)
    alphas, weights = ig_points(steps, "gausslegendre")
    want = xs * sum(w * ((1 - np.tanh(al * xs @ a) ** 2) * b[:, target].T) @ a.T for al, w in zip(alphas, weights))
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 2e-3


def test_gradcam_of_a_float64_model_runs_in_onnx_runtime():
    """ONNX Runtime has no float64 Resize: a float64 model that runs there (BatchNorm, Relu,
    MaxPools, Linear) got a gradcam model that did not (NOT_IMPLEMENTED Resize). The map is now
    resized in float32 between Casts: cam as exact as float64, the resized map to float32
    rounding."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bn, self.fc = torch.nn.BatchNorm2d(3), torch.nn.Linear(3 * 8 * 8, 10)

        def maps(self, x):
            return torch.nn.functional.max_pool2d(torch.nn.functional.max_pool2d(torch.relu(self.bn(x)), 2), 2)

        def forward(self, x):
            return self.fc(self.maps(x).flatten(1))

    torch.manual_seed(0)
    m = Net().eval().double()
    x, t = np.random.default_rng(0).normal(size=(2, 3, 32, 32)), np.array([3, 7])
    f = io.BytesIO()
    torch.onnx.export(m, (torch.from_numpy(x),), f, dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    am = onnxattr.attribution_model(onnx.load_from_string(f.getvalue()), method="gradcam")
    assert {p.key: p.value for p in am.metadata_props}["onnxattr.layer"] == "/MaxPool_1_output_0"  # [N, 3, 8, 8]
    import onnxruntime as ort
    sess = ort.InferenceSession(am.SerializeToString(), onnxattr.session_options(), providers=["CPUExecutionProvider"])
    att, cam = sess.run(["attribution", "cam"], {"x": x, "target": t})
    assert att.dtype == np.float64 and att.shape == (2, 1, 32, 32)
    a = m.maps(torch.from_numpy(x)).detach().requires_grad_(True)
    g, = torch.autograd.grad(m.fc(a.flatten(1))[torch.arange(2), torch.from_numpy(t)].sum(), a)
    want = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
    up = torch.nn.functional.interpolate(want, size=(32, 32), mode="bilinear", align_corners=False).detach().numpy()
    want = want.detach().numpy()
    assert np.abs(cam - want).max() <= 1e-12 * np.abs(want).max()
    assert np.abs(att - up).max() <= 1e-6 * np.abs(up).max()


def test_cli_feeds_other_inputs_with_input(tmp_path):
    """`explain --input ids.npy --feed mask=mask.npy --wrt e`: the mask reaches the model; without
    it the error says how to give it; -o may not replace a fed file; images cannot feed it."""
    from click.testing import CliRunner

    from onnxattr.cli import main

    model, emb, w, ids, mask = _masked_model()
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "mask.npy", mask)

    def cli(*args):
        return CliRunner().invoke(main, [str(a) for a in args])

    base = ("explain", tmp_path / "m.onnx", "--input", tmp_path / "ids.npy", "--wrt", "e", "--target", "0,2,1",
            "--provider", "cpu")
    r = cli(*base, "--feed", f"mask={tmp_path / 'mask.npy'}", "-o", tmp_path / "a.npy")
    assert r.exit_code == 0, r.output
    t = np.array([0, 2, 1])
    np.testing.assert_allclose(np.load(tmp_path / "a.npy"), mask[:, :, None] * w[:, t].T[:, None, :], rtol=1e-5, atol=1e-6)
    r = cli(*base, "-o", tmp_path / "b.npy")
    assert r.exit_code == 1 and "--feed mask=FILE.npy" in r.stderr and not (tmp_path / "b.npy").exists()
    r = cli(*base, "--feed", f"mask={tmp_path / 'mask.npy'}", "-o", tmp_path / "mask.npy")
    assert r.exit_code == 1 and "OutputError" in r.stderr and np.array_equal(np.load(tmp_path / "mask.npy"), mask)
    r = cli(*base, "--feed", "mask", "-o", tmp_path / "c.npy")
    assert r.exit_code == 2 and "is not NAME=FILE.npy" in r.output
    r = cli("explain", tmp_path / "m.onnx", FIX / "images" / "circle.png", "--feed", f"mask={tmp_path / 'mask.npy'}")
    assert r.exit_code == 2 and "--feed goes with --input" in r.output


def test_explainer_inputs_must_be_a_dict():
    model, _, _, ids, mask = _masked_model()
    ex = onnxattr.Explainer(model, wrt="e", provider="cpu")
    with pytest.raises(onnxattr.InputError, match="inputs must be a dict of the model's other inputs by name, got list"):
        ex(ids, 0, inputs=[mask])


@pytest.mark.parametrize("k", [3, 4])
def test_batched_methods_do_not_copy_an_input_that_only_matches_the_batch_length(k):
    """y = (x @ W) * sum(s), s [K] a second input: K never meets the batch in a broadcast, so s
    goes to the copies as it is, also when K equals N at run time (tiling it there made the
    integrated gradients 33x too large: an adversarial review). Linear in x: x W[:, t] sum(s)."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("ReduceSum", ["s"], ["t"], keepdims=0),
             helper.make_node("Mul", ["z", "t"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
                                       helper.make_tensor_value_info("s", TensorProto.FLOAT, ["K"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    x, s, t = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=k).astype(np.float32), np.array([0, 2, 1])
    got = onnxattr.Explainer(model, method="integrated-gradients", steps=5, provider="cpu")(x, t, inputs={"s": s})
    np.testing.assert_allclose(got, x * w[:, t].T * s.sum(), rtol=1e-5, atol=1e-6)


class _MaskedText(torch.nn.Module):
    """ids [N, T], mask [N, T] -> scores: a bidirectional LSTM whose outputs the mask multiplies
    (masked mean), or causal self-attention read at the last real token, x[arange(N), mask.sum(1) - 1]
    (the mask meets the batch only in that index). `e` replaces the token embeddings."""

    def __init__(self, kind):
        super().__init__()
        self.kind, self.emb = kind, torch.nn.Embedding(12, 6)
        if kind == "lstm":
            self.lstm = torch.nn.LSTM(6, 5, batch_first=True, bidirectional=True)
            self.fc = torch.nn.Linear(10, 3)
        else:
            self.qkv, self.fc = torch.nn.Linear(6, 18), torch.nn.Linear(6, 3)

    def forward(self, ids, mask, e=None):
        e = self.emb(ids) if e is None else e
        if self.kind == "lstm":
            h, m = self.lstm(e)[0], mask.to(e.dtype).unsqueeze(-1)
            return self.fc((h * m).sum(1) / m.sum(1))
        n, t, _ = e.shape
        q, k, v = self.qkv(e).chunk(3, dim=-1)
        s = (q @ k.transpose(1, 2)).masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), -1e4)
        x = e + s.softmax(-1) @ v
        return self.fc(torch.tanh(x[torch.arange(n), mask.sum(1) - 1]))


@pytest.mark.parametrize("kind", ["lstm", "gpt"])
def test_batched_methods_copy_a_mask_named_apart_through_an_lstm_and_an_index(kind):
    """TorchScript's dynamic_axes given as lists name the mask's batch dim apart from the ids': the
    mask meets the batch only past an LSTM (whose output dims were not followed) or in the index
    arange(N) + last (Range was not followed), so it was not copied and SmoothGrad and integrated
    gradients failed in ONNX Runtime (an audit's BiLSTM and GPT-like models). Against float64
    autograd at the embeddings (IG: Captum's Gauss-Legendre, SmoothGrad: the documented noise)."""
    from captum.attr import IntegratedGradients

    torch.manual_seed(0)
    m = _MaskedText(kind).eval()
    f = io.BytesIO()
    torch.onnx.export(m, (torch.randint(0, 12, (2, 4)), torch.ones(2, 4, dtype=torch.int64)), f, dynamo=False,
                      input_names=["ids", "mask"], output_names=["y"], opset_version=17,
                      dynamic_axes={"ids": [0, 1], "mask": [0, 1], "y": [0]})
    model = onnx.load_from_string(f.getvalue())
    assert model.graph.input[1].type.tensor_type.shape.dim[0].dim_param == "mask_dynamic_axes_1"
    wrt = next(n.output[0] for n in model.graph.node if n.op_type == "Gather" and n.input[1] == "ids")
    ids, mask, t = np.random.default_rng(0).integers(0, 12, size=(3, 6)), np.ones((3, 6), np.int64), np.array([0, 2, 1])
    mask[1, 4:], mask[2, 2:] = 0, 0
    m.double()
    fixed = (torch.from_numpy(ids), torch.from_numpy(mask))
    e = m.emb(fixed[0]).detach()

    def grad(at):
        at = at.clone().requires_grad_(True)
        m(*fixed, e=at).gather(1, torch.from_numpy(t)[:, None]).sum().backward()
        return at.grad.numpy()
    ig = IntegratedGradients(lambda at, i, k: m(i, k, e=at)).attribute(
        e, target=torch.from_numpy(t), n_steps=5, method="gausslegendre", additional_forward_args=fixed).numpy()
    z = gaussian_noise((3, 1, 6, 6), 0)[:, 0].astype(np.float64)
    span = (e.amax((1, 2)) - e.amin((1, 2))).numpy()[:, None, None]
    sg = np.mean([grad(e + torch.from_numpy(0.15 * span * z[s])) for s in range(3)], 0)
    for method, want in (("integrated-gradients", ig), ("smoothgrad", sg)):
        ex = onnxattr.Explainer(model, method=method, wrt=wrt, provider="cpu", steps=5, samples=3)
        got = ex(ids, t, inputs={"mask": mask})
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.abs(want).max())


def test_batched_methods_refuse_a_mask_named_apart_that_they_cannot_follow():
    """A masked sum written as an Einsum, whose output dims dims.py does not follow: whether the
    mask, its batch dim named apart by TorchScript's dynamic_axes as lists, has one row per
    example is not known, so it can be neither copied with the ids nor passed as it is (which
    failed in ONNX Runtime); refused at export, naming it."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gather", ["E", "ids"], ["e"]), helper.make_node("Cast", ["mask"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Einsum", ["mf", "e"], ["pooled"], equation="nt,ntd->nd"),
             helper.make_node("MatMul", ["pooled", "w"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "T"]),
                                       helper.make_tensor_value_info("mask", TensorProto.INT64,
                                                                     ["mask_dynamic_axes_1", "mask_dynamic_axes_2"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(rng.normal(size=(10, 4)).astype(np.float32), "E"),
                           numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    ids, mask, t = rng.integers(0, 10, size=(3, 5)), np.ones((3, 5), np.int64), np.array([0, 2, 1])
    assert onnxattr.Explainer(model, wrt="e", provider="cpu")(ids, t, inputs={"mask": mask}).shape == (3, 5, 4)
    for method in ("integrated-gradients", "smoothgrad"):
        with pytest.raises(onnxattr.UnsupportedModelError, match=r"cannot tell whether axis 0 of the input 'mask' "
                           r"\('mask_dynamic_axes_1'\) is the batch axis of 'ids' \('N'\).*one symbolic name"):
            onnxattr.attribution_model(model, method=method, wrt="e")


def test_a_per_example_input_the_user_named_apart_fails_at_run_time_saying_why():
    """The same Einsum model with the mask's batch dim named apart by the user ('Nm'): taken as
    shared (as a memory bank [P, D] is), so not copied; ONNX Runtime's broadcast error then says
    what the batched method copies and why."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gather", ["E", "ids"], ["e"]), helper.make_node("Cast", ["mask"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Einsum", ["mf", "e"], ["pooled"], equation="nt,ntd->nd"),
             helper.make_node("MatMul", ["pooled", "w"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "T"]),
                                       helper.make_tensor_value_info("mask", TensorProto.INT64, ["Nm", "T"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(rng.normal(size=(10, 4)).astype(np.float32), "E"),
                           numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    ids, mask, t = rng.integers(0, 10, size=(3, 5)), np.ones((3, 5), np.int64), np.array([0, 2, 1])
    ex = onnxattr.Explainer(model, method="smoothgrad", samples=2, wrt="e", provider="cpu")
    with pytest.raises(onnxattr.ExecutionError, match=r"ONNX Runtime failed: .*\[smoothgrad runs its copies of 'ids' "
                       r"as one batch, and copies mask along only where .*named apart by the user is taken as shared\]"):
        ex(ids, t, inputs={"mask": mask})


class _MemoryBank(torch.nn.Module):
    """x [N, 4] reads the two nearest rows of a memory bank mem [P, 4] shared by all examples
    (TopK: a node whose lengths dims.py does not follow)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x, mem):
        v, i = torch.topk(x @ mem.T, 2, dim=1)
        return self.fc(torch.tanh(x + (v.softmax(-1)[:, :, None] * mem[i]).sum(1)))


def test_batched_methods_pass_an_input_whose_dim_the_user_named_apart():
    """A dim the user named ('P', not the batch's 'N') is not the batch: the shared memory bank is
    passed as it is, not copied with the batch, where the graph takes it out of dims.py's sight
    (a review found it refused after the refusal above came in; it had run). Against float64
    autograd (SmoothGrad: the documented noise; IG: Gauss-Legendre)."""
    torch.manual_seed(0)
    m = _MemoryBank().eval()
    f = io.BytesIO()
    torch.onnx.export(m, (torch.randn(2, 4), torch.randn(7, 4)), f, input_names=["x", "mem"], output_names=["y"],
                      opset_version=17, dynamic_axes={"x": {0: "N"}, "mem": {0: "P"}, "y": {0: "N"}}, dynamo=False)
    model = onnx.load_from_string(f.getvalue())
    rng = np.random.default_rng(0)
    x, mem, t = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(7, 4)).astype(np.float32), np.array([0, 2, 1])
    m.double()
    mt = torch.from_numpy(mem).double()

    def grad(at):
        at = at.clone().requires_grad_(True)
        m(at, mt).gather(1, torch.from_numpy(t)[:, None]).sum().backward()
        return at.grad

    xt = torch.from_numpy(x).double()
    nodes, weights = np.polynomial.legendre.leggauss(6)
    ig = (xt * sum(w * grad(a * xt) for a, w in zip(0.5 * (nodes + 1), 0.5 * weights))).numpy()
    z = torch.from_numpy(gaussian_noise((3, 1, 4), 0)[:, 0].astype(np.float64))
    span = (xt.amax(1) - xt.amin(1))[:, None]
    sg = (sum(grad(xt + 0.15 * span * z[s]) for s in range(3)) / 3).numpy()
    for method, want in (("integrated-gradients", ig), ("smoothgrad", sg)):
        got = onnxattr.Explainer(model, method=method, provider="cpu", steps=6, samples=3)(x, t, inputs={"mem": mem})
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.abs(want).max())


class _InitialState(torch.nn.Module):
    """x [N, T, 4] (or time-major [T, N, 4]) and the LSTM's initial states h0, c0 [1, N, 5] given as inputs."""

    def __init__(self, batch_first):
        super().__init__()
        self.lstm, self.fc = torch.nn.LSTM(4, 5, batch_first=batch_first), torch.nn.Linear(5, 3)

    def forward(self, x, h0, c0):
        return self.fc(torch.tanh(self.lstm(x, (h0, c0))[1][0][-1]))


@pytest.mark.parametrize("batch_first", [True, False])
def test_batched_methods_copy_initial_states_named_apart(batch_first):
    """TorchScript's dynamic_axes as lists name h0's and c0's batch dim (their axis 1) apart from x's:
    the LSTM node needs them equal, so they meet; they were neither copied nor refused, and
    SmoothGrad and integrated gradients failed in ONNX Runtime (initial_h must have shape
    {1, 9, 5}). Against float64 autograd (SmoothGrad: the documented noise; IG: Gauss-Legendre)."""
    torch.manual_seed(0)
    m = _InitialState(batch_first).eval()
    xs = (3, 6, 4) if batch_first else (6, 3, 4)
    f = io.BytesIO()
    torch.onnx.export(m, (torch.randn(*xs), torch.zeros(1, 3, 5), torch.zeros(1, 3, 5)), f, dynamo=False,
                      input_names=["x", "h0", "c0"], output_names=["y"], opset_version=17,
                      dynamic_axes={"x": [0, 1], "h0": [1], "c0": [1], "y": [0]})
    model = onnx.load_from_string(f.getvalue())
    rng = np.random.default_rng(0)
    x = rng.normal(size=xs).astype(np.float32)
    h0, c0 = (rng.normal(size=(1, 3, 5)).astype(np.float32) for _ in range(2))
    t, ba = np.array([0, 2, 1]), 0 if batch_first else 1
    m.double()

    def grad(at):
        at = at.clone().requires_grad_(True)
        m(at, torch.from_numpy(h0).double(), torch.from_numpy(c0).double()).gather(1, torch.from_numpy(t)[:, None]).sum().backward()
        return at.grad

    xt = torch.from_numpy(x).double()
    nodes, weights = np.polynomial.legendre.leggauss(5)
    ig = (xt * sum(w * grad(a * xt) for a, w in zip(0.5 * (nodes + 1), 0.5 * weights))).numpy()
    xm = xt.movedim(ba, 0)
    z = torch.from_numpy(gaussian_noise((3, 1) + tuple(xm.shape[1:]), 0)[:, 0].astype(np.float64))
    span = (xm.amax((1, 2)) - xm.amin((1, 2)))[:, None, None]
    sg = (sum(grad((xm + 0.15 * span * z[s]).movedim(0, ba)) for s in range(3)) / 3).numpy()
    for method, want in (("integrated-gradients", ig), ("smoothgrad", sg)):
        ex = onnxattr.Explainer(model, method=method, provider="cpu", steps=5, samples=3)
        got = ex(x, t, inputs={"h0": h0, "c0": c0})
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.abs(want).max())
