"""Scan: backpropagation through the iterations of an ONNX Scan, as a Scan over them in reverse.

PyTorch's exporter writes torch's `scan` (torch._higher_order_ops.scan) as a Scan. A Scan
carries N state values through its body and scans M inputs slice by slice (each along its own
axis, forwards or backwards), stacking K per-iteration outputs (each along its own axis and
direction). The rule adds
* to the forward Scan, scan outputs (axis 0, forwards) that stack, per iteration, the body's
  tensors its backward reads and the states that iteration starts from where the backward reads
  them. Where a tensor's shape may change from one iteration to the next (ONNX stacks equal
  shapes only), the states are stacked instead and the backward recomputes the body from them;
* a Scan over the same iterations in reverse. It carries the state gradients (and sums the
  gradients of the outer tensors the body reads whole), reads that iteration's stacked tensors,
  slices of the forward's scan inputs and slices of the scan outputs' gradients (each along its
  axis, in the opposite direction), runs the body's own backward graph (this same driver on the
  body as a model: every rule and every method's override applies inside), and stacks each scan
  input slice's gradient along that input's axis in the opposite direction, so it lands where
  the slice was read.

Control flow nested in the body is differentiated as in a Loop's (the body runs again in the
backward Scan). Refused, naming the node: Scan-8 (a batch axis and sequence lengths), a body that
returns an outer tensor depending on the explained input as it is.
"""

from __future__ import annotations

import onnx
from onnx import helper

from ..protos import attrs, reads
from . import refuse, register
from .subgraphs import (adopt, as_model, body_backward, body_reads, declare, grad_or_zeros, hoist, live_states,
                        ranked, same_dims, source, stack_outputs, step_invariant, take_nodes, vi)


def _axes(node, values, count: int, ranks: list, what: str) -> list[int]:
    """An axes attribute (default 0), each made non-negative with its tensor's rank."""
    values = list(values or []) + [0] * (count - len(values or []))
    out = []
    for j, (axis, rank) in enumerate(zip(values, ranks)):
        if axis < 0 and rank is None:
            refuse(node, f"{what} {j} has the negative axis {axis} and an unknown rank")
        out.append(axis + rank if axis < 0 else axis)
    return out


def _rank(b, name: str) -> int | None:
    s = b.shapes.get(name)
    return None if s is None else len(s)


def _declare_slice(b, info: onnx.ValueInfoProto, outer: str, axis: int) -> None:
    """Give a scan input's slice the shape of the outer tensor without its scan axis, if known."""
    full = onnx.ValueInfoProto()
    declare(b, full, outer)
    shape = full.type.tensor_type.shape
    if full.type.tensor_type.HasField("shape") and axis < len(shape.dim):
        del shape.dim[axis]
        info.type.tensor_type.shape.CopyFrom(shape)


def _body_builder(b, node, body, n_states: int, in_axes: list, outer: list):
    """The body as a model of its own (subgraphs.as_model), and whether its states' shapes hold
    at every iteration: states declared with the shapes of their initial values where the
    body's outputs keep those shapes (else as the body declares them), scanned slices with the
    scanned tensors' shapes less their axis."""
    ins, outs = [i.name for i in body.input], [o.name for o in body.output]
    for outer_first in (True, False):
        inputs = []
        for k, declared in enumerate(body.input):
            info = onnx.ValueInfoProto()
            info.CopyFrom(declared)
            if k >= n_states:
                _declare_slice(b, info, node.input[k], in_axes[k - n_states])
            elif outer_first or not info.type.tensor_type.HasField("shape"):
                declare(b, info, node.input[k])
            inputs.append(info)
        inner = as_model(b, body, f"{node.name or 'scan'}_body", inputs, outer)
        if not outer_first or all(same_dims(inner.shape_protos.get(ins[k]), inner.shape_protos.get(outs[k]))
                                  for k in range(n_states)):
            break
    adopt(b, inner)
    return inner, outer_first


def _record(b, node, states: list[int], saved: dict, ranks: dict) -> dict:
    """The forward Scan also stacks (axis 0, forwards) the states each iteration starts from
    (`states`, by index) and the body tensors in `saved` ({name: element type}), as new scan
    outputs (subgraphs.stack_outputs): {k or name: [iterations, ...] tensor}."""
    body = next(a for a in node.attribute if a.name == "body").g
    kept = [(k, body.input[k].name, body.input[k].type.tensor_type.elem_type) for k in states]
    return stack_outputs(b, node, kept + [(name, name, elem) for name, elem in saved.items()], "scan", ranks)


