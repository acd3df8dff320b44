"""ONNX Loop nodes (tf2onnx's while loops: Keras GRU, SimpleRNN, masked recurrent layers).

* Hand-built Loops in the op-spec style of tests/test_vjp_ops.py (float64 central differences of
  the reference evaluator against the VJP model, then float32 ONNX Runtime against that): the
  sequence read one step at a time by the iteration number or by a carried counter, a loop
  ended by its condition before the trip count, weights passed through as carried values, the
  initial state from the input, stacked and final outputs, an outer tensor read whole at every
  step (also the initial state itself: both gradients add up), repeated step indices (opset 16's
  ScatterND with additions);
* deconvnet and guided backprop apply to the Relu nodes inside a body, against a numpy
  backpropagation through time of the same rules;
* SmoothGrad (its stacked copies of the input must reach the body's reads) and integrated
  gradients' completeness on a Loop model;
* control flow nested in the body (an If taking its own branch at each step, a Loop);
* the unsupported forms refused by name: repeated indices before opset 16.
The Keras models themselves (through tf2onnx) are in tests/test_recurrent.py.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_scan import with_if, with_loop
from vjp_check import In, case, check_case

import onnxattr
from onnxattr.recipes import gaussian_noise

N = helper.make_node
D = TensorProto.DOUBLE
T_STEPS, BATCH, F_IN, HID = 4, 2, 3, 5
rng0 = np.random.default_rng(5)
W = rng0.standard_normal((F_IN, HID)) * 0.6
U = rng0.standard_normal((HID, HID)) * 0.4
V = rng0.standard_normal((HID, 3)) * 0.7


def vi(name, elem=D, dims=None):
    return helper.make_tensor_value_info(name, elem, dims)


def rnn_body(index="i", act="Tanh", counter=False, carry_w=False, stop_at=None, whole=None, prefix=False):
    """h' = act(xs[index] W + h U (+ mean(whole))): inputs (i, cond, h[, c][, w]), outputs
    (cond, h'[, c + 1][, w], h'). `counter`: the index is a carried int64 counter; `carry_w`: W
    is passed through as a carried value (as tf2onnx passes weights); `stop_at`: the condition
    turns false once the counter reaches it; `whole`: an outer tensor read whole at every step."""
    ins = [vi("i", TensorProto.INT64, []), vi("cond_in", TensorProto.BOOL, []), vi("h", D, None)]
    outs = [vi("cond_out", TensorProto.BOOL, []), vi("h_next", D, None)]
    nodes = [N("Gather", ["xs", "c" if counter else index], ["xt"]),
             N("MatMul", ["xt", "w_in" if carry_w else "W"], ["a1"]), N("MatMul", ["h", "U"], ["a2"]), N("Add", ["a1", "a2"], ["a"])]
    if whole:
        read = whole
        if prefix:  # whole[:c + 1]: a length that changes from step to step
            nodes += [N("Add", ["c", "one"], ["c_plus"]), N("Unsqueeze", ["c_plus", "zero_1d"], ["c_end"]),
                      N("Slice", [whole, "zero_1d", "c_end"], ["seen"])]
            read = "seen"
        nodes += [N("ReduceMean", [read], ["ctx"], keepdims=0, axes=[0]), N("Add", ["a", "ctx"], ["a_ctx"])]
    nodes += [N(act, ["a_ctx" if whole else "a"], ["h_next"]), N("Identity", ["h_next"], ["h_step"])]
    if counter:
        ins.append(vi("c", TensorProto.INT64, []))
        outs.append(vi("c_next", TensorProto.INT64, []))
        nodes.append(N("Add", ["c", "one"], ["c_next"]))
    if carry_w:
        ins.append(vi("w_in", D, None))
        outs.append(vi("w_in", D, None))
    if stop_at is not None:
        nodes.append(N("Less", ["c_next", "stop"], ["cond_out"]))
    else:
        nodes.append(N("Identity", ["cond_in"], ["cond_out"]))
    outs.append(vi("h_step", D, None))
    return helper.make_graph(nodes, "body", ins, outs)


def loop_case(id, opset=13, trips=T_STEPS, h0="h0", outputs=("h_last", "hs"), **kw):
    """Loop(trips) over xs [T, N, F] from state h0 (an input, or a constant zero state)."""
    body = rnn_body(**kw)
    counter, carry_w = kw.get("counter"), kw.get("carry_w")
    ins = ["trips", ""] + [h0] + (["c0"] if counter else []) + (["W"] if carry_w else [])
    outs = ["h_last"] + (["c_last"] if counter else []) + (["w_last"] if carry_w else []) + ["hs"]
    nodes = [N("Loop", ins, outs, body=body, name="rnn")]
    inputs = {"xs": In((T_STEPS, BATCH, F_IN))}
    inits = dict(trips=np.array(trips, np.int64), W=W, U=U)
    if counter:
        inits.update(one=np.array(1, np.int64), c0=np.array(0, np.int64))
    if kw.get("stop_at") is not None:
        inits["stop"] = np.array(kw["stop_at"], np.int64)
    if kw.get("prefix"):
        inits["zero_1d"] = np.array([0], np.int64)
    if h0 == "h0":
        inputs["h0"] = In((BATCH, HID))
    else:
        inits[h0] = np.zeros((BATCH, HID))
    if kw.get("whole"):
        inputs.setdefault(kw["whole"], In((3, HID), scale=0.5))
    return case(id, opset, nodes, inputs, outputs, **inits)


CASES = [
    loop_case("iteration_index"),
    loop_case("counter_index_weights_carried", counter=True, carry_w=True),
    loop_case("stops_on_condition", trips=9, counter=True, stop_at=3),
    loop_case("constant_initial_state_stacked_only", h0="zeros", outputs=("hs",), act="Sigmoid"),
    loop_case("final_state_only", outputs=("h_last",), counter=True),
    loop_case("outer_tensor_read_whole", whole="ctx_in"),
    loop_case("initial_state_also_read_whole", whole="h0"),
    loop_case("prefix_read_recomputed", whole="ctx_in", prefix=True, counter=True),
    loop_case("opset16_counter", opset=16, counter=True),
]


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_loop_vjp(c):
    errors = check_case(c)
    assert errors["fd"] <= 1e-7 and errors["f32"] <= 5e-5  # measured over 5 seeds: fd 4.1e-11, f32 9.6e-7 at most


def _repeated_index_case(opset):
    """Steps 0..3 read xs[i // 2]: rows 0 and 1 twice each."""
    c = loop_case(f"repeated_index_{opset}", opset=opset, index="half")
    body = c.nodes[0].attribute[0].g
    body.node.insert(0, N("Div", ["i", "two"], ["half"]))
    c.inits["two"] = np.array(2, np.int64)
    return c


def test_repeated_step_indices_add_up_from_opset_16():
    check_case(_repeated_index_case(16))


def test_repeated_step_indices_refused_before_opset_16():
    from vjp_check import build, sample_inputs, _run_ref

    c = _repeated_index_case(13)
    x = sample_inputs(c, np.random.default_rng(0))
    model = build(c, {o: list(y.shape) for o, y in zip(c.outputs, _run_ref(build(c), x))})
    with pytest.raises(onnxattr.UnsupportedModelError, match=r"Loop node 'rnn': its body reads 'xs' at indices that may "
                                                            r"repeat across steps .*from opset 16"):
        onnxattr.api.vjp_model(model)


# ------------------------------------------------------------------ whole models, float32
def classifier(act="Relu", opset=13) -> onnx.ModelProto:
    """x [N, T, F] -> Transpose -> Loop (h' = act(x_t W + h U)) -> last stacked state -> scores
    [N, 3] (as tf2onnx reads a Keras layer's last output: ONNX's shape inference drops the shapes
    of a Loop's final carried values, which may change from step to step)."""
    body = rnn_body(act=act, counter=True, carry_w=True)
    _retype(body)
    nodes = [N("Transpose", ["x"], ["xs"], perm=[1, 0, 2]),
             N("Shape", ["xs"], ["shape"]), N("Gather", ["shape", "zero"], ["trips"]),
             N("Shape", ["x"], ["xshape"]), N("Gather", ["xshape", "zero1"], ["n"]),
             N("Concat", ["n", "hid"], ["h0shape"], axis=0),
             N("ConstantOfShape", ["h0shape"], ["h0"], value=numpy_helper.from_array(np.zeros(1, np.float32))),
             N("Loop", ["trips", "", "h0", "c0", "W"], ["h_last", "c_last", "w_last", "hs"], body=body, name="rnn"),
             N("Gather", ["hs", "minus1"], ["h_end"]), N("MatMul", ["h_end", "V"], ["y"])]
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in dict(
        zero=np.array(0, np.int64), minus1=np.array(-1, np.int64), zero1=np.array([0], np.int64), hid=np.array([HID], np.int64), one=np.array(1, np.int64),
        c0=np.array(0, np.int64), W=W.astype(np.float32), U=U.astype(np.float32), V=V.astype(np.float32)).items()]
    g = helper.make_graph(nodes, "rnn_classifier", [vi("x", TensorProto.FLOAT, ["N", "T", F_IN])],
                          [vi("y", TensorProto.FLOAT, ["N", 3])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _retype(g):
    """float32, and the carried values' shapes declared (as tf2onnx declares them)."""
    shapes = {"h": ["rows", HID], "h_next": ["rows", HID], "w_in": [F_IN, HID], "h_step": ["rows", HID]}
    for v in list(g.input) + list(g.output):
        if v.type.tensor_type.elem_type == D:
            v.CopyFrom(vi(v.name, TensorProto.FLOAT, shapes[v.name]))


def reference_bptt(x, target, method):
    """A numpy backpropagation through time of h_t = relu(x_t W + h_{t-1} U), y = h_T V, in
    float64, with the method's rule at every Relu: saliency g * 1[z > 0], deconvnet relu(g),
    guided relu(g) * 1[z > 0]."""
    n, steps, _ = x.shape
    h, zs = np.zeros((n, HID)), []
    for t in range(steps):
        z = x[:, t] @ W + h @ U
        zs.append(z)
        h = np.maximum(z, 0)
    gh = V[:, target].T.copy()  # d y[n, target[n]] / d h_T
    gx = np.zeros_like(x)
    for t in reversed(range(steps)):
        mask = zs[t] > 0
        gz = {"saliency": gh * mask, "deconvnet": np.maximum(gh, 0), "guided": np.maximum(gh, 0) * mask}[method]
        gx[:, t] = gz @ W.T
        gh = gz @ U.T
    return gx


@pytest.mark.parametrize("method", ["saliency", "deconvnet", "guided"])
def test_relu_rnn_loop_methods_against_numpy_bptt(method):
    m = classifier()
    sess = ort.InferenceSession(onnxattr.attribution_model(m, method=method).SerializeToString(),
                                onnxattr.session_options(), providers=["CPUExecutionProvider"])
    rng, nonzero = np.random.default_rng(2), 0
    for n, steps in ((2, 5), (3, 1), (1, 8)):
        x = rng.standard_normal((n, steps, F_IN)).astype(np.float32)
        target = rng.integers(0, 3, n)
        got = sess.run(["attribution"], {"x": x, "target": target})[0]
        ref = reference_bptt(x.astype(np.float64), target, method)
        nonzero += bool(np.abs(ref).max() > 0)
        err = np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30)
        assert err < 1e-6, f"{method} N={n}, T={steps}: relative error {err:.2e}"  # measured 7.5e-8 at most
    assert nonzero >= 2


def test_methods_differ_inside_the_body():
    """The rules reach the body's Relu: the three methods give three different attributions."""
    x = np.random.default_rng(4).standard_normal((2, 6, F_IN)).astype(np.float32)
    outs = []
    for method in ("saliency", "deconvnet", "guided"):
        s = ort.InferenceSession(onnxattr.attribution_model(classifier(), method=method).SerializeToString(),
                                 providers=["CPUExecutionProvider"])
        outs.append(s.run(["attribution"], {"x": x, "target": np.array([0, 1])})[0])
    assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[0], outs[2]) and not np.allclose(outs[1], outs[2])


