"""Recurrent classifiers end to end: the ONNX LSTM, GRU and RNN ops (their gradient rules run the
recurrence backwards in Scan nodes), float32 on ONNX Runtime (CPU) against float64 references.

* torch.nn.LSTM / GRU / RNN (tanh and relu) exported by TorchScript (`dynamo=False`) at opsets 9
  to 17: one and two layers, uni- and bidirectional, batch_first True and False (the model's
  input is always [N, T, F]: a sequence-first module is fed x.transpose(0, 1)), read out as the
  last step of Y, the final hidden state Y_h (LSTM: also the final cell state Y_c) or the mean of
  Y over time; initial states omitted in PyTorch (the exporter writes zeros), explicit zeros,
  blank ('') or cut off in the ONNX node, a learned constant, or computed from the input (the
  gradient then also flows into initial_h / initial_c); bias=False (no B input). Exported at
  N = 2, T = 5 with both axes dynamic, and run at (2, 5), (3, 7) and (1, 1). The reference is
  the same module in float64 under torch.autograd: row n, the gradient of y[n, target[n]];
* DeconvNet and guided backprop: the cells' activations (Sigmoid, Tanh, also an RNN's Relu) are
  attributes of one node, not Relu nodes, so they keep their exact derivative and a model without
  a Relu node gets the saliency; with an nn.ReLU after the LSTM, against Captum's GuidedBackprop
  and Deconvolution (which hook nn.ReLU modules only);
* hand-built graphs of what PyTorch does not write (direction "reverse", peepholes, GRU
  linear_before_reset = 0, RNN Sigmoid and per-direction activations, explicit default
  activations), scores reading Y, Y_h and Y_c at once, against the operator's definition written
  in float64 torch (checked against ONNX Runtime's forward first); the unsupported forms
  (sequence_lens, clip, input_forget, other activations, weights on the path) refused by name;
* a time-major input [T, N, F] (nn.LSTM(batch_first=False) fed the model's input as it is):
  SmoothGrad and integrated gradients stack their copies along the batch axis, axis 1, against
  float64 autograd and Captum at other T and N than the export's; a fixed-size export; with
  unnamed dims axis 0 is taken (a wrong guess fails at run time); Grad-CAM refused; the Explainer
  and `onnxattr explain` take the batch axis from the export's metadata (`onnxattr.batch_axis`)
  for targets, NaN rows and an empty batch, and with --wrt at a sequence-first LSTM's X the
  attribution's (`onnxattr.wrt_batch_axis`) for the baseline's check;
* a text classifier (Embedding -> LSTM -> Linear, int64 token ids) attributed at the embedding
  output (`wrt`), against autograd there, and integrated gradients against Captum's;
* Keras via tf2onnx: LSTM layers become LSTM nodes, GRU and SimpleRNN a Loop (tests/test_loop.py
  has the Loop rule's own cases), checked against tf.GradientTape in float64.

ONNX Runtime's CPU kernels refuse layout = 1 (batch-first recurrent ops): that form is checked against
float64 differences of the reference evaluator in tests/test_vjp_ops.py only.

Tolerances: relative L2 error ||onnx - ref|| / ||ref||, each 5-20x the largest measured float32
error of its cases (in the comments). Larger matrices are marked `slow` (ONNXATTR_EXTENDED=1).
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import onnxattr
from onnxattr.api import coverage
from onnxattr.recipes import gaussian_noise

torch = pytest.importorskip("torch")

slow = pytest.mark.slow
F_IN, HIDDEN, CLASSES = 4, 5, 3
SHAPES = [(2, 5), (3, 7), (1, 1)]  # (N, T): the export's, a longer sequence and a larger batch, one step
RECURRENT = ("LSTM", "GRU", "RNN")


# ---------------------------------------------------------------- helpers
def rel_err(a, ref) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - ref) / np.linalg.norm(ref))


def session(proto: onnx.ModelProto) -> ort.InferenceSession:
    opts = onnxattr.session_options()
    opts.intra_op_num_threads = 1  # tiny graphs: one thread is as fast, and leaves the cores alone
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def attribution_session(proto: onnx.ModelProto, method: str = "saliency", **kw) -> ort.InferenceSession:
    am = onnxattr.attribution_model(proto, method=method, **kw)
    onnx.checker.check_model(am, full_check=True)
    return session(am)


def assert_covered(proto: onnx.ModelProto):
    missing = {r["op_type"]: r["missing_nodes"] for r in coverage(proto) if r["missing_nodes"]}
    assert not missing, f"ops without a gradient rule: {missing}"


def attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def recurrent_nodes(proto: onnx.ModelProto) -> list:
    return [n for n in proto.graph.node if n.op_type in RECURRENT]


def export_torch(model, x: np.ndarray, opset: int, names=("x", "y")) -> onnx.ModelProto:
    """TorchScript export with the batch and the time axis of the [N, T, ...] input dynamic."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(x),), buf, dynamo=False, opset_version=opset,
                          input_names=[names[0]], output_names=[names[1]],
                          dynamic_axes={names[0]: {0: "N", 1: "T"}, names[1]: {0: "N"}})
    return onnx.load_from_string(buf.getvalue())


def randomize(model: torch.nn.Module, seed: int, scale: float = 0.5) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return model.eval()


