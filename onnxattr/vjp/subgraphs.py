"""What the control-flow rules (Loop, Scan, If) share: a subgraph differentiated as a model of its own.

A body or branch reads outer tensors by name. As a model, those become its inputs (declared
with the shapes known outside, symbolic dims kept, so the rules know which dims are equal) or,
where constant, its initializers; the driver then runs on it with the same policy, so every
rule and every method's override applies inside. Its Builder shares the model's names, so
what it adds stays unique in the whole model.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import UnsupportedModelError
from ..graph import Subgraph
from ..protos import FLOAT_TYPES, reads, rename_reads
from . import NON_DIFFERENTIABLE, refuse


def vi(name: str, elem: int, dims=None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, dims)


def declare(b, info: onnx.ValueInfoProto, outer: str) -> None:
    """Give `info` the shape known for the model's tensor `outer` (symbolic dims kept), if any."""
    if outer in b.shape_protos:
        info.type.tensor_type.shape.CopyFrom(b.shape_protos[outer])
    elif b.shapes.get(outer) is not None:  # (a forward copy's, for SmoothGrad's stacked inputs)
        info.type.tensor_type.shape.CopyFrom(helper.make_tensor_type_proto(0, b.shapes[outer]).tensor_type.shape)


def captured(g: onnx.GraphProto, head: list[str] = ()) -> list[str]:
    """The outer tensors a subgraph reads by name (its nodes', nested subgraphs' and outputs'),
    in order of first read; `head`: its own inputs."""
    defined = set(head) | {i.name for i in g.input} | {t.name for t in g.initializer} | {o for n in g.node for o in n.output if o}
    names = [i for n in g.node for i in reads(n) if i] + [o.name for o in g.output]
    return list(dict.fromkeys(i for i in names if i not in defined))


def as_model(b, g: onnx.GraphProto, name: str, inputs: list[onnx.ValueInfoProto], outer: list[str]):
    """The Builder of subgraph `g` as a model: its `inputs`, then the outer tensors it reads
    (`outer`) as inputs or, where the model knows them as constants, initializers. An output
    that is an input as it came is declared like it. Names stay unique with the model's (adopt)."""
    from ..graph import Builder

    inits = list(g.initializer)
    inputs = list(inputs)
    for c in outer:
        if b.consts.get(c) is not None:
            inits.append(b.consts[c])
            continue
        info = vi(c, b.types.get(c, TensorProto.FLOAT))
        declare(b, info, c)
        inputs.append(info)
    declared = {i.name: i for i in inputs}
    outputs = [declared.get(o.name, o) for o in g.output]
    graph = helper.make_graph(list(g.node), name, inputs, outputs, inits)
    return Builder(helper.make_model(graph, opset_imports=list(b.model.opset_import), ir_version=b.model.ir_version),
                   b.dtype, b.tune_for)


def source(name: str, producer: dict, through=("Identity", "Cast")) -> str:
    """`name` with the subgraph's nodes of the types `through` looked through."""
    n = producer.get(name)
    while n is not None and n.op_type in through:
        name = n.input[0]
        n = producer.get(name)
    return name


def live_states(b, body: onnx.GraphProto, states: list, live_in: set) -> tuple[list[int], set]:
    """The float carried values (`states`: per value its initial outer tensor, its body input's
    ValueInfo and its body output's name) whose gradient is needed: a fixpoint over the body (an
    initial value that depends on the explained input, or an update that reads such a value);
    and the body tensors that depend on them or on `live_in`."""
    floats = {k for k, (_, info, _) in enumerate(states) if info.type.tensor_type.elem_type in FLOAT_TYPES}
    carry = {k for k in floats if b.needs(states[k][0])}
    while True:
        live = {states[k][1].name for k in carry} | set(live_in)
        for n in body.node:
            if n.op_type not in NON_DIFFERENTIABLE and any(i in live for i in reads(n) if i):  # (an If reads by name too)
                live.update(o for o in n.output if o)
        grown = carry | {k for k in floats if states[k][2] in live}
        if grown == carry:
            return sorted(carry), live
        carry = grown


def same_dims(a, c) -> bool:
    """Whether two shape protos are the same (equal lengths or equal symbols), or both unknown."""
    if a is None or c is None or len(a.dim) != len(c.dim):
        return a is None and c is None
    return all((d.HasField("dim_value") and d.dim_value == e.dim_value) or (bool(d.dim_param) and d.dim_param == e.dim_param)
               for d, e in zip(a.dim, c.dim))


def step_invariant(shape, symbols: set) -> bool:
    """Whether a body tensor's inferred shape is the same at every step: static lengths, or
    symbols of the body's inputs (whose shapes hold at every step)."""
    return shape is not None and all(d.HasField("dim_value") or d.dim_param in symbols for d in shape.dim)


def body_reads(b, node, body: onnx.GraphProto, ins: list[str], outs: list[str]) -> tuple[list[str], list[str]]:
    """The outer tensors a Loop or Scan body reads, and those of them that need a gradient.
    Refused, naming the node: a body output that is such a tensor as it is."""
    outer = captured(body, ins)
    live = [c for c in outer if b.needs(c) and b.is_float(c)]
    if any(o in live for o in outs):
        refuse(node, f"its body outputs '{next(o for o in outs if o in live)}', an outer tensor that depends "
                      "on the input being explained, as is")
    return outer, live


