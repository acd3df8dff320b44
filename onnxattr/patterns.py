"""Multi-node forms of one function, differentiated as that function.

Exporters spell some functions as chains of elementwise ops, e.g. TorchScript's GELU as
`Div(x, sqrt 2) -> Erf -> Add 1 -> Mul x -> Mul 0.5`. Differentiating each op reads every
intermediate tensor, which costs memory and stops ONNX Runtime from fusing the chain back into
its one-pass Gelu kernel. skl2onnx's logistic, `Mul(s, -1) -> Exp -> Add 1 -> Reciprocal`,
differentiated op by op gives 0 * inf = NaN where exp(-s) overflows (s < -88.7 in float32) though
the forward is finite (0); as one function (onnxattr's own virtual 'Logistic': y / (1 + exp(s)),
not a Sigmoid, whose rule's y (1 - y) cancels near y = 1) its derivative is 0 there. `fuse`
replaces such a chain on the differentiable path by one virtual node (never emitted: only its
rule runs) whose rule reads the chain's input (and output) alone. A chain is taken only when its
intermediates feed nothing outside it and are not graph outputs.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import onnx
from onnx import helper

from .protos import reads

_SQRT2 = math.sqrt(2.0)


def _close(value, target: float) -> bool:
    return value is not None and value.size == 1 and bool(np.isclose(float(value.reshape(-1)[0]), target, rtol=1e-6, atol=0.0))


class _Graph:
    """Producer and use counts of the tensors of the graph being differentiated."""

    def __init__(self, b, nodes: list[onnx.NodeProto]):
        self.b = b
        self.producer = {o: n for n in nodes for o in n.output if o}
        self.uses = Counter(i for n in nodes for i in reads(n) if i)
        self.uses.update(o.name for o in b.model.graph.output)

    def only_feeds(self, t: str, node: onnx.NodeProto) -> bool:
        """`t` is read once in the whole graph, by `node`, and is not a graph output."""
        return self.uses[t] == 1 and t in node.input

    def other(self, node: onnx.NodeProto, t: str) -> str | None:
        """The input of binary `node` that is not `t` (None if `t` is not exactly one of them)."""
        ins = list(node.input)
        if len(ins) != 2 or ins.count(t) != 1:
            return None
        return ins[1] if ins[0] == t else ins[0]

    def const_operand(self, node: onnx.NodeProto, t: str, target: float) -> bool:
        o = self.other(node, t)
        return o is not None and _close(self.b.value(o), target)


def _sole_use(g: _Graph, t: str, consumers: dict, *op_types: str) -> onnx.NodeProto | None:
    """The node of one of `op_types` that reads `t`, if it is t's only use."""
    node = consumers.get(t)
    return node if node is not None and node.op_type in op_types and g.only_feeds(t, node) else None


def _plus_one(g: _Graph, t: str, consumers: dict) -> onnx.NodeProto | None:
    """The node computing t + 1, if that is t's only use."""
    add = _sole_use(g, t, consumers, "Add")
    return add if add is not None and g.const_operand(add, t, 1.0) else None


def _erf_gelu(g: _Graph, erf: onnx.NodeProto, consumers: dict) -> tuple[list[onnx.NodeProto], str, str] | None:
    """Match x*0.5*(1 + erf(x / sqrt 2)) around `erf`, in the associations exporters emit:
    ((x * (1 + e)) * 0.5) and ((x * 0.5) * (1 + e)), either operand order, / sqrt 2 or * 1/sqrt 2.
    Returns (member nodes, x, y)."""
    scaled = g.producer.get(erf.input[0])
    if scaled is None or scaled.op_type not in ("Div", "Mul") or not g.only_feeds(scaled.output[0], erf):
        return None
    x = scaled.input[0]
    if scaled.op_type == "Div":
        if not _close(g.b.value(scaled.input[1]), _SQRT2):
            return None
    elif not g.const_operand(scaled, x, 1 / _SQRT2):
        x = scaled.input[1]
        if not g.const_operand(scaled, x, 1 / _SQRT2):
            return None
    if g.b.value(x) is not None:
        return None
    add = _plus_one(g, erf.output[0], consumers)
    if add is None:
        return None
    p = add.output[0]
    mul1 = _sole_use(g, p, consumers, "Mul")
    if mul1 is None:
        return None
    first = g.other(mul1, p)
    if first == x:  # (x * (1 + e)) * 0.5
        q = mul1.output[0]
        last = _sole_use(g, q, consumers, "Mul")
        if last is None or not g.const_operand(last, q, 0.5):
            return None
        return [scaled, erf, add, mul1, last], x, last.output[0]
    half = g.producer.get(first) if first else None  # (x * 0.5) * (1 + e)
    if half is None or half.op_type != "Mul" or not g.only_feeds(first, mul1):
        return None
    if g.other(half, x) is None or not g.const_operand(half, x, 0.5):
        return None
    return [scaled, erf, add, half, mul1], x, mul1.output[0]