@register("Scan")
def scan(b, node, gys):
    from ..backward import prune

    if b.opset < 9:
        refuse(node, "Scan-8 (a batch axis and sequence lengths) is not supported; export at opset 9 or later")
    a = attrs(node)
    body = a["body"]
    M = a["num_scan_inputs"]
    N = len(node.input) - M
    ins, outs = [i.name for i in body.input], [o.name for o in body.output]
    K = len(outs) - N
    in_dirs = list(a.get("scan_input_directions") or []) + [0] * M
    out_dirs = list(a.get("scan_output_directions") or []) + [0] * K
    in_axes = _axes(node, a.get("scan_input_axes"), M, [_rank(b, x) for x in node.input[N:]], "scan input")
    out_axes = _axes(node, a.get("scan_output_axes"), K, [_rank(b, y) for y in node.output[N:]], "scan output")
    outer_reads, whole = body_reads(b, node, body, ins, outs)
    producer = {o: n for n in body.node for o in n.output if o}
    inner, steady = _body_builder(b, node, body, N, in_axes, outer_reads)
    scanned = [j for j in range(M) if b.needs(node.input[N + j]) and b.is_float(node.input[N + j])]
    carry, live = live_states(b, body, [(node.input[k], body.input[k], outs[k]) for k in range(N)],
                              {ins[N + j] for j in scanned} | set(whole))
    seeded = [s for s in range(K) if gys[N + s] is not None and outs[N + s] in live]
    if not any(gys[k] is not None for k in carry) and not seeded:
        return {}

    # the body's backward, seeded with the state gradients (carried by the backward Scan) and
    # this iteration's slice of each scan output's gradient
    state_grads = {k: b.fresh("scan_state_grad") for k in carry}
    step_grads = {s: b.fresh("scan_output_grad") for s in seeded}
    w, summed, grads = body_backward(
        b, node, inner, [(outs[k], state_grads[k]) for k in carry] + [(outs[N + s], step_grads[s]) for s in seeded],
        [ins[k] for k in carry] + [ins[N + j] for j in scanned] + whole)

    # What the backward reads of each iteration: body tensors stacked by the forward Scan where
    # their shapes hold at every iteration (else the states, and the body runs again), the
    # states it starts from, and the slices of the scanned inputs
    wanted = {i for n in summed + inner.nodes for i in reads(n)}
    wanted |= {ins[k] for k in carry if ins[k] not in grads} | {ins[N + j] for j in scanned if ins[N + j] not in grads}
    symbols = {d.dim_param for x in inner.model.graph.input for d in x.type.tensor_type.shape.dim if d.dim_param}
    saved = {t: inner.types.get(t, b.dtype) for t in sorted(wanted & set(producer))}
    nested = take_nodes(body, inner)  # the body takes the nodes its nested control flow's rules changed
    recompute = nested or not steady or not all(step_invariant(inner.shape_protos.get(t), symbols) for t in saved)
    if recompute:
        saved, wanted = {}, wanted | {i for n in body.node for i in reads(n)}
    fixed = [k for k in range(N) if source(outs[k], producer, ("Identity",)) == ins[k]]  # passed on as they came
    ranks = {t: len(inner.shapes[t]) for t in ins + list(saved) + whole if inner.shapes.get(t) is not None}
    stacks = _record(b, node, [k for k in range(N) if ins[k] in wanted and k not in fixed], saved, ranks)

    w.nodes = []
    reads_in = [(stacks[key], ins[key] if isinstance(key, int) else key, 0, 1) for key in stacks]
    reads_in += [(node.input[N + j], ins[N + j], in_axes[j], 1 - in_dirs[j]) for j in range(M) if ins[N + j] in wanted]
    reads_in += [(gys[N + s], step_grads[s], out_axes[s], 1 - out_dirs[s]) for s in seeded]
    if not reads_in:  # a Scan needs a scanned input: its length is the number of iterations
        reads_in.append((node.input[N], b.fresh("scan_unread"), in_axes[0], 1 - in_dirs[0]))
    for k in fixed:
        if ins[k] in wanted:
            w.op("Identity", [node.input[k]], out=ins[k])
    if recompute:  # copies: the hoisting renames what they read
        for n in body.node:
            w.nodes.append(onnx.NodeProto())
            w.nodes[-1].CopyFrom(n)
    w.nodes.extend(summed + inner.nodes)
    accs = {c: b.fresh("scan_sum_grad") for c in whole}
    results = [grad_or_zeros(w, grads, ins[k], b.np_dtype) for k in carry]
    results += [w.op("Add", [accs[c], grads[c]]) if c in grads else w.op("Identity", [accs[c]]) for c in whole]
    results += [grad_or_zeros(w, grads, ins[N + j], b.np_dtype) for j in scanned]
    w.nodes = hoist(b, prune(w.nodes, set(results)), set(outer_reads) | {node.input[k] for k in fixed}, set(results))
    elem = {stacks[key]: b.types[stacks[key]] for key in stacks}
    back = helper.make_graph(
        w.nodes, b.fresh("scan_backward"),
        [vi(g, b.dtype) for g in [*state_grads.values(), *accs.values()]]
        + [vi(name, elem.get(outer, b.types.get(outer, b.dtype))) for outer, name, _, _ in reads_in],
        [ranked(r, b.dtype, ranks.get(x)) for r, x in zip(results, [ins[k] for k in carry] + whole + [ins[N + j] for j in scanned])],
        list(body.initializer))
    init = [gys[k] if gys[k] is not None else b.zeros_like(node.output[k]) for k in carry] + [b.zeros_like(c) for c in whole]
    res = b.op("Scan", init + [outer for outer, *_ in reads_in], outputs=len(results), body=back,
               num_scan_inputs=len(reads_in), scan_input_axes=[r[2] for r in reads_in],
               scan_input_directions=[r[3] for r in reads_in],
               scan_output_axes=[in_axes[j] for j in scanned] or None,
               scan_output_directions=[1 - in_dirs[j] for j in scanned] or None)
    res = res if isinstance(res, list) else [res]

    out: dict[str, str] = {}

    def add(name: str, g: str) -> None:  # a tensor both carried in and scanned, or read twice
        out[name] = b.op("Add", [out[name], g]) if name in out else g

    for j, k in enumerate(carry):
        if b.needs(node.input[k]):
            add(node.input[k], res[j])
    for j, c in enumerate(whole):
        add(c, res[len(carry) + j])
    for j, jj in enumerate(scanned):
        add(node.input[N + jj], res[len(carry) + len(whole) + j])
    return out
