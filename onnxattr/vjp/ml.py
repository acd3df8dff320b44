"""ai.onnx.ml: the linear classifier and the transforms scikit-learn's converter (skl2onnx) writes
for LogisticRegression, its pipelines' StandardScaler, and probability normalisation.

Their parameters are attributes (lists of floats), not tensors: the rules put the coefficients
into one constant each. Semantics are ONNX Runtime's, checked against it in tests/test_ml.py:
* LinearClassifier: s = X W^T + b (W: E x F), then post_transform: NONE, LOGISTIC (sigmoid per
  score) or SOFTMAX (per row). With one row of coefficients and two class labels (a binary
  model) the scores are [1 - f(s), f(s)] (f the sigmoid for LOGISTIC, the identity for NONE;
  ONNX's reference evaluator writes [-s, s] for NONE: the same gradient). Refused: PROBIT,
  SOFTMAX_ZERO, and a binary SOFTMAX (where ONNX Runtime and the reference disagree).
* Normalizer: L1 (x / sum |x| per row) and L2 (x / sqrt(sum x^2)); MAX refused (ONNX Runtime
  divides by the largest value, the reference by the largest magnitude).
* Scaler: (x - offset) * scale, per feature or for all.
* ArrayFeatureExtractor: x[..., indices], as a Gather along the last axis.
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from ..protos import attrs
from ..shapes import classifier_rows
from . import lookup, refuse, register
from .norm import lp_normalize_vjp


def _rows(b, node, x: str) -> None:
    """Refuse an input known not to be [N, features] (ONNX infers no shape past a Scaler)."""
    if b.shape(x) is not None and len(b.shape(x)) != 2:
        refuse(node, f"input '{x}' of rank {len(b.shape(x))}: only [N, features] inputs are supported")


@register("ai.onnx.ml:LinearClassifier")
def linear_classifier(b, node, gys):
    a = attrs(node)
    x, z, gz = node.input[0], node.output[1], gys[1]
    _rows(b, node, x)
    coef = np.asarray(a["coefficients"], dtype=np.float64)
    post = a.get("post_transform", "NONE")
    rows, binary = classifier_rows(a, (b.shape(x) or [None, None])[-1])
    if not rows or coef.size % rows:
        refuse(node, f"{coef.size} coefficients do not split into {rows} rows (one per intercept)")
    w = coef.reshape(rows, -1)
    if post in ("PROBIT", "SOFTMAX_ZERO") or (binary and post != "NONE" and post != "LOGISTIC"):
        refuse(node, f"post_transform {post}{' with one row of coefficients' if binary else ''} is not supported")
    if gz is None:
        return [None]
    if binary:  # z = [1 - f(s), f(s)]: ds = (g1 - g0) f'(s)
        g = b.op("Sub", [b.op("Gather", [gz, b.ints([1])], axis=1), b.op("Gather", [gz, b.ints([0])], axis=1)])
        if post == "LOGISTIC":
            p = b.op("Gather", [z, b.ints([1])], axis=1)
            g = b.op("Mul", [g, b.op("Mul", [p, b.op("Sub", [b.scalar(1.0), p])])])
    elif post == "LOGISTIC":
        g = b.op("Mul", [gz, b.op("Mul", [z, b.op("Sub", [b.scalar(1.0), z])])])
    elif post == "SOFTMAX":
        g = b.op("Mul", [z, b.op("Sub", [gz, b.reduce("ReduceSum", b.op("Mul", [gz, z]), [1], keepdims=1)])])
    else:
        g = gz
    return [b.op("MatMul", [g, b.const(w.astype(b.np_dtype))])]


@register("ai.onnx.ml:Normalizer")
def normalizer(b, node, gys):
    norm = attrs(node).get("norm", "MAX")
    x, y, g = node.input[0], node.output[0], gys[0]
    _rows(b, node, x)
    if norm not in ("L1", "L2"):
        refuse(node, f"norm {norm} is not supported (L1 and L2 are)")
    return [lp_normalize_vjp(b, g, x, y, 1, 1 if norm == "L1" else 2)]


@register("ai.onnx.ml:Scaler")
def scaler(b, node, gys):
    scale = np.asarray(attrs(node).get("scale", [1.0]), dtype=b.np_dtype)
    x = node.input[0]
    if scale.size > 1 and b.shape(x) is not None and len(b.shape(x)) > 2:
        # ONNX Runtime scales flat element i by scale[i % dims[1]]: not one axis of a higher rank
        refuse(node, f"input '{x}' of rank {len(b.shape(x))} with per-feature scales: only [N, features] inputs are "
                     "supported")
    return [b.op("Mul", [gys[0], b.const(scale if scale.size > 1 else scale.reshape(()))])]


@register("ai.onnx.ml:ArrayFeatureExtractor")
def array_feature_extractor(b, node, gys):
    """x[..., indices] (skl2onnx picks a binary LinearSVC's positive score so, at a scalar index:
    the last axis then keeps length 1): Gather's rule along the last axis, indices made 1-D."""
    x, idx = node.input[:2]
    rank, known = b.rank(x, node), b.value(idx)
    if rank < 2 or b.rank(idx, node) > 1:
        refuse(node, f"input of rank {rank} or indices of rank {b.rank(idx, node)}: only rank >= 2 and indices of rank "
                      "0 or 1 are supported")
    flat = b.ints(known.reshape(-1)) if known is not None else b.op("Reshape", [idx, b.ints([-1])])
    gather = helper.make_node("Gather", [x, flat], list(node.output), name=node.name, axis=rank - 1)
    return [lookup("Gather")(b, gather, gys)[0], None]
