"""Multiply-accumulates of a model's forward and of the backward onnxattr adds to it (MatMul,
Gemm, Conv and ConvTranspose nodes, at batch 1, from ONNX shape inference): the arithmetic floor
of the attribution run, (forward + backward) / forward, if every product ran at the forward's
rate and every element-wise op were free.

    python benchmarks/macs.py model.onnx [more.onnx ...]
"""

import sys

import numpy as np
import onnxattr
from onnx import shape_inference


def macs(m):
    """({"fwd": MACs, "bwd": MACs}, nodes whose shapes inference left unknown (not counted))."""
    for i in m.graph.input:
        d = i.type.tensor_type.shape.dim
        if d and d[0].dim_param: d[0].dim_value = 1
    m = shape_inference.infer_shapes(m, data_prop=True)
    sh = {}
    for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        sh[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    for t in m.graph.initializer: sh[t.name] = list(t.dims)
    for n in m.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value": sh[n.output[0]] = list(a.t.dims)
    tot = {"fwd": 0, "bwd": 0}; unknown = 0
    for n in m.graph.node:
        part = "bwd" if n.name.startswith("onnxattr/") else "fwd"
        if n.op_type in ("MatMul", "Gemm"):
            a, y = sh.get(n.input[0]), sh.get(n.output[0])
            if not a or not y or None in a or None in y: unknown += 1; continue
            k = a[-1] if not (n.op_type == "Gemm" and any(x.name == "transA" and x.i for x in n.attribute)) else a[0]
            tot[part] += int(np.prod(y)) * k
        elif n.op_type in ("Conv", "ConvTranspose"):
            x, w, y = sh.get(n.input[0]), sh.get(n.input[1]), sh.get(n.output[0])
            if not x or not w or not y or None in x + w + y: unknown += 1; continue
            if n.op_type == "Conv":  # w [C_out, C_in / group, *k]
                tot[part] += int(np.prod(y)) * int(np.prod(w[1:]))
            else:  # each input element times a [C_out/g, *k] slice
                tot[part] += int(np.prod(x)) * int(np.prod(w[1:]))
    return tot, unknown


if __name__ == "__main__":
    if {"-h", "--help"} & set(sys.argv[1:]):
        sys.exit(print(__doc__))
    if not sys.argv[1:]:
        sys.exit(__doc__)
    for path in sys.argv[1:]:
        t, u = macs(onnxattr.attribution_model(path, method="saliency"))
        print(f"{path}: forward {t['fwd'] / 1e9:.3f} GMAC, backward {t['bwd'] / 1e9:.3f} GMAC, "
              f"(forward + backward) / forward = {(t['fwd'] + t['bwd']) / t['fwd']:.3f}; nodes of unknown shape {u}")