def torch_gradient(model, x: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 scores and d sum_n y[n, target[n]] / d x."""
    m = model.double()
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    y = m(xt)
    (g,) = torch.autograd.grad(y.gather(1, torch.from_numpy(target)[:, None]).sum(), xt)
    model.float()
    return y.detach().numpy(), g.numpy()


# ---------------------------------------------------------------- PyTorch recurrent classifiers
class RecurrentNet(torch.nn.Module):
    """x [N, T, F] -> {LSTM, GRU, RNN} -> a readout -> Linear -> scores [N, C].

    state: "none" (PyTorch's default: the exporter writes zeros), "zeros" (explicit zero tensors),
    "learned" (a parameter expanded over the batch; LSTM: c0 = tanh(h0)), "from_x" (tanh of a
    Linear of the input's time mean: initial_h, and c0 = h0 / 2, depend on the input).
    readout: "last" (Y at the last step), "mean" (Y over time), "h_n" (Y_h of the last layer, both
    directions), "c_n" (LSTM: Y_c likewise)."""

    def __init__(self, kind="LSTM", layers=1, bidir=False, batch_first=True, readout="last", state="none",
                 nonlinearity="tanh", bias=True, relu_head=False):
        super().__init__()
        self.kind, self.batch_first, self.readout, self.state = kind, batch_first, readout, state
        self.dirs, self.layers = 2 if bidir else 1, layers
        kw = {"nonlinearity": nonlinearity} if kind == "RNN" else {}
        self.rnn = getattr(torch.nn, kind)(F_IN, HIDDEN, num_layers=layers, bidirectional=bidir,
                                           batch_first=batch_first, bias=bias, **kw)
        width = HIDDEN * self.dirs
        if state == "learned":
            self.h0 = torch.nn.Parameter(torch.zeros(layers * self.dirs, 1, HIDDEN))
        if state == "from_x":
            self.init = torch.nn.Linear(F_IN, HIDDEN * layers * self.dirs)
        # two separate ReLU modules: Captum hooks modules, one use each
        self.head = (torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(width, 6), torch.nn.ReLU(),
                                         torch.nn.Linear(6, CLASSES)) if relu_head else torch.nn.Linear(width, CLASSES))

    def initial_state(self, x):
        n = x.shape[0]
        if self.state == "zeros":
            h = torch.zeros(self.layers * self.dirs, n, HIDDEN, dtype=x.dtype)
            return (h, torch.zeros_like(h)) if self.kind == "LSTM" else h
        if self.state == "learned":
            h = self.h0.expand(-1, n, -1).contiguous()
            return (h, torch.tanh(h)) if self.kind == "LSTM" else h
        if self.state == "from_x":
            h = torch.tanh(self.init(x.mean(1))).reshape(n, self.layers * self.dirs, HIDDEN)
            h = h.transpose(0, 1).contiguous()
            return (h, h * 0.5) if self.kind == "LSTM" else h
        return None

    def forward(self, x):  # x [N, T, F]
        state = self.initial_state(x)
        seq = x if self.batch_first else x.transpose(0, 1)
        out, final = self.rnn(seq) if state is None else self.rnn(seq, state)
        if not self.batch_first:
            out = out.transpose(0, 1)  # [N, T, D * H]
        h_n, c_n = final if self.kind == "LSTM" else (final, None)
        if self.readout == "last":
            feat = out[:, -1]
        elif self.readout == "mean":
            feat = out.mean(1)
        else:
            last = h_n if self.readout == "h_n" else c_n  # [L * D, N, H]: the last layer's D rows
            feat = torch.cat([last[i] for i in range(-self.dirs, 0)], 1)
        return self.head(feat)


def edit_initial_state(proto: onnx.ModelProto, how: str) -> onnx.ModelProto:
    """The ONNX spellings of zero initial states the exporter does not write: "blank" names the
    inputs '' (absent), "cut" drops them from the end of the input list. The exporter's are zeros
    (ConstantOfShape), so the model's function is unchanged."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for node in recurrent_nodes(out):
        keep = 5  # X, W, R, B, sequence_lens
        if how == "blank":
            for i in range(keep, len(node.input)):
                node.input[i] = ""
        else:
            while len(node.input) > keep:
                node.input.pop()
            while node.input and not node.input[-1]:  # trailing blanks (sequence_lens, maybe B)
                node.input.pop()
    return out


def torch_case(kind, opset, layers=1, bidir=False, batch_first=True, readout="last", state="none",
               nonlinearity="tanh", bias=True, tol=5e-6, marks=()):
    parts = [kind + ("-relu" if nonlinearity == "relu" else ""), f"op{opset}", f"L{layers}", "bi" if bidir else "uni",
             "bf" if batch_first else "tf", readout, state] + ([] if bias else ["nobias"])
    return pytest.param(dict(kind=kind, layers=layers, bidir=bidir, batch_first=batch_first, readout=readout,
                             state=state, nonlinearity=nonlinearity, bias=bias), opset, tol,
                        id="-".join(parts), marks=marks)


# Measured float32 error: relative L2 of ORT float32 against float64 autograd, the largest over
# the three shapes, and in brackets PyTorch's own float32 autograd against the same reference. At
# T = 40 the errors stay the same size (4.8e-7 at most): nothing accumulates along the Scans.
TORCH_CASES = [
    torch_case("LSTM", 14),  # 2.7e-7 (2.7e-7)
    torch_case("LSTM", 17, layers=2, bidir=True, batch_first=False, readout="h_n", state="zeros"),  # 3.9e-7 (3.2e-7)
    # Y_c, and initial_h / initial_c on the path: 2.2e-7 (1.9e-7)
    torch_case("LSTM", 17, readout="c_n", state="from_x"),
    torch_case("LSTM", 14, layers=2, readout="mean", state="blank"),  # 2.3e-7 (2.3e-7)
    # opset 9 writes y[:, -1] as Slice(starts -1, ends INT64_MAX) + Squeeze (Gather takes no negative
    # index before opset 11), along the dynamic time axis: 2.7e-7
    torch_case("LSTM", 9, bidir=True, readout="last", state="learned"),
    torch_case("LSTM", 11, batch_first=False, readout="h_n", state="cut", bias=False),  # 1.7e-7 (1.3e-7)
    torch_case("GRU", 14, bidir=True),  # linear_before_reset = 1: 1.5e-7 (1.3e-7)
    torch_case("GRU", 17, layers=2, batch_first=False, readout="h_n", state="from_x"),  # 2.8e-7 (2.0e-7)
    torch_case("GRU", 9, readout="mean", state="cut", bias=False),  # 2.0e-7 (1.6e-7)
    torch_case("RNN", 14, layers=2, bidir=True, readout="mean", state="zeros"),  # 4.6e-7 (1.9e-7)
    torch_case("RNN", 17, batch_first=False, readout="last", state="learned", nonlinearity="relu"),  # 5.9e-8 (5.9e-8)
    torch_case("RNN", 14, layers=2, bidir=True, readout="h_n", state="from_x", nonlinearity="relu"),  # 1.3e-7 (9.9e-8)
    # the rest of the matrix: 4.8e-7 at most (LSTM opset 9, two bidirectional layers, y[:, -1])
    *[torch_case(kind, opset, layers=layers, bidir=bidir, batch_first=bf, readout=readout, state=state,
                 nonlinearity=nl, marks=slow)
      for kind, nl in (("LSTM", "tanh"), ("GRU", "tanh"), ("RNN", "tanh"), ("RNN", "relu"))
      for opset in (9, 17)
      for layers, bidir, bf, readout, state in ((2, True, True, "last", "none"), (1, True, False, "mean", "blank"),
                                                (2, False, True, "h_n", "from_x"), (2, True, False, "h_n", "learned"))],
    torch_case("LSTM", 17, layers=2, bidir=True, readout="c_n", state="from_x", marks=slow),
    torch_case("GRU", 9, layers=2, bidir=True, batch_first=False, readout="last", state="cut", bias=False, marks=slow),
]


def build_case(spec: dict, opset: int, seed: int = 0):
    torch.manual_seed(seed)
    state = spec["state"] if spec["state"] not in ("blank", "cut") else "none"
    model = randomize(RecurrentNet(**{**spec, "state": state}), seed)
    x = np.random.default_rng(seed).standard_normal((2, 5, F_IN)).astype(np.float32)
    proto = export_torch(model, x, opset)
    if spec["state"] in ("blank", "cut"):
        proto = edit_initial_state(proto, spec["state"])
    return model, proto


def check_export(proto: onnx.ModelProto, spec: dict, opset: int):
    """The export holds what the case says it tests."""
    assert {i.version for i in proto.opset_import if i.domain in ("", "ai.onnx")} == {opset}
    nodes = recurrent_nodes(proto)
    assert [n.op_type for n in nodes] == [spec["kind"]] * spec["layers"]
    for n in nodes:
        a = attrs(n)
        assert a.get("direction", b"forward") == (b"bidirectional" if spec["bidir"] else b"forward")
        assert a["hidden_size"] == HIDDEN and a.get("layout", 0) == 0
        if spec["kind"] == "GRU":
            assert a["linear_before_reset"] == 1
        if spec["kind"] == "RNN":
            want = b"Relu" if spec["nonlinearity"] == "relu" else b"Tanh"
            assert a["activations"] == [want] * (2 if spec["bidir"] else 1)
        given = [i for i in n.input[5:] if i]
        if spec["state"] in ("blank", "cut"):
            assert not given and (len(n.input) <= 4 if spec["state"] == "cut" else len(n.input) > 5)
        else:
            assert len(given) == (2 if spec["kind"] == "LSTM" else 1)
        assert bool(len(n.input) > 3 and n.input[3]) == spec["bias"]


@pytest.mark.parametrize("spec, opset, tol", TORCH_CASES)
def test_torch_recurrent(spec, opset, tol):
    model, proto = build_case(spec, opset)
    check_export(proto, spec, opset)
    assert_covered(proto)
    sess = attribution_session(proto)
    att = next(o for o in sess.get_outputs() if o.name == "attribution")
    assert att.shape[0] != 2 and att.shape[1] != 5 and att.shape[2] == F_IN  # batch and time stay dynamic
    rng = np.random.default_rng(1)
    for n, t in SHAPES:
        x = rng.standard_normal((n, t, F_IN)).astype(np.float32)
        target = rng.integers(0, CLASSES, n)
        y, got = sess.run(["y", "attribution"], {"x": x, "target": target})
        y_ref, ref = torch_gradient(model, x, target)
        assert rel_err(y, y_ref) < 1e-5, f"forward at N={n}, T={t}"
        err = rel_err(got, ref)
        assert err < tol, f"N={n}, T={t}: relative error {err:.2e} (tolerance {tol:.0e})"


@pytest.mark.parametrize("spec", [
    dict(kind="LSTM", layers=2, bidir=True, readout="mean"),
    dict(kind="GRU", layers=2, bidir=True, readout="h_n", batch_first=False),
    dict(kind="RNN", layers=2, bidir=True, readout="last", nonlinearity="relu"),
], ids=["LSTM", "GRU", "RNN-relu"])
def test_methods_without_relu_nodes_give_the_saliency(spec):
    """No Relu node (an RNN's Relu activation is an attribute of the RNN node): deconvnet and
    guided backprop are the exact gradient, bit for bit; so is Captum's GuidedBackprop, which
    finds no nn.ReLU module to hook."""
    from captum.attr import GuidedBackprop

    model, proto = build_case(spec | {"state": "none"}, 17, seed=3)
    assert not any(n.op_type == "Relu" for n in proto.graph.node)
    x = np.random.default_rng(2).standard_normal((3, 6, F_IN)).astype(np.float32)
    feeds = {"x": x, "target": np.array([0, 2, 1])}
    sal = attribution_session(proto).run(["attribution"], feeds)[0]
    assert rel_err(sal, torch_gradient(model, x, feeds["target"])[1]) < 5e-6  # measured 2.4e-7 at most
    for method in ("deconvnet", "guided"):
        np.testing.assert_array_equal(attribution_session(proto, method).run(["attribution"], feeds)[0], sal)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captum = GuidedBackprop(model.double()).attribute(torch.from_numpy(x.astype(np.float64)),
                                                          target=torch.from_numpy(feeds["target"]))
    model.float()
    assert rel_err(sal, captum.detach().numpy()) < 5e-6


@pytest.mark.parametrize("method", ["guided", "deconvnet"])
def test_relu_after_an_lstm_against_captum(method):
    """A bidirectional LSTM, then ReLU -> Linear -> ReLU -> Linear: guided backprop and DeconvNet
    change the two Relu nodes' backward only; Captum's GuidedBackprop / Deconvolution hook the
    two nn.ReLU modules and leave the LSTM's own derivative exact, as onnxattr does."""
    from captum.attr import Deconvolution, GuidedBackprop

    spec = dict(kind="LSTM", bidir=True, readout="last")
    torch.manual_seed(4)
    model = randomize(RecurrentNet(**spec, relu_head=True), 4)
    x0 = np.random.default_rng(4).standard_normal((2, 5, F_IN)).astype(np.float32)
    proto = export_torch(model, x0, 14)
    assert sum(n.op_type == "Relu" for n in proto.graph.node) == 2
    x = np.random.default_rng(5).standard_normal((4, 7, F_IN)).astype(np.float32)
    target = np.array([0, 1, 2, 1])
    got = attribution_session(proto, method).run(["attribution"], {"x": x, "target": target})[0]
    sal = attribution_session(proto).run(["attribution"], {"x": x, "target": target})[0]
    algo = (GuidedBackprop if method == "guided" else Deconvolution)(model.double())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = algo.attribute(torch.from_numpy(x.astype(np.float64)), target=torch.from_numpy(target)).detach().numpy()
    model.float()
    err = rel_err(got, ref)
    assert err < 2e-6, f"{method}: relative error {err:.2e}"  # measured: guided 1.3e-7, deconvnet 1.9e-7
    assert rel_err(sal, ref) > 0.5  # the Relu rule matters here (measured 1.1, 0.98): not the plain gradient


# ---------------------------------------------------------------- what PyTorch does not write
def _act(name: str, z):
    return {"Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Relu": torch.relu}[name](z)


def onnx_recurrent_reference(op: str, a: dict, X, W, R, B=None, h0=None, c0=None, P=None):
    """The ONNX operator's definition (layout 0) in float64 torch: Y [T, D, N, H], Y_h, Y_c
    [D, N, H]. Gate orders: LSTM i, o, f, c (peepholes i, o, f); GRU z, r, h."""
    T, N, _ = X.shape
    H = a["hidden_size"]
    direction = a.get("direction", "forward")
    dirs = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]
    default = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}[op]
    acts = a.get("activations", default * len(dirs))
    per = len(default)
    ys, hs, cs = [], [], []
    for d, rev in enumerate(dirs):
        f = acts[d * per:(d + 1) * per]
        w, r = W[d], R[d]
        gates = w.shape[0] // H
        wb, rb = (B[d][:gates * H], B[d][gates * H:]) if B is not None else (torch.zeros(gates * H, dtype=X.dtype),) * 2
        h = h0[d] if h0 is not None else torch.zeros(N, H, dtype=X.dtype)
        c = c0[d] if c0 is not None else torch.zeros(N, H, dtype=X.dtype)
        out = [None] * T
        for t in (reversed(range(T)) if rev else range(T)):
            x = X[t]
            if op == "LSTM":
                pi, po, pf = (P[d][:H], P[d][H:2 * H], P[d][2 * H:]) if P is not None else (0.0, 0.0, 0.0)
                gi, go, gf, gc = (x @ w.T + h @ r.T + wb + rb).split(H, 1)
                i, fg = _act(f[0], gi + pi * c), _act(f[0], gf + pf * c)
                c = fg * c + i * _act(f[1], gc)
                h = _act(f[0], go + po * c) * _act(f[2], c)
            elif op == "GRU":
                xz, xr, xh = (x @ w.T + wb).split(H, 1)
                rz, rr, rh = r.split(H, 0)
                bz, br, bh = rb.split(H)
                z, rg = _act(f[0], xz + h @ rz.T + bz), _act(f[0], xr + h @ rr.T + br)
                if a.get("linear_before_reset", 0):
                    hh = _act(f[1], xh + rg * (h @ rh.T + bh))
                else:
                    hh = _act(f[1], xh + (rg * h) @ rh.T + bh)
                h = (1 - z) * hh + z * h
            else:
                h = _act(f[0], x @ w.T + h @ r.T + wb + rb)
            out[t] = h
        ys.append(torch.stack(out))
        hs.append(h)
        cs.append(c)
    return torch.stack(ys, 1), torch.stack(hs), torch.stack(cs)


def spec_model(op: str, a: dict, opset: int, peepholes=False, bias=True, state=False, seed=0):
    """x [N, T, F] -> Transpose -> one recurrent node -> scores = mean_t(Y) V1 + Y_h V2 (+ Y_c V3),
    each [D, N, H] flattened to [N, D H]. With `state`, initial_h (and initial_c) are computed
    from the input: h0 = tanh(mean_t(x) U), c0 = h0 / 2 (direction 1's: half direction 0's).
    Returns the model and a float64 torch function of x computing the same."""
    rng = np.random.default_rng(seed)
    H, gates = HIDDEN, {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    D = 2 if a.get("direction") == "bidirectional" else 1
    f32 = lambda *s: (rng.standard_normal(s) * 0.5).astype(np.float32)  # noqa: E731
    weights = {"W": f32(D, gates * H, F_IN), "R": f32(D, gates * H, H)}
    if bias:
        weights["B"] = f32(D, 2 * gates * H)
    if peepholes:
        weights["P"] = f32(D, 3 * H)
    head = {"V1": f32(D * H, CLASSES), "V2": f32(D * H, CLASSES), "V3": f32(D * H, CLASSES), "U": f32(F_IN, H)}
    N = helper.make_node

    def unsqueeze0(x, out):
        if opset >= 13:
            return N("Unsqueeze", [x, "zero"], [out])
        return N("Unsqueeze", [x], [out], axes=[0])

    def mean(x, axis, out):
        return N("ReduceMean", [x], [out], axes=[axis], keepdims=0)

    nodes = [N("Transpose", ["x"], ["X"], perm=[1, 0, 2])]
    ins = ["X", "W", "R", "B" if bias else "", ""]
    if state:
        nodes += [mean("x", 1, "xm"), N("MatMul", ["xm", "U"], ["hu"]), N("Tanh", ["hu"], ["h0a"]),
                  N("Mul", ["h0a", "half"], ["c0a"]), unsqueeze0("h0a", "h0u"), unsqueeze0("c0a", "c0u")]
        if D == 2:
            nodes += [N("Mul", ["c0u", "half"], ["c0v"]),
                      N("Concat", ["h0u", "c0u"], ["h0"], axis=0), N("Concat", ["c0u", "c0v"], ["c0"], axis=0)]
        else:
            nodes += [N("Identity", ["h0u"], ["h0"]), N("Identity", ["c0u"], ["c0"])]
        ins += ["h0"] + (["c0"] if op == "LSTM" else [])
    if op == "LSTM" and peepholes:
        ins += [""] * (7 - len(ins)) + ["P"]
    outs = ["Y", "Yh"] + (["Yc"] if op == "LSTM" else [])
    nodes.append(N(op, ins, outs, **a))
    flat = []
    for name, src in (("Ym", "Y"), ("Yh", None), ("Yc", None)):
        if name == "Yc" and op != "LSTM":
            continue
        if src:
            nodes.append(mean(src, 0, name))  # [D, N, H]
        nodes += [N("Transpose", [name], [name + "_t"], perm=[1, 0, 2]),
                  N("Flatten", [name + "_t"], [name + "_f"], axis=1)]
        flat.append(name + "_f")
    terms = []
    for k, v in enumerate(flat):
        nodes.append(N("MatMul", [v, f"V{k + 1}"], [f"s{k}"]))
        terms.append(f"s{k}")
    nodes.append(N("Sum", terms, ["y"]))
    inits = [numpy_helper.from_array(v, k) for k, v in {**weights, **head}.items()]
    inits += [numpy_helper.from_array(np.array(0.5, np.float32), "half"),
              numpy_helper.from_array(np.array([0], np.int64), "zero")]
    f32_type = onnx.TensorProto.FLOAT
    graph = helper.make_graph(nodes, "spec", [helper.make_tensor_value_info("x", f32_type, ["N", "T", F_IN])],
                              [helper.make_tensor_value_info("y", f32_type, ["N", CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)
    onnx.checker.check_model(model, full_check=True)

    t = {k: torch.from_numpy(v.astype(np.float64)) for k, v in {**weights, **head}.items()}

    def reference(x):
        h0 = c0 = None
        if state:
            h0 = torch.tanh(x.mean(1) @ t["U"])[None]
            c0 = h0 * 0.5
            if D == 2:
                h0, c0 = torch.cat([h0, c0]), torch.cat([c0, c0 * 0.5])
        Y, Yh, Yc = onnx_recurrent_reference(op, a, x.transpose(0, 1), t["W"], t["R"], t.get("B"), h0,
                                             c0 if op == "LSTM" else None, t.get("P"))
        flat = lambda v: v.transpose(0, 1).reshape(v.shape[1], -1)  # noqa: E731
        y = flat(Y.mean(0)) @ t["V1"] + flat(Yh) @ t["V2"]
        return y + flat(Yc) @ t["V3"] if op == "LSTM" else y

    return model, reference


def spec_case(op, opset, peepholes=False, bias=True, state=False, marks=(), **a):
    parts = [op, f"op{opset}", a.get("direction", "forward")]
    parts += [f"{k}={'+'.join(v) if isinstance(v, list) else v}" for k, v in a.items() if k != "direction"]
    parts += (["peepholes"] if peepholes else []) + ([] if bias else ["nobias"]) + (["h0_from_x"] if state else [])
    return pytest.param(op, opset, dict(hidden_size=HIDDEN, **a), peepholes, bias, state, id="-".join(parts),
                        marks=marks)


# Measured: 5.9e-7 at most (LSTM reverse with peepholes; 2.4e-7 at T = 40), every forward within 3.7e-7
SPEC_CASES = [
    spec_case("LSTM", 14, direction="reverse", peepholes=True, state=True),
    spec_case("LSTM", 9, direction="bidirectional", peepholes=True, bias=False),
    spec_case("GRU", 14, direction="forward", linear_before_reset=0, state=True),
    spec_case("GRU", 9, direction="bidirectional", linear_before_reset=0),
    spec_case("GRU", 17, direction="reverse", linear_before_reset=1, bias=False, state=True),
    spec_case("RNN", 14, direction="bidirectional", activations=["Sigmoid", "Relu"], state=True),
    spec_case("RNN", 17, direction="reverse", activations=["Sigmoid"]),
    spec_case("LSTM", 17, direction="bidirectional", activations=["Sigmoid", "Tanh", "Tanh"] * 2, state=True,
              marks=slow),
    spec_case("GRU", 14, direction="bidirectional", linear_before_reset=0, bias=False, state=True, marks=slow),
    spec_case("RNN", 9, direction="forward", activations=["Relu"], bias=False, state=True, marks=slow),
]


@pytest.mark.parametrize("op, opset, a, peepholes, bias, state", SPEC_CASES)
def test_recurrent_forms_pytorch_does_not_write(op, opset, a, peepholes, bias, state):
    """Reverse direction, peepholes, GRU linear_before_reset = 0 (Keras' reset_after=False),
    RNN Sigmoid activations (per direction), explicit default activations: hand-built graphs
    whose scores read Y, Y_h and Y_c at once, against the operator's definition in float64."""
    model, reference = spec_model(op, a, opset, peepholes, bias, state)
    assert_covered(model)
    sess = attribution_session(model)
    rng = np.random.default_rng(11)
    for n, t in SHAPES:
        x = rng.standard_normal((n, t, F_IN)).astype(np.float32)
        target = rng.integers(0, CLASSES, n)
        xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
        y_ref = reference(xt)
        (ref,) = torch.autograd.grad(y_ref.gather(1, torch.from_numpy(target)[:, None]).sum(), xt)
        y, got = sess.run(["y", "attribution"], {"x": x, "target": target})
        assert rel_err(y, y_ref.detach().numpy()) < 1e-5, f"forward at N={n}, T={t}: the reference is not ONNX's"
        err = rel_err(got, ref.numpy())
        assert err < 5e-6, f"N={n}, T={t}: relative error {err:.2e}"


def _with(model: onnx.ModelProto, edit) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    edit(recurrent_nodes(out)[0], out.graph)
    return out


def _set(**kw):
    def edit(node, graph):
        keep = [x for x in node.attribute if x.name not in kw]
        del node.attribute[:]
        node.attribute.extend(keep + [helper.make_attribute(k, v) for k, v in kw.items()])
    return edit


def _sequence_lens(node, graph):
    graph.initializer.append(numpy_helper.from_array(np.array([5, 5], np.int32), "lens"))
    node.input[4] = "lens"


def _weights_from_input(node, graph):
    graph.node.insert(0, helper.make_node("ReduceMean", ["x"], ["xs"], axes=[0, 1, 2], keepdims=1))
    graph.node.insert(1, helper.make_node("Mul", ["W", "xs"], ["Wx"]))
    node.input[1] = "Wx"


@pytest.mark.parametrize("op, edit, message", [
    ("LSTM", _sequence_lens, "sequence_lens"),
    ("LSTM", _set(clip=3.0), "'clip'"),
    ("LSTM", _set(input_forget=1), "input_forget"),
    ("LSTM", _set(activations=["HardSigmoid", "Tanh", "Tanh"]), r"activations \['HardSigmoid', 'Tanh', 'Tanh'\]"),
    ("GRU", _set(activations=["Sigmoid", "Tanh"], activation_alpha=[1.0]), "activation_alpha / activation_beta"),
    ("RNN", _set(activations=["LeakyRelu"]), r"activations \['LeakyRelu'\]"),
    ("GRU", _weights_from_input, "gradients with respect to GRU weights are not supported"),
], ids=["sequence_lens", "clip", "input_forget", "hard_sigmoid", "activation_alpha", "leaky_relu", "weights_on_path"])
def test_unsupported_forms_are_refused_by_name(op, edit, message):
    model, _ = spec_model(op, dict(hidden_size=HIDDEN), 14)
    bad = _with(model, edit)
    with pytest.raises(onnxattr.UnsupportedModelError, match=f"{op} node .*{message}"):
        onnxattr.attribution_model(bad)


# ---------------------------------------------------------------- a time-major input [T, N, F]
class TimeMajorNet(torch.nn.Module):
    """x [T, N, F], fed as it is to nn.LSTM(batch_first=False), bidirectional -> the mean of Y over
    time -> Linear -> scores [N, C]: the model's input has its batch on axis 1."""

    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.LSTM(F_IN, HIDDEN, bidirectional=True)
        self.fc = torch.nn.Linear(2 * HIDDEN, CLASSES)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(out.mean(0))


class _BatchFirst(torch.nn.Module):
    """The same function of x [N, T, F], for Captum (which takes the batch on axis 0)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.transpose(0, 1))


def time_major_case(dynamic: bool = True) -> tuple[torch.nn.Module, onnx.ModelProto]:
    """TimeMajorNet exported at T = 5, N = 2: with both axes dynamic ('T', 'N'; the scores' axis 0
    'N'), or at that fixed size."""
    torch.manual_seed(12)
    model = randomize(TimeMajorNet(), 12)
    x = np.random.default_rng(12).standard_normal((5, 2, F_IN)).astype(np.float32)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(x),), buf, dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "T", 1: "N"}, "y": {0: "N"}} if dynamic else None)
    proto = onnx.load_from_string(buf.getvalue())
    (lstm,) = recurrent_nodes(proto)
    assert lstm.input[0] == "x" and attrs(lstm).get("layout", 0) == 0  # the input itself is the LSTM's X
    return model, proto


def _declared(sess: ort.InferenceSession, name: str) -> list:
    return next(i for i in [*sess.get_inputs(), *sess.get_outputs()] if i.name == name).shape


# Measured: relative L2 1.7e-7 at most (SmoothGrad 1.2e-7, integrated gradients 1.1e-7, saliency 1.7e-7);
# completeness_gap against Captum's delta 9.0e-8 at most (absolute)
TOL_TIME_MAJOR, GAP_TIME_MAJOR = 2e-6, 1e-6
TIME_MAJOR_SHAPES = [(7, 3), (1, 4), (5, 2)]  # (T, N): longer and one step, larger batches; the export's


def test_time_major_lstm_smoothgrad():
    """SmoothGrad stacked its noisy copies along the input's axis 0, the time axis of [T, N, F]:
    ONNX Runtime failed at run time. The copies now go along the batch axis (axis 1, the one named
    like the scores' axis 0); the noise is the documented one for a row x[:, n] of shape [T, F],
    gaussian_noise((samples, 1, T, F), seed). Against float64 autograd at the same noisy points."""
    model, proto = time_major_case()
    samples, noise, seed = 6, 0.2, 3
    sess = attribution_session(proto, "smoothgrad", samples=samples, noise=noise, seed=seed)
    rng = np.random.default_rng(13)
    for steps, n in TIME_MAJOR_SHAPES:
        x = rng.standard_normal((steps, n, F_IN)).astype(np.float32)
        target = rng.integers(0, CLASSES, n)
        got = sess.run(["attribution"], {"x": x, "target": target})[0]
        z = gaussian_noise((samples, 1, steps, F_IN), seed)[:, 0].astype(np.float64)  # [S, T, F]: per row
        span = (x.max((0, 2)) - x.min((0, 2))).astype(np.float64)  # [N]
        ref = np.mean([torch_gradient(model, x + noise * span[None, :, None] * z[s][:, None, :], target)[1]
                       for s in range(samples)], axis=0)
        err = rel_err(got, ref)
        assert err < TOL_TIME_MAJOR, f"T={steps}, N={n}: relative error {err:.2e}"
        assert rel_err(ref, torch_gradient(model, x, target)[1]) > 0.05  # the noise matters
    assert _declared(sess, "target") == ["N"] and _declared(sess, "attribution") == ["T", "N", F_IN]


@pytest.mark.parametrize("ig_method, base_steps", [("gausslegendre", 1), ("riemann_trapezoid", 7)],
                         ids=["gausslegendre-base_1x1xF", "riemann_trapezoid-base_7x1xF"])
def test_time_major_lstm_integrated_gradients_equal_captum(ig_method, base_steps):
    """Integrated gradients on x [T, N, F] (their path points were stacked along T: ONNX Runtime
    failed), against Captum's on the same function of x.transpose(0, 1). The baseline [1, 1, F]
    (per feature) or [7, 1, F] (per step and feature: it reaches past the batch axis, so the
    stacked points, [T, copies, N, F], get it with a copies axis of its own)."""
    from captum.attr import IntegratedGradients

    model, proto = time_major_case()
    base = np.random.default_rng(17).uniform(-0.5, 0.5, (base_steps, 1, F_IN)).astype(np.float32)
    sess = attribution_session(proto, "integrated-gradients", steps=12, ig_method=ig_method, baseline=base)
    rng = np.random.default_rng(14)
    for steps, n in TIME_MAJOR_SHAPES if base_steps == 1 else [(7, 3), (7, 1)]:
        x = rng.standard_normal((steps, n, F_IN)).astype(np.float32)
        target = rng.integers(0, CLASSES, n)
        att, gap = sess.run(["attribution", "completeness_gap"], {"x": x, "target": target})
        xb = x.transpose(1, 0, 2).astype(np.float64)  # [N, T, F]
        bb = np.broadcast_to(base.transpose(1, 0, 2), xb.shape).astype(np.float64)
        ref, delta = IntegratedGradients(_BatchFirst(model).double()).attribute(
            torch.from_numpy(xb), baselines=torch.from_numpy(bb),
            target=torch.from_numpy(target), n_steps=12, method=ig_method, return_convergence_delta=True)
        model.float()
        err = rel_err(att, ref.detach().numpy().transpose(1, 0, 2))
        assert err < TOL_TIME_MAJOR, f"T={steps}, N={n}: relative error {err:.2e}"
        np.testing.assert_allclose(gap, delta.detach().numpy(), atol=GAP_TIME_MAJOR)
    assert _declared(sess, "target") == _declared(sess, "completeness_gap") == ["N"]


def test_time_major_lstm_fixed_size_export():
    """Exported at T = 5, N = 2 fixed: x [5, 2, 4] was refused for every method as having no
    batch axis. Its batch axis is the one of the scores' size 2: the saliency is exact, and the
    batched methods are refused for the fixed batch, naming its axis."""
    model, proto = time_major_case(dynamic=False)
    sess = attribution_session(proto)
    assert _declared(sess, "target") == [2] and _declared(sess, "attribution") == [5, 2, F_IN]
    x = np.random.default_rng(15).standard_normal((5, 2, F_IN)).astype(np.float32)
    target = np.array([2, 0])
    err = rel_err(sess.run(["attribution"], {"x": x, "target": target})[0], torch_gradient(model, x, target)[1])
    assert err < TOL_TIME_MAJOR, f"relative error {err:.2e}"
    for method in ("smoothgrad", "integrated-gradients"):
        with pytest.raises(onnxattr.UnsupportedModelError, match=re.escape("'x' has a fixed batch of 2 (axis 1)")):
            onnxattr.attribution_model(proto, method=method)


class _LastStateNet(torch.nn.Module):
    """x [T, N, F] -> bidirectional GRU -> its last states h [2, N, H] -> transpose(0, 1) and
    reshape(-1, 2 H) -> Linear: ONNX's inference loses the scores' batch dim in that Reshape."""

    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.GRU(F_IN, HIDDEN, bidirectional=True)
        self.fc = torch.nn.Linear(2 * HIDDEN, CLASSES)

    def forward(self, x):
        _, h = self.rnn(x)
        return self.fc(h.transpose(0, 1).reshape(-1, 2 * HIDDEN))


def test_time_major_batch_axis_from_the_declared_scores():
    """The scores' batch dim, lost by inference after a Reshape to [-1, 2 H], is the one the model
    declares ('N', as its input's axis 1): axis 0 (T) was taken for the batch, and the Explainer
    said 'target has 3 entries for a batch of 11' (an audit's finding)."""
    torch.manual_seed(21)
    model = randomize(_LastStateNet(), 21)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(5, 2, F_IN),), buf, dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "T", 1: "N"}, "y": {0: "N"}})
    proto = onnx.load_from_string(buf.getvalue())
    x = np.random.default_rng(21).standard_normal((11, 3, F_IN)).astype(np.float32)
    target = np.array([1, 2, 0])
    got = onnxattr.Explainer(proto, provider="cpu")(x, target)
    err = rel_err(got, torch_gradient(model, x, target)[1])
    assert err < TOL_TIME_MAJOR, f"relative error {err:.2e}"
    assert _declared(attribution_session(proto), "target") == ["N"]


class _MaskedTimeMajor(torch.nn.Module):
    """x [T, N, F] (or [N, T, F] with `batch_first`) -> LSTM or GRU, and a padding mask given the
    other way round ([N, T], or [T, N]) -> the masked mean over time -> Linear: the mask, its dims
    named apart, is broadcast against the recurrent outputs, so ONNX's inference loses the scores'
    batch dim."""

    def __init__(self, cell, batch_first=False):
        super().__init__()
        self.rnn = getattr(torch.nn, cell)(F_IN, HIDDEN, batch_first=batch_first)
        self.fc, self.time = torch.nn.Linear(HIDDEN, CLASSES), int(batch_first)

    def forward(self, x, mask):
        out, m = self.rnn(x)[0], mask.to(x.dtype).T.unsqueeze(-1)
        return self.fc((out * m).sum(self.time) / m.sum(self.time))


def _masked_time_major(cell, batch_first=False, scores=None):
    torch.manual_seed(22)
    model = randomize(_MaskedTimeMajor(cell, batch_first), 22)
    x, m = (torch.zeros(2, 5, F_IN), torch.ones(5, 2)) if batch_first else (torch.zeros(5, 2, F_IN), torch.ones(2, 5))
    axes = {0: "N", 1: "T"} if batch_first else {0: "T", 1: "N"}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x, m.long()), buf, dynamo=False, opset_version=17, input_names=["x", "mask"],
                          output_names=["y"], dynamic_axes={"x": axes, "mask": [0, 1], "y": {0: scores or "N"}})
    proto = onnx.load_from_string(buf.getvalue())
    assert proto.graph.input[1].type.tensor_type.shape.dim[0].dim_param == "mask_dynamic_axes_1"
    return model, proto


@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_time_major_batch_axis_declared_past_a_mask_named_apart(cell):
    """x [T, N, F] ('T', 'N'), the scores declared ['N', C], and a padding mask [N', T'] whose dims
    TorchScript names apart (dynamic_axes as a list), broadcast against the GRU's outputs: the
    declared 'N' was not kept, the shape trial with distinct sizes failing at that broadcast (the
    mask's sizes its own), so axis 0 (T) was taken for the batch and even the saliency said 'target
    has 3 entries for a batch of 7' (a review's finding). Against float64 autograd: the saliency,
    SmoothGrad (the documented noise per row x[:, n]) and Captum's integrated gradients."""
    from captum.attr import IntegratedGradients

    model, proto = _masked_time_major(cell)
    rng = np.random.default_rng(22)
    x, target = rng.standard_normal((7, 3, F_IN)).astype(np.float32), np.array([1, 2, 0])
    mask = np.ones((3, 7), np.int64)
    mask[1, 5:], mask[2, 2:] = 0, 0
    model.double()
    mt = torch.from_numpy(mask)

    def grad(at):
        at = torch.from_numpy(at).requires_grad_(True)
        model(at, mt).gather(1, torch.from_numpy(target)[:, None]).sum().backward()
        return at.grad.numpy()
    samples, noise, seed = 3, 0.15, 0
    z = gaussian_noise((samples, 1, 7, F_IN), seed)[:, 0].astype(np.float64)  # [S, T, F]: per row x[:, n]
    span = (x.max((0, 2)) - x.min((0, 2))).astype(np.float64)[None, :, None]
    xb = torch.from_numpy(x.transpose(1, 0, 2).astype(np.float64))  # [N, T, F] for Captum
    ig = IntegratedGradients(lambda at, m: model(at.transpose(0, 1), m)).attribute(
        xb, target=torch.from_numpy(target), n_steps=5, method="gausslegendre", additional_forward_args=(mt,))
    want = {"saliency": grad(x.astype(np.float64)),
            "smoothgrad": np.mean([grad(x + noise * span * z[s][:, None, :]) for s in range(samples)], 0),
            "integrated-gradients": ig.detach().numpy().transpose(1, 0, 2)}
    model.float()
    for method, ref in want.items():
        got = onnxattr.Explainer(proto, method=method, provider="cpu", samples=samples, noise=noise, seed=seed,
                                 steps=5)(x, target, inputs={"mask": mask})
        err = rel_err(got, ref)
        assert err < TOL_TIME_MAJOR, f"{method}: relative error {err:.2e}"
    assert _declared(attribution_session(proto, "smoothgrad"), "target") == ["N"]


def test_a_wrong_declared_batch_name_past_a_mask_named_apart_is_not_trusted():
    """The same masked GRU batch-first (x [N, T, F], mask [T', N']) with the scores wrongly declared
    ['T', C]: the trial that checks a declaration gives the mask's dims the sizes of the dims they
    meet, T' = T and N' = N, not one size to all, so 'T' is still contradicted there; the batch
    axis stays axis 0 (a lax check had taken axis 1), the saliency against float64 autograd."""
    model, proto = _masked_time_major("GRU", batch_first=True, scores="T")
    rng = np.random.default_rng(23)
    x, target, mask = rng.standard_normal((3, 7, F_IN)).astype(np.float32), np.array([1, 2, 0]), np.ones((7, 3), np.int64)
    mask[5:, 1] = 0
    model.double()
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    model(xt, torch.from_numpy(mask)).gather(1, torch.from_numpy(target)[:, None]).sum().backward()
    model.float()
    got = onnxattr.Explainer(proto, provider="cpu")(x, target, inputs={"mask": mask})
    err = rel_err(got, xt.grad.numpy())
    assert err < TOL_TIME_MAJOR, f"relative error {err:.2e}"


def _unnamed(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model with the dynamic dims of its input and output left unnamed ([?, ?, 4] -> [?, 3])."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for vi in [*out.graph.input, *out.graph.output]:
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param"):
                d.Clear()
    return out


def test_unnamed_dynamic_dims_take_axis_0_and_a_wrong_guess_fails_at_run_time():
    """Dynamic dims left unnamed (x [?, ?, 4] -> y [?, 3]): the batched methods take the axis that
    dims.py follows to the scores' axis 0, through the LSTM (x[:, n] of a time-major model, axis 1:
    before the LSTM's output dims were followed, axis 0 was guessed there and the run failed),
    else axis 0, as before the time-major support, so an unnamed batch-first model keeps working
    (SmoothGrad against float64 autograd). Where nothing relates them (an Einsum, whose dims
    dims.py does not follow) that guess is wrong on a time-major model: the run fails in ONNX
    Runtime, at one row as at three, never returning copies mixed up."""
    model, proto = time_major_case()
    first = _BatchFirst(model)
    x0 = np.random.default_rng(12).standard_normal((2, 5, F_IN)).astype(np.float32)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(first, (torch.from_numpy(x0),), buf, dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "N", 1: "T"}, "y": {0: "N"}})
    samples, noise, seed = 4, 0.2, 3
    sess = attribution_session(_unnamed(onnx.load_from_string(buf.getvalue())), "smoothgrad", samples=samples,
                               noise=noise, seed=seed)
    x = np.random.default_rng(16).standard_normal((3, 6, F_IN)).astype(np.float32)  # [N, T, F]
    target = np.array([1, 2, 0])
    z = gaussian_noise((samples, 1, 6, F_IN), seed).astype(np.float64)
    span = (x.max((1, 2)) - x.min((1, 2))).astype(np.float64)[:, None, None]
    ref = np.mean([torch_gradient(model, (x + noise * span * z[s]).transpose(1, 0, 2), target)[1].transpose(1, 0, 2)
                   for s in range(samples)], axis=0)
    err = rel_err(sess.run(["attribution"], {"x": x, "target": target})[0], ref)
    assert err < TOL_TIME_MAJOR, f"batch-first, unnamed: relative error {err:.2e}"

    bare = _unnamed(proto)
    assert onnxattr.Explainer(bare, method="smoothgrad", provider="cpu").batch_axis == 1
    x = x.transpose(1, 0, 2)  # [T, N, F]: row x[:, n] gets z[s] [T, F]
    span = span.transpose(1, 0, 2)
    ref = np.mean([torch_gradient(model, x + noise * span * z[s, 0][:, None], target)[1] for s in range(samples)], axis=0)
    got = attribution_session(bare, "smoothgrad", samples=samples, noise=noise, seed=seed).run(
        ["attribution"], {"x": x, "target": target})[0]
    err = rel_err(got, ref)
    assert err < TOL_TIME_MAJOR, f"time-major, unnamed: relative error {err:.2e}"

    w = np.random.default_rng(3).standard_normal((F_IN, CLASSES)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Einsum", ["x", "w"], ["y"], equation="tnf,fc->nc")], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, None, F_IN])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, CLASSES])],
                              [numpy_helper.from_array(w, "w")])
    einsum = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    for method in ("smoothgrad", "integrated-gradients"):
        sess = attribution_session(einsum, method)
        for n in (1, 3):
            xt = np.random.default_rng(n).standard_normal((6, n, F_IN)).astype(np.float32)
            with pytest.raises(Exception, match="Non-zero status code returned while running"):
                sess.run(["attribution"], {"x": xt, "target": np.zeros(n, np.int64)})
    got = attribution_session(bare).run(["attribution"], {"x": x, "target": target})[0]
    err = rel_err(got, torch_gradient(model, x, target)[1])
    assert err < TOL_TIME_MAJOR, f"relative error {err:.2e}"


def test_time_major_gradcam_is_refused():
    """Grad-CAM lays its map out [N, 1, ...] with the input's batch first: on x [T, N, F] with a
    --layer [T, N, 2H] (whose first axis is the input's first) it made a map per time step,
    [T, 1, 2H] resized to [T, 1, F] (an attribution [7, 1, 4] for x [7, 3, 4]), without an error.
    Refused, naming the axis."""
    _, proto = time_major_case()
    layer = next(n.input[0] for n in proto.graph.node if n.op_type == "ReduceMean")  # Y as [T, N, 2 H]
    for method in ("gradcam", "guided-gradcam"):
        with pytest.raises(onnxattr.UnsupportedModelError, match=re.escape("has it on axis 1")):
            onnxattr.attribution_model(proto, method=method, layer=layer)


@pytest.mark.parametrize("method", ["saliency", "smoothgrad"])
def test_time_major_explainer_equals_the_bare_session(method):
    """The Explainer took the input's axis 0, the time axis, as the batch: at T = 7, N = 3 a target
    of 3 classes was refused ('3 entries for a batch of 7'), one class broadcast to 7 rows failed in
    ONNX Runtime. It reads the batch axis from the exported model's metadata (onnxattr.batch_axis,
    written only where it is not 0) and gives the bare session's attribution for per-row, one and
    argmax targets."""
    _, proto = time_major_case()
    kw = dict(samples=5, noise=0.2, seed=4) if method == "smoothgrad" else {}
    ex = onnxattr.Explainer(proto, method=method, provider="cpu", **kw)
    assert ex.batch_axis == ex.attribution_batch_axis == 1
    assert {p.key: p.value for p in ex.model.metadata_props}["onnxattr.batch_axis"] == "1"
    sess = attribution_session(proto, method, **kw)
    x = np.random.default_rng(18).standard_normal((7, 3, F_IN)).astype(np.float32)
    scores = sess.run(["y"], {"x": x, "target": np.zeros(3, np.int64)})[0]
    for target in ([2, 0, 1], 1, "argmax"):
        t = np.argmax(scores, 1) if target == "argmax" else np.broadcast_to(np.asarray(target, np.int64), (3,))
        want = sess.run(["attribution"], {"x": x, "target": t})[0]
        got = ex.run(x, target)
        assert got["attribution"].shape == (7, 3, F_IN)
        np.testing.assert_allclose(got["attribution"], want, rtol=1e-6, atol=1e-7, err_msg=str(target))
        assert np.abs(want).max() > 0.01
        if target == "argmax":
            np.testing.assert_array_equal(got["target"], t)


def test_time_major_explainer_checks_name_the_batch(tmp_path):
    """On x [T = 7, N = 3, F] the checks follow the batch axis (1): a target of T classes is
    refused naming the batch of 3, NaN/Inf rows are counted along N, an empty batch [7, 0, F] is
    refused before running; `onnxattr explain` likewise (and prints the classes per row)."""
    from click.testing import CliRunner
    from onnxattr.cli import main

    _, proto = time_major_case()
    ex = onnxattr.Explainer(proto, provider="cpu", nonfinite="raise")
    x = np.random.default_rng(19).standard_normal((7, 3, F_IN)).astype(np.float32)
    for target, words in (([0, 1, 2, 0, 1, 2, 0], "7 entries for a batch of 3"), ([0, 1], "2 entries for a batch of 3")):
        with pytest.raises(onnxattr.TargetError, match=words):
            ex(x, target)
    bad = x.copy()
    bad[4, 2, 1] = np.nan  # time step 4, row 2
    with pytest.raises(onnxattr.InputError, match=re.escape("1 NaN/Inf values (rows [2])")):
        ex(bad, 0)
    with pytest.raises(onnxattr.InputError, match=re.escape("input batch is empty (axis 1 of [7, 0, 4])")):
        ex(np.zeros((7, 0, F_IN), np.float32), [])

    onnx.save(proto, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", x)
    run = [str(a) for a in ("explain", tmp_path / "m.onnx", "--input", tmp_path / "x.npy", "--provider", "cpu",
                            "-o", tmp_path / "a.npy")]
    r = CliRunner().invoke(main, run + ["--target", "0,1"])
    assert r.exit_code == 1 and "TargetError: target has 2 entries for a batch of 3" in r.stderr, r.output
    r = CliRunner().invoke(main, run + ["--target", "2"])
    assert r.exit_code == 0, r.output
    assert "wrote saliency attribution [7, 3, 4] for classes [2, 2, 2]" in r.output
    np.testing.assert_allclose(np.load(tmp_path / "a.npy"), ex(x, 2), rtol=1e-6, atol=1e-7)


def test_wrt_tensor_with_its_batch_on_another_axis_than_the_input():
    """A batch-first input x [N, T, F] transposed inside to a sequence-first LSTM's X [T, N, F],
    attributed there (--wrt): the input's batch is axis 0, the attribution's axis 1 (metadata
    onnxattr.wrt_batch_axis). The Explainer checked an integrated-gradients baseline against
    [N, ?, F] (the batch size put on axis 0): a per-step baseline [T, 1, F] was refused ('does not
    broadcast against [3, ?, 4]') and one of the wrong batch [1, 4, F] reached ONNX Runtime. It is
    checked against [?, N, F] now, and the result is the bare session's."""
    torch.manual_seed(3)
    model = randomize(RecurrentNet(batch_first=False, readout="mean"), 3)
    proto = export_torch(model, np.zeros((2, 5, F_IN), np.float32), 17)
    (lstm,) = recurrent_nodes(proto)
    wrt = lstm.input[0]
    assert next(n for n in proto.graph.node if wrt in n.output).op_type == "Transpose"
    x = np.random.default_rng(20).standard_normal((3, 7, F_IN)).astype(np.float32)
    target = np.array([0, 2, 1])
    base = np.random.default_rng(21).uniform(-0.5, 0.5, (7, 1, F_IN)).astype(np.float32)
    kw = dict(wrt=wrt, baseline=base, steps=8)
    ex = onnxattr.Explainer(proto, method="integrated-gradients", provider="cpu", **kw)
    assert (ex.batch_axis, ex.attribution_batch_axis) == (0, 1)
    meta = {p.key: p.value for p in ex.model.metadata_props}
    assert meta["onnxattr.wrt_batch_axis"] == "1" and "onnxattr.batch_axis" not in meta
    got = ex.run(x, target)
    want = attribution_session(proto, "integrated-gradients", **kw).run(
        ["attribution", "completeness_gap"], {"x": x, "target": target})
    assert got["attribution"].shape == (7, 3, F_IN) and np.abs(want[0]).max() > 0.01
    np.testing.assert_allclose(got["attribution"], want[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got["completeness_gap"], want[1], rtol=1e-6, atol=1e-7)
    bad = onnxattr.Explainer(proto, method="integrated-gradients", provider="cpu", wrt=wrt,
                             baseline=np.zeros((1, 4, F_IN), np.float32))
    with pytest.raises(onnxattr.OptionError, match=re.escape("the --wrt tensor") + ".*" + re.escape("['?', 3, 4]")):
        bad(x, target)

# ---------------------------------------------------------------- a text classifier at its embedding
VOCAB, EMB = 30, 6


class TextNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, EMB)
        self.lstm = torch.nn.LSTM(EMB, HIDDEN, batch_first=True, bidirectional=True)
        self.fc = torch.nn.Linear(2 * HIDDEN, CLASSES)

    def from_embeddings(self, e):  # e [N, T, EMB]
        _, (h, _) = self.lstm(e)
        return self.fc(torch.cat([h[-2], h[-1]], 1))

    def forward(self, ids):
        return self.from_embeddings(self.emb(ids))


class _FromEmbeddings(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, e):
        return self.net.from_embeddings(e)


@pytest.fixture(scope="module")
def text_model():
    torch.manual_seed(6)
    net = randomize(TextNet(), 6)
    ids = np.random.default_rng(6).integers(0, VOCAB, (2, 5)).astype(np.int64)
    proto = export_torch(net, ids, 14, names=("ids", "scores"))
    gathers = [n for n in proto.graph.node if n.op_type == "Gather" and n.input[0] == "emb.weight"]
    assert len(gathers) == 1 and {i.name for i in proto.graph.input} == {"ids"}
    return net, proto, gathers[0].output[0]


def _embeddings(net, ids) -> torch.Tensor:
    return net.emb.double()(torch.from_numpy(ids)).detach()


def test_text_classifier_saliency_at_the_embedding(text_model):
    net, proto, emb = text_model
    ex = onnxattr.Explainer(proto, method="saliency", wrt=emb, provider="cpu")
    rng = np.random.default_rng(7)
    for n, t in ((2, 5), (3, 9), (1, 1)):
        ids = rng.integers(0, VOCAB, (n, t))
        target = rng.integers(0, CLASSES, n)
        got = ex(ids, target)
        assert got.shape == (n, t, EMB)
        e = _embeddings(net, ids).requires_grad_(True)
        y = _FromEmbeddings(net).double()(e)
        (ref,) = torch.autograd.grad(y.gather(1, torch.from_numpy(target)[:, None]).sum(), e)
        net.float()
        err = rel_err(got, ref.numpy())
        assert err < 2e-6, f"N={n}, T={t}: relative error {err:.2e}"  # measured 1.9e-7 at most


def test_text_classifier_integrated_gradients_equal_captum(text_model):
    from captum.attr import IntegratedGradients

    net, proto, emb = text_model
    ids = np.random.default_rng(8).integers(0, VOCAB, (3, 8))
    target = np.array([2, 0, 1])
    out = onnxattr.Explainer(proto, method="integrated-gradients", wrt=emb, provider="cpu", steps=16).run(ids, target)
    ref, delta = IntegratedGradients(_FromEmbeddings(net).double()).attribute(
        _embeddings(net, ids), baselines=0.0, target=torch.from_numpy(target), n_steps=16, method="gausslegendre",
        return_convergence_delta=True)
    net.float()
    err = rel_err(out["attribution"], ref.detach().numpy())
    assert err < 1e-6, f"relative error {err:.2e}"  # measured 9.1e-8
    # Captum's delta is 1e-10 here (Gauss-Legendre on a smooth path); ours is float32: 1.5e-7
    np.testing.assert_allclose(out["completeness_gap"], delta.detach().numpy(), atol=2e-6)


# ---------------------------------------------------------------- Keras via tf2onnx
def _keras_rnn(tf, dtype: str, variant: str):
    """[N, T, 4] -> recurrent layer(s) -> Dense(3). lstm: the last output; bilstm: Bidirectional
    LSTM (the two final states concatenated); lstm_seq: return_sequences, GlobalAveragePooling1D;
    stacked: LSTM(return_sequences) -> LSTM; gru / simplernn: the last output; simplernn_relu:
    with a relu activation; bigru: Bidirectional GRU; gru_seq: GRU(return_sequences) averaged;
    stacked_gru: GRU(return_sequences) -> GRU; masked_lstm: Masking(0) -> LSTM (a Loop too)."""
    L = tf.keras.layers
    inp = tf.keras.Input((None, F_IN), name="x", dtype=dtype)
    cell = L.SimpleRNN if variant.startswith("simplernn") else L.GRU if "gru" in variant else L.LSTM

    def layer(**kw):
        return cell(HIDDEN, dtype=dtype, **({"activation": "relu"} if variant == "simplernn_relu" else {}), **kw)

    x = L.Masking(0.0, dtype=dtype)(inp) if variant == "masked_lstm" else inp
    if variant in ("bilstm", "bigru"):
        h = L.Bidirectional(layer(), dtype=dtype)(x)
    elif variant in ("lstm_seq", "gru_seq"):
        h = L.GlobalAveragePooling1D(dtype=dtype)(layer(return_sequences=True)(x))
    elif variant in ("stacked", "stacked_gru"):
        h = layer()(layer(return_sequences=True)(x))
    else:
        h = layer()(x)
    return tf.keras.Model(inp, L.Dense(CLASSES, dtype=dtype)(h))


def _keras_onnx(tf, tf2onnx, model, opset, length=None):
    spec = [tf.TensorSpec((None, length, F_IN), tf.float32, name="x")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    return proto


# tf2onnx reads a Keras LSTM's last output (return_sequences=False) as Slice(Y, starts -1, ends
# INT32_MAX) along the time axis, and a Bidirectional one's backward half as Slice(0, 1): with a
# dynamic time axis (length None) their gradients need pads sized at run time. length 5: a fixed one.
# Measured: 3.9e-7 at most (stacked, either length); lstm 1.8e-7, bilstm 1.8e-7, lstm_seq 2.0e-7.
@pytest.mark.parametrize("variant, opset, length", [
    ("lstm", 13, None),
    ("bilstm", 17, 5),
    ("lstm_seq", 17, None),
    pytest.param("bilstm", 13, None, marks=slow),
    pytest.param("stacked", 13, None, marks=slow),
    pytest.param("stacked", 17, 5, marks=slow),
])
def test_keras_lstm_tf2onnx(variant, opset, length):
    tf = pytest.importorskip("tensorflow")
    tf2onnx = pytest.importorskip("tf2onnx")
    proto, model64, rng = _keras_models(tf, tf2onnx, variant, opset, length, seed=9)
    nodes = recurrent_nodes(proto)
    assert [n.op_type for n in nodes] == ["LSTM"] * (2 if variant == "stacked" else 1)
    assert attrs(nodes[0]).get("direction", b"forward") == (b"bidirectional" if variant == "bilstm" else b"forward")
    assert_covered(proto)
    _against_tape(tf, proto, model64, rng, length, 5e-6)


def _keras_models(tf, tf2onnx, variant: str, opset: int, length, seed: int):
    """(the float32 model through tf2onnx, the same weights in a float64 Keras model, the rng)."""
    model32 = _keras_rnn(tf, "float32", variant)
    rng = np.random.default_rng(seed)
    weights = [(rng.standard_normal(w.shape) * (0.4 if w.ndim > 1 else 0.2)).astype(np.float32)
               for w in model32.get_weights()]
    model32.set_weights(weights)
    model64 = _keras_rnn(tf, "float64", variant)
    model64.set_weights([w.astype(np.float64) for w in weights])
    return _keras_onnx(tf, tf2onnx, model32, opset, length), model64, rng


def _against_tape(tf, proto, model64, rng, length, tol: float, zero_tail: bool = False):
    """Saliency of the exported model against float64 tf.GradientTape, at several (N, T); with
    `zero_tail`, row 0's last two steps are all zero (masked by a Masking layer: no gradient)."""
    sess = attribution_session(proto)
    name, out = proto.graph.input[0].name, proto.graph.output[0].name
    for n, t in ((2, 5), (3, 7), (1, 1)) if length is None else ((2, length), (3, length)):
        x = rng.standard_normal((n, t, F_IN)).astype(np.float32)
        if zero_tail and t > 2:
            x[0, -2:] = 0.0
        target = rng.integers(0, CLASSES, n)
        xt = tf.constant(x.astype(np.float64))
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = model64(xt)
            picked = tf.reduce_sum(tf.gather(y, target, axis=1, batch_dims=1))
        ref = tape.gradient(picked, xt).numpy()
        scores, got = sess.run([out, "attribution"], {name: x, "target": target})
        assert rel_err(scores, y.numpy()) < 1e-5
        if zero_tail and t > 2:
            assert not got[0, -2:].any() and not ref[0, -2:].any()
        err = rel_err(got, ref)
        assert err < tol, f"N={n}, T={t}: relative error {err:.2e}"


# tf2onnx writes Keras 3's GRU and SimpleRNN as a Loop (it maps only an unmasked LSTM to an ONNX
# recurrent op): the Loop rule (onnxattr/vjp/loop.py) runs its body backwards. A Bidirectional
# layer reverses the sequence for its backward half with ReverseSequence. masked_lstm's first
# row ends in two all-zero (masked) steps. Measured: gru 1.9e-7, simplernn 1.7e-7, gru at opset
# 17 with a fixed length 1.9e-7, simplernn_relu 4.0e-8, bigru 3.3e-7, gru_seq 1.4e-7,
# stacked_gru 1.7e-7, masked_lstm 2.5e-7 at most.
@pytest.mark.parametrize("variant, opset, length", [
    ("gru", 13, None), ("simplernn", 13, None), ("gru", 17, 5), ("bigru", 13, None), ("masked_lstm", 13, None),
    pytest.param("simplernn_relu", 13, None, marks=slow), pytest.param("gru_seq", 17, None, marks=slow),
    pytest.param("stacked_gru", 13, None, marks=slow),
])
def test_keras_loops_tf2onnx(variant, opset, length):
    tf = pytest.importorskip("tensorflow")
    tf2onnx = pytest.importorskip("tf2onnx")
    proto, model64, rng = _keras_models(tf, tf2onnx, variant, opset, length, seed=11)
    loops = 2 if variant in ("bigru", "stacked_gru") else 1
    assert not recurrent_nodes(proto) and [n.op_type for n in proto.graph.node].count("Loop") == loops
    # The GRU cell's gates are strided slices of [N, 3H]: their batch dims are proven the state's
    # (shapes.keep_whole_slice_dims), so no Add in the body checks at run time whether it broadcast.
    att = onnxattr.attribution_model(proto)
    bodies = [n.attribute[0].g for n in att.graph.node if n.op_type == "Loop"]
    assert not [m.name for g in bodies for m in g.node if m.op_type == "Compress"]
    _against_tape(tf, proto, model64, rng, length, 2e-6, zero_tail=variant == "masked_lstm")