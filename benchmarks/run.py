"""Benchmark: onnxattr's attribution run against ONNX Runtime's forward of the original model,
PyTorch forward + input gradient, and Captum's Saliency, on the same model and machine, in one run.

    python benchmarks/run.py                       # CPU: resnet50, mobilenet_v2, vit_tiny; batch 1 and 8
    python benchmarks/run.py --provider cuda --batches 1,8,32 --models resnet50,mobilenet_v2,vit_b_16
    python benchmarks/run.py --smoke               # a tiny model, a few runs (what CI runs)
    python benchmarks/run.py --memory --export-large

Times are medians of many interleaved runs after warm-up, each run after a short idle pause (so the
previous candidate's spinning worker threads are asleep); ratios are against the ORT forward of
the original model measured in the same loop. Models are built here with random weights.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import onnxattr

METHODS = ("saliency", "deconvnet", "guided")


def build(name: str):
    """(torch module, input size) with random weights."""
    import torch

    torch.manual_seed(0)
    if name == "tiny":
        m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 16 * 16, 10))
        return m.eval(), 32
    if name.startswith("vit_tiny"):
        import timm

        return timm.create_model("vit_tiny_patch16_224", pretrained=False).eval(), 224
    import torchvision

    m = getattr(torchvision.models, name)(weights=None).eval()
    with torch.no_grad():  # torchvision's ViT starts with an all-zero head: its input gradient would be 0
        for mod in m.modules():
            if isinstance(mod, torch.nn.Linear) and not mod.weight.any():
                torch.nn.init.normal_(mod.weight, std=0.02)
    return m, 224


def export(module, size: int, path: Path, opset: int = 17) -> None:
    import torch

    x = torch.randn(1, 3, size, size)
    torch.onnx.export(module, x, str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, opset_version=opset, dynamo=False)


TF32 = True  # on CUDA: TensorFloat-32 allowed in both ONNX Runtime and torch (--no-tf32 forbids it in both)


def session(path_or_bytes, provider: str, threads: int, cuda_graph: bool = False):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    providers = ["CPUExecutionProvider"]
    if provider == "cuda":
        cuda = {"use_tf32": str(int(TF32))}
        if cuda_graph:
            cuda["enable_cuda_graph"] = "1"
        providers.insert(0, ("CUDAExecutionProvider", cuda))
    sess = ort.InferenceSession(path_or_bytes, opts, providers=providers)
    if provider == "cuda" and sess.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError("CUDA provider not available")
    return sess


def ort_runner(sess, feeds: dict, provider: str):
    """A no-argument callable running `sess` once; on CUDA, inputs and outputs stay on the device."""
    if provider != "cuda":
        return lambda: sess.run(None, feeds)
    binding = sess.io_binding()
    for name, value in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
    for out in sess.get_outputs():
        binding.bind_output(out.name, "cuda")
    return lambda: sess.run_with_iobinding(binding)


def cuda_graph_runner(model, feeds: dict, threads: int):
    """Like ort_runner on CUDA, in a session with ONNX Runtime's CUDA graph capture on: inputs and
    outputs bound to fixed device buffers (what the capture needs; output shapes from one run of a
    CPU session). Returns None where the capture cannot be used (a node outside CUDA, say)."""
    try:
        shapes = [(a.shape, a.dtype.type) for a in session(model, "cpu", threads).run(None, feeds)]
        sess = session(model, "cuda", threads, cuda_graph=True)
        binding = sess.io_binding()
        inputs = {k: ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0) for k, v in feeds.items()}
        outputs = [ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, "cuda", 0) for shape, dtype in shapes]
        for k, v in inputs.items():
            binding.bind_ortvalue_input(k, v)
        for out, v in zip(sess.get_outputs(), outputs):
            binding.bind_ortvalue_output(out.name, v)
        sess.run_with_iobinding(binding)  # the first run captures the graph
    except Exception as e:  # noqa: BLE001  (reported, the benchmark goes on without this candidate)
        print(f"  (CUDA graph not usable: {type(e).__name__}: {str(e).splitlines()[0][:160]})")
        return None
    keep = (inputs, outputs)  # the bound buffers must live as long as the runner
    return lambda: (sess.run_with_iobinding(binding), keep)[0]


def torch_runners(module, x: np.ndarray, target: np.ndarray, provider: str):
    import torch

    device = "cuda" if provider == "cuda" else "cpu"
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = TF32
    m = module.to(device)
    xt = torch.from_numpy(x).to(device)
    tt = torch.from_numpy(target).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def grad():
        xi = xt.clone().requires_grad_(True)
        y = m(xi)
        g, = torch.autograd.grad(y.gather(1, tt[:, None]).sum(), xi)
        sync()
        return g

    runners = {"torch fwd+grad": grad}
    try:
        from captum.attr import Saliency

        sal = Saliency(m)

        def captum():
            a = sal.attribute(xt, target=tt)
            sync()
            return a

        runners["captum Saliency"] = captum
    except ImportError:
        pass
    return runners


def timeit(runners: dict, runs: int, warmup: int, pause: float = 0.0) -> dict:
    """Median seconds per candidate. Interleaved: each round times every candidate once, each
    run after `pause` seconds idle, so that the worker threads of the candidate before (ONNX
    Runtime's and OpenMP's spin-wait after each run) are asleep and do not steal its cores."""
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in runners}
    for _ in range(runs):
        for k, fn in runners.items():
            if pause:
                time.sleep(pause)
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def peak_rss_mb(model_path: str, batch: int, size: int, method: str | None, threads: int,
                mem_pattern: bool = True) -> float:
    """Peak resident memory (MiB) of creating the session and running it 3 times, in a fresh
    process, above what the process held just before (Linux: VmHWM reset through clear_refs)."""
    code = f"""
