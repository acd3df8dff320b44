"""Check one VJP rule set on a tiny model, JAX `check_vjp` style.

A `Case` is a one-or-few-node graph written once in float64. `check_case` builds it, asks
`onnxattr.api.vjp_model` for its backward graph, and checks

* float64 (onnx.reference): <J t, c> by central differences of the forward equals <t, VJP(c)>,
  for random inputs x, directions t and cotangents c;
* float32 (ONNX Runtime, CPU): the same model converted to float32 gives the float64 VJP (and
  the forward outputs) to float32 accuracy;
* both backward models pass `onnx.checker.check_model(full_check=True)` and use only
  default-domain ops.

Inputs that are differentiated are graph inputs; everything else (weights, shapes, axes) is an
initializer. Inputs are drawn away from kinks: `In(avoid=...)` keeps values at least `GAP` from
the listed points, and `In(kind="distinct")` draws all such inputs of a case from one shuffled
grid with spacing `GAP`, so maxima are unique (MaxPool, Max/Min, GlobalMaxPool).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxattr.api import vjp_model

GAP = 0.02  # minimum distance from a kink / between competing maxima
EPS = 1e-6  # central-difference step (float64)
DIRECTIONS = 2  # random (t, c) pairs per case

# Measured worst cases over the whole table (see the report in tests/test_vjp_ops.py); the
# tolerances sit about two orders of magnitude above them.
FD_RTOL = 1e-7
F32_RTOL = 2e-5


@dataclass
class In:
    """A differentiated graph input: its shape and how to draw it."""

    shape: tuple
    kind: str = "normal"  # normal | positive | distinct
    scale: float = 1.0  # normal: standard deviation; positive: values in [0.5, 0.5 + 2 * scale]
    avoid: tuple = ()  # kink locations to stay GAP away from


@dataclass
class Case:
    id: str
    opset: int
    nodes: list
    inputs: dict  # name -> In (graph inputs, all differentiated)
    outputs: tuple = ("y",)
    inits: dict = field(default_factory=dict)  # name -> array (float arrays follow the model dtype)
    domains: tuple = ()  # extra (domain, version) imports


def case(id, opset, nodes, inputs, outputs=("y",), **inits) -> Case:
    if isinstance(nodes, onnx.NodeProto):
        nodes = [nodes]
    inputs = {k: v if isinstance(v, In) else In(tuple(v)) for k, v in inputs.items()}
    return Case(id, opset, list(nodes), inputs, tuple(outputs), inits)


N = helper.make_node


# ------------------------------------------------------------------------------ building
def build(c: Case, out_shapes: dict | None = None) -> onnx.ModelProto:
    """The float64 model of a case (outputs typed, and shaped once `out_shapes` is known)."""
    inputs = [helper.make_tensor_value_info(k, TensorProto.DOUBLE, list(v.shape)) for k, v in c.inputs.items()]
    outputs = [helper.make_tensor_value_info(o, TensorProto.DOUBLE, (out_shapes or {}).get(o)) for o in c.outputs]
    inits = []
    for name, v in c.inits.items():
        arr = np.asarray(v)
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float64)
        inits.append(numpy_helper.from_array(arr, name))
    graph = helper.make_graph(c.nodes, c.id.replace("/", "_"), inputs, outputs, inits)
    opsets = [helper.make_opsetid("", c.opset)] + [helper.make_opsetid(d, v) for d, v in c.domains]
    model = helper.make_model(graph, opset_imports=opsets)
    # onnx 1.23 stamps IR 14, which ONNX Runtime refuses: use the oldest IR the opset allows.
    model.ir_version = max(8, helper.find_min_ir_version_for(opsets[:1]))
    return model


def to_float32(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with every float64 tensor, type and Cast target turned into float32."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type == TensorProto.DOUBLE:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT

    def fix_tensor(t):
        if t.data_type == TensorProto.DOUBLE:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))

    for t in g.initializer:
        fix_tensor(t)
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                fix_tensor(a.t)
            elif a.name == "to" and n.op_type == "Cast" and a.i == TensorProto.DOUBLE:
                a.i = TensorProto.FLOAT
    return m


# ------------------------------------------------------------------------------ sampling
def _away(x: np.ndarray, avoid, rng) -> np.ndarray:
    for _ in range(100):
        bad = np.zeros(x.shape, bool)
        for p in avoid:
            bad |= np.abs(x - p) < GAP
        if not bad.any():
            return x
        x[bad] = rng.standard_normal(int(bad.sum())) * x.std() + x.mean()
    raise AssertionError("could not draw inputs away from the kinks")


def sample_inputs(c: Case, rng) -> dict:
    distinct = [k for k, v in c.inputs.items() if v.kind == "distinct"]
    total = sum(int(np.prod(c.inputs[k].shape)) for k in distinct)
    pool = iter(rng.permutation(np.arange(total) - total / 2 + 0.5) * GAP * 2)
    xs = {}
    for name, spec in c.inputs.items():
        size = int(np.prod(spec.shape))
        if spec.kind == "distinct":
            x = np.array([next(pool) for _ in range(size)], dtype=np.float64)
        elif spec.kind == "positive":
            x = 0.5 + 2 * spec.scale * rng.random(size)
        else:
            x = rng.standard_normal(size) * spec.scale
        xs[name] = _away(x, spec.avoid, rng).reshape(spec.shape)
    return xs


# ------------------------------------------------------------------------------ checking
def _run_ref(model, feeds):
    return ReferenceEvaluator(model).run(None, feeds)


def _check_backward_model(vm: onnx.ModelProto) -> None:
    onnx.checker.check_model(vm, full_check=True)
    other = [(n.op_type, n.domain) for n in vm.graph.node if n.domain not in ("", "ai.onnx")]
    assert not other, f"backward graph uses non-default domains: {other}"


def check_case(c: Case, seed: int = 0) -> dict:
    """Run every check on a case; returns the measured errors (raises AssertionError on failure)."""
    rng = np.random.default_rng(seed)
    x = sample_inputs(c, rng)
    probe = build(c)
    ys = _run_ref(probe, x)
    model = build(c, {o: list(y.shape) for o, y in zip(c.outputs, ys)})

    # float64: central differences of the forward against the VJP model, on the reference evaluator
    vm, cot_names, grad_names = vjp_model(model)
    _check_backward_model(vm)
    assert set(grad_names) == set(c.inputs), (grad_names, c.inputs)
    ref_fwd = ReferenceEvaluator(model)
    ref_vjp = ReferenceEvaluator(vm)
    out_names = [o.name for o in vm.graph.output]
    fd_err = 0.0
    cots_last = grads_last = None
    for _ in range(DIRECTIONS):
        t = {k: rng.standard_normal(v.shape) for k, v in x.items()}
        cot = {o: rng.standard_normal(y.shape) for o, y in zip(c.outputs, ys)}
        plus = ref_fwd.run(None, {k: x[k] + EPS * t[k] for k in x})
        minus = ref_fwd.run(None, {k: x[k] - EPS * t[k] for k in x})
        jt = [(p - m) / (2 * EPS) for p, m in zip(plus, minus)]
        lhs_terms = [jt_i * cot[o] for jt_i, o in zip(jt, c.outputs)]
        res = dict(zip(out_names, ref_vjp.run(None, {**x, **{cot_names[o]: cot[o] for o in c.outputs}})))
        grads = {k: np.asarray(res[grad_names[k]]) for k in x}
        for k in x:
            assert grads[k].shape == x[k].shape, f"gradient of {k} has shape {grads[k].shape}, not {x[k].shape}"
        rhs_terms = [t[k] * grads[k] for k in x]
        lhs = sum(float(np.sum(v)) for v in lhs_terms)
        rhs = sum(float(np.sum(v)) for v in rhs_terms)
        scale = sum(float(np.sum(np.abs(v))) for v in lhs_terms + rhs_terms)
        assert scale > 0, "the case has an identically zero VJP: it tests nothing"
        err = abs(lhs - rhs) / scale
        assert err <= FD_RTOL, f"<J t, c> = {lhs!r} but <t, VJP(c)> = {rhs!r} (relative error {err:.2e})"
        fd_err = max(fd_err, err)
        cots_last, grads_last = cot, grads
        for o, y, r in zip(c.outputs, ys, [res[o] for o in c.outputs]):
            np.testing.assert_allclose(r, y, rtol=1e-12, atol=1e-12, err_msg=f"forward output {o} changed")

    # float32: the same case on ONNX Runtime against the float64 reference VJP
    m32 = to_float32(model)
    vm32, cot32, grad32 = vjp_model(m32)
    _check_backward_model(vm32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(vm32.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {k: v.astype(np.float32) for k, v in x.items()}
    feeds.update({cot32[o]: cots_last[o].astype(np.float32) for o in c.outputs})
    res32 = dict(zip([o.name for o in vm32.graph.output], sess.run(None, feeds)))
    f32_err = 0.0
    expected = [(o, ys[i]) for i, o in enumerate(c.outputs)] + [(grad32[k], grads_last[k]) for k in x]
    for name, want in expected:
        got = res32[name]
        assert got.dtype == np.float32 and got.shape == want.shape, (name, got.dtype, got.shape, want.shape)
        mag = float(np.max(np.abs(want))) if want.size else 0.0
        err = float(np.max(np.abs(got - want))) / mag if mag else float(np.max(np.abs(got), initial=0.0))
        assert err <= F32_RTOL, f"float32 ONNX Runtime {name}: max error {err:.2e} relative to max |value| {mag:.3g}"
        f32_err = max(f32_err, err)
    return {"fd": fd_err, "f32": f32_err}
