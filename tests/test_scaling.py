"""Export cost grows linearly with the number of nodes (the performance issue: no step whose cost
grows faster). Not a timing test: it compares the same export at n and 4n nodes in one process,
where a linear rewriter takes about 4x and a quadratic step 16x. Measured here (2-core Xeon):
0.20 ms per residual block from 500 to 8000 blocks (24000 nodes), 0.14-0.15 ms per branch from
1000 to 8000 parallel branches; the bound below is 8x for 4x the nodes."""

from __future__ import annotations

import time

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxattr import attribution_model

GROWTH_BOUND = 8.0  # for 4x the nodes: linear ~4, quadratic ~16


def _model(nodes, output):
    w = numpy_helper.from_array(np.eye(8, dtype=np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])
    y = helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", 8])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def deep(blocks: int):
    """A chain of residual blocks x + relu(x @ w): every gradient has two paths to accumulate."""
    nodes, h = [], "x"
    for i in range(blocks):
        nodes += [helper.make_node("MatMul", [h, "w"], [f"m{i}"]), helper.make_node("Relu", [f"m{i}"], [f"r{i}"]),
                  helper.make_node("Add", [f"r{i}", h], [f"h{i}"])]
        h = f"h{i}"
    return _model(nodes, h)


def wide(branches: int):
    """One input read by many branches, summed: one gradient with many partials."""
    nodes = []
    for i in range(branches):
        nodes += [helper.make_node("MatMul", ["x", "w"], [f"m{i}"]), helper.make_node("Relu", [f"m{i}"], [f"r{i}"])]
    nodes.append(helper.make_node("Sum", [f"r{i}" for i in range(branches)], ["y"]))
    return _model(nodes, "y")


def _export_seconds(model) -> float:
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        attribution_model(model)
        best = min(best, time.perf_counter() - t0)
    return best


@pytest.mark.parametrize("make, n", [(deep, 500), (wide, 1000)], ids=["deep", "wide"])
def test_export_cost_grows_linearly(make, n):
    small, large = _export_seconds(make(n)), _export_seconds(make(4 * n))
    assert large / small < GROWTH_BOUND, f"{n} -> {4 * n}: {small:.3f} s -> {large:.3f} s"
