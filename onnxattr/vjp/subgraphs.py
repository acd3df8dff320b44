"""What the control-flow rules (Loop, If) share: a subgraph differentiated as a model of its own.

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

from ..protos import reads, rename_reads


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