def test_smoothgrad_noise_reaches_the_body():
    """SmoothGrad's stacked noisy copies must be what the Loop's body reads (it reads the input
    by name from the outer scope, not as a node input)."""
    m = classifier(act="Tanh")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, F_IN)).astype(np.float32)
    target = np.array([1, 2])
    sg_model = onnxattr.attribution_model(m, method="smoothgrad", samples=4, noise=0.2, seed=7)
    # the copies run on 4 x N rows: their bodies keep no symbol of the model's (the state's "rows")
    symbols = [n.name for n in sg_model.graph.node if n.op_type == "Loop" and "rows" in str(n.attribute[0].g)]
    assert symbols == ["rnn"]
    sg = ort.InferenceSession(sg_model.SerializeToString(), providers=["CPUExecutionProvider"])
    sal = ort.InferenceSession(onnxattr.attribution_model(m).SerializeToString(), providers=["CPUExecutionProvider"])
    noise = gaussian_noise((4, 1, 5, F_IN), 7)
    span = x.max(axis=(1, 2), keepdims=True) - x.min(axis=(1, 2), keepdims=True)
    ref = np.mean([sal.run(["attribution"], {"x": (x + noise[s] * 0.2 * span).astype(np.float32), "target": target})[0]
                   for s in range(4)], axis=0)
    got = sg.run(["attribution"], {"x": x, "target": target})[0]
    plain = sal.run(["attribution"], {"x": x, "target": target})[0]
    assert np.abs(got - plain).max() > 1e-3  # the noise matters
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_integrated_gradients_completeness_through_a_loop():
    m = classifier(act="Tanh")
    s = ort.InferenceSession(onnxattr.attribution_model(m, method="integrated-gradients", steps=64).SerializeToString(),
                             providers=["CPUExecutionProvider"])
    x = np.random.default_rng(6).standard_normal((3, 7, F_IN)).astype(np.float32)
    att, gap = s.run(["attribution", "completeness_gap"], {"x": x, "target": np.array([0, 1, 2])})
    assert np.abs(att).sum() > 0.1
    assert np.abs(gap).max() < 5e-6  # measured 5.7e-7