import numpy as np, onnxruntime as ort, onnxattr
def status(key):
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key)) / 1024
o = ort.SessionOptions(); o.intra_op_num_threads = {threads or 0}; o.enable_mem_pattern = {mem_pattern}
data = onnxattr.attribution_model({model_path!r}, method={method!r}).SerializeToString() if {method!r} else {model_path!r}
feeds = {{"x": np.random.randn({batch}, 3, {size}, {size}).astype(np.float32)}}
if {method!r}: feeds["target"] = np.zeros({batch}, np.int64)
open('/proc/self/clear_refs', 'w').write('5')
base = status('VmRSS:')
s = ort.InferenceSession(data, o, providers=["CPUExecutionProvider"])
for _ in range(3): s.run(None, feeds)
print(status('VmHWM:') - base)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def export_cost(model_path: str) -> tuple[float, float]:
    """(seconds, peak resident memory in MiB above the imports) of attribution_model on a model
    file, in a fresh process (Linux: VmHWM)."""
    code = f"""
import time, onnxattr
def status(key):
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key)) / 1024
open('/proc/self/clear_refs', 'w').write('5')
base = status('VmRSS:')
t0 = time.perf_counter(); m = onnxattr.attribution_model({model_path!r}); dt = time.perf_counter() - t0
print(dt, status('VmHWM:') - base)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    dt, mem = out.stdout.strip().splitlines()[-1].split()
    return float(dt), float(mem)


def machine(provider: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    desc = f"{cpu}, {os.cpu_count()} cores, onnxruntime {ort.__version__}"
    if provider == "cuda":
        import torch

        desc += f", GPU {torch.cuda.get_device_name(0)}"
    return desc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet50,mobilenet_v2,vit_tiny")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--pause", type=float, default=0.1,
                   help="idle seconds before each timed run (0: back to back; then candidates' spinning threads collide)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads for ORT and torch (0: all cores)")
    p.add_argument("--no-tf32", action="store_true", help="CUDA: forbid TensorFloat-32 in ORT and torch")
    p.add_argument("--cuda-graph", action="store_true",
                   help="CUDA: also time the ORT forward and each method with ONNX Runtime's CUDA graph capture")
    p.add_argument("--memory", action="store_true", help="also measure peak memory at the largest batch")
    p.add_argument("--export-large", action="store_true", help="also time exporting ViT-L/16 (about 300M params)")
    p.add_argument("--smoke", action="store_true", help="a tiny model, batch 2, 3 runs")
    p.add_argument("--json", default=None, help="write the results as JSON here")
    p.add_argument("--model-dir", default=None, help="keep the exported models here (reused when present)")
    p.add_argument("--tune-for", choices=["cpu", "cuda"], default=None,
                   help="the attribution graphs' tuning (default: the provider's, as the Explainer picks)")
    args = p.parse_args(argv)
    global TF32
    TF32 = not args.no_tf32
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        args.models, args.batches, args.runs, args.warmup, args.pause = "tiny", "2", 3, 1, 0.0
    results = {"machine": machine(args.provider), "provider": args.provider, "rows": [], "export": []}
    tune_for = args.tune_for or args.provider
    tf32 = f", TF32 {'allowed' if TF32 else 'off'} in ORT and torch" if args.provider == "cuda" else ""
    print(f"# {results['machine']}; provider {args.provider}{tf32}; graphs tuned for {tune_for}; medians of "
          f"{args.runs} interleaved runs, each after {args.pause:g} s idle")
    results["tune_for"] = tune_for
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            module, size = build(name)
            path = Path(args.model_dir or tmp) / f"{name}.onnx"
            if not path.exists():
                export(module, size, path)
            t0 = time.perf_counter()
            models = {m: onnxattr.attribution_model(str(path), method=m, tune_for=tune_for).SerializeToString()
                      for m in METHODS}
            export_s = (time.perf_counter() - t0) / len(METHODS)
            results["export"].append({"model": name, "seconds": export_s, "mb": path.stat().st_size / 2**20})
            print(f"\n## {name}: export (graph rewriting) {export_s:.2f} s per method, model {path.stat().st_size / 2**20:.1f} MiB")
            print(f"{'batch':>5}  {'candidate':<30}{'ms':>10}{'x ORT fwd':>11}")
            for batch in [int(b) for b in args.batches.split(",")]:
                x = np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32)
                t = np.zeros(batch, np.int64)
                runners = {"ORT forward": ort_runner(session(str(path), args.provider, args.threads), {"x": x}, args.provider)}
                for m in METHODS:
                    runners[f"onnxattr {m}"] = ort_runner(session(models[m], args.provider, args.threads),
                                                         {"x": x, "target": t}, args.provider)
                if args.cuda_graph and args.provider == "cuda":
                    for label, model, feeds in [("ORT forward", str(path), {"x": x})] + [
                            (f"onnxattr {m}", models[m], {"x": x, "target": t}) for m in METHODS]:
                        runner = cuda_graph_runner(model, feeds, args.threads)
                        if runner is not None:
                            runners[f"{label} (graph)"] = runner
                runners.update(torch_runners(module, x, t, args.provider))
                med = timeit(runners, args.runs, args.warmup, args.pause)
                for k, v in med.items():  # CUDA-graph rows against the CUDA-graph forward
                    base = med.get("ORT forward (graph)", med["ORT forward"]) if k.endswith("(graph)") else med["ORT forward"]
                    print(f"{batch:>5}  {k:<30}{v * 1e3:>10.2f}{v / base:>11.2f}")
                    results["rows"].append({"model": name, "batch": batch, "candidate": k, "ms": v * 1e3,
                                            "ratio": v / base})
            if args.memory:
                batch = max(int(b) for b in args.batches.split(","))
                fwd = peak_rss_mb(str(path), batch, size, None, args.threads)
                for pattern, how in ((True, "ONNX Runtime's default options"),
                                     (False, "onnxattr.session_options(): no memory pattern")):
                    att = peak_rss_mb(str(path), batch, size, "guided", args.threads, pattern)
                    print(f"peak memory at batch {batch}: forward session {fwd:.0f} MiB (default options), attribution "
                          f"session {att:.0f} MiB ({how}), ratio {att / fwd:.2f}")
                    results["rows"].append({"model": name, "batch": batch, "candidate": "peak memory ratio",
                                            "ratio": att / fwd, "forward_mb": fwd, "attribution_mb": att,
                                            "mem_pattern": pattern})
            module.to("cpu")
        if args.export_large:
            import torchvision

            module = torchvision.models.vit_l_16(weights=None).eval()
            path = Path(tmp) / "vit_l_16.onnx"
            export(module, 224, path)
            del module
            mb = path.stat().st_size / 2**20
            dt, mem = export_cost(str(path))
            print(f"\n## vit_l_16: export (graph rewriting) {dt:.2f} s, peak memory growth {mem:.0f} MiB "
                  f"for a {mb:.0f} MiB model ({mem / mb:.2f}x)")
            results["export"].append({"model": "vit_l_16", "seconds": dt, "mb": mb, "peak_mb": mem})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
