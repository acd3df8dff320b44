"""ONNX Scan nodes (PyTorch's exporter writes torch's `scan` as one).

* Hand-built Scans in the op-spec style of tests/test_vjp_ops.py (float64 central differences of
  the reference evaluator against the VJP model, then float32 ONNX Runtime against that): scanned
  along axis 0, 1 and a negative axis, forwards and in reverse, outputs stacked along another
  axis and in reverse, two scanned inputs in opposite directions (one tensor scanned twice), the
  final state or the stacked outputs alone, a constant initial state, weights passed on as a
  state, an outer tensor read whole (the initial state too), a constant scanned factor, a body
  output that is both the state and the scan output, Scan-9 and Scan-11;
* the body recomputed from stacked states where tensors cannot be stacked (forced here);
* models exported from PyTorch with torch's scan (dynamo, dynamic batch), forwards and in
  reverse, against float64 autograd; deconvnet and guided backprop inside the body against
  PyTorch with those rules as autograd functions; SmoothGrad and integrated gradients;
* control flow nested in the body (an If taking its own branch at each step, a Loop);
* refused by name: Scan-8, an op without a rule in the body.
"""

from __future__ import annotations


import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from vjp_check import In, case, check_case

import onnxattr
from onnxattr.recipes import gaussian_noise

N = helper.make_node
D = TensorProto.DOUBLE
T_STEPS, BATCH, F_IN, HID = 4, 2, 3, 5
rng0 = np.random.default_rng(7)
W = rng0.standard_normal((F_IN, HID)) * 0.6
U = rng0.standard_normal((HID, HID)) * 0.4
Z = rng0.standard_normal((F_IN, HID)) * 0.5


def vi(name, elem=D, dims=None):
    return helper.make_tensor_value_info(name, elem, dims)


def scan_body(act="Tanh", second=False, whole=None, carry_w=False, factor=False, same_output=False):
    """h' = act(x_t W + h U (+ z_t Z) (+ mean(whole))) (* m_t): inputs (h[, w], x_t[, z_t][, m_t]),
    outputs (h'[, w], h' as the scan output (the same name with `same_output`, else a copy))."""
    ins = [vi("h")] + ([vi("w_in")] if carry_w else []) + [vi("x_t")] + ([vi("z_t")] if second else [])
    ins += [vi("m_t")] if factor else []
    nodes = [N("MatMul", ["x_t", "w_in" if carry_w else "W"], ["a1"]), N("MatMul", ["h", "U"], ["a2"]), N("Add", ["a1", "a2"], ["a"])]
    last = "a"
    if second:
        nodes += [N("MatMul", ["z_t", "Z"], ["a3"]), N("Add", [last, "a3"], ["a_z"])]
        last = "a_z"
    if whole:
        nodes += [N("ReduceMean", [whole], ["ctx"], keepdims=0, axes=[0]), N("Add", [last, "ctx"], ["a_ctx"])]
        last = "a_ctx"
    nodes.append(N(act, [last], ["h_raw" if factor else "h_next"]))
    if factor:
        nodes.append(N("Mul", ["h_raw", "m_t"], ["h_next"]))
    outs = [vi("h_next")]
    if carry_w:  # (as tf2onnx passes weights on; a body output that is its input as is, ONNX Runtime's
        # Scan mixes up: its last state then differs from the reference evaluator's and numpy's)
        nodes.append(N("Identity", ["w_in"], ["w_out"]))
        outs.append(vi("w_out"))
    if same_output:
        outs.append(vi("h_next"))
    else:
        nodes.append(N("Identity", ["h_next"], ["h_step"]))
        outs.append(vi("h_step"))
    return helper.make_graph(nodes, "body", ins, outs)