def test_an_if_in_the_body_passing_its_input_on_changes_nothing():
    """An If in the body whose branches both pass the Tanh's output on (refused before nested
    control flow was supported): the same attribution as the classifier without it."""
    m = classifier(act="Tanh")
    body = next(n for n in m.graph.node if n.op_type == "Loop").attribute[0].g
    branch = lambda v: helper.make_graph([N("Identity", [v], ["picked"])], "b", [], [vi("picked", TensorProto.FLOAT, None)])  # noqa: E731
    tanh = next(n for n in body.node if n.op_type == "Tanh")
    tanh.output[0] = "h_raw"
    body.node.insert(list(body.node).index(tanh) + 1,
                     N("If", ["cond_in"], ["h_next"], then_branch=branch("h_raw"), else_branch=branch("h_raw"), name="pick"))
    x = np.random.default_rng(9).standard_normal((2, 5, F_IN)).astype(np.float32)
    got, want = (ort.InferenceSession(onnxattr.attribution_model(model).SerializeToString(), providers=["CPUExecutionProvider"])
                 .run(["attribution"], {"x": x, "target": np.array([0, 2])})[0] for model in (m, classifier(act="Tanh")))
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("c", [with_if(CASES[0], "if_in_the_body"), with_if(CASES[1], "if_in_the_body_counter_weights_carried"),
                               with_if(CASES[5], "if_in_the_body_outer_tensor_read_whole"), with_loop(CASES[0], "loop_in_the_body"),
                               with_loop(CASES[5], "loop_in_the_body_outer_tensor_read_whole")], ids=lambda c: c.id)
