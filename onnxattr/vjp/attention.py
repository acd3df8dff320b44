"""The attention ops of opset 23: Attention and RotaryEmbedding (RMSNormalization is in norm.py).

PyTorch's exporter writes `scaled_dot_product_attention` as one Attention node from opset 23.
Its gradient needs the attention probabilities P = softmax(scale * Q K^T + masks). The backward
recomputes them from Q and K with standard ops (the boolean or float mask, padded to the keys'
length, the causal triangle, opset 25's sliding window, a row masked whole giving zeros, as the
spec says): ONNX Runtime's CUDA kernel of Attention-23
cannot return them (it gives qk_matmul_output in mode 0 only), so a graph reading them from the
forward node would not run there; and the forward keeps Q and K instead of P, less memory. With
opset 24's per-row key lengths the forward node returns them instead (its qk_matmul_output in
mode 3). With dY the
output's gradient (heads split off where Q, K, V come as [batch, sequence, heads x size]):
  dV = P^T dY,  dS = P * (dP - rowsum(dP * P)) with dP = dY V^T,  dQ = scale dS K,  dK = scale dS^T Q.
Grouped-query attention (fewer key/value heads than query heads, each repeated for a group of
query heads) is computed per key/value head: the group's query rows are stacked, so dK and dV
sum over the group in the products themselves.

RotaryEmbedding rotates pairs of features by position-dependent angles: its adjoint is the
rotation by the opposite angles, the same op with the sine cache negated.

A float mask that depends on the input being explained gets the scores' gradient, summed where
it broadcasts. Refused, naming the node: a key/value cache (past_key, past_value), gradients
through the present_key, present_value or qk_matmul_output outputs, rotary caches that depend
on the input being explained; with per-row key lengths, softcap or a qk_matmul_output used in
another mode.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ..protos import attrs
from . import only_known, refuse, register


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


def _rebuildable(node) -> bool:
    """Whether the backward can rebuild the forward's masking with standard ops: all but opset
    24's per-row key lengths."""
    return not (len(node.input) > 6 and node.input[6])


def _key_axis(b, node) -> int:
    """The keys' sequence axis of K: 2 in [batch, heads, keys, size], 1 in [batch, keys, hidden]."""
    return 2 if b.rank(node.input[1], node) == 4 else 1


def _short(b, node, mask: str) -> bool:
    """Whether a mask may be shorter than the keys (ONNX pads it with False or -inf)."""
    return not b.same_dim(mask, b.rank(mask, node) - 1, node.input[1], _key_axis(b, node))


def _mask_length(b, node, mask: str) -> str:
    rank = b.rank(mask, node)
    return b.slice(b.shape_of(mask), [rank - 1], [rank], [0])


def _padded_mask(b, node, mask: str, k4: str) -> str:
    """The mask as long as the keys: a shorter one is padded with False (boolean) or -inf."""
    if not _short(b, node, mask):
        return mask
    short = b.op("Sub", [b.slice(b.shape_of(k4), [2], [3], [0]), _mask_length(b, node, mask)])
    pads = b.op("Concat", [b.ints([0] * (2 * b.rank(mask, node) - 1)), short], axis=0)
    fill = (b.const(np.array(False), dtype=np.bool_) if b.types.get(mask) == TensorProto.BOOL
            else b.scalar(-np.inf))
    return b.op("Pad", [mask, pads, fill])


def _recomputed(b, node, q4: str, k4: str, scale: str, mask: str, group: tuple | None) -> tuple[str, str | None]:
    """P = softmax(scale * Q K^T + bias) from Q and K ([batch, heads, sequence, size]; with
    `group` (query heads, key/value heads), Q's rows stacked per key/value head, P then stacked
    the same way). The bias as the spec builds it: a boolean mask's False, the causal triangle's
    upper part (key j after query i) and keys outside the sliding window -inf, a float mask
    added; a row with every key masked gives zeros. Also tanh(scores / softcap) with softcap."""
    a = attrs(node)
    scores = b.op("Mul", [b.op("MatMul", [q4, b.op("Transpose", [k4], perm=[0, 1, 3, 2])]), scale])
    cap, capped = a.get("softcap"), None
    if cap:  # softcap * tanh(scores / softcap), before the masks
        capped = b.op("Tanh", [b.op("Mul", [scores, b.scalar(1.0 / cap)])])
        scores = b.op("Mul", [capped, b.scalar(cap)])
    if group is not None:
        scores = b.op("Reshape", [scores, b.ints([0, group[0], -1, 0])])
    minus_inf, zero = b.scalar(-np.inf), b.scalar(0.0)
    bias = None
    if mask:
        full = _padded_mask(b, node, mask, k4)
        bias = b.op("Where", [full, zero, minus_inf]) if b.types.get(mask) == TensorProto.BOOL else full
    left, right = a.get("left_window_size", -1), a.get("right_window_size", -1)
    bands = [(0, 0)] if a.get("is_causal") else []  # Trilu's (upper, k): key j - query i >= k, or <= k
    bands += ([(1, -left)] if left >= 0 else []) + ([(0, right)] if right >= 0 else [])  # opset 25's window
    if bands:
        lengths = b.slice(b.shape_of(scores), [2], [4], [0])  # [queries, keys]
        ones = b.op("ConstantOfShape", [lengths], value=numpy_helper.from_array(np.ones(1, np.bool_)))
        allowed = None
        for upper, k in bands:
            band = b.op("Trilu", [ones] + ([b.const(np.int64(k), dtype=np.int64)] if k else []), upper=upper)
            allowed = band if allowed is None else b.op("And", [allowed, band])
        banded = b.op("Where", [allowed, zero, minus_inf])
        bias = banded if bias is None else b.op("Add", [bias, banded])
    if bias is not None:
        scores = b.op("Add", [scores, bias])
    p = b.op("Softmax", [scores], axis=-1)
    if mask or left >= 0 or right >= 0:  # a row masked whole: 0 / 0 in the Softmax, zeros in the spec
        p = b.op("Where", [b.op("IsNaN", [p]), zero, p])
    return (b.op("Reshape", [p, b.ints([0, group[1], -1, 0])]) if group is not None else p), capped