def scan_case(id, opset=16, h0="h0", outputs=("h_last", "hs"), batch_first=False, scanned=("xs",), no_ort="", **kw):
    """Scan over xs ([T, N, F], or [N, T, F] with `batch_first`) from state h0; `kw`: the body's
    options and the Scan's axes and directions attributes."""
    attrs = {k: kw.pop(k) for k in ("scan_input_axes", "scan_input_directions", "scan_output_axes", "scan_output_directions")
             if k in kw}
    body = scan_body(second=len(scanned) > 1, **kw)
    states = [h0] + (["W"] if kw.get("carry_w") else [])
    seq = list(scanned) + (["ms"] if kw.get("factor") else [])
    outs = ["h_last"] + (["w_last"] if kw.get("carry_w") else []) + ["hs"]
    nodes = [N("Scan", states + seq, outs, body=body, num_scan_inputs=len(seq), name="scan", **attrs)]
    shape = (BATCH, T_STEPS, F_IN) if batch_first else (T_STEPS, BATCH, F_IN)
    inputs = {name: In(shape) for name in dict.fromkeys(scanned)}
    inits = dict(W=W, U=U, Z=Z)
    if h0 == "h0":
        inputs["h0"] = In((BATCH, HID))
    else:
        inits[h0] = np.zeros((BATCH, HID))
    if kw.get("factor"):
        inits["ms"] = np.random.default_rng(1).uniform(0.5, 1.5, (T_STEPS, BATCH, HID))
    if kw.get("whole"):
        inputs.setdefault(kw["whole"], In((3, HID), scale=0.5))
    return case(id, opset, nodes, inputs, outputs, no_ort=no_ort, **inits)


CASES = [
    scan_case("forwards"),
    scan_case("reverse_input", scan_input_directions=[1]),
    scan_case("input_axis_1", batch_first=True, scan_input_axes=[1]),
    scan_case("output_axis_1_reversed", scan_output_axes=[1], scan_output_directions=[1]),
    scan_case("negative_axes", batch_first=True, scan_input_axes=[-2], scan_output_axes=[-2], scan_input_directions=[1]),
    scan_case("two_inputs_opposite_directions", scanned=("xs", "zs"), scan_input_directions=[0, 1]),
    scan_case("one_tensor_scanned_twice", scanned=("xs", "xs"), scan_input_directions=[0, 1]),
    scan_case("final_state_only", outputs=("h_last",)),
    scan_case("constant_initial_state_stacked_only", h0="zeros", outputs=("hs",), act="Sigmoid"),
    scan_case("weights_passed_on_as_a_state", carry_w=True),
    scan_case("outer_tensor_read_whole", whole="ctx_in"),
    scan_case("initial_state_also_read_whole", whole="h0"),
    scan_case("constant_scanned_factor", factor=True),
    scan_case("state_and_scan_output_one_tensor", same_output=True,
              no_ort="ONNX Runtime's Scan mixes up a body output listed twice: its last state differs from "
                     "the reference evaluator's and numpy's"),
    scan_case("scan9", opset=9, scan_input_directions=[1]),
    scan_case("scan11", opset=11, batch_first=True, scan_input_axes=[1], scan_output_axes=[1]),
]


def with_if(c, id):
    """The case with its body's activation replaced by an If on the step's data: Tanh where the
    step's inputs sum above 0, else x * Sigmoid(x) (a control flow nested in the body; also for
    tests/test_loop.py's Loops). A copy: the case itself is unchanged."""
    import copy

    c = copy.deepcopy(c)
    body = next(a for n in c.nodes for a in n.attribute if a.name == "body").g
    act = next(n for n in body.node if n.op_type in ("Tanh", "Sigmoid", "Relu"))
    pre, out, at = act.input[0], act.output[0], list(body.node).index(act)
    then = helper.make_graph([N("Tanh", [pre], ["t_out"])], "then", [], [vi("t_out")])
    other = helper.make_graph([N("Sigmoid", [pre], ["e_sig"]), N("Mul", ["e_sig", pre], ["e_out"])], "else", [], [vi("e_out")])
    step = "x_t" if any(i.name == "x_t" for i in body.input) else "xt"
    del body.node[at]
    for k, n in enumerate([N("ReduceSum", [step], ["step_sum"], keepdims=0), N("Greater", ["step_sum", "zero_d"], ["flag"]),
                           N("If", ["flag"], [out], then_branch=then, else_branch=other, name="choose")]):
        body.node.insert(at + k, n)
    c.inits["zero_d"] = np.array(0.0)
    c.id = id
    return c


def with_loop(c, id):
    """The case with its body's activation replaced by a Loop of two steps v -> 0.9 tanh(v), a
    Loop nested in the body; the body's output then gets its shape declared (ONNX Runtime's
    Scan needs it, and a Loop's final value has none). A copy."""
    import copy

    c = copy.deepcopy(c)
    body = next(a for n in c.nodes for a in n.attribute if a.name == "body").g
    act = next(n for n in body.node if n.op_type in ("Tanh", "Sigmoid", "Relu"))
    pre, out, at = act.input[0], act.output[0], list(body.node).index(act)
    steps = helper.make_graph([N("Identity", ["c_in"], ["c_out"]), N("Tanh", ["v_in"], ["v_t"]), N("Mul", ["v_t", "shrink"], ["v_out"])],
                              "steps", [vi("it", TensorProto.INT64, []), vi("c_in", TensorProto.BOOL, []), vi("v_in")],
                              [vi("c_out", TensorProto.BOOL, []), vi("v_out")])
    del body.node[at]
    body.node.insert(at, N("Loop", ["two", "", pre], [out], body=steps, name="twice"))
    for o in body.output:
        if o.name == out:
            o.CopyFrom(vi(out, D, [BATCH, HID]))
    c.inits.update(two=np.array(2, np.int64), shrink=np.array(0.9))
    c.id = id
    return c


