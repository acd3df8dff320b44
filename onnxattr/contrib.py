"""ONNX Runtime's fused ops (domain com.microsoft), as its graph optimiser saves them, written back
as the standard ops they fuse.

A model saved after ONNX Runtime's optimisation (`SessionOptions.optimized_model_filepath` at
ORT_ENABLE_EXTENDED, or `onnxruntime.transformers.optimizer`) has nodes such as FusedConv (Conv +
Relu) and BiasGelu (Add + Gelu). Each supported one is replaced, in the model being rewritten (never
the caller's), by the standard ops at the model's opset that compute it (its definition in ONNX
Runtime's docs/ContribOperators.md and CPU kernels), so every node has a rule: a Relu inside a
FusedConv is a Relu node again, and gets deconvnet's or guided backprop's rule. GELU below opset 20
is written as TorchScript writes it, x * (1 + erf(x / sqrt 2)) * 0.5, which patterns.py
differentiates as one Gelu. ONNX Runtime fuses the forward again when it loads the exported model.
An attribute or output these forms do not cover is refused by name; other com.microsoft ops stay
as they are (refused on the differentiable path, as any op of a custom domain).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import UnsupportedModelError
from .functions import _names, _Types
from .protos import FLOAT_TYPES, attrs, default_opset, describe

MS = "com.microsoft"
# FusedConv's activation (ONNX Runtime's fused_activation.cc), or FusedGemm's (its activation_alpha,
# activation_beta): op, and the parameters it takes, in order.
_ACTIVATIONS = {"Relu": (), "Tanh": (), "Sigmoid": (), "LeakyRelu": ("alpha",), "HardSigmoid": ("alpha", "beta"),
                "Clip": ("min", "max")}


# Attribute defaults of ONNX Runtime's schemas, which are float32 values.
_F32_1702, _F32_1E12, _F32_1E5 = (float(np.float32(v)) for v in (1.702, 1e-12, 1e-5))


class _Later(Exception):
    """A node's form needs a rank that shape inference gives only once the ops before it are standard."""


def expand_contrib(model: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """Replace, in place, each supported com.microsoft node of the top-level graph (and ONNX
    Runtime's default-domain LayerNormalization below opset 17 and SimplifiedLayerNormalization)
    by standard ops. Returns {added node's name: (the op type and name of the node it came from)}."""
    opset = default_opset(model)
    expanded: dict[str, tuple[str, str]] = {}
    float_type = next((t for t in [i.type.tensor_type.elem_type for i in model.graph.input] +
                       [i.data_type for i in model.graph.initializer] if t in FLOAT_TYPES), TensorProto.FLOAT)
    for k in range(8):  # (a rank or type needed behind another fused node is known a round later)
        last = k == 7
        if not any(_form(n, opset) for n in model.graph.node):
            break
        types, used, nodes = _Types(model), _names(model.graph), []
        read = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        for node in model.graph.node:
            form = _form(node, opset)
            if form is None:
                nodes.append(node)
                continue
            e = _Emitter(node, opset, types, used, read, last, float_type)
            try:
                form(e, node, attrs(node))
            except _Later:
                nodes.append(node)
                continue
            for m in e.nodes:
                expanded[m.name] = (node.op_type, node.name or node.output[0])
                nodes.append(m)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return expanded


class _Emitter:
    """Writes one node's replacement: fresh names from its label, typed scalar constants."""

    def __init__(self, node, opset, types, used, read, last, float_type):
        self.node, self.opset, self.types, self.used, self.read, self.last = node, opset, types, used, read, last
        self.float = float_type
        self.nodes: list[onnx.NodeProto] = []

    def fresh(self, hint: str) -> str:
        label = self.node.name or self.node.output[0]
        name, k = f"{label}/{hint}", 1
        while name in self.used:
            name, k = f"{label}/{hint}_{k}", k + 1
        self.used.add(name)
        return name

    def op(self, op_type, inputs, out=None, **kw) -> str:
        out = out or self.fresh(f"{op_type}_output")
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=self.fresh(op_type), **kw))
        return out

    def const(self, value: float) -> str:
        """A scalar of the node's float type: that of its first input whose type is known, else the
        model's (behind another fused node, whose outputs shape inference cannot type; a model with
        two float types on the differentiable path is refused anyway)."""
        known = [t.tensor_type.elem_type for t in map(self.types.get, filter(None, self.node.input))
                 if t is not None and t.HasField("tensor_type") and t.tensor_type.elem_type]
        t = numpy_helper.from_array(np.array(value, helper.tensor_dtype_to_np_dtype((known or [self.float])[0])), "")
        return self.op("Constant", [], value=t)

    def unknown(self, why: str):
        if not self.last:
            raise _Later
        self.refuse(f"{why}, and its standard form needs it")

    def ints(self, values) -> str:
        return self.op("Constant", [], value=numpy_helper.from_array(np.array(values, np.int64), ""))

    def rank(self, name: str) -> int:
        t = self.types.get(name)
        if t is None or not t.tensor_type.HasField("shape"):
            self.unknown(f"the rank of '{name}' is unknown")
        return len(t.tensor_type.shape.dim)

    def reduce_mean(self, x: str, axes: list[int]) -> str:
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.ints(axes)])
        return self.op("ReduceMean", [x], axes=axes)

    def refuse(self, why: str):
        raise UnsupportedModelError(f"{describe(self.node)} (domain '{self.node.domain or 'ai.onnx'}'): {why}")