def test_control_flow_nested_in_the_body(c):
    """An If inside the body taking its own branch at each step, a Loop inside the body
    (tests/test_scan.py's with_if, with_loop)."""
    errors = check_case(c)
    assert errors["fd"] <= 1e-7 and errors["f32"] <= 5e-5  # measured over 5 seeds: fd 3.3e-11, f32 4.2e-7 at most


def test_step_invariant_nodes_leave_the_backward_body():
    """The gradient of x_t W inside the body needs W's transpose: computed once before the Loop
    (where ONNX Runtime folds it), not at every step; nothing in the backward bodies reads only
    tensors from outside them."""
    att = onnxattr.attribution_model(classifier(act="Tanh"))
    added = [n for n in att.graph.node if n.op_type == "Loop" and n.name.startswith("onnxattr/")]
    assert len(added) == 1  # the backward Loop (the forward one stacks what it needs)
    back = added[0].attribute[0].g
    inside = {i.name for i in back.input} | {o for m in back.node for o in m.output}
    assert not [m.name for m in back.node if not any(i in inside for i in m.input if i)]
    assert not [m for m in back.node if m.op_type == "Transpose"]
    assert any(m.op_type == "Transpose" for m in att.graph.node)


def test_an_op_without_a_rule_in_the_body_is_refused_naming_both():
    m = classifier(act="Tanh")
    body = next(n for n in m.graph.node if n.op_type == "Loop").attribute[0].g
    next(n for n in body.node if n.op_type == "Tanh").op_type = "Det"  # an op without a rule
    with pytest.raises(onnxattr.UnsupportedModelError,
                       match=r"Loop node 'rnn': in its body: no gradient rule for 1 node\(s\) on the differentiable path: Det"):
        onnxattr.attribution_model(m)
    rows = {r["op_type"]: r for r in onnxattr.coverage(m)}  # coverage looks inside the body (it missed it)
    assert rows["Det"]["missing_nodes"] == ["rnn/h_next"] and rows["Loop"]["missing_nodes"] == []
    assert rows["MatMul"]["on_path"] == 3  # the body's two and the scores'