NESTED = [with_if(CASES[0], "if_in_the_body"), with_if(CASES[1], "if_in_the_body_reverse_input"),
          with_if(CASES[10], "if_in_the_body_outer_tensor_read_whole"), with_loop(CASES[0], "loop_in_the_body"),
          with_loop(CASES[1], "loop_in_the_body_reverse_input")]


@pytest.mark.parametrize("c", NESTED, ids=lambda c: c.id)
def test_control_flow_nested_in_the_body(c):
    """An If inside the body (each step takes its own branch), or a Loop: it records what its
    backward reads, the body takes its nodes, and the backward runs the body again from the
    stacked states. (The body's outputs depend on an If's output only through its branches'
    reads by name: the liveness follows those too.)"""
    errors = check_case(c)
    assert errors["fd"] <= 1e-7 and errors["f32"] <= 5e-5  # measured over 5 seeds: fd 4.8e-11, f32 9.2e-7 at most


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_scan_vjp(c):
    errors = check_case(c)
    assert errors["fd"] <= 1e-7 and (c.no_ort or errors["f32"] <= 5e-5)  # measured over 5 seeds: fd 3.4e-11, f32 7.0e-7 at most


def test_the_body_is_recomputed_where_tensors_cannot_be_stacked(monkeypatch):
    """Where a body tensor's shape may change from one iteration to the next, the forward Scan
    stacks the states instead and the backward runs the body again from them: forced here (every
    shape taken for one that may change), the gradients stay exact."""
    from onnxattr.vjp import scan as scan_rule

    monkeypatch.setattr(scan_rule, "step_invariant", lambda shape, symbols: False)
    for c in (CASES[1], CASES[4], CASES[10]):
        errors = check_case(c)
        assert errors["fd"] <= 1e-7 and errors["f32"] <= 5e-5
    m = _built(CASES[1])
    back = _backward_scan(onnxattr.api.vjp_model(m)[0])
    assert {"Tanh", "MatMul"} <= {n.op_type for n in back.node if not n.name.startswith("onnxattr/")}


def _built(c):
    from vjp_check import _run_ref, build, sample_inputs

    x = sample_inputs(c, np.random.default_rng(0))
    return build(c, {o: list(y.shape) for o, y in zip(c.outputs, _run_ref(build(c), x))})


def _backward_scan(m):
    return next(n.attribute[0].g for n in m.graph.node if n.op_type == "Scan" and n.name.startswith("onnxattr/"))


def test_the_forward_scan_stacks_what_the_backward_reads():
    """The model's own Scan gets new stacked outputs (the backward reads the Tanh's output), its
    own outputs unchanged; the backward body does not run the forward body again, and the
    weights' transposes are computed once, before it."""
    m = _built(CASES[0])
    vm = onnxattr.api.vjp_model(m)[0]
    fwd = next(n for n in vm.graph.node if n.name == "scan")
    assert list(fwd.output[:2]) == ["h_last", "hs"] and len(fwd.output) > 2
    back = _backward_scan(vm)
    assert not [n for n in back.node if not n.name.startswith("onnxattr/")]
    assert not [n for n in back.node if n.op_type == "Transpose"]
    inside = {i.name for i in back.input} | {o for n in back.node for o in n.output}
    assert not [n.name for n in back.node if not any(i in inside for i in n.input if i)]


