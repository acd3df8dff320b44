"""The registry of vector-Jacobian product rules, one per ONNX op type.

A rule is `rule(b, node, gys) -> gxs`, registered under its op type (`domain:type` outside the
default domain, see rule_key): `b` is the graph Builder, `gys` the gradient names of
the node's outputs (None where an output has none), and `gxs` the gradient names of its inputs,
aligned with `node.input` (None where an input has no gradient or needs none: `b.needs(name)`).
"""

from __future__ import annotations

from typing import Callable

from ..errors import UnsupportedModelError
from ..protos import describe

RULES: dict[str, Callable] = {}

# Ops whose outputs carry no gradient: integer/bool results, or piecewise-constant floats, or
# floats that depend on their inputs' shapes only. (Range and OneHot are not here: a float start,
# delta or `values` computed from the input makes them linear in it, so they must be refused.)
NON_DIFFERENTIABLE = {
    "Shape", "Size", "Constant", "ConstantOfShape", "ArgMax", "ArgMin", "NonZero",
    "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "Xor",
    "IsNaN", "IsInf", "Floor", "Ceil", "Round", "Sign", "EyeLike", "Hardmax",
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
    "Bernoulli", "BitShift", "StringNormalizer", "NonMaxSuppression",
    "HannWindow", "HammingWindow", "BlackmanWindow",  # their one input is an integer size
}


def register(*op_types: str):
    """Decorator: register one rule for the given op types."""

    def wrap(fn):
        for op in op_types:
            if op in RULES:
                raise ValueError(f"two gradient rules for {op}")
            RULES[op] = fn
        return fn

    return wrap


def lookup(op_type: str):
    return RULES.get(op_type)


def refuse(node, why: str):
    """What a rule raises for a form of its op it does not differentiate: names the node."""
    raise UnsupportedModelError(f"{describe(node)}: {why}")


def only_known(node, names: set) -> None:
    """Refuse a node carrying an attribute its rule does not read (a later opset's addition, such
    as Attention-25's sliding window, would otherwise be silently ignored)."""
    unknown = sorted(a.name for a in node.attribute if a.name not in names)
    if unknown:
        refuse(node, f"its attribute {', '.join(repr(u) for u in unknown)} is not supported")


def rule_key(node) -> str:
    """How RULES names a node's op: its type in the default domain, 'domain:type' in another
    (ai.onnx.ml's rules; a custom domain's op of a default op's name gets no default rule)."""
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}"


# (fill RULES)
from . import activation, attention, branch, elementwise, linear, loop, ml, norm, pool, recurrent, reduce, resize  # noqa: E402,F401
from . import sample, scan, spectral  # noqa: E402,F401
from . import scatter, shape  # noqa: E402,F401