def _negated(g: _Graph, node: onnx.NodeProto, consumer: onnx.NodeProto) -> str | None:
    """x where `node` computes -x (Neg, or Mul by -1), read by `consumer` alone."""
    if not g.only_feeds(node.output[0], consumer):
        return None
    if node.op_type == "Neg":
        return node.input[0]
    if node.op_type == "Mul":
        for x in node.input:
            if g.const_operand(node, x, -1.0):
                return x
    return None


def _logistic(g: _Graph, exp: onnx.NodeProto, consumers: dict) -> tuple[list[onnx.NodeProto], str, str] | None:
    """Match 1 / (1 + exp(-x)) around `exp`: -x as Neg or Mul by -1, 1 / d as Reciprocal or
    Div(1, d). Returns (member nodes, x, y)."""
    neg = g.producer.get(exp.input[0])
    x = _negated(g, neg, exp) if neg is not None else None
    if x is None or g.b.value(x) is not None:
        return None
    add = _plus_one(g, exp.output[0], consumers)
    if add is None:
        return None
    d = add.output[0]
    last = _sole_use(g, d, consumers, "Div", "Reciprocal")
    if last is None or last.op_type == "Div" and (list(last.input).index(d) != 1
                                                   or not _close(g.b.value(last.input[0]), 1.0)):
        return None
    return [neg, exp, add, last], x, last.output[0]


def _keeps_shape(g: _Graph, members: list[onnx.NodeProto], x: str) -> bool:
    """The chain's constants cannot broadcast y beyond x's shape: none has more dims than x (a
    [1, 1, 1] constant on a [2, 3] input gives y [1, 2, 3], which a Gelu(x) node would not)."""
    made = {o for m in members for o in m.output}
    rank = len(g.b.shapes[x]) if x in g.b.shapes else 0
    consts = [i for m in members for i in m.input if i and i != x and i not in made]
    values = [g.b.value(c) for c in consts]
    return all(v is not None and v.ndim <= rank for v in values)


_FINDERS = {"Erf": (_erf_gelu, "", "Gelu", "erf GELU"), "Exp": (_logistic, "onnxattr", "Logistic", "logistic")}


def fuse(b, path: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """`path` with each recognised chain replaced by its virtual node (at the chain's end)."""
    if not any(n.op_type in _FINDERS for n in path):
        return path
    g = _Graph(b, b.all_nodes())
    on_path = {id(n) for n in path}
    consumers = {}
    for n in path:
        for i in n.input:
            consumers.setdefault(i, n)
    replace, drop = {}, set()
    for n in path:
        if n.op_type not in _FINDERS or id(n) in drop:
            continue
        finder, domain, op, tag = _FINDERS[n.op_type]
        found = finder(g, n, consumers)
        if found is None or not all(id(m) in on_path and id(m) not in drop for m in found[0]):
            continue
        members, x, y = found
        if not _keeps_shape(g, members, x):
            continue
        drop.update(id(m) for m in members)
        replace[id(members[-1])] = helper.make_node(op, [x], [y], name=f"{members[-1].name or y} ({tag})", domain=domain)
    return [replace.get(id(n), n) for n in path if id(n) not in drop or id(n) in replace]