# ------------------------------------------------------------------ PyTorch's scan, float32
def _torch_scan_model(reverse=False, act="tanh", rules=None):
    """x [N, T, 4] -> torch's scan over time (h' = act(x_t A + h B)), stacked outputs 2 h' ->
    scores [N, 3] from the last state and the mean output. `rules`: a torch.autograd.Function
    applied instead of the activation (a reference's backward rule)."""
    import torch
    from torch._higher_order_ops.scan import scan

    class Scanned(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.u, self.head = torch.nn.Linear(4, 6), torch.nn.Linear(6, 6, bias=False), torch.nn.Linear(6, 3)

        def forward(self, x):
            def step(h, xt):
                z = self.lin(xt) + self.u(h)
                h2 = rules.apply(z) if rules is not None else (torch.tanh(z) if act == "tanh" else torch.relu(z))
                return h2, h2 * 2

            if rules is not None:  # the reference: the same recurrence as a Python loop
                h, ys = x.new_zeros(x.shape[0], 6), []
                for t in (reversed if reverse else iter)(range(x.shape[1])):
                    h, y = step(h, x[:, t])
                    ys.append(y)
                return self.head(h + torch.stack(ys).mean(0))
            h, ys = scan(step, x.new_zeros(x.shape[0], 6), x.transpose(0, 1), reverse=reverse)
            return self.head(h + ys.mean(0))

    torch.manual_seed(0)
    return Scanned().eval()


def _export(module, x):
    """Exported by dynamo at opset 18, the batch dynamic (test_models_modern.export_torch)."""
    from test_models_modern import export_torch

    m = export_torch(module, x.numpy(), "dynamo", 18)
    assert "Scan" in {n.op_type for n in m.graph.node}
    return m


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_torch_scan_against_float64_autograd(reverse, act):
    torch = pytest.importorskip("torch")
    module = _torch_scan_model(reverse, act)
    x = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(1))
    m = _export(module, x)
    s = ort.InferenceSession(onnxattr.attribution_model(m).SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (3, 1, 4):  # the batch is dynamic
        xn = torch.randn(n, 5, 4, generator=torch.Generator().manual_seed(n))
        target = np.arange(n) % 3
        got = s.run(["attribution"], {m.graph.input[0].name: xn.numpy(), "target": target})[0]
        x64 = xn.double().requires_grad_(True)
        module.double()(x64).gather(1, torch.tensor(target)[:, None]).sum().backward()
        module.float()
        want = x64.grad.numpy()
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err < 2e-6, f"N={n}: relative error {err:.2e}"  # measured 1.3e-7 at most


@pytest.mark.parametrize("method", ["deconvnet", "guided"])
def test_torch_scan_methods_inside_the_body(method):
    """deconvnet's relu(g) and guided backprop's relu(g) * 1[z > 0] at the Relu inside the body,
    against PyTorch running the same recurrence as a loop with those rules as autograd
    functions (float64)."""
    torch = pytest.importorskip("torch")

    class Rule(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z):
            ctx.save_for_backward(z)
            return torch.relu(z)

        @staticmethod
        def backward(ctx, g):
            (z,) = ctx.saved_tensors
            return torch.relu(g) * (z > 0) if method == "guided" else torch.relu(g)

    x = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(2))
    m = _export(_torch_scan_model(act="relu"), x)
    s = ort.InferenceSession(onnxattr.attribution_model(m, method=method).SerializeToString(), providers=["CPUExecutionProvider"])
    target = np.array([2, 0, 1])
    got = s.run(["attribution"], {m.graph.input[0].name: x.numpy(), "target": target})[0]
    ref = _torch_scan_model(act="relu", rules=Rule).double()
    x64 = x.double().requires_grad_(True)
    ref(x64).gather(1, torch.tensor(target)[:, None]).sum().backward()
    want = x64.grad.numpy()
    saliency = ort.InferenceSession(onnxattr.attribution_model(m).SerializeToString(), providers=["CPUExecutionProvider"])
    plain = saliency.run(["attribution"], {m.graph.input[0].name: x.numpy(), "target": target})[0]
    assert np.abs(want - plain).max() > 1e-3 * np.abs(want).max()  # the rule matters here
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 2e-6, f"relative error {err:.2e}"  # measured 6.0e-8 at most


def test_smoothgrad_and_integrated_gradients_through_a_scan():
    torch = pytest.importorskip("torch")
    x = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(3))
    m = _export(_torch_scan_model(), x)
    name, target = m.graph.input[0].name, np.array([1, 2])
    sal = ort.InferenceSession(onnxattr.attribution_model(m).SerializeToString(), providers=["CPUExecutionProvider"])
    sg = ort.InferenceSession(onnxattr.attribution_model(m, method="smoothgrad", samples=4, noise=0.2, seed=7).SerializeToString(),
                              providers=["CPUExecutionProvider"])
    xn = x.numpy()
    noise = gaussian_noise((4, 1, 5, 4), 7)
    span = xn.max(axis=(1, 2), keepdims=True) - xn.min(axis=(1, 2), keepdims=True)
    want = np.mean([sal.run(["attribution"], {name: (xn + noise[k] * 0.2 * span).astype(np.float32), "target": target})[0]
                    for k in range(4)], axis=0)
    got = sg.run(["attribution"], {name: xn, "target": target})[0]
    assert np.abs(got - sal.run(["attribution"], {name: xn, "target": target})[0]).max() > 1e-3  # the noise matters
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    ig = ort.InferenceSession(onnxattr.attribution_model(m, method="integrated-gradients", steps=64).SerializeToString(),
                              providers=["CPUExecutionProvider"])
    att, gap = ig.run(["attribution", "completeness_gap"], {name: xn, "target": target})
    assert np.abs(att).sum() > 0.1
    assert np.abs(gap).max() < 5e-6  # measured 1.0e-7


