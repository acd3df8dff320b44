"""A slow, obvious numpy interpreter for small CNNs (Conv stride 1, Relu, MaxPool, GAP, Flatten,
Gemm) with its own backward pass and the three Relu rules written out by hand."""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper


def _attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _conv(x, w, b, pads):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    ho, wo = xp.shape[2] - kh + 1, xp.shape[3] - kw + 1
    out = np.zeros((n, o, ho, wo))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i:i + ho, j:j + wo], w[:, :, i, j])
    return out + (b[None, :, None, None] if b is not None else 0)


def _conv_back(g, x, w, pads):
    o, _, kh, kw = w.shape
    ho, wo = g.shape[2:]
    gp = np.zeros((x.shape[0], x.shape[1], ho + kh - 1, wo + kw - 1))
    for i in range(kh):
        for j in range(kw):
            gp[:, :, i:i + ho, j:j + wo] += np.einsum("nohw,oc->nchw", g, w[:, :, i, j])
    return gp[:, :, pads[0]:pads[0] + x.shape[2], pads[1]:pads[1] + x.shape[3]]


def _maxpool(x, k, s):
    n, c, h, w = x.shape
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    out, arg = np.zeros((n, c, ho, wo)), np.zeros((n, c, ho, wo), dtype=int)
    for a in range(ho):
        for b in range(wo):
            win = x[:, :, a * s:a * s + k, b * s:b * s + k].reshape(n, c, -1)
            arg[:, :, a, b] = win.argmax(-1)  # the first maximum
            out[:, :, a, b] = win.max(-1)
    return out, arg


def _maxpool_back(g, arg, shape, k, s):
    gx = np.zeros(shape)
    n, c, ho, wo = g.shape
    for a in range(ho):
        for b in range(wo):
            r, q = np.divmod(arg[:, :, a, b], k)
            for ni in range(n):
                for ci in range(c):
                    gx[ni, ci, a * s + r[ni, ci], b * s + q[ni, ci]] += g[ni, ci, a, b]
    return gx


def relu_backward(g, z, method):
    if method == "saliency":
        return g * (z > 0)
    if method == "deconvnet":
        return np.maximum(g, 0)
    return np.maximum(g, 0) * (z > 0)


def numpy_attribution(model, x, target, method):
    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    v = {model.graph.input[0].name: x}
    saved = {}
    for node in model.graph.node:
        a, ins = _attrs(node), [v.get(i, w.get(i)) for i in node.input]
        op = node.op_type
        if op == "Conv":
            assert a.get("strides", [1, 1]) == [1, 1] and a.get("group", 1) == 1
            out = _conv(ins[0], ins[1], ins[2] if len(ins) > 2 else None, a.get("pads", [0] * 4))
        elif op == "Relu":
            out = np.maximum(ins[0], 0)
        elif op == "MaxPool":
            out, saved[node.name] = _maxpool(ins[0], a["kernel_shape"][0], a["strides"][0])
        elif op == "GlobalAveragePool":
            out = ins[0].mean(axis=(2, 3), keepdims=True)
        elif op == "Flatten":
            out = ins[0].reshape(ins[0].shape[0], -1)
        elif op == "Gemm":
            assert a.get("transB") == 1
            out = ins[0] @ ins[1].T + ins[2]
        else:
            raise NotImplementedError(op)
        v[node.output[0]] = out
    y = v[model.graph.output[0].name]
    grad = {model.graph.output[0].name: np.eye(y.shape[1])[target]}
    for node in reversed(model.graph.node):
        g = grad.pop(node.output[0])
        a, x0 = _attrs(node), v[node.input[0]]
        op = node.op_type
        if op == "Conv":
            gx = _conv_back(g, x0, w[node.input[1]], a.get("pads", [0] * 4))
        elif op == "Relu":
            gx = relu_backward(g, x0, method)
        elif op == "MaxPool":
            gx = _maxpool_back(g, saved[node.name], x0.shape, a["kernel_shape"][0], a["strides"][0])
        elif op == "GlobalAveragePool":
            gx = np.broadcast_to(g, x0.shape) / (x0.shape[2] * x0.shape[3])
        elif op == "Flatten":
            gx = g.reshape(x0.shape)
        elif op == "Gemm":
            gx = g @ w[node.input[1]]
        grad[node.input[0]] = grad.get(node.input[0], 0) + gx
    return grad[model.graph.input[0].name]