def _backward_body(c):
    from vjp_check import build, sample_inputs, _run_ref

    x = sample_inputs(c, np.random.default_rng(0))
    model = build(c, {o: list(y.shape) for o, y in zip(c.outputs, _run_ref(build(c), x))})
    vm = onnxattr.api.vjp_model(model)[0]
    return next(n.attribute[0].g for n in vm.graph.node
                if n.op_type == "Loop" and any(m.op_type == "Sub" and m.input[1].startswith("onnxattr/loop_i")
                                               for m in n.attribute[0].g.node))


def test_the_backward_reads_stacked_forward_tensors_or_recomputes_them():
    """What the backward reads of a step (here the Tanh's output) is stacked by the recording
    copy where its shape holds at every step, so the backward body does not run the forward
    body again; where a length changes from step to step (whole[:c + 1]) ONNX cannot stack it,
    and the body is recomputed from the stacked state."""
    stacked = _backward_body(next(c for c in CASES if c.id == "iteration_index"))
    assert not [m for m in stacked.node if m.op_type in ("Tanh", "MatMul") and not m.name.startswith("onnxattr/")]
    recomputed = _backward_body(next(c for c in CASES if c.id == "prefix_read_recomputed"))
    assert {"Tanh", "Slice"} <= {m.op_type for m in recomputed.node if not m.name.startswith("onnxattr/")}


def test_the_forward_loop_stacks_for_the_backward_and_keeps_its_outputs():
    """No second forward Loop: the model's own Loop gets new stacked outputs (its state at each
    step, what the backward reads), its other outputs and the scores unchanged."""
    m = classifier(act="Relu")
    att = onnxattr.attribution_model(m, method="saliency")
    loops = [n for n in att.graph.node if n.op_type == "Loop"]
    fwd = next(n for n in loops if n.name == "rnn")
    assert list(fwd.output[:4]) == ["h_last", "c_last", "w_last", "hs"] and len(fwd.output) > 4
    assert len(loops) == 2
    x = np.random.default_rng(8).standard_normal((2, 6, F_IN)).astype(np.float32)
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(att.SerializeToString(), providers=["CPUExecutionProvider"]).run(["y"], {"x": x, "target": np.array([0, 1])})[0]
    np.testing.assert_array_equal(got, want)
