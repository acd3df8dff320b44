"""The prepared script for a lent GPU machine (see ../shared/GPU.md for installing onnxruntime-gpu
there): does the exported attribution run on ONNX Runtime's CUDA provider and agree with the CPU
provider, and what does the CUDA benchmark say. One call, a few minutes:

    PYTHONPATH=/tmp/site:$PWD python benchmarks/gpu_check.py            # check, benchmark, breakdown
    python benchmarks/gpu_check.py --self-test                           # CPU against CPU (no GPU)

Agreement is reported per model, method and tuning as the relative L2 error of the attribution
(CUDA vs the CPU provider running the CPU-tuned graph, TF32 off, batch 2, random weights).
Different convolution algorithms round differently, so a Relu or MaxPool near a tie may switch;
the check fails (exit 1) only when the logits differ by more than 1e-4 relative or an attribution
by more than 5e-2. Models are exported once and shared by the check, the benchmark, the per-op
breakdown (benchmarks/breakdown.py) of the `--breakdown` model and batch, and batch 1 of the
CNNs again with ONNX Runtime's CUDA graph capture.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the benchmark beside this file)

import onnxattr  # noqa: E402

MODELS = ("resnet50", "mobilenet_v2", "vit_b_16")


def _session(data: bytes, provider: str) -> ort.InferenceSession:
    opts = onnxattr.session_options()
    if provider == "cuda":  # heuristic algorithm choice: session start-up in seconds, not tens
        cuda = {"use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"}
        providers = [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    sess = ort.InferenceSession(data, opts, providers=providers)
    if provider == "cuda" and sess.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError("the CUDA provider is not usable here")
    return sess


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def check(models, other: str, model_dir: str) -> bool:
    ok = True
    print(f"# attribution on {other} against the CPU provider (batch 2, random weights, TF32 off)")
    for name in models:
        module, size = run.build(name)
        path = Path(model_dir) / f"{name}.onnx"
        if not path.exists():
            run.export(module, size, path)
        x = np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)
        t = np.array([3, 7], np.int64)
        for method in onnxattr.METHODS:
            y0, a0 = _session(onnxattr.attribution_model(str(path), method=method).SerializeToString(),
                              "cpu").run(None, {"x": x, "target": t})
            for tune in ("cpu", "cuda"):
                data = onnxattr.attribution_model(str(path), method=method, tune_for=tune).SerializeToString()
                y1, a1 = _session(data, other).run(None, {"x": x, "target": t})
                ey, ea = rel(y1, y0), rel(a1, a0)
                bad = ey > 1e-4 or ea > 5e-2 or not np.isfinite(a1).all() or not np.abs(a0).sum() > 0
                ok &= not bad
                print(f"{name:14s} {method:10s} tuned for {tune:4s}  logits {ey:.1e}  attribution {ea:.1e}"
                      f"{'  <- FAIL' if bad else ''}", flush=True)
    return ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--self-test", action="store_true", help="CPU against CPU, a small model: runs without a GPU")
    p.add_argument("--no-bench", action="store_true", help="only the agreement check")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--breakdown", default="vit_b_16:32", help="MODEL:BATCH for the per-op breakdown ('' for none)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as model_dir:
        if args.self_test:
            return 0 if check(["mobilenet_v2"], "cpu", model_dir) else 1
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # the CUDA and cuDNN libraries that torch ships
        ok = check(args.models.split(","), "cuda", model_dir)
        if not args.no_bench:
            run.main(["--provider", "cuda", "--batches", "1,8,32", "--models", args.models, "--runs", str(args.runs),
                      "--pause", "0.02", "--model-dir", model_dir])
        if args.breakdown:
            name, batch = args.breakdown.split(":")
            subprocess.run([sys.executable, str(Path(__file__).with_name("breakdown.py")), name, "--batch", batch,
                            "--provider", "cuda", "--model-dir", model_dir, "--nodes", "15"], check=False)
        cnns = ",".join(m for m in args.models.split(",") if not m.startswith("vit"))
        if not args.no_bench and cnns:  # batch 1 is launch-bound on a GPU: again with CUDA graph capture
            try:
                run.main(["--provider", "cuda", "--batches", "1", "--models", cnns, "--runs", str(args.runs),
                          "--pause", "0.02", "--model-dir", model_dir, "--cuda-graph"])
            except Exception as e:  # noqa: BLE001  (the runs above are what this call is for)
                print(f"CUDA graph benchmark failed: {type(e).__name__}: {e}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
