"""The benchmark script runs end to end in its tiny smoke mode (timings are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    assert len(rows) == 3 and all("attribution 0.0e+00" in line for line in rows), r.stdout
