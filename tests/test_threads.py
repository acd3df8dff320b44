"""One Explainer, many threads: results equal to serial calls (8 threads x 200 calls), and the lazily
built "argmax" session is created once even when threads race for it."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxattr

THREADS, CALLS = 8, 200


def tiny_model():
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((6, 16)).astype(np.float32)
    w2 = rng.standard_normal((16, 5)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2"], ["y"])]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
                          [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def requests(n=32):
    """Inputs of different batch sizes with per-row, scalar and argmax targets."""
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        b = 1 + i % 4
        x = rng.standard_normal((b, 6)).astype(np.float32)
        target = ["argmax", int(rng.integers(5)), rng.integers(0, 5, b)][i % 3]
        out.append((x, target))
    return out


@pytest.mark.parametrize("method", ["saliency", "guided"])
def test_threads_equal_serial(method):
    ex = onnxattr.Explainer(tiny_model(), method=method, provider="cpu")
    reqs = requests()
    serial = [ex(x, t) for x, t in reqs]
    errors, mismatches = [], []

    def worker(k):
        rng = np.random.default_rng(100 + k)
        try:
            for _ in range(CALLS):
                i = int(rng.integers(len(reqs)))
                got = ex(*reqs[i])
                if not np.array_equal(got, serial[i]):
                    mismatches.append(i)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert not mismatches, f"{len(mismatches)} of {THREADS * CALLS} threaded calls differ from serial ones"


def test_lazy_session_is_built_once_under_a_race(monkeypatch):
    ex = onnxattr.Explainer(tiny_model(), provider="cpu")
    made = []
    real = ex._make_session

    def counting(model, provider):
        made.append(threading.get_ident())
        return real(model, provider)

    monkeypatch.setattr(ex, "_make_session", counting)
    x = np.ones((2, 6), np.float32)
    start = threading.Barrier(THREADS)
    results = [None] * THREADS

    def first_call(k):
        start.wait()
        results[k] = ex.run(x, "argmax")

    threads = [threading.Thread(target=first_call, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and set(ex._sessions) == {"input", "argmax"}
    for r in results[1:]:
        np.testing.assert_array_equal(r["attribution"], results[0]["attribution"])
