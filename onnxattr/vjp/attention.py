"""The attention ops of opset 23: Attention and RotaryEmbedding (RMSNormalization is in norm.py).

PyTorch's exporter writes `scaled_dot_product_attention` as one Attention node from opset 23.
Its gradient needs the attention probabilities P = softmax(scale * Q K^T + masks): the forward
node also returns them (its qk_matmul_output in mode 3), so whatever it masks (attn_mask, causal,
a sliding window, padding, rows masked whole) the backward reads as the forward applied it. With
dY the output's gradient (heads split off where Q, K, V come as [batch, sequence, heads x size]):
  dV = P^T dY,  dS = P * (dP - rowsum(dP * P)) with dP = dY V^T,  dQ = scale dS K,  dK = scale dS^T Q.
Grouped-query attention (fewer key/value heads than query heads, each repeated for a group of
query heads) is computed per key/value head: the group's query rows are stacked, so dK and dV
sum over the group in the products themselves.

RotaryEmbedding rotates pairs of features by position-dependent angles: its adjoint is the
rotation by the opposite angles, the same op with the sine cache negated.

Refused, naming the node: softcap, a key/value cache (past_key, past_value), gradients through
the present_key, present_value or qk_matmul_output outputs, an attention mask or rotary caches
that depend on the input being explained.
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from ..protos import attrs
from . import refuse, register


def _probabilities(b, node) -> str:
    """The forward node's attention probabilities: its qk_matmul_output in mode 3, requested
    once (should a node be differentiated twice)."""
    known = b.__dict__.setdefault("_attention_probabilities", {})
    if id(node) not in known:
        outs = list(node.output) + [""] * (4 - len(node.output))
        if not outs[3]:
            outs[3] = b.fresh("attention_probabilities")
            del node.output[:]
            node.output.extend(outs)
            kept = [a for a in node.attribute if a.name != "qk_matmul_output_mode"]
            del node.attribute[:]
            node.attribute.extend(kept + [helper.make_attribute("qk_matmul_output_mode", 3)])
            b.types[outs[3]] = b.dtype
        known[id(node)] = outs[3]
    return known[id(node)]


def _heads(b, x: str, heads: int) -> str:
    """[batch, sequence, heads x size] -> [batch, heads, sequence, size]."""
    return b.op("Transpose", [b.op("Reshape", [x, b.ints([0, 0, heads, -1])])], perm=[0, 2, 1, 3])


def _merged(b, x: str) -> str:
    """[batch, heads, sequence, size] -> [batch, sequence, heads x size]."""
    return b.op("Reshape", [b.op("Transpose", [x], perm=[0, 2, 1, 3]), b.ints([0, 0, -1])])


def _head_counts(b, node, q: str, k: str, a: dict, three_d: bool) -> tuple[int | None, int | None]:
    """(query heads, key/value heads), None for both where they are provably equal but unknown."""
    if three_d:
        return a["q_num_heads"], a["kv_num_heads"]
    hq, hk = (b.shapes.get(q) or [None] * 4)[1], (b.shapes.get(k) or [None] * 4)[1]
    if hq is not None and hk is not None:
        return hq, hk
    if b.same_dim(q, 1, k, 1):
        return None, None
    refuse(node, "the numbers of query and key/value heads are unknown before the run")


def _scale(b, q: str, q4: str, a: dict, heads: int | None, three_d: bool) -> str:
    """The scale of Q K^T: the attribute, else 1 / sqrt(the query head size), known before the
    run where Q's shape is, else read from it."""
    if a.get("scale") is not None:
        return b.scalar(a["scale"])
    shape = b.shapes.get(q) or [None] * 4
    size = (shape[2] // heads if shape[2] is not None else None) if three_d else shape[3]
    if size is not None:
        return b.scalar(1.0 / np.sqrt(size))
    size = b.op("Cast", [b.op("Gather", [b.shape_of(q4), b.const(np.int64(3), dtype=np.int64)])], to=b.dtype)
    return b.op("Div", [b.scalar(1.0), b.op("Sqrt", [size])])


@register("Attention")
def attention(b, node, gys):
    a = attrs(node)
    q, k, v, mask, past_key, past_value = (list(node.input) + [""] * 6)[:6]
    if any(g is not None for g in gys[1:]):
        refuse(node, "gradients through its present_key, present_value or qk_matmul_output outputs are not supported")
    if past_key or past_value:
        refuse(node, "a key/value cache (past_key, past_value) is not supported")
    if a.get("softcap"):
        refuse(node, f"softcap ({a['softcap']}) is not supported")
    if mask and b.needs(mask) and b.is_float(mask):
        refuse(node, f"its attention mask '{mask}' depends on the input being explained")
    if len(node.output) > 3 and node.output[3] and a.get("qk_matmul_output_mode", 0) != 3:
        refuse(node, "its qk_matmul_output output is used in a mode other than 3 (the probabilities the backward needs)")
    p = _probabilities(b, node)
    three_d = b.rank(q, node) == 3
    hq, hk = _head_counts(b, node, q, k, a, three_d)
    q4, k4, v4, g4 = ((_heads(b, q, hq), _heads(b, k, hk), _heads(b, v, hk), _heads(b, gys[0], hq)) if three_d
                      else (q, k, v, gys[0]))
    scale = _scale(b, q, q4, a, hq, three_d)
    if hq is not None and hq != hk:  # each key/value head with its group's query rows stacked: [batch, kv heads, group x sequence, *]
        stack = b.ints([0, hk, -1, 0])
        q4, g4, p = (b.op("Reshape", [t, stack]) for t in (q4, g4, p))
    dp = b.op("MatMul", [g4, b.op("Transpose", [v4], perm=[0, 1, 3, 2])])
    ds = b.op("Mul", [p, b.op("Sub", [dp, b.reduce("ReduceSum", b.op("Mul", [dp, p]), [3])])])
    ds = b.op("Mul", [ds, scale])
    gq = b.op("MatMul", [ds, k4]) if b.needs(q) else None
    if gq is not None and hq is not None and hq != hk:
        gq = b.op("Reshape", [gq, b.ints([0, hq, -1, 0])])
    gk = b.op("MatMul", [b.op("Transpose", [ds], perm=[0, 1, 3, 2]), q4]) if b.needs(k) else None
    gv = b.op("MatMul", [b.op("Transpose", [p], perm=[0, 1, 3, 2]), g4]) if b.needs(v) else None
    out = [_merged(b, g) if three_d and g is not None else g for g in (gq, gk, gv)]
    return out + [None] * (len(node.input) - 3)


@register("RotaryEmbedding")
def rotary_embedding(b, node, gys):
    x, cos, sin = node.input[:3]
    for t in (cos, sin):
        if b.needs(t) and b.is_float(t):
            refuse(node, f"its cache '{t}' depends on the input being explained")
    gx = b.op_like(node, [gys[0], cos, b.op("Neg", [sin])] + list(node.input[3:]), 1)[0]
    return [gx] + [None] * (len(node.input) - 1)
