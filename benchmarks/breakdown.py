"""Where an attribution run spends its time: ONNX Runtime's profile of one model, method and batch,
summed per op type, split into the forward part and the backward part onnxattr added.

    python benchmarks/breakdown.py resnet50 --batch 8 --method guided
    python benchmarks/breakdown.py vit_b_16 --batch 32 --provider cuda

On CUDA, kernels run asynchronously and ONNX Runtime's per-node times would only measure
launches: this script sets CUDA_LAUNCH_BLOCKING=1 (before CUDA starts) so that each node's time
includes its kernels. The whole run is then slower than a normal one; compare shares, not totals.
Nodes that ONNX Runtime fused get new names: they are counted as "fused", unless every name they
came from is known (ORT keeps the first node's name in most fusions).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path


def summarize(events: list, forward_names: set[str], runs: int) -> tuple[dict, list]:
    """From profile events of `runs` runs: {part: {op type: (ms per run, nodes per run)}}, where
    part is "forward", "backward" (nodes onnxattr added, named onnxattr/...) or "fused", and the
    nodes as (ms per run, part, name, op type, provider, input shapes), slowest first."""
    total = collections.defaultdict(lambda: collections.defaultdict(lambda: [0.0, 0]))
    nodes: dict[str, list] = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        name = e["name"][: -len("_kernel_time")]
        part = "backward" if name.startswith("onnxattr/") else "forward" if name in forward_names else "fused"
        op = e["args"].get("op_name", "?")
        cell = total[part][op]
        cell[0] += e["dur"] / 1e3 / runs
        cell[1] += 1
        shapes = [list(d.values())[0] for d in e["args"].get("input_type_shape", [])]
        row = nodes.setdefault(name, [0.0, part, name, op, e["args"].get("provider", "?"), shapes])
        row[0] += e["dur"] / 1e3 / runs
    parts = {part: {op: (ms, n // runs) for op, (ms, n) in ops.items()} for part, ops in total.items()}
    return parts, sorted((tuple(r) for r in nodes.values()), key=lambda r: -r[0])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a benchmark model name (resnet50, mobilenet_v2, vit_tiny, vit_b_16, ...) or a .onnx file")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--method", default="saliency")
    p.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--tune-for", choices=["cpu", "cuda"], default=None, help="default: the provider's")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--model-dir", default=None, help="exported models are kept here (reused when present)")
    p.add_argument("--top", type=int, default=12, help="op types listed per part")
    p.add_argument("--nodes", type=int, default=8, help="slowest single nodes listed")
    args = p.parse_args(argv)
    if args.provider == "cuda":
        os.environ["CUDA_LAUNCH_BLOCKING"] = "1"
    import numpy as np
    import onnx
    import onnxruntime as ort

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run  # noqa: E402  (the benchmark beside this file)

    import onnxattr

    if args.provider == "cuda" and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    with tempfile.TemporaryDirectory() as tmp:
        if args.model.endswith(".onnx"):
            path = Path(args.model)
        else:
            path = Path(args.model_dir or tmp) / f"{args.model}.onnx"
            if not path.exists():
                module, size = run.build(args.model)
                run.export(module, size, path)
        src = onnx.load(str(path), load_external_data=False)
        forward_names = {n.name for n in src.graph.node}
        x = next(i for i in src.graph.input if i.name not in {t.name for t in src.graph.initializer})
        dims = [d.dim_value or args.batch for d in x.type.tensor_type.shape.dim]
        feeds = {x.name: np.random.default_rng(0).normal(size=[args.batch] + dims[1:]).astype(np.float32)}
        tune = args.tune_for or args.provider
        att = onnxattr.attribution_model(str(path), method=args.method, tune_for=tune).SerializeToString()
        rows = {}
        for label, data, extra in (("original forward", str(path), {}),
                                   (f"{args.method} (tuned for {tune})", att, {"target": np.zeros(args.batch, np.int64)})):
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(tmp) / "profile")
            providers = ["CPUExecutionProvider"]
            if args.provider == "cuda":
                providers.insert(0, "CUDAExecutionProvider")
            sess = ort.InferenceSession(data, opts, providers=providers)
            runner = run.ort_runner(sess, {**feeds, **extra}, args.provider)
            warmup = 2
            for _ in range(warmup + args.runs):
                runner()
            events = json.loads(Path(sess.end_profiling()).read_text())
            runs = sorted((e for e in events if e["name"] == "model_run"), key=lambda e: e["ts"])
            cut = runs[warmup - 1]["ts"] + runs[warmup - 1]["dur"]
            runs = runs[warmup:]
            events = [e for e in events if e.get("ts", 0) > cut]
            rows[label] = (*summarize(events, forward_names, len(runs)),
                           float(np.median([r["dur"] for r in runs])) / 1e3)
    print(f"# {args.model}, batch {args.batch}, provider {args.provider}"
          + (" (CUDA_LAUNCH_BLOCKING=1)" if args.provider == "cuda" else "") + f", {args.runs} profiled runs")
    for label, (parts, nodes, wall) in rows.items():
        print(f"\n## {label}: {wall:.2f} ms per run (wall, profiled)")
        for part, ops in sorted(parts.items()):
            ms = sum(v[0] for v in ops.values())
            print(f"  {part:9s} {ms:9.2f} ms  " + ", ".join(
                f"{op} {t:.2f}/{n}" for op, (t, n) in sorted(ops.items(), key=lambda kv: -kv[1][0])[: args.top]))
        elsewhere = collections.Counter(r[3] for r in nodes if args.provider == "cuda" and r[4] != "CUDAExecutionProvider")
        if elsewhere:
            print(f"  not on CUDA: {dict(elsewhere)}")
        for ms, part, name, op, provider, shapes in nodes[: args.nodes]:
            print(f"    {ms:8.3f} ms  {part:8s} {op:16s} {name[-48:]:48s} {shapes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
