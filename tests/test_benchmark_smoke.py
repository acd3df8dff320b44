"""The benchmark script runs end to end in its tiny smoke mode (timings are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnxattr

ROOT = Path(__file__).resolve().parent.parent


def test_benchmark_smoke(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(out.read_text())
    names = {row["candidate"] for row in data["rows"]}
    assert {"ORT forward", "onnxattr saliency", "onnxattr deconvnet", "onnxattr guided", "torch fwd+grad"} <= names
    assert all(row["ms"] > 0 for row in data["rows"])
    assert "x ORT fwd" in r.stdout


def test_gpu_check_self_test():
    """The prepared GPU script runs its agreement check end to end (CPU against CPU here)."""
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--self-test"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("mobilenet_v2")]
    assert len(rows) == 6 and "FAIL" not in r.stdout, r.stdout
    # The CPU-tuned graph on the CPU provider is the reference itself; the CUDA-tuned one rounds
    # differently (strided depthwise gradients summed in another order): measured 4.6e-7.
    for line in rows:
        err = float(line.split("attribution ")[1].split()[0])
        assert err == 0.0 if "tuned for cpu" in line else err <= 1e-5, line


def test_breakdown_runs():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "breakdown.py"), "tiny", "--batch", "2",
                        "--method", "guided", "--runs", "2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "## original forward" in r.stdout and "## guided (tuned for cpu)" in r.stdout
    assert "backward" in r.stdout and "MaxPool" in r.stdout, r.stdout


def test_macs_counts_forward_and_backward(tmp_path):
    """benchmarks/macs.py on Conv 3->4 (3x3, 8x8 output) -> Relu -> Flatten -> Gemm 256->5: the
    forward's MACs by hand, and an input-gradient backward with exactly as many."""
    import importlib.util

    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    spec = importlib.util.spec_from_file_location("macs", ROOT / "benchmarks" / "macs.py")
    macs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(macs)
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w", (4, 3, 3, 3)), ("fc", (5, 256)), ("b", (5,)))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("Gemm", ["f", "fc", "b"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    counts, unknown = macs.macs(onnxattr.attribution_model(model))
    forward = 4 * 8 * 8 * 3 * 3 * 3 + 5 * 256
    assert unknown == 0 and counts == {"fwd": forward, "bwd": forward}