def _mask_gradient(b, node, ds: str, heads: int | None, grouped: bool) -> str:
    """The gradient of a float mask, added to the scores: the scores' gradient `ds` ([batch,
    heads, queries, keys]; stacked per key/value head where `grouped`) summed over the axes the
    mask broadcasts along, and cut to its length where it was shorter than the keys."""
    q, k, mask = node.input[0], node.input[1], node.input[3]
    if grouped:
        ds = b.op("Reshape", [ds, b.ints([0, heads, -1, 0])])
    seq = _key_axis(b, node)
    sq, sk = b.shapes.get(q), b.shapes.get(k)
    full = [None] * 4
    if sq is not None and sk is not None:
        full = [sq[0], heads if heads is not None else (sq[1] if seq == 2 else None), sq[seq], sk[seq]]
    if _short(b, node, mask):  # the first keys' gradient
        ds = b.op("Slice", [ds, b.ints([0]), _mask_length(b, node, mask), b.ints([3])])
        full[3] = (b.shapes.get(mask) or [None])[-1]
    b.shapes[ds] = full
    return b.unbroadcast(ds, mask, ds, node)


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
    only_known(node, {"is_causal", "kv_num_heads", "q_num_heads", "qk_matmul_output_mode", "scale", "softcap",
                      "softmax_precision", "left_window_size", "right_window_size"})
    if len(node.input) > 7 and any(node.input[7:]):
        refuse(node, f"its inputs after the eighth ({', '.join(i for i in node.input[7:] if i)}) are not supported")
    a = attrs(node)
    q, k, v, mask, past_key, past_value = (list(node.input) + [""] * 6)[:6]
    if any(g is not None for g in gys[1:]):
        refuse(node, "gradients through its present_key, present_value or qk_matmul_output outputs are not supported")
    if past_key or past_value:
        refuse(node, "a key/value cache (past_key, past_value) is not supported")
    if a.get("softcap") and not _rebuildable(node):
        refuse(node, f"softcap ({a['softcap']}) with per-row key lengths (nonpad_kv_seqlen) is not supported")
    three_d = b.rank(q, node) == 3
    hq, hk = _head_counts(b, node, q, k, a, three_d)
    q4, k4, v4, g4 = ((_heads(b, q, hq), _heads(b, k, hk), _heads(b, v, hk), _heads(b, gys[0], hq)) if three_d
                      else (q, k, v, gys[0]))
    scale = _scale(b, q, q4, a, hq, three_d)
    grouped = hq is not None and hq != hk
    if grouped:  # each key/value head with its group's query rows stacked: [batch, kv heads, group x sequence, *]
        stack = b.ints([0, hk, -1, 0])
        q4, g4 = (b.op("Reshape", [t, stack]) for t in (q4, g4))
    if _rebuildable(node):
        p, capped = _recomputed(b, node, q4, k4, scale, mask, (hq, hk) if grouped else None)
    else:
        if len(node.output) > 3 and node.output[3] and a.get("qk_matmul_output_mode", 0) != 3:
            refuse(node, "with per-row key lengths (nonpad_kv_seqlen) the backward needs the probabilities from its "
                         "qk_matmul_output, which the model uses in another mode")
        p, capped = _probabilities(b, node), None
        p = b.op("Reshape", [p, stack]) if grouped else p
    dp = b.op("MatMul", [g4, b.op("Transpose", [v4], perm=[0, 1, 3, 2])])
    ds = b.op("Mul", [p, b.op("Sub", [dp, b.reduce("ReduceSum", b.op("Mul", [dp, p]), [3])])])
    gmask = _mask_gradient(b, node, ds, hq, grouped) if mask and b.needs(mask) and b.is_float(mask) else None
    if capped is not None:  # through softcap * tanh(s / softcap): 1 - tanh^2
        ds = b.op("Mul", [ds, b.op("Sub", [b.scalar(1.0), b.op("Mul", [capped, capped])])])
    ds = b.op("Mul", [ds, scale])
    gq = b.op("MatMul", [ds, k4]) if b.needs(q) else None
    if gq is not None and grouped:
        gq = b.op("Reshape", [gq, b.ints([0, hq, -1, 0])])
    gk = b.op("MatMul", [b.op("Transpose", [ds], perm=[0, 1, 3, 2]), q4]) if b.needs(k) else None
    gv = b.op("MatMul", [b.op("Transpose", [p], perm=[0, 1, 3, 2]), g4]) if b.needs(v) else None
    out = [_merged(b, g) if three_d and g is not None else g for g in (gq, gk, gv)] + [gmask]
    return out[:len(node.input)] + [None] * (len(node.input) - len(out))


@register("RotaryEmbedding")
def rotary_embedding(b, node, gys):
    only_known(node, {"interleaved", "num_heads", "rotary_embedding_dim"})
    x, cos, sin = node.input[:3]
    for t in (cos, sin):
        if b.needs(t) and b.is_float(t):
            refuse(node, f"its cache '{t}' depends on the input being explained")
    gx = b.op_like(node, [gys[0], cos, b.op("Neg", [sin])] + list(node.input[3:]), 1)[0]
    return [gx] + [None] * (len(node.input) - 1)
