"""Recurrent layers (LSTM, GRU, RNN): backpropagation through time with Scan nodes.

The recurrent node keeps computing the forward outputs. Its rule adds, per direction:
* the input projection of every step at once, X W^T (+ biases), one MatMul;
* the gates the node does not output, recomputed from the hidden states it does output (Y, or
  a copy of the node that outputs it): every step's H R^T is one MatMul, the nonlinearities
  element-wise over all steps; only an LSTM's cell state needs a Scan (c = f c + i g). With
  peepholes the gates read the cell state: one Scan recomputes all (H R^T in its body);
* a Scan in the opposite direction carrying the state gradients (dH, dC), which stacks the
  gradients of the gate pre-activations (an LSTM's per-step factors computed beforehand for all
  steps); the input gradient is then one MatMul by W.
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
from ..graph import Subgraph
from ..protos import attrs, describe
from . import register

_DEFAULTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_RNN_ACTIVATIONS = ("Tanh", "Relu", "Sigmoid")


class _Ops:
    """Products, sums and activation slopes, emitted by `op`: into the main graph (over every
    step at once) here, into a Scan body in `_Body`."""

    def __init__(self, b):
        self.b = b

    def op(self, op_type: str, inputs, outputs: int = 1, **kwargs):
        return self.b.op(op_type, inputs, outputs=outputs, **kwargs)

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

    # derivatives from the activation's output y
    def slope(self, fn: str, y: str) -> str:
        one = self.b.scalar(1.0)
        if fn == "Sigmoid":
            return self.op("Mul", [y, self.op("Sub", [one, y])])
        if fn == "Tanh":
            return self.op("Sub", [one, self.op("Mul", [y, y])])
        return self.op("Cast", [self.op("Greater", [y, self.b.scalar(0.0)])], to=self.b.dtype)  # Relu


class _Body(Subgraph, _Ops):
    """The nodes of one Scan body (Subgraph's `op`, _Ops' products and slopes over them)."""

    def __init__(self, b):
        super().__init__(b)
        self.inputs = []

    def input(self, hint: str, width: int) -> str:
        name = self.b.fresh(hint)
        self.inputs.append(helper.make_tensor_value_info(name, self.b.dtype, [None, width]))
        return name

    def split(self, x: str, parts: int) -> list[str]:
        if parts == 1:
            return [x]
        extra = {"num_outputs": parts} if self.b.opset >= 18 else {}
        return self.op("Split", [x], outputs=parts, axis=1, **extra)

    def graph(self, outputs: list[str], widths: list[int]) -> object:
        outs = [helper.make_tensor_value_info(o, self.b.dtype, [None, w]) for o, w in zip(outputs, widths)]
        return helper.make_graph(self.nodes, self.b.fresh("scan_body"), self.inputs, outs)


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
    y = None
    if not peep:  # the hidden states every step read: the node's Y, [T, D, B, H]
        y = node.output[0] if node.output and node.output[0] else b.op_like(node, node.input, 1)[0]
        y = b.op("Transpose", [y], perm=[1, 2, 0, 3]) if layout else y
    for d, rev in enumerate(dirs):
        acts = cfg["acts"][d * cfg["per"]:(d + 1) * cfg["per"]]
        out = _direction(b, op, cfg, x, w, r, bias, peep, d, rev, acts, zero, y and _pick(b, y, d, axis=1),
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


def _direction(b, op, cfg, x, w, r, bias, peep, d, rev, acts, zero, y_d, h0, c0, gy, gy_h, gy_c):
    """Gradients (of x [T, B, I], of the initial h, of the initial c) through direction d;
    `zero` [B, H] stands for the states and state gradients not given; y_d [T, B, H] is the
    direction's hidden states (None with peepholes: then a Scan recomputes them)."""
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
    if y_d is not None:
        cache = _gates_from_states(b, op, cfg, xw, r_t, rb, y_d, states, rev)
    else:
        fwd, saved = _peephole_body(b, cfg, r_t, (pi, po, pf))
        outs = b.op("Scan", states + [xw], outputs=len(states) + len(saved), body=fwd, num_scan_inputs=1,
                    scan_input_directions=[rev], scan_output_directions=[rev] * len(saved))
        cache = outs[len(states):]
    if op == "LSTM":  # every step's factors at once: the reverse Scan keeps only what recurs
        cache = _lstm_factors(b, cache, (pi, po, pf))
        bwd, has_gy = _lstm_backward_body(b, cfg, r_d, gy is not None)
    else:
        bwd, has_gy = _backward_body(b, op, cfg, r_d, acts, (pi, po, pf), cache, gy is not None)
    d_states = [gy_h or zero] + ([gy_c or zero] if op == "LSTM" else [])
    scan_in = ([gy] if has_gy else []) + cache
    back = b.op("Scan", d_states + scan_in, outputs=len(d_states) + 1, body=bwd, num_scan_inputs=len(scan_in),
                scan_input_directions=[1 - rev] * len(scan_in), scan_output_directions=[1 - rev])
    g_pre = back[len(d_states)]  # [T, B, G H]: gradients of the gate pre-activations (X W^T part)
    gx = b.op("MatMul", [g_pre, w_d])
    return gx, back[0], back[1] if op == "LSTM" else None


