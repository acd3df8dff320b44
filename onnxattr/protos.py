"""Small readers of ONNX protos shared by every module: attributes, node names, opset."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from .errors import UnsupportedModelError

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


def attrs(node: onnx.NodeProto) -> dict:
    """A node's attributes as plain Python values (UTF-8 strings decoded; other bytes, such as
    a converter's binary config left on an unknown op, stay bytes)."""
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            try:
                v = v.decode()
            except UnicodeDecodeError:
                pass
        out[a.name] = v
    return out


def constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The value of a Constant node as a tensor, in any of its attribute forms (value,
    value_float(s), value_int(s)); None for sparse or string values."""
    for a in node.attribute:
        if a.name == "value":
            return a.t
        if a.name in ("value_float", "value_int"):
            v = a.f if a.name == "value_float" else a.i
            return helper.make_tensor("", TensorProto.FLOAT if a.name == "value_float" else TensorProto.INT64, [], [v])
        if a.name in ("value_floats", "value_ints"):
            v = list(a.floats) if a.name == "value_floats" else list(a.ints)
            return helper.make_tensor("", TensorProto.FLOAT if a.name == "value_floats" else TensorProto.INT64, [len(v)], v)
    return None


def describe(node: onnx.NodeProto) -> str:
    """How errors name a node: its type and name (or first output when unnamed)."""
    return f"{node.op_type} node '{node.name or node.output[0]}'"


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise UnsupportedModelError("the model imports no version of the default ONNX domain")


def structure_error(g: onnx.GraphProto, outer: frozenset = frozenset()) -> str | None:
    """Why `g` is not a well-formed ONNX graph, or None: a node reads a tensor that no graph
    input, initializer or earlier node (or, in a subgraph, the enclosing scope) defines, or two
    nodes write one tensor. (Graphs are topologically sorted by the spec; ONNX Runtime would not
    load such a model, and the backward would follow the wrong dependencies.)"""
    known = set(outer) | {i.name for i in g.input} | {t.name for t in g.initializer} | \
        {t.values.name for t in g.sparse_initializer}
    written = {}
    for n in g.node:
        for i in n.input:
            if i and i not in known:
                where = "no node, input or initializer writes" if not any(i in m.output for m in g.node) else \
                    "a later node writes (the graph is not topologically sorted)"
                return f"{describe(n)} reads '{i}', which {where}"
        for a in n.attribute:
            for sg in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                why = structure_error(sg, frozenset(known))
                if why:
                    return f"in a subgraph of {describe(n)}: {why}"
        for o in n.output:
            if o and o in written:
                return f"tensor '{o}' is written by two nodes ({describe(written[o])} and {describe(n)})"
            if o:
                written[o] = n
                known.add(o)
    return None


def reads(node: onnx.NodeProto) -> list[str]:
    """The tensors a node reads: its inputs and, for control flow (If, Loop, Scan), the
    outer-scope tensors its subgraphs capture by name."""
    names = list(node.input)
    for a in node.attribute:
        for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            inner = {i.name for i in g.input} | {t.name for t in g.initializer} | {o for n in g.node for o in n.output}
            names.extend(i for n in g.node for i in reads(n) if i and i not in inner)
            names.extend(o.name for o in g.output if o.name not in inner)
    return names


def rename_reads(node: onnx.NodeProto, rename: dict) -> None:
    """`node`, and the graphs nested in it, read the renamed tensors by their new names."""
    ins = [rename.get(i, i) for i in node.input]
    del node.input[:]
    node.input.extend(ins)
    for a in node.attribute:
        for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
            for inner in g.node:
                rename_reads(inner, rename)
            for o in g.output:  # a body output that is an outer tensor, read as is
                o.name = rename.get(o.name, o.name)
