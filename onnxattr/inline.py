"""If nodes whose condition is a constant, replaced by the branch they always take.

TorchScript exports `x.squeeze(d)` on a tensor whose shape it could not follow as
If(Shape(x)[d] == 1, Squeeze, Identity); the condition is the same in every run when that dim
is static (the Builder folds it from the inferred static dims; never from its shape trials,
which only sample the free dims: `W % 8 != 0` is true at all of them). Such an If is control flow
only in form: inlining its branch leaves ops the backward can differentiate.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import helper

from .protos import rename_reads


def inline_constant_ifs(graph: onnx.GraphProto, value: Callable[[str], np.ndarray | None]) -> int:
    """Replace, in place, each top-level If of `graph` whose condition `value` knows by the nodes
    of the branch it takes (tensors made inside renamed apart, the branch outputs written to the
    If's outputs). Returns how many were inlined."""
    used = {o for n in graph.node for o in n.output} | {i.name for i in graph.input} | {i.name for i in graph.initializer}
    nodes, inlined = [], 0
    for node in graph.node:
        cond = value(node.input[0]) if node.op_type == "If" and node.domain in ("", "ai.onnx") else None
        if cond is None or np.size(cond) != 1:
            nodes.append(node)
            continue
        name = "then_branch" if bool(np.asarray(cond).reshape(())) else "else_branch"
        branch = next(a.g for a in node.attribute if a.name == name)
        nodes.extend(_branch_nodes(branch, node, graph, used))
        inlined += 1
    if inlined:
        del graph.node[:]
        graph.node.extend(nodes)
    return inlined


def _branch_nodes(branch: onnx.GraphProto, node: onnx.NodeProto, graph: onnx.GraphProto, used: set) -> list:
    inits = [i.name for i in branch.initializer]
    made = [o for n in branch.node for o in n.output if o] + inits
    outs = [o.name for o in branch.output]
    prefix = node.name or node.output[0]
    rename, out = {}, []
    for i, o in enumerate(outs):  # a tensor a branch node makes that is an output: the If's output name
        if o in made and o not in rename and o not in inits:
            rename[o] = node.output[i]
    for t in made:
        if t not in rename:
            k, new = 0, f"{prefix}/{t}"
            while new in used:
                k += 1
                new = f"{prefix}/{t}_{k}"
            rename[t] = new
            used.add(new)
    for init in branch.initializer:
        moved = onnx.TensorProto()
        moved.CopyFrom(init)
        moved.name = rename[init.name]
        graph.initializer.append(moved)
    for n in branch.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(n)
        copy.name = f"{prefix}/{n.name}" if n.name else ""
        rename_reads(copy, rename)
        del copy.output[:]
        copy.output.extend(rename.get(o, o) for o in n.output)
        out.append(copy)
    for i, o in enumerate(outs):  # outputs that are outer tensors, initializers, or repeated
        if rename.get(o) != node.output[i]:
            out.append(helper.make_node("Identity", [rename.get(o, o)], [node.output[i]], name=f"{prefix}/output_{i}"))
    return out
