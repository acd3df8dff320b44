"""Attribution methods as policies: which backward rule each op type gets.

Every op keeps its exact VJP except those a method overrides. The published DeconvNet and
guided-backprop rules are defined for ReLU only; with `relu_like=True` they also apply to the
ReLU-like family (LeakyRelu, PRelu, and Clip with a lower bound of 0, i.e. ReLU6):
  deconvnet: g -> relu(g)                 (the forward mask is ignored)
  guided:    g -> f'(z) * relu(g)         (the exact derivative applied to relu(g))
For Relu itself these are exactly relu(g) and 1[z > 0] * relu(g).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import OptionError
from .vjp import lookup
from .vjp.activation import clip_bounds

RELU_LIKE = ("LeakyRelu", "PRelu", "Clip")


def _relu_of(b, g):
    r = b.op("Relu", [g])
    if g in b.unbounded:
        b.unbounded.add(r)
    return r


def _deconvnet(b, node, gys):
    return [_relu_of(b, gys[0])]


def _guided(b, node, gys):
    return lookup(node.op_type)(b, node, [_relu_of(b, gys[0])])


def _only_relu_like(rule):
    """Apply `rule` to Clip only when it clips below at 0 (ReLU6); other Clips stay exact."""

    def wrapped(b, node, gys):
        if node.op_type == "Clip":
            lo = clip_bounds(b, node)[0]
            value = b.value(lo) if lo is not None else None
            if value is None or not np.all(value == 0):
                return lookup("Clip")(b, node, gys)
        return rule(b, node, gys)

    return wrapped


@dataclass(frozen=True)
class Method:
    """A named map from op type to an overriding backward rule; the rest stay exact."""

    name: str
    overrides: dict[str, Callable] = field(default_factory=dict)

    def rule(self, key: str):
        """The rule for an op by its registry key (vjp.rule_key: the op type in the default domain)."""
        return self.overrides.get(key) or lookup(key)


METHODS = ("saliency", "deconvnet", "guided")


def get_method(name: str, relu_like: bool = False) -> Method:
    """The policy for `name`; `relu_like` extends deconvnet/guided to the ReLU-like family."""
    if name == "saliency":
        return Method(name)
    if name not in ("deconvnet", "guided"):
        raise OptionError(f"unknown method '{name}' (choose from {', '.join(METHODS)})")
    rule = _deconvnet if name == "deconvnet" else _guided
    ops = ("Relu",) + (RELU_LIKE if relu_like else ())
    return Method(name, {op: _only_relu_like(rule) for op in ops})