def _input(node, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _output(e: _Emitter, i: int) -> str:
    return e.node.output[i] if len(e.node.output) > i else ""


def _only(e: _Emitter, a: dict, known: set[str]) -> None:
    unknown = sorted(set(a) - known)
    if unknown:
        e.refuse(f"attribute {', '.join(map(repr, unknown))} is not supported")


def _activation(e: _Emitter, kind: str, params: list[float], x: str, y: str, kinds=tuple(_ACTIVATIONS)) -> str:
    """`kind` (with its parameters) applied to x, written to y."""
    if kind not in kinds:
        e.refuse(f"activation '{kind}' is not supported (supported: {', '.join(kinds)})")
    names = _ACTIVATIONS[kind]
    if len(params) != len(names):
        e.refuse(f"activation '{kind}' takes {len(names)} parameter(s), the node gives {len(params)}")
    if kind == "Clip":
        if e.opset < 11:
            return e.op("Clip", [x], y, min=params[0], max=params[1])
        return e.op("Clip", [x, e.const(params[0]), e.const(params[1])], y)
    return e.op(kind, [x], y, **dict(zip(names, params)))


def _fused_conv(e, node, a):
    # Y = activation(Conv(X, W, B) + Z)
    _only(e, a, {"activation", "activation_params", "auto_pad", "dilations", "group", "kernel_shape", "pads",
                 "strides"})
    kind, params = a.pop("activation", None), list(a.pop("activation_params", []))
    z, y = _input(node, 3), node.output[0]
    last = kind is None and not z
    c = e.op("Conv", [i for i in node.input[:3]], y if last else None, **a)
    if z:
        c = e.op("Add", [c, z], y if kind is None else None)
    if kind is not None:
        _activation(e, kind, params, c, y)


def _fused_gemm(e, node, a):
    # Y = activation(alpha A' B' + beta C)
    _only(e, a, {"activation", "activation_alpha", "activation_beta", "alpha", "beta", "transA", "transB"})
    kind = a.pop("activation", None)
    params = [a.pop(k) for k in ("activation_alpha", "activation_beta") if k in a]
    y = node.output[0]
    g = e.op("Gemm", list(node.input), y if kind is None else None, **a)
    if kind is not None:
        _activation(e, kind, params, g, y, ("Relu", "Tanh", "Sigmoid", "LeakyRelu", "HardSigmoid"))


def _gelu(e: _Emitter, x: str, y: str, tanh: bool = False) -> str:
    if e.opset >= 20:
        return e.op("Gelu", [x], y, approximate="tanh" if tanh else "none")
    if tanh:  # x * 0.5 * (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
        cube = e.op("Mul", [e.op("Mul", [x, x]), x])
        inner = e.op("Mul", [e.op("Add", [x, e.op("Mul", [cube, e.const(0.044715)])]), e.const(math.sqrt(2 / math.pi))])
        return e.op("Mul", [e.op("Mul", [x, e.const(0.5)]), e.op("Add", [e.op("Tanh", [inner]), e.const(1.0)])], y)
    # TorchScript's form, fused back into one Gelu by patterns.py: ((x * (1 + erf(x / sqrt 2))) * 0.5)
    erf = e.op("Erf", [e.op("Div", [x, e.const(math.sqrt(2.0))])])
    return e.op("Mul", [e.op("Mul", [x, e.op("Add", [erf, e.const(1.0)])]), e.const(0.5)], y)


def _plus(e: _Emitter, x: str, *others: str) -> str:
    for o in others:
        if o:
            x = e.op("Add", [x, o])
    return x


def _ms_gelu(e, node, a):
    _only(e, a, set())
    _gelu(e, node.input[0], node.output[0])


def _bias_gelu(e, node, a):
    _only(e, a, set())
    _gelu(e, _plus(e, node.input[0], node.input[1]), node.output[0])


def _fast_gelu(e, node, a):
    _only(e, a, set())
    _gelu(e, _plus(e, node.input[0], _input(node, 1)), node.output[0], tanh=True)


def _quick_gelu(e, node, a):
    # x * sigmoid(alpha x)
    _only(e, a, {"alpha"})
    x = node.input[0]
    e.op("Mul", [x, e.op("Sigmoid", [e.op("Mul", [x, e.const(a.get("alpha", _F32_1702))])])], node.output[0])


def _fused_matmul(e, node, a):
    # alpha * op(A) op(B): transA / transB swap the last two axes; transBatchA / B move axis 0 to just
    # before the matrix axes (ONNX Runtime's FusedMatMul shape inference); a vector is left as it is.
    _only(e, a, {"alpha", "transA", "transB", "transBatchA", "transBatchB"})
    ins = []
    for t, trans, batch in ((node.input[0], a.get("transA", 0), a.get("transBatchA", 0)),
                            (node.input[1], a.get("transB", 0), a.get("transBatchB", 0))):
        if trans or batch:
            r = e.rank(t)
            if r >= 2:
                rows, cols = (0, r - 1) if batch else (r - 2, r - 1)
                perm = [i for i in range(r) if i not in (rows, cols)] + ([cols, rows] if trans else [rows, cols])
                if perm != list(range(r)):
                    t = e.op("Transpose", [t], perm=perm)
        ins.append(t)
    alpha = a.get("alpha", 1.0)
    y = e.op("MatMul", ins, node.output[0] if alpha == 1.0 else None)
    if alpha != 1.0:
        e.op("Mul", [y, e.const(alpha)], node.output[0])


def _unused_statistics(e: _Emitter, outputs: list[int]) -> None:
    """Refuse a saved mean / inverse standard deviation output that something reads."""
    for i in outputs:
        name = _output(e, i)
        if name and name in e.read:
            e.refuse(f"its output {i} ('{name}', a saved statistic) is read; only its normalised output is supported")


def _axes_from(e: _Emitter, x: str, axis: int) -> list[int]:
    """The axes [axis, rank) a normalisation reduces over ([-1] needs no rank)."""
    return list(range(axis % e.rank(x), e.rank(x))) if axis != -1 else [-1]


def _layer_norm(e: _Emitter, x: str, scale: str, bias: str, y: str, axis: int, eps: float) -> None:
    if e.opset >= 17:
        e.op("LayerNormalization", [x, scale] + ([bias] if bias else []), y, axis=axis, epsilon=eps)
        return
    axes = _axes_from(e, x, axis)
    d = e.op("Sub", [x, e.reduce_mean(x, axes)])
    var = e.reduce_mean(e.op("Mul", [d, d]), axes)
    xhat = e.op("Div", [d, e.op("Sqrt", [e.op("Add", [var, e.const(eps)])])])
    if bias:
        e.op("Add", [e.op("Mul", [xhat, scale]), bias], y)
    else:
        e.op("Mul", [xhat, scale], y)


def _rms_norm(e: _Emitter, x: str, scale: str, y: str, axis: int, eps: float) -> None:
    if e.opset >= 23:
        e.op("RMSNormalization", [x, scale], y, axis=axis, epsilon=eps)
        return
    axes = _axes_from(e, x, axis)
    ms = e.reduce_mean(e.op("Mul", [x, x]), axes)
    e.op("Mul", [e.op("Div", [x, e.op("Sqrt", [e.op("Add", [ms, e.const(eps)])])]), scale], y)


def _skip_sum(e: _Emitter, node, bias: str) -> str:
    """input + skip (+ bias), written to output 3 (input_skip_bias_sum) where the node has it."""
    s = e.op("Add", [node.input[0], node.input[1]], None if bias or not _output(e, 3) else _output(e, 3))
    if bias:
        s = e.op("Add", [s, bias], _output(e, 3) or None)
    return s


def _skip_layer_norm(e, node, a):
    # LayerNormalization(input + skip + bias) over the last axis, times gamma plus beta.
    _only(e, a, {"epsilon"})
    _unused_statistics(e, [1, 2])
    s = _skip_sum(e, node, _input(node, 4))
    _layer_norm(e, s, node.input[2], _input(node, 3), node.output[0], -1, a.get("epsilon", _F32_1E12))


def _skip_simplified_layer_norm(e, node, a):
    # (input + skip + bias) / sqrt(mean of its squares over the last axis + epsilon) * gamma
    _only(e, a, {"epsilon"})
    _unused_statistics(e, [1, 2])
    s = _skip_sum(e, node, _input(node, 3))
    _rms_norm(e, s, node.input[2], node.output[0], -1, a.get("epsilon", _F32_1E12))


def _ort_layer_norm(e, node, a):
    # ONNX Runtime's LayerNormalization registered in the default domain below opset 17
    _only(e, a, {"axis", "epsilon", "stash_type"})
    _unused_statistics(e, [1, 2])
    _layer_norm(e, node.input[0], node.input[1], _input(node, 2), node.output[0], a.get("axis", -1),
                a.get("epsilon", _F32_1E5))


def _ort_simplified_layer_norm(e, node, a):
    _only(e, a, {"axis", "epsilon", "stash_type"})
    _unused_statistics(e, [1])
    _rms_norm(e, node.input[0], node.input[1], node.output[0], a.get("axis", -1), a.get("epsilon", _F32_1E5))


_FORMS = {"FusedConv": _fused_conv, "FusedGemm": _fused_gemm, "Gelu": _ms_gelu, "BiasGelu": _bias_gelu,
          "FastGelu": _fast_gelu, "QuickGelu": _quick_gelu, "FusedMatMul": _fused_matmul,
          "SkipLayerNormalization": _skip_layer_norm, "SkipSimplifiedLayerNormalization": _skip_simplified_layer_norm}


def _form(node: onnx.NodeProto, opset: int):
    if node.domain == MS:
        return _FORMS.get(node.op_type)
    if node.domain in ("", "ai.onnx"):
        if node.op_type == "LayerNormalization" and opset < 17:
            return _ort_layer_norm
        if node.op_type == "SimplifiedLayerNormalization":
            return _ort_simplified_layer_norm
    return None
