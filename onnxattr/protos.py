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