# ------------------------------------------------------------------ refusals
def _float32(c):
    from vjp_check import to_float32

    return to_float32(_built(c))


def test_scan8_is_refused_naming_the_node():
    """Scan-8 has a batch axis and a sequence_lens input: refused (this rule is for Scan-9 on)."""
    body = helper.make_graph([N("Add", ["s", "r"], ["s2"]), N("Identity", ["s2"], ["o"])], "body",
                             [vi("s", TensorProto.FLOAT, None), vi("r", TensorProto.FLOAT, None)],
                             [vi("s2", TensorProto.FLOAT, None), vi("o", TensorProto.FLOAT, None)])
    nodes = [N("Unsqueeze", ["x"], ["xb"], axes=[0]), N("ReduceSum", ["xb"], ["s0"], axes=[1], keepdims=0),
             N("Scan", ["", "s0", "xb"], ["last", "ob"], body=body, num_scan_inputs=1, name="old"),
             N("Squeeze", ["ob"], ["y"], axes=[0])]
    g = helper.make_graph(nodes, "m", [vi("x", TensorProto.FLOAT, [2, 3])], [vi("y", TensorProto.FLOAT, [2, 3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 8)], ir_version=4)
    ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])  # a valid model
    with pytest.raises(onnxattr.UnsupportedModelError, match=r"Scan node 'old': Scan-8 .* is not supported"):
        onnxattr.attribution_model(m)


def test_an_if_in_the_body_passing_its_input_on_changes_nothing():
    """An If in the body whose branches both pass the Tanh's output on (refused before nested
    control flow was supported): the same gradients as the body without it."""
    plain = _float32(CASES[0])
    m = _float32(CASES[0])
    body = next(n for n in m.graph.node if n.op_type == "Scan").attribute[0].g
    branch = helper.make_graph([N("Identity", ["h_raw"], ["picked"])], "b", [], [vi("picked", TensorProto.FLOAT, None)])
    tanh = next(n for n in body.node if n.op_type == "Tanh")
    tanh.output[0] = "h_raw"
    body.node.insert(list(body.node).index(tanh) + 1, N("If", ["flag"], ["h_next"], then_branch=branch, else_branch=branch, name="pick"))
    m.graph.initializer.append(onnx.numpy_helper.from_array(np.array(True), "flag"))
    rng = np.random.default_rng(6)
    feeds = {"xs": rng.standard_normal((T_STEPS, BATCH, F_IN)).astype(np.float32), "h0": rng.standard_normal((BATCH, HID)).astype(np.float32)}
    out = []
    for model in (plain, m):
        vm, cots, grads = onnxattr.api.vjp_model(model)
        s = ort.InferenceSession(vm.SerializeToString(), providers=["CPUExecutionProvider"])
        cot = {cots[o]: np.ones((BATCH, HID) if o == "h_last" else (T_STEPS, BATCH, HID), np.float32) for o in cots}
        out.append(s.run([grads["xs"], grads["h0"]], {**feeds, **cot}))
    assert np.abs(out[0][0]).max() > 0
    for a, b in zip(*out):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


def test_an_op_without_a_rule_in_the_body_is_refused_naming_both():
    m = _float32(CASES[0])
    body = next(n for n in m.graph.node if n.op_type == "Scan").attribute[0].g
    next(n for n in body.node if n.op_type == "Tanh").op_type = "Det"  # an op without a rule
    with pytest.raises(onnxattr.UnsupportedModelError,
                       match=r"Scan node 'scan': in its body: no gradient rule for 1 node\(s\) on the differentiable path: Det"):
        onnxattr.api.vjp_model(m)
    rows = {r["op_type"]: r for r in onnxattr.coverage(m)}  # coverage looks inside the body
    assert rows["Det"]["missing_nodes"] == ["scan/h_next"] and rows["Scan"]["missing_nodes"] == []
