"""Recurrent layers (LSTM, GRU, RNN): backpropagation through time with two Scan nodes.

The recurrent node keeps computing the forward outputs. Its rule adds, per direction:
* the input projection of every step at once, X W^T (+ biases), one MatMul;
* a Scan in the node's direction that recomputes the gates the node does not output (its
  body: H R^T, the gate nonlinearities, the new state), stacking them in time order;
* a Scan in the opposite direction carrying the state gradients (dH, dC), which stacks the
  gradients of the gate pre-activations; the input gradient is then one MatMul by W.
Scans take any sequence length, so a dynamic time axis stays dynamic. The gate derivatives are
read from the gate values (sigmoid' = s (1 - s), tanh' = 1 - t^2, relu' = 1[y > 0]), exact to
float rounding as every other rule. ONNX gate orders: LSTM i, o, f, c; GRU z, r, h; the
peepholes P: i, o, f.

Not supported (refused with the node named): `sequence_lens` (per-row lengths), `clip`,
LSTM `input_forget`, activations other than the defaults (RNN: Tanh, Relu or Sigmoid), and
gradients with respect to the weights.
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from ..errors import UnsupportedModelError
from ..protos import attrs, describe
from . import register

_DEFAULTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_RNN_ACTIVATIONS = ("Tanh", "Relu", "Sigmoid")


class _Body:
    """The nodes of one Scan body; tensor and node names come from the Builder, so they are
    unique in the whole model (a body may read outer tensors: weights, constants)."""

    def __init__(self, b):
        self.b = b
        self.nodes = []
        self.inputs = []

    def input(self, hint: str, width: int) -> str:
        name = self.b.fresh(hint)
        self.inputs.append(helper.make_tensor_value_info(name, self.b.dtype, [None, width]))
        return name

    def op(self, op_type: str, inputs, outputs: int = 1, **kwargs):
        outs = [self.b.fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.b.fresh(op_type), **kwargs))
        return outs[0] if outputs == 1 else outs

    def mul(self, *terms: str) -> str:
        out = terms[0]
        for t in terms[1:]:
            out = self.op("Mul", [out, t])
        return out

    def add(self, *terms: str) -> str:
        out = terms[0]
        for t in terms[1:]:
            out = self.op("Add", [out, t])
        return out

    def split(self, x: str, parts: int) -> list[str]:
        if parts == 1:
            return [x]
        extra = {"num_outputs": parts} if self.b.opset >= 18 else {}
        return self.op("Split", [x], outputs=parts, axis=1, **extra)

    def graph(self, outputs: list[str], widths: list[int]) -> object:
        outs = [helper.make_tensor_value_info(o, self.b.dtype, [None, w]) for o, w in zip(outputs, widths)]
        return helper.make_graph(self.nodes, self.b.fresh("scan_body"), self.inputs, outs)

    # derivatives from the activation's output y
    def slope(self, fn: str, y: str) -> str:
        one = self.b.scalar(1.0)
        if fn == "Sigmoid":
            return self.op("Mul", [y, self.op("Sub", [one, y])])
        if fn == "Tanh":
            return self.op("Sub", [one, self.op("Mul", [y, y])])
        return self.op("Cast", [self.op("Greater", [y, self.b.scalar(0.0)])], to=self.b.dtype)  # Relu


def _check(b, node) -> dict:
    a = attrs(node)
    op = node.op_type
    ins = list(node.input) + [""] * 8
    if ins[4]:
        raise UnsupportedModelError(f"{describe(node)}: sequence_lens (per-row sequence lengths) is not supported; "
                                    "export the model without packed or variable-length sequences")
    if a.get("clip") is not None:
        raise UnsupportedModelError(f"{describe(node)}: the 'clip' attribute (cell clipping) is not supported")
    if a.get("input_forget", 0):
        raise UnsupportedModelError(f"{describe(node)}: input_forget = 1 (coupled input and forget gates) is not supported")
    if b.opset < 9:
        raise UnsupportedModelError(f"{describe(node)}: the gradient of {op} needs Scan-9 (model has opset {b.opset})")
    direction = a.get("direction", "forward")
    dirs = [1] if direction == "reverse" else [0, 1] if direction == "bidirectional" else [0]
    default = _DEFAULTS[op]
    acts = [x.decode() if isinstance(x, bytes) else x for x in a.get("activations", default * len(dirs))]
    per = len(default)
    if len(acts) != per * len(dirs):
        raise UnsupportedModelError(f"{describe(node)}: {len(acts)} activations for {len(dirs)} direction(s)")
    if a.get("activation_alpha") or a.get("activation_beta"):
        raise UnsupportedModelError(f"{describe(node)}: activation_alpha / activation_beta are not supported")
    for d in range(len(dirs)):
        mine = acts[d * per:(d + 1) * per]
        ok = mine[0] in _RNN_ACTIVATIONS if op == "RNN" else mine == default
        if not ok:
            raise UnsupportedModelError(f"{describe(node)}: activations {mine} are not supported "
                                        f"(supported: {'Tanh, Relu or Sigmoid' if op == 'RNN' else default})")
    hidden = a.get("hidden_size")
    if hidden is None:
        raise UnsupportedModelError(f"{describe(node)}: no hidden_size attribute")
    for k, name in enumerate(ins[:8]):
        if k not in (0, 4, 5, 6) and name and b.needs(name):
            raise UnsupportedModelError(f"{describe(node)}: its input {k} ('{name}') depends on the input being explained; "
                                        f"gradients with respect to {op} weights are not supported")
    return {"dirs": dirs, "acts": acts, "per": per, "H": int(hidden), "layout": a.get("layout", 0),
            "lbr": a.get("linear_before_reset", 0)}


def _pick(b, t: str, d: int, axis: int = 0) -> str:
    return b.op("Gather", [t, b.const(np.int64(d), dtype=np.int64)], axis=axis)


def _zeros_state(b, x: str, hidden: int) -> str:
    """Zeros [B, hidden] for x [T, B, I]: every state and state gradient not given."""
    batch = b.slice(b.op("Shape", [x]), [1], [2], [0])
    return b.zeros(b.op("Concat", [batch, b.ints([hidden])], axis=0))


@register("LSTM", "GRU", "RNN")
def recurrent(b, node, gys):
    cfg = _check(b, node)
    op, H, dirs, layout = node.op_type, cfg["H"], cfg["dirs"], cfg["layout"]
    ins = list(node.input) + [""] * 8
    x, w, r, bias = ins[0], ins[1], ins[2], ins[3]
    h0, c0, peep = ins[5], ins[6] if op == "LSTM" else "", ins[7] if op == "LSTM" else ""
    gy, gy_h, gy_c = (list(gys) + [None, None, None])[:3]
    if layout:  # batch first: X [B, T, I], Y [B, T, D, H], Y_h and initial states [B, D, H]
        x = b.op("Transpose", [x], perm=[1, 0, 2])
        gy = gy and b.op("Transpose", [gy], perm=[1, 2, 0, 3])
        gy_h, gy_c, h0, c0 = (t and b.op("Transpose", [t], perm=[1, 0, 2]) for t in (gy_h, gy_c, h0, c0))
    gx, gh0, gc0 = [], [], []
    zero = _zeros_state(b, x, H)  # (pruned when every state and state gradient is given)
    for d, rev in enumerate(dirs):
        acts = cfg["acts"][d * cfg["per"]:(d + 1) * cfg["per"]]
        out = _direction(b, op, cfg, x, w, r, bias, peep, d, rev, acts, zero,
                         h0=h0 and _pick(b, h0, d), c0=c0 and _pick(b, c0, d),
                         gy=gy and _pick(b, gy, d, axis=1), gy_h=gy_h and _pick(b, gy_h, d),
                         gy_c=gy_c and _pick(b, gy_c, d))
        gx.append(out[0])
        gh0.append(b.unsqueeze(out[1], [0]))
        gc0.append(out[2] and b.unsqueeze(out[2], [0]))
    grads = [None] * len(node.input)
    grads[0] = b.add_all(gx)
    if layout:
        grads[0] = b.op("Transpose", [grads[0]], perm=[1, 0, 2])
    for k, parts in ((5, gh0), (6, gc0)):
        if len(node.input) > k and node.input[k] and b.needs(node.input[k]):
            g = parts[0] if len(parts) == 1 else b.op("Concat", parts, axis=0)
            grads[k] = b.op("Transpose", [g], perm=[1, 0, 2]) if layout else g
    return grads


def _direction(b, op, cfg, x, w, r, bias, peep, d, rev, acts, zero, h0, c0, gy, gy_h, gy_c):
    """Gradients (of x [T, B, I], of the initial h, of the initial c) through direction d;
    `zero` [B, H] stands for the states and state gradients not given."""
    H, G = cfg["H"], _GATES[op]
    w_d, r_d = _pick(b, w, d), _pick(b, r, d)  # [G H, I], [G H, H]
    r_t = b.op("Transpose", [r_d], perm=[1, 0])
    xw = b.op("MatMul", [x, b.op("Transpose", [w_d], perm=[1, 0])])  # [T, B, G H]
    rb = None
    if bias:
        wb, rb = b.split(_pick(b, bias, d), [G * H, G * H], 0)
        if op == "GRU" and cfg["lbr"]:
            xw = b.op("Add", [xw, wb])  # the h gate's recurrent bias sits inside r * (...)
        else:
            xw = b.op("Add", [xw, b.op("Add", [wb, rb])])
            rb = None
    states = [h0 or zero] + ([c0 or zero] if op == "LSTM" else [])
    pi = po = pf = None
    if peep:
        pi, po, pf = b.split(_pick(b, peep, d), [H, H, H], 0)
    fwd, saved = _forward_body(b, op, cfg, r_t, rb, acts, (pi, po, pf))
    n_saved = len(saved)
    outs = b.op("Scan", states + [xw], outputs=len(states) + n_saved, body=fwd, num_scan_inputs=1,
                scan_input_directions=[rev], scan_output_directions=[rev] * n_saved)
    cache = outs[len(states):]
    bwd, has_gy = _backward_body(b, op, cfg, r_d, acts, (pi, po, pf), saved, gy is not None)
    d_states = [gy_h or zero] + ([gy_c or zero] if op == "LSTM" else [])
    scan_in = ([gy] if has_gy else []) + cache
    back = b.op("Scan", d_states + scan_in, outputs=len(d_states) + 1, body=bwd, num_scan_inputs=len(scan_in),
                scan_input_directions=[1 - rev] * len(scan_in), scan_output_directions=[1 - rev])
    g_pre = back[len(d_states)]  # [T, B, G H]: gradients of the gate pre-activations (X W^T part)
    gx = b.op("MatMul", [g_pre, w_d])
    return gx, back[0], back[1] if op == "LSTM" else None


def _forward_body(b, op, cfg, r_t, rb, acts, peeps):
    """The recomputing Scan's body and the widths of what it stacks per step."""
    H = cfg["H"]
    s = _Body(b)
    h = s.input("h", H)
    c = s.input("c", H) if op == "LSTM" else None
    xw = s.input("xw", _GATES[op] * H)
    hr = s.op("MatMul", [h, r_t])
    if op == "LSTM":
        pi, po, pf = peeps
        ai, ao, af, ac = s.split(s.add(xw, hr), 4)
        if pi:
            ai, af = s.add(ai, s.mul(c, pi)), s.add(af, s.mul(c, pf))
        i, f, g = s.op("Sigmoid", [ai]), s.op("Sigmoid", [af]), s.op("Tanh", [ac])
        c_new = s.add(s.mul(f, c), s.mul(i, g))
        if po:
            ao = s.add(ao, s.mul(c_new, po))
        o, tc = s.op("Sigmoid", [ao]), s.op("Tanh", [c_new])
        h_new = s.mul(o, tc)
        saved = [i, o, f, g, s.op("Identity", [c]), tc]
        return s.graph([h_new, c_new] + saved, [H] * 8), saved
    if op == "GRU":
        xz, xr, xh = s.split(xw, 3)
        if cfg["lbr"]:
            if rb:
                hr = s.add(hr, rb)
            hz, hrr, n = s.split(hr, 3)
        else:
            hz, hrr, _ = s.split(hr, 3)
        z, rr = s.op("Sigmoid", [s.add(xz, hz)]), s.op("Sigmoid", [s.add(xr, hrr)])
        if cfg["lbr"]:
            pre = s.add(xh, s.mul(rr, n))
            saved_n = [n]
        else:
            rh = s.mul(rr, h)
            _, _, r_h = b.split(r_t, [H, H, H], 1)  # outer: the h gate's columns of R^T
            pre = s.add(xh, s.op("MatMul", [rh, r_h]))
            saved_n = []
        hh = s.op("Tanh", [pre])
        one = b.scalar(1.0)
        h_new = s.add(s.mul(s.op("Sub", [one, z]), hh), s.mul(z, h))
        saved = [z, rr, hh, s.op("Identity", [h])] + saved_n
        return s.graph([h_new] + saved, [H] * (1 + len(saved))), saved
    h_new = s.op(acts[0], [s.add(xw, hr)])
    saved = [s.op("Identity", [h_new])]
    return s.graph([h_new] + saved, [H, H]), saved


