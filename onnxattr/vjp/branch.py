"""If: the gradient through the branch an If takes at run time, as an If on the same condition.

An If whose condition is known before the run is inlined instead (inline.py); this rule is for
conditions computed at run time, such as TorchScript's `x.squeeze(d)` on a dim that may or
may not be 1 (If(Shape(x)[d] == 1, Squeeze, Identity)) or a converted `tf.cond`.

Each branch is differentiated as a model of its own (subgraphs.as_model: this same driver, so
every rule and every method's override applies inside), seeded with the gradients of the If's
outputs. The rule adds an If on the same condition whose branches run those backward graphs
and return the gradients of the outer tensors either branch reads (zeros where the branch
taken does not read one). The forward If also returns the tensors of each branch that its
backward reads (the other branch returns an empty tensor in their place), so neither branch
runs twice.
"""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from ..errors import UnsupportedModelError
from ..graph import Subgraph
from ..protos import describe, reads
from . import register
from .subgraphs import adopt, as_model, captured, grad_or_zeros, hoist, vi

_BRANCHES = ("then_branch", "else_branch")


def _record(b, node, branches: dict, inners: dict, wanted: dict) -> dict:
    """The forward If also returns the tensors in `wanted[key]` of each branch (the other branch
    an empty tensor of the same type and rank): {(key, tensor): outer name}. Each branch's nodes
    become its model's (where a rule inside, a Loop's, made its node record more)."""
    known = b.__dict__.setdefault("_if_saved", {}).setdefault(id(node), {})
    for key, g in branches.items():
        del g.node[:]
        g.node.extend(inners[key].model.graph.node)
    for key in _BRANCHES:
        for t in wanted[key]:
            if (key, t) in known:
                continue
            elem = inners[key].types.get(t, b.dtype)
            rank = len(inners[key].shapes[t]) if inners[key].shapes.get(t) is not None else 1
            for k, g in branches.items():
                out = b.fresh("if_saved")
                if k == key:
                    g.node.append(helper.make_node("Identity", [t], [out], name=b.fresh("Identity")))
                else:
                    empty = np.zeros([0] * rank, helper.tensor_dtype_to_np_dtype(elem))
                    g.node.append(helper.make_node("Constant", [], [out], name=b.fresh("Constant"),
                                                   value=numpy_helper.from_array(empty)))
                g.output.append(vi(out, elem))
            known[(key, t)] = b.fresh("if_saved")
            node.output.append(known[(key, t)])
            b.types[known[(key, t)]] = elem
    return {(key, t): known[(key, t)] for key in _BRANCHES for t in wanted[key]}


@register("If")
def if_(b, node, gys):
    from ..backward import build_backward

    branches = {a.name: a.g for a in node.attribute if a.name in _BRANCHES}
    reads_of = {key: captured(g) for key, g in branches.items()}
    live = list(dict.fromkeys(c for key in _BRANCHES for c in reads_of[key] if b.needs(c) and b.is_float(c)))
    if not live:
        return {}
    inners, sums, grads, wanted = {}, {}, {}, {}
    for key in _BRANCHES:
        g = branches[key]
        inner = inners[key] = as_model(b, g, f"{node.name or 'if'}_{key}", [], reads_of[key])
        adopt(b, inner)
        w = sums[key] = Subgraph(b)
        seeds: dict[str, str] = {}
        for o, gy in zip(g.output, gys):
            if gy is not None:  # a branch output listed twice gets both gradients
                seeds[o.name] = w.op("Add", [seeds[o.name], gy]) if o.name in seeds else gy
        try:
            grads[key] = build_backward(inner, seeds, [c for c in live if c in reads_of[key]], b.policy, unreached_ok=True)
        except UnsupportedModelError as e:
            raise UnsupportedModelError(f"{describe(node)}: in its {key}: {e}") from None
        made = {o for n in inner.model.graph.node for o in n.output if o} | {t.name for t in g.initializer}
        used = [i for n in w.nodes + inner.nodes for i in reads(n)] + list(grads[key].values())
        wanted[key] = [t for t in dict.fromkeys(used) if t in made]
    saved = _record(b, node, branches, inners, wanted)

    backs = {}
    for key in _BRANCHES:
        w = Subgraph(b)
        for t in wanted[key]:
            w.op("Identity", [saved[(key, t)]], out=t)
        w.nodes += sums[key].nodes + inners[key].nodes
        results = [grad_or_zeros(w, grads[key], c, b.np_dtype) for c in live]
        nodes = hoist(b, w.nodes, set(b.consts), set(results))  # what reads constants only (W's transpose) moves out
        backs[key] = helper.make_graph(nodes, b.fresh(f"if_backward_{key.split('_')[0]}"), [], [vi(r, b.dtype) for r in results])
    res = b.op("If", [node.input[0]], outputs=len(live), **backs)
    res = res if isinstance(res, list) else [res]
    return dict(zip(live, res))