def nested(n: onnx.NodeProto) -> bool:
    """Whether a node holds subgraphs (If, Loop, Scan)."""
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute)


def take_nodes(body: onnx.GraphProto, inner) -> bool:
    """Control flow nested in a body records what its own backward reads as new outputs of its
    node in the body's model (`inner`): the body takes that model's nodes. Whether it has such
    nodes: the backward then runs the body again from the stacked states (what they record, an
    If's empty tensor for the branch not taken, need not keep its shape from step to step)."""
    if not any(nested(n) for n in inner.model.graph.node):
        return False
    del body.node[:]
    body.node.extend(inner.model.graph.node)
    return True


def ranked(name: str, elem: int, rank: int | None) -> onnx.ValueInfoProto:
    """A body output's ValueInfo with its rank where known, lengths unknown: ONNX Runtime's Scan
    needs the rank of every output of its body, and the lengths may differ between the copies
    of a model that SmoothGrad and integrated gradients stack."""
    return vi(name, elem, None if rank is None else [None] * rank)


def stack_outputs(b, node, kept: list, hint: str, ranks: dict | None = None) -> dict:
    """New outputs of a Loop or Scan `node` that stack body tensors over its steps: per (key,
    body tensor, element type) in `kept`, an Identity of the tensor as a new body output (with
    its rank where `ranks` has it), added once per key, should a node be differentiated twice
    (its other outputs are unchanged): {key: the node's new output}."""
    body = next(a for a in node.attribute if a.name == "body").g
    known = b.__dict__.setdefault("_stacks", {}).setdefault(id(node), {})
    for key, src, elem in kept:
        if key in known:
            continue
        out = b.fresh(f"{hint}_stacked")
        body.node.append(helper.make_node("Identity", [src], [out], name=b.fresh("Identity")))
        body.output.append(ranked(out, elem, (ranks or {}).get(src)))
        for a in node.attribute:  # a Scan's explicit list covers every scan output
            if a.name in ("scan_output_axes", "scan_output_directions"):
                a.ints.append(0)
        known[key] = b.fresh(f"{hint}_states")
        node.output.append(known[key])
        b.types[known[key]] = elem
    return {key: known[key] for key, _, _ in kept}


def body_backward(b, node, inner, seeded: list, wrt: list):
    """The backward graph of a body (`inner`, its model's Builder) for a Loop or Scan `node`,
    seeded with (body output, gradient name) pairs (a body output listed twice gets both):
    (the Subgraph whose nodes sum such seeds, those nodes, {wrt name: gradient})."""
    from ..backward import build_backward  # (the driver imports the rules)

    w = Subgraph(b)
    seeds: dict[str, str] = {}
    for name, g in seeded:
        seeds[name] = w.op("Add", [seeds[name], g]) if name in seeds else g
    summed = list(w.nodes)
    try:
        grads = build_backward(inner, seeds, wrt, b.policy, unreached_ok=True)
    except UnsupportedModelError as e:
        refuse(node, f"in its body: {e}")
    return w, summed, grads


def adopt(b, inner) -> None:
    """Names `inner` adds are unique in the whole model, and the other way round."""
    b._used |= inner._used
    inner._used, inner._counter = b._used, b._counter


def grad_or_zeros(w, grads: dict, x: str, np_dtype) -> str:
    """A subgraph's output for the gradient of `x`: its gradient (through an Identity: an output
    may not be one of the subgraph's inputs or an outer tensor), or zeros of x's shape where no
    gradient reaches it in this subgraph."""
    if x in grads:
        return w.op("Identity", [grads[x]])
    return w.op("ConstantOfShape", [w.op("Shape", [x])], value=numpy_helper.from_array(np.zeros(1, np_dtype)))


_NOT_HOISTED = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


def hoist(b, nodes: list, invariant: set, outputs: set) -> list:
    """The nodes of a subgraph minus those that compute the same whenever it runs (all inputs in
    `invariant`, outer tensors, or computed from them only: the weights' transposes of the
    MatMul gradients, a bias split), which move before it, renamed (a subgraph's names may not
    reappear outside it; its `outputs` stay). ONNX Runtime then folds them once, and its
    MatMuls get constant weights."""
    invariant, rename, kept = set(invariant), {}, []
    for n in nodes:
        ins = [rename.get(i, i) for i in n.input]
        nested = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute)
        if n.op_type in _NOT_HOISTED or nested or any(o in outputs for o in n.output) or not all(i in invariant for i in ins if i):
            kept.append(n)
            continue
        outs = []
        for o in n.output:
            rename[o] = b.fresh(o.split("/")[-1].split(":")[0] or "hoisted") if o else ""
            invariant.add(rename[o])
            outs.append(rename[o])
        b.nodes.append(helper.make_node(n.op_type, ins, outs, name=b.fresh(n.op_type), domain=n.domain or None))
        b.nodes[-1].attribute.extend(n.attribute)
    for n in kept:
        rename_reads(n, rename)
    return kept