def _backward_body(b, op, cfg, r_d, acts, peeps, saved, with_gy):
    """The reverse Scan's body: state gradients in, gradients of the gate pre-activations out."""
    H, G = cfg["H"], _GATES[op]
    one = b.scalar(1.0)
    s = _Body(b)
    dh = s.input("dh", H)
    dc = s.input("dc", H) if op == "LSTM" else None
    gy = s.input("gy", H) if with_gy else None
    vals = [s.input("saved", H) for _ in saved]
    if gy:
        dh = s.add(dh, gy)
    if op == "LSTM":
        pi, po, pf = peeps
        i, o, f, g, c_prev, tc = vals
        d_o = s.mul(dh, tc, s.slope("Sigmoid", o))
        dc = s.add(dc, s.mul(dh, o, s.slope("Tanh", tc)))
        if po:
            dc = s.add(dc, s.mul(d_o, po))
        d_i = s.mul(dc, g, s.slope("Sigmoid", i))
        d_f = s.mul(dc, c_prev, s.slope("Sigmoid", f))
        d_g = s.mul(dc, i, s.slope("Tanh", g))
        d_pre = s.op("Concat", [d_i, d_o, d_f, d_g], axis=1)
        dh_prev = s.op("MatMul", [d_pre, r_d])
        dc_prev = s.mul(dc, f)
        if pi:
            dc_prev = s.add(dc_prev, s.mul(d_i, pi), s.mul(d_f, pf))
        return s.graph([dh_prev, dc_prev, d_pre], [H, H, G * H]), with_gy
    if op == "GRU":
        z, rr, hh, h_prev = vals[:4]
        d_z = s.mul(dh, s.op("Sub", [h_prev, hh]), s.slope("Sigmoid", z))
        d_h = s.mul(dh, s.op("Sub", [one, z]), s.slope("Tanh", hh))  # of the h gate's pre-activation
        dh_prev = s.mul(dh, z)
        if cfg["lbr"]:
            n = vals[4]
            d_r = s.mul(d_h, n, s.slope("Sigmoid", rr))
            d_rec = s.op("Concat", [d_z, d_r, s.mul(d_h, rr)], axis=1)  # of H R^T (+ Rb)
            dh_prev = s.add(dh_prev, s.op("MatMul", [d_rec, r_d]))
        else:
            r_z, r_r, r_h = b.split(r_d, [H, H, H], 0)  # outer: [H, H] each
            d_rh = s.op("MatMul", [d_h, r_h])
            d_r = s.mul(d_rh, h_prev, s.slope("Sigmoid", rr))
            dh_prev = s.add(dh_prev, s.mul(d_rh, rr), s.op("MatMul", [d_z, r_z]), s.op("MatMul", [d_r, r_r]))
        d_pre = s.op("Concat", [d_z, d_r, d_h], axis=1)
        return s.graph([dh_prev, d_pre], [H, G * H]), with_gy
    (h_new,) = vals
    d_pre = s.mul(dh, s.slope(acts[0], h_new))
    return s.graph([s.op("MatMul", [d_pre, r_d]), d_pre], [H, H]), with_gy