def _previous(b, y_d: str, h_first: str, rev: int) -> str:
    """[T, B, H]: the hidden state each step reads, h_first then y_d shifted by one step in the
    direction's order."""
    first = b.unsqueeze(h_first, [0])
    if rev:
        return b.op("Concat", [b.slice(y_d, [1], [np.iinfo(np.int64).max], [0]), first], axis=0)
    return b.op("Concat", [first, b.slice(y_d, [0], [-1], [0])], axis=0)


def _gates_from_states(b, op, cfg, xw, r_t, rb, y_d, states, rev) -> list[str]:
    """What the backward Scan reads per step (as `_forward_body` stacks it), from the hidden
    states y_d [T, B, H] the node output: every step's H R^T is one MatMul, the gates
    element-wise over all steps; only an LSTM's cell state needs a Scan (element-wise:
    c = f c + i g)."""
    H = cfg["H"]
    if op == "RNN":
        return [y_d]
    h_prev = _previous(b, y_d, states[0], rev)
    if op == "LSTM":
        ai, ao, af, ac = b.split(b.op("Add", [xw, b.op("MatMul", [h_prev, r_t])]), [H] * 4, 2)
        i, o, f, g = (b.op(fn, [a]) for fn, a in (("Sigmoid", ai), ("Sigmoid", ao), ("Sigmoid", af), ("Tanh", ac)))
        s = _Body(b)
        c, f_t, ig_t = s.input("c", H), s.input("f", H), s.input("ig", H)
        c_new = s.add(s.mul(f_t, c), ig_t)
        body = s.graph([c_new, s.op("Identity", [c]), s.op("Identity", [c_new])], [H] * 3)
        _, c_prev, c_all = b.op("Scan", [states[1], f, b.op("Mul", [i, g])], outputs=3, body=body, num_scan_inputs=2,
                                scan_input_directions=[rev] * 2, scan_output_directions=[rev] * 2)
        return [i, o, f, g, c_prev, b.op("Tanh", [c_all])]
    xz, xr, xh = b.split(xw, [H] * 3, 2)
    if cfg["lbr"]:
        hr = b.op("MatMul", [h_prev, r_t])
        hz, hrr, n = b.split(b.op("Add", [hr, rb]) if rb else hr, [H] * 3, 2)
    else:
        r_zr, r_h = b.split(r_t, [2 * H, H], 1)
        hz, hrr = b.split(b.op("MatMul", [h_prev, r_zr]), [H, H], 2)
    z, rr = b.op("Sigmoid", [b.op("Add", [xz, hz])]), b.op("Sigmoid", [b.op("Add", [xr, hrr])])
    if cfg["lbr"]:
        pre, extra = b.op("Add", [xh, b.op("Mul", [rr, n])]), [n]
    else:
        pre, extra = b.op("Add", [xh, b.op("MatMul", [b.op("Mul", [rr, h_prev]), r_h])]), []
    return [z, rr, b.op("Tanh", [pre]), h_prev] + extra


