"""Loop: backpropagation through the steps of an ONNX Loop, with standard ops.

tf2onnx writes Keras' GRU, SimpleRNN and masked recurrent layers (TensorFlow while loops) as a
Loop whose body reads one step of the sequence from an outer tensor (a Gather at the step's
index), carries the state, passes the weights through unchanged and stacks each step's output.
The forward Loop keeps computing the model's outputs, and also stacks, per step, the carried
values it starts from (not those it passes through unchanged, such as weights) and the body's
tensors that the backward reads, where their shapes hold at every step. The rule adds
* a Loop over the steps in reverse: its body gathers that step's tensors from the stacks (or,
  where one could not be stacked, recomputes the forward body from the stacked state), then
  runs the body's own backward graph (this same driver on the body as a model, so every rule
  and every method's override applies inside), seeded with the carried state's gradient and
  that step's slice of each stacked output's gradient. It carries the state gradients and
  stacks, per step, the gradient of each slice the body read; what is the same at every step
  (the weights' transposes) is computed once before it;
* the gradient of an outer tensor read one slice per step (a Gather along axis 0 at a scalar
  index), scattered from those stacks at the indices the steps read (ScatterND: with additions
  from opset 16; before that only for indices that provably differ from step to step, the
  iteration number or a counter incremented by 1). An outer tensor read otherwise has its whole
  gradient summed over the steps in a carried value of the backward Loop.

Control flow nested in the body records what its own backward reads as new outputs of its node
(subgraphs.take_nodes): the body then runs again in the backward Loop. Refused, naming the node:
indices that may repeat before opset 16, and a body that returns an outer tensor depending on
the explained input as it is.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..protos import attrs, constant_tensor, describe, reads
from . import refuse, register
from .subgraphs import (adopt, as_model, body_backward, body_reads, declare, grad_or_zeros, hoist, live_states,
                        same_dims, source, stack_outputs, step_invariant, take_nodes)
from .subgraphs import vi as _vi


def _constant(b, body: onnx.GraphProto, name: str, producer: dict):
    """The value of a body tensor that is an initializer or Constant of the body or the model."""
    for t in body.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    n = producer.get(name)
    t = constant_tensor(n) if n is not None and n.op_type == "Constant" else None
    if t is not None:
        return numpy_helper.to_array(t)
    return b.value(name)


def _distinct_per_step(b, body, index: str, producer: dict) -> bool:
    """Whether a body's Gather index differs from step to step: the iteration number, or a
    carried integer that the body increments by 1."""
    src = source(index, producer)
    ins, outs = [i.name for i in body.input], [o.name for o in body.output]
    if src == ins[0]:
        return True
    if src not in ins[2:]:
        return False
    nxt = producer.get(source(outs[ins.index(src) - 1], producer))
    if nxt is None or nxt.op_type != "Add" or src not in nxt.input:
        return False
    other = nxt.input[1 - list(nxt.input).index(src)]
    v = _constant(b, body, other, producer)
    return v is not None and v.size == 1 and float(v) == 1.0


def _passthrough(k: int, ins: list, outs: list, producer: dict) -> bool:
    """Whether the body returns carried value k as it came (weights passed along, a constant)."""
    return source(outs[1 + k], producer, ("Identity",)) == ins[2 + k]


def _live_carried(b, node, body, ins, outs, live_in: set) -> tuple[list[int], set]:
    """The float carried values whose gradient is needed, and the body tensors that depend on
    them or on `live_in` (subgraphs.live_states)."""
    K = len(node.input) - 2
    return live_states(b, body, [(node.input[2 + k], body.input[2 + k], outs[1 + k]) for k in range(K)], live_in)


def _body_builder(b, node, body, outer):
    """The body as a model of its own (subgraphs.as_model), and whether its inputs' shapes hold
    at every step. Carried values are declared with the shapes of their initial values, whose
    symbolic dims relate them to the outer tensors (so the rules know which dims are equal),
    where the body's outputs keep those shapes (so every step's do); else as the body declares
    them."""
    ins, outs = [i.name for i in body.input], [o.name for o in body.output]
    for outer_first in (True, False):
        inputs = [_vi(ins[0], TensorProto.INT64, []), _vi(ins[1], TensorProto.BOOL, [])]
        for k in range(len(node.input) - 2):
            info = onnx.ValueInfoProto()
            info.CopyFrom(body.input[2 + k])
            if outer_first or not info.type.tensor_type.HasField("shape"):
                declare(b, info, node.input[2 + k])
            inputs.append(info)
        inner = as_model(b, body, f"{node.name or 'loop'}_body", inputs, outer)
        if not outer_first or all(same_dims(inner.shape_protos.get(ins[2 + k]), inner.shape_protos.get(outs[1 + k]))
                                  for k in range(len(node.input) - 2)):
            break
    adopt(b, inner)
    return inner, outer_first


def _record(b, node, stacked: list[int], saved: dict) -> dict:
    """The Loop itself also stacks the carried values each step starts from (key -1: the
    iteration number, which counts the steps run) and the body tensors in `saved` ({name:
    element type}), as new outputs (subgraphs.stack_outputs): {k or name: [steps, ...] tensor}."""
    body = next(a for a in node.attribute if a.name == "body").g
    ins = [i.name for i in body.input]
    kept = [(k, ins[0] if k < 0 else ins[2 + k], TensorProto.INT64 if k < 0 else body.input[2 + k].type.tensor_type.elem_type)
            for k in [-1] + stacked] + [(name, name, elem) for name, elem in saved.items()]
    return stack_outputs(b, node, kept, "loop")


@register("Loop")
def loop(b, node, gys):
    from ..backward import prune

    body = attrs(node)["body"]
    K = len(node.input) - 2
    ins, outs = [i.name for i in body.input], [o.name for o in body.output]
    S = len(outs) - 1 - K
    outer_reads, live_outer = body_reads(b, node, body, ins, outs)
    producer = {o: n for n in body.node for o in n.output if o}
    inner, steady = _body_builder(b, node, body, outer_reads)

    # An outer tensor read only one step at a time (Gather along axis 0 at a scalar index, as
    # TensorArray reads are exported) gets each step's slice gradient, scattered afterwards;
    # one read otherwise gets its whole gradient accumulated over the steps.
    readers = {c: [(n, k) for n in body.node for k, i in enumerate(n.input) if i == c] for c in live_outer}
    sliced = {c for c, rs in readers.items()
              if all(n.op_type == "Gather" and k == 0 and attrs(n).get("axis", 0) == 0 and inner.shapes.get(n.input[1]) == []
                     for n, k in rs)}
    slices = [n for c in live_outer if c in sliced for n, _ in readers[c]]
    whole = [c for c in live_outer if c not in sliced]
    for n in slices:  # the slices' gradients add up with ScatterND: with reduction from opset 16
        if b.opset < 16 and not (b.opset >= 11 and _distinct_per_step(b, body, n.input[1], producer)):
            refuse(node, f"its body reads '{n.input[0]}' at indices that may repeat across steps ({describe(n)}); "
                          "adding their gradients needs ScatterND with reduction, from opset 16")
    carry, live = _live_carried(b, node, body, ins, outs, {n.output[0] for n in slices} | set(whole))
    seeded_steps = [s for s in range(S) if gys[K + s] is not None and outs[1 + K + s] in live]
    if not any(gys[k] is not None for k in carry) and not seeded_steps:
        return {}

    # the body's backward, seeded with the state gradients (inputs of the backward body) and
    # this step's slice of each stacked output's gradient
    state_grads = {k: b.fresh("loop_state_grad") for k in carry}
    step_grads = {s: b.fresh("loop_output_grad") for s in seeded_steps}
    w, summed, grads = body_backward(
        b, node, inner, [(outs[1 + k], state_grads[k]) for k in carry] + [(outs[1 + K + s], step_grads[s]) for s in seeded_steps],
        [ins[2 + k] for k in carry] + [n.output[0] for n in slices] + whole)

    # The forward body's tensors that the backward reads: stacked by the forward Loop where
    # their shapes hold at every step (ONNX stacks equal shapes only), else recomputed from the
    # stacked state (the whole body then runs again in the backward Loop)
    wanted = {i for n in summed + inner.nodes for i in reads(n)} | {n.input[1] for n in slices}
    wanted |= {n.output[0] for n in slices if n.output[0] not in grads} | {ins[2 + k] for k in carry if ins[2 + k] not in grads}
    symbols = {d.dim_param for vi in inner.model.graph.input for d in vi.type.tensor_type.shape.dim if d.dim_param}
    saved = {t: inner.types.get(t, b.dtype) for t in sorted(wanted & set(producer))}
    nested = take_nodes(body, inner)  # the body takes the nodes its nested control flow's rules changed
    if nested or not steady or not all(step_invariant(inner.shape_protos.get(t), symbols) for t in saved):
        saved = {}
    stacks = _record(b, node, [k for k in range(K) if not _passthrough(k, ins, outs, producer)], saved)
    steps = b.op("Reshape", [b.shape_of(stacks[-1]), b.ints([])])
    last = b.op("Sub", [steps, b.const(np.int64(1), dtype=np.int64)])

    # the backward Loop, at step t = last - i: the forward body's tensors gathered from their
    # stacks (or recomputed from the stacked state), then the body's backward
    w.nodes = []
    i, cond = b.fresh("loop_i"), b.fresh("loop_cond")
    accs = {c: b.fresh("loop_sum_grad") for c in whole}
    t = w.op("Sub", [last, i])
    w.op("Identity", [t], out=ins[0])
    w.op("Identity", [cond], out=ins[1])
    for k in range(K):
        w.op("Gather", [stacks[k], t], out=ins[2 + k]) if k in stacks else w.op("Identity", [node.input[2 + k]], out=ins[2 + k])
    for name in saved:
        w.op("Gather", [stacks[name], t], out=name)
    for n in [] if saved else body.node:  # copies: the hoisting renames what they read
        w.nodes.append(onnx.NodeProto())
        w.nodes[-1].CopyFrom(n)
    for s in seeded_steps:
        w.op("Gather", [gys[K + s], t], out=step_grads[s])
    w.nodes.extend(summed + inner.nodes)
    results = [w.op("Identity", [cond])] + [grad_or_zeros(w, grads, ins[2 + k], b.np_dtype) for k in carry]
    results += [w.op("Add", [accs[c], grads[c]]) if c in grads else w.op("Identity", [accs[c]]) for c in whole]
    results += [grad_or_zeros(w, grads, n.output[0], b.np_dtype) for n in slices]
    results += [w.op("Cast", [n.input[1]], to=TensorProto.INT64) for n in slices]
    types = [TensorProto.BOOL] + [b.dtype] * (len(results) - 1 - len(slices)) + [TensorProto.INT64] * len(slices)
    outer = set(outer_reads) | {node.input[2 + k] for k in range(K) if k not in stacks}
    w.nodes = hoist(b, prune(w.nodes, set(results)), outer, set(results))
    carried_in = [_vi(g, b.dtype) for g in [*state_grads.values(), *accs.values()]]
    back = helper.make_graph(w.nodes, b.fresh("loop_backward"),
                             [_vi(i, TensorProto.INT64, []), _vi(cond, TensorProto.BOOL, [])] + carried_in,
                             [_vi(r, ty) for r, ty in zip(results, types)], list(body.initializer))
    init = [gys[k] if gys[k] is not None else b.zeros_like(node.output[k]) for k in carry] + [b.zeros_like(c) for c in whole]
    res = b.op("Loop", [steps, "", *init], outputs=len(results) - 1, body=back)
    res = res if isinstance(res, list) else [res]

    out: dict[str, str] = {}

    def add(name: str, g: str) -> None:  # a tensor both carried in and read, or carried in twice
        out[name] = b.op("Add", [out[name], g]) if name in out else g

    for j, k in enumerate(carry):
        if b.needs(node.input[2 + k]):
            add(node.input[2 + k], res[j])
    for j, c in enumerate(whole):
        add(c, res[len(carry) + j])
    for j, n in enumerate(slices):
        c, base = n.input[0], len(carry) + len(whole)
        upd, idx = res[base + j], b.unsqueeze(res[base + len(slices) + j], [1])
        add(c, b.op("ScatterND", [b.zeros_like(c), idx, upd], reduction="add" if b.opset >= 16 else None))
    return out
