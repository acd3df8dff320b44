"""ONNX If nodes whose condition is computed at run time (a constant one is inlined:
tests/test_inline.py).

* Hand-built Ifs in the op-spec style of tests/test_vjp_ops.py (float64 central differences of
  the reference evaluator against the VJP model, then float32 ONNX Runtime against that), each
  with the condition true and false: branches reading different outer tensors (zeros for the
  one the taken branch does not read), a branch passing an outer tensor on (Identity), a branch
  initializer the backward reads, two outputs of which one is used, an If nested in a branch,
  a Loop in a branch, an input read by the If and outside it;
* the methods' rules apply to the Relu inside a branch (against Captum), SmoothGrad's noisy
  copies reach the branches;
* the forward If returns what the backward reads, so no branch runs twice, and the model's
  outputs stay bit for bit;
* TorchScript's `squeeze` on a dynamic dim and torch.cond (through torch.export) against
  PyTorch autograd, tf.cond (through tf2onnx) against tf.GradientTape, and a scripted
  data-dependent `if` against Captum's Saliency, Deconvolution and GuidedBackprop;
* an op without a rule in a branch is refused naming the If and the branch.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from vjp_check import In, case, check_case

import onnxattr

N = helper.make_node
D = TensorProto.DOUBLE
rng0 = np.random.default_rng(11)
A = rng0.standard_normal((4, 3)) * 0.7
B = rng0.standard_normal((4, 3)) * 0.7


def vi(name, elem=D, dims=None):
    return helper.make_tensor_value_info(name, elem, dims)


def graph(nodes, outs, name, inits=()):
    return helper.make_graph(nodes, name, [], [vi(o) for o in outs], list(inits))


def cond_nodes(taken: bool, src="x"):
    """cond = sum(src) > -1e9 (true) or > 1e9 (false): computed at run time, never near the edge."""
    return [N("ReduceSum", [src], [f"{src}_sum"], keepdims=0), N("Greater", [f"{src}_sum", "edge" if taken else "high"], ["cond"])]


EDGES = dict(edge=np.array(-1e9), high=np.array(1e9))


def if_case(id, taken, then, other, inputs=None, outputs=("y",), after=(), **inits):
    nodes = cond_nodes(taken) + [N("If", ["cond"], ["b"] if len(then.output) == 1 else [o.name + "_if" for o in then.output],
                                   then_branch=then, else_branch=other, name="choose")] + list(after)
    if not after:
        nodes.append(N("Identity", ["b"], ["y"]))
    return case(f"{id}_{'then' if taken else 'else'}", 13, nodes, inputs or {"x": In((2, 4))}, outputs,
                **EDGES, A=A, B=B, **inits)


def _tanh_matmul(src, w, out):
    return graph([N("MatMul", [src, w], [out + "_m"]), N("Tanh", [out + "_m"], [out])], [out], out)


def _square_matmul(src, w, out):
    return graph([N("Mul", [src, src], [out + "_sq"]), N("MatMul", [out + "_sq", w], [out])], [out], out)


def _nested(taken_inner):
    """then: If(sum(x) > ..., tanh(x A), x A * x A): an If in a branch reading x from two scopes up."""
    inner = [N("ReduceSum", ["x"], ["inner_sum"], keepdims=0), N("Greater", ["inner_sum", "edge" if taken_inner else "high"], ["c2"]),
             N("If", ["c2"], ["nested"], then_branch=_tanh_matmul("x", "A", "t2"), else_branch=_square_matmul("x", "A", "e2"),
               name="inner")]
    return graph(inner + [N("Sigmoid", ["nested"], ["outer_t"])], ["outer_t"], "outer_then")


def _loop_branch():
    """then: a Loop of 3 steps h' = tanh(h + x) from h = x, its last stacked state times A (as
    tf2onnx reads a loop's result: ONNX infers no shape for a Loop's final carried values)."""
    body = helper.make_graph([N("Add", ["h", "x"], ["hx"]), N("Tanh", ["hx"], ["h2"]), N("Identity", ["c_in"], ["c_out"]),
                              N("Identity", ["h2"], ["h_step"])],
                             "body", [vi("i", TensorProto.INT64, []), vi("c_in", TensorProto.BOOL, []), vi("h", D, [2, 4])],
                             [vi("c_out", TensorProto.BOOL, []), vi("h2", D, [2, 4]), vi("h_step", D, [2, 4])])
    return graph([N("Loop", ["three", "", "x"], ["h_last", "hs"], body=body, name="steps"), N("Gather", ["hs", "last"], ["h_end"]),
                  N("MatMul", ["h_end", "A"], ["lt"])], ["lt"], "looped")


def _cases(taken):
    return [
        if_case("matmul_tanh_or_square", taken, _tanh_matmul("x", "A", "t"), _square_matmul("x", "B", "e")),
        if_case("branches_read_different_inputs", taken, _tanh_matmul("x", "A", "t"), _square_matmul("u", "B", "e"),
                inputs={"x": In((2, 4)), "u": In((2, 4))}),
        if_case("identity_branch", taken, graph([N("Sigmoid", ["x"], ["t"])], ["t"], "t"), graph([N("Identity", ["x"], ["e"])], ["e"], "e")),
        if_case("branch_initializer", taken, graph([N("Mul", ["x", "k"], ["t"])], ["t"], "t",
                                                   [numpy_helper.from_array(np.linspace(-2, 2, 8).reshape(2, 4), "k")]),
                graph([N("Exp", ["x"], ["e"])], ["e"], "e")),
        if_case("two_outputs_one_used", taken,
                graph([N("Tanh", ["x"], ["t1"]), N("Sin", ["x"], ["t2"])], ["t1", "t2"], "t"),
                graph([N("Cos", ["x"], ["e1"]), N("Neg", ["x"], ["e2"])], ["e1", "e2"], "e"),
                after=[N("Mul", ["t2_if", "x"], ["y"])]),
        if_case("nested_if", taken, _nested(not taken), _square_matmul("x", "B", "e")),
        if_case("loop_in_a_branch", taken, _loop_branch(), _square_matmul("x", "B", "e"), three=np.array(3, np.int64), last=np.array(-1, np.int64)),
        if_case("input_read_outside_too", taken, _tanh_matmul("x", "A", "t"), _square_matmul("x", "B", "e"),
                outputs=("y",), after=[N("MatMul", ["x", "A"], ["xa"]), N("Add", ["b", "xa"], ["y"])]),
    ]


CASES = _cases(True) + _cases(False)


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_if_vjp(c):
    errors = check_case(c)
    assert errors["fd"] <= 1e-7 and errors["f32"] <= 5e-5


# ------------------------------------------------------------------ whole models, float32
def _gated(relu_branch=True):
    """y = fc2(relu(fc1 x)) if sum(fc1 x) > 0 else fc2(2 tanh(fc1 x)), scripted (a data-dependent
    If, its condition over the whole batch)."""
    torch = pytest.importorskip("torch")

    class Gated(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.relu, self.fc2 = torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)

        def forward(self, x):
            h = self.fc1(x)
            if bool(h.sum() > 0):
                h = self.relu(h)
            else:
                h = torch.tanh(h) * 2
            return self.fc2(h)

    torch.manual_seed(0)
    mod = Gated().eval()
    f = io.BytesIO()
    torch.onnx.export(torch.jit.script(mod), (torch.randn(2, 6),), f, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}}, opset_version=13, dynamo=False)
    m = onnx.load_from_string(f.getvalue())
    assert [n.op_type for n in m.graph.node].count("If") == 1
    return mod, m


def _session(m, **kw):
    return ort.InferenceSession(onnxattr.attribution_model(m, **kw).SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("method", ["saliency", "deconvnet", "guided"])
def test_scripted_if_against_captum(method):
    """Both branches taken (by the inputs' sign), against Captum's Saliency, Deconvolution and
    GuidedBackprop on the eager module (its hooks reach the nn.ReLU in one branch)."""
    torch = pytest.importorskip("torch")
    captum = pytest.importorskip("captum.attr")
    mod, m = _gated()
    sess = _session(m, method=method)
    algo = {"saliency": lambda: captum.Saliency(mod), "deconvnet": lambda: captum.Deconvolution(mod),
            "guided": lambda: captum.GuidedBackprop(mod)}[method]()
    rng, branches = np.random.default_rng(1), set()
    for _ in range(8):
        x = (rng.standard_normal((3, 6)) * 2).astype(np.float32)
        target = rng.integers(0, 4, 3)
        xt = torch.tensor(x, requires_grad=True)
        kw = {"abs": False} if method == "saliency" else {}
        want = algo.attribute(xt, target=torch.tensor(target), **kw).detach().numpy()
        got = sess.run(["attribution"], {"x": x, "target": target})[0]
        branches.add(bool((mod.fc1(torch.tensor(x)).sum() > 0).item()))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert branches == {True, False}


def test_methods_differ_inside_a_branch():
    _, m = _gated()
    rng = np.random.default_rng(1)
    x = next(x for x in ((rng.standard_normal((3, 6)) * 2).astype(np.float32) for _ in range(50)) if _takes_relu(m, x))
    outs = [_session(m, method=k).run(["attribution"], {"x": x, "target": np.array([0, 1, 2])})[0]
            for k in ("saliency", "deconvnet", "guided")]
    assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[0], outs[2]) and not np.allclose(outs[1], outs[2])


def _takes_relu(m, x) -> bool:
    """Whether the If takes its Relu branch for x (the If's condition as an extra output)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    cond = next(n.input[0] for n in probe.graph.node if n.op_type == "If")
    probe.graph.output.append(helper.make_tensor_value_info(cond, TensorProto.BOOL, []))
    return bool(ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run([cond], {"x": x})[0])


def test_smoothgrad_noise_reaches_the_branches():
    """SmoothGrad's noisy copies reach the branches. They run as one batch of samples x N rows,
    and this If's condition sums over the whole batch: its map is the mean over the samples of
    the saliency of that stacked batch."""
    from onnxattr.recipes import gaussian_noise

    _, m = _gated()
    x = np.random.default_rng(3).standard_normal((2, 6)).astype(np.float32) * 2
    target = np.array([1, 3])
    sal = _session(m)
    noise = gaussian_noise((4, 1, 6), 7)
    span = x.max(axis=1, keepdims=True) - x.min(axis=1, keepdims=True)
    stacked = np.concatenate([x + noise[s] * 0.3 * span for s in range(4)]).astype(np.float32)
    ref = sal.run(["attribution"], {"x": stacked, "target": np.tile(target, 4)})[0].reshape(4, 2, 6).mean(axis=0)
    got = _session(m, method="smoothgrad", samples=4, noise=0.3, seed=7).run(["attribution"], {"x": x, "target": target})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert np.abs(got - sal.run(["attribution"], {"x": x, "target": target})[0]).max() > 1e-3


def test_forward_if_returns_what_the_backward_reads():
    """No branch runs twice: the backward If's branches hold none of the forward branches' ops,
    and the forward If keeps its outputs (the scores bit for bit) with the tensors the backward
    reads as new ones."""
    _, m = _gated()
    att = onnxattr.attribution_model(m, method="saliency")
    ifs = [n for n in att.graph.node if n.op_type == "If"]
    assert len(ifs) == 2 and len(ifs[0].output) > 1 and ifs[0].output[0] == next(n for n in m.graph.node if n.op_type == "If").output[0]
    for a in ifs[1].attribute:
        assert not {n.op_type for n in a.g.node} & {"Tanh", "Relu"}, a.name
    x = np.random.default_rng(8).standard_normal((5, 6)).astype(np.float32)
    for s in (1, -1):
        want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": s * x})[0]
        got = ort.InferenceSession(att.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            ["y"], {"x": s * x, "target": np.zeros(5, np.int64)})[0]
        np.testing.assert_array_equal(got, want)


def test_torchscript_squeeze_of_a_dynamic_dim():
    """TorchScript exports x.squeeze(1) on a dim it cannot see as If(Shape(x)[1] == 1, Squeeze,
    Identity); against autograd."""
    torch = pytest.importorskip("torch")

    class Squeezed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(6, 5)

        def forward(self, x):
            return self.fc(torch.tanh(x).squeeze(1))

    torch.manual_seed(0)
    mod = Squeezed().eval()
    f = io.BytesIO()
    torch.onnx.export(mod, torch.randn(2, 1, 6), f, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N", 1: "K"}}, opset_version=13, dynamo=False)
    m = onnx.load_from_string(f.getvalue())
    assert "If" in {n.op_type for n in m.graph.node}
    x = torch.randn(3, 1, 6, requires_grad=True)
    target = torch.tensor([0, 3, 1])
    mod(x).gather(1, target[:, None]).sum().backward()
    got = _session(m).run(["attribution"], {"x": x.detach().numpy(), "target": target.numpy()})[0]
    np.testing.assert_allclose(got, x.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_torch_cond_through_the_dynamo_exporter():
    """torch.cond, exported by torch.export (opset 18+, the exporter's default): an If whose
    branches take their operands from the outer scope; both branches, against autograd."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")

    class Cond(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(6, 8), torch.nn.Linear(8, 4)

        def forward(self, x):
            h = self.fc1(x)
            h = torch.cond(h.sum() > 0, lambda h: torch.relu(h), lambda h: torch.tanh(h) * 2, (h,))
            return self.fc2(h)

    torch.manual_seed(0)
    mod = Cond().eval()
    m = torch.onnx.export(mod, (torch.randn(2, 6),), dynamo=True, input_names=["x"], output_names=["y"],
                          dynamic_shapes={"x": {0: torch.export.Dim("N")}}, verbose=False).model_proto
    assert "If" in {n.op_type for n in m.graph.node}
    sess = _session(m)
    gen, branches = torch.Generator().manual_seed(1), set()
    for _ in range(10):
        x = (torch.randn(3, 6, generator=gen) * 2).requires_grad_(True)
        target = torch.tensor([0, 3, 1])
        mod(x).gather(1, target[:, None]).sum().backward()
        got = sess.run(["attribution"], {"x": x.detach().numpy(), "target": target.numpy()})[0]
        np.testing.assert_allclose(got, x.grad.numpy(), rtol=1e-5, atol=1e-7)
        branches.add(bool(mod.fc1(x).sum() > 0))
    assert branches == {True, False}


def test_tf_cond_through_tf2onnx():
    """tf.cond on data, converted by tf2onnx (an If whose branches read the Dense output by
    name); both branches, against tf.GradientTape."""
    tf = pytest.importorskip("tensorflow")
    tf2onnx = pytest.importorskip("tf2onnx")
    dense1, dense2 = tf.keras.layers.Dense(8), tf.keras.layers.Dense(4)
    dense1.build((None, 6))
    dense2.build((None, 8))
    w = np.random.default_rng(5)  # (Keras 3 initialisers do not follow tf.random.set_seed)
    dense1.set_weights([w.standard_normal((6, 8)).astype(np.float32), np.zeros(8, np.float32)])
    dense2.set_weights([w.standard_normal((8, 4)).astype(np.float32), w.standard_normal(4).astype(np.float32)])

    @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float32)])
    def f(x):
        h = dense1(x)
        return dense2(tf.cond(tf.reduce_sum(h) > 0, lambda: tf.nn.relu(h), lambda: tf.tanh(h) * 2))

    m, _ = tf2onnx.convert.from_function(f, input_signature=f.input_signature, opset=13)
    assert "If" in {n.op_type for n in m.graph.node}
    sess, name = _session(m), m.graph.input[0].name
    rng, branches = np.random.default_rng(0), set()
    for k in range(6):  # sum(dense1(-x)) = -sum(dense1(x)) (no bias): the branches alternate
        x = (rng.standard_normal((3, 6)) * 2).astype(np.float32) if k % 2 == 0 else -x
        target = rng.integers(0, 4, 3)
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            picked = tf.reduce_sum(tf.gather(f(xt), target, batch_dims=1))
        want = tape.gradient(picked, xt).numpy()
        got = sess.run(["attribution"], {name: x, "target": target})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        branches.add(bool(tf.reduce_sum(dense1(x)) > 0))
    assert branches == {True, False}


def test_an_op_without_a_rule_in_a_branch_is_refused_naming_both():
    _, m = _gated()
    branch = next(n for n in m.graph.node if n.op_type == "If").attribute
    then = next(a.g for a in branch if a.name == "then_branch")
    then.node[0].op_type = "Det"
    with pytest.raises(onnxattr.UnsupportedModelError,
                       match=r"If node '.*': in its then_branch: no gradient rule for 1 node\(s\) on the differentiable path: "
                             r"Det"):
        onnxattr.attribution_model(m)
    rows = {r["op_type"]: r for r in onnxattr.coverage(m)}  # coverage looks inside the branches
    assert rows["Det"]["missing_nodes"] == [f"{next(n.name for n in m.graph.node if n.op_type == 'If')}/{then.node[0].name}"]
    assert rows["Tanh"]["on_path"] == 1 and rows["If"]["missing_nodes"] == []