def _peephole_body(b, cfg, r_t, peeps):
    """An LSTM with peepholes (its gates read the cell state): the Scan body that recomputes the
    recurrence step by step, and what it stacks per step (as `_gates_from_states` does)."""
    H = cfg["H"]
    s = _Body(b)
    h, c, xw = s.input("h", H), s.input("c", H), s.input("xw", 4 * H)
    pi, po, pf = peeps
    ai, ao, af, ac = s.split(s.add(xw, s.op("MatMul", [h, r_t])), 4)
    ai, af = s.add(ai, s.mul(c, pi)), s.add(af, s.mul(c, pf))
    i, f, g = s.op("Sigmoid", [ai]), s.op("Sigmoid", [af]), s.op("Tanh", [ac])
    c_new = s.add(s.mul(f, c), s.mul(i, g))
    o, tc = s.op("Sigmoid", [s.add(ao, s.mul(c_new, po))]), s.op("Tanh", [c_new])
    h_new = s.mul(o, tc)
    saved = [i, o, f, g, s.op("Identity", [c]), tc]
    return s.graph([h_new, c_new] + saved, [H] * 8), saved


def _lstm_factors(b, saved, peeps) -> list[str]:
    """An LSTM's backward step, dh and dc in (dh with the step's output gradient added), is
    dc' = dc + dh a_c; gate pre-activation gradients [dc', dh, dc', dc'] * a; dc_prev = dc' keep,
    dh_prev = (those gradients) R. The factors a [T, B, 4 H], a_c and keep [T, B, H] depend on
    the forward values only: computed here for every step at once."""
    u = _Ops(b)
    i, o, f, g, c_prev, tc = saved
    pi, po, pf = peeps
    a_o = u.mul(tc, u.slope("Sigmoid", o))
    a_i, a_f, a_g = u.mul(g, u.slope("Sigmoid", i)), u.mul(c_prev, u.slope("Sigmoid", f)), u.mul(i, u.slope("Tanh", g))
    a_c = u.mul(o, u.slope("Tanh", tc))
    keep = f
    if po:  # the output gate reads the new cell state: d_o po flows into dc
        a_c = u.add(a_c, u.mul(a_o, po))
    if pi:  # the input and forget gates read the previous one
        keep = u.add(f, u.mul(a_i, pi), u.mul(a_f, pf))
    return [b.op("Concat", [a_i, a_o, a_f, a_g], axis=2), a_c, keep]


def _lstm_backward_body(b, cfg, r_d, with_gy):
    H = cfg["H"]
    s = _Body(b)
    dh, dc = s.input("dh", H), s.input("dc", H)
    gy = s.input("gy", H) if with_gy else None
    a, a_c, keep = s.input("a", 4 * H), s.input("a_c", H), s.input("keep", H)
    if gy:
        dh = s.add(dh, gy)
    dc = s.add(dc, s.mul(dh, a_c))
    d_pre = s.mul(s.op("Concat", [dc, dh, dc, dc], axis=1), a)
    return s.graph([s.op("MatMul", [d_pre, r_d]), s.mul(dc, keep), d_pre], [H, H, 4 * H]), with_gy


def _backward_body(b, op, cfg, r_d, acts, peeps, saved, with_gy):
    """The reverse Scan's body: state gradients in, gradients of the gate pre-activations out."""
    H, G = cfg["H"], _GATES[op]
    one = b.scalar(1.0)
    s = _Body(b)
    dh = s.input("dh", H)
    gy = s.input("gy", H) if with_gy else None
    vals = [s.input("saved", H) for _ in saved]
    if gy:
        dh = s.add(dh, gy)
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
