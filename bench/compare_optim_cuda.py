#!/usr/bin/env python3
"""trainrt's fused optimizer steps on the GPU beside PyTorch's, on the same sizes, in one run.

The GPU half of the optimizer issue's benchmarks: N f32 parameters (default 1e9) held in 1 and
in 200 tensors, timed
  adamw         trainrt AdamW step vs torch.optim.AdamW(lr=1e-3, weight_decay=1e-2) with
                fused=True and foreach=True
  sgd_momentum  trainrt SGD (momentum 0.9, wd 1e-4) vs torch.optim.SGD, fused=True where this
                torch has it, and foreach=True
  clip_adamw    clip_grad_norm_(optimizer, 1.0) + AdamW step vs torch's
                clip_grad_norm_(params, 1.0, foreach=True) + fused AdamW
  grad_norm     trainrt::grad_norm vs torch's total-norm computation
against the device's copy bandwidth (bench_optim's ceiling_copy/cuda: a device-to-device copy,
read + written bytes), and bench_optim's paired clip_overhead (clip + step / step alone, the
GPU target is <= 1.1x). trainrt's figures come from bench_optim run as a subprocess with
TRAINRT_BENCH_OPTIM_PARAMS=N (it exits, freeing its device memory, before PyTorch allocates);
PyTorch's from CUDA events around each step, median of --steps steps after warm-up.

  python3 bench/compare_optim_cuda.py build-gpu/bin/bench_optim --params 1000000000 --out FILE

--device cpu runs the same plumbing against the CPU benchmarks (no fused PyTorch kernels, no
copy ceiling): a check of the script on a machine without a GPU, not a measurement to report.
"""

import argparse
import datetime
import inspect
import os
import statistics
import sys
import time

from compare_optim import run_bench  # bench/ is on sys.path: it is this script's folder

LAYOUTS = [1, 200]
OPS = ("adamw", "sgd_momentum", "clip_adamw", "grad_norm")
BYTES_PER_PARAM = {"adamw": 28, "sgd_momentum": 20, "clip_adamw": 32, "grad_norm": 4}


def run_bench_median(bench, n_params, device, reps, min_time):
    env = dict(os.environ, TRAINRT_BENCH_OPTIM_PARAMS=str(n_params))
    # scripts/gpu_check.sh runs this script with the system's library path (for PyTorch) and
    # passes the one bench_optim needs (its unpacked dependencies) here.
    if "TRAINRT_BENCH_LD_LIBRARY_PATH" in os.environ:
        env["LD_LIBRARY_PATH"] = os.environ["TRAINRT_BENCH_LD_LIBRARY_PATH"]
    # Only the device's benchmarks (and its ceiling), not the CPU ceilings' 16M-param arrays.
    filt = "/cuda" if device == "cuda" else "^(adamw|sgd_momentum|clip_adamw|grad_norm|clip_overhead)/cpu"
    res = run_bench(bench, reps, min_time, bench_filter=filt, env=env)
    return {k: (v if k == "_context" else statistics.median(v)) for k, v in res.items()}


def has_kwarg(cls, name):
    try:
        return name in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def torch_times(torch, n_params, device, steps):
    dev = torch.device(device)
    g = torch.Generator(device=dev).manual_seed(0)
    cuda = dev.type == "cuda"

    def timed(fn):
        for _ in range(3):
            fn()
        if cuda:
            torch.cuda.synchronize()
        ts = []
        for _ in range(steps):
            if cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                ts.append(a.elapsed_time(b))
            else:
                t0 = time.perf_counter()
                fn()
                ts.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ts)

    out = {}
    fused_sgd = has_kwarg(torch.optim.SGD, "fused")
    fused_adamw = has_kwarg(torch.optim.AdamW, "fused") and cuda
    for tensors in LAYOUTS:
        sizes = [n_params // tensors + (1 if t < n_params % tensors else 0) for t in range(tensors)]
        params = [torch.nn.Parameter(torch.rand(n, generator=g, device=dev) * 2 - 1) for n in sizes]
        for p in params:
            p.grad = (torch.rand(p.numel(), generator=g, device=dev) * 2 - 1) * 1e-2
        variants = {"foreach": {"foreach": True}}
        if fused_adamw:
            variants["fused"] = {"fused": True}
        for name, kw in variants.items():
            opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2, **kw)
            out[("adamw", tensors, name)] = timed(opt.step)
            del opt
            opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2, **kw)
            clip_kw = {"foreach": True} if has_kwarg(torch.nn.utils.clip_grad_norm_, "foreach") else {}

            def clip_step():
                torch.nn.utils.clip_grad_norm_(params, 1.0, **clip_kw)
                opt.step()

            out[("clip_adamw", tensors, name)] = timed(clip_step)
            del opt
        sgd_variants = {"foreach": {"foreach": True}}
        if fused_sgd and cuda:
            sgd_variants["fused"] = {"fused": True}
        for name, kw in sgd_variants.items():
            opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4, **kw)
            out[("sgd_momentum", tensors, name)] = timed(opt.step)
            del opt
        grads = [p.grad for p in params]
        if hasattr(torch, "_foreach_norm"):
            out[("grad_norm", tensors, "foreach")] = timed(
                lambda: torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0))
        else:
            out[("grad_norm", tensors, "foreach")] = timed(
                lambda: torch.norm(torch.stack([torch.norm(x, 2.0) for x in grads]), 2.0))
        del params, grads
        if cuda:
            torch.cuda.empty_cache()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", help="path to bench_optim (built with the CUDA module)")
    ap.add_argument("--params", type=int, default=1_000_000_000)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--reps", type=int, default=3, help="bench_optim repetitions")
    ap.add_argument("--min-time", type=float, default=0.2, help="bench_optim seconds per benchmark")
    ap.add_argument("--steps", type=int, default=20, help="timed PyTorch steps per config")
    ap.add_argument("--out", help="write the markdown report here")
    args = ap.parse_args()
    import torch  # noqa: E402 - after argument parsing so --help works without torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("compare_optim_cuda: torch.cuda is not available", file=sys.stderr)
        return 3
    tr = run_bench_median(args.bench, args.params, args.device, args.reps, args.min_time)
    th = torch_times(torch, args.params, args.device, args.steps)
    d = args.device
    copy_bw = tr.get("ceiling_copy/%s#bytes_per_second" % d)  # B/s, read + written
    gpu = torch.cuda.get_device_name(0) if d == "cuda" else "CPU (plumbing check only)"
    header = ["op", "tensors", "trainrt ms", "torch fused ms", "torch foreach ms",
              "speedup vs torch's fastest", "trainrt GB/s", "copy-ceiling ms", "trainrt / ceiling"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for op in OPS:
        for tensors in LAYOUTS:
            key = "%s/%s/tensors:%d" % (op, d, tensors)
            if key not in tr:
                lines.append("| %s | %d | (no result) |" % (op, tensors))
                continue
            t = tr[key]
            fused, foreach = th.get((op, tensors, "fused")), th.get((op, tensors, "foreach"))
            best = min(x for x in (fused, foreach) if x is not None)
            nbytes = BYTES_PER_PARAM[op] * args.params
            ceil_ms = nbytes / copy_bw * 1e3 if copy_bw else None
            lines.append("| " + " | ".join([
                op, str(tensors), "%.3f" % t, "%.3f" % fused if fused is not None else "n/a",
                "%.3f" % foreach, "%.2fx" % (best / t), "%.0f" % (nbytes / (t * 1e-3) / 1e9),
                "%.3f" % ceil_ms if ceil_ms else "n/a",
                "%.2fx" % (t / ceil_ms) if ceil_ms else "n/a"]) + " |")
    paired = []
    for tensors in LAYOUTS:
        k = "clip_overhead/%s/tensors:%d" % (d, tensors)
        if k + "#ratio" in tr:
            paired.append("%d tensors %.3fx (step %.3f ms, clip + step %.3f ms)" % (
                tensors, tr[k + "#ratio"], tr[k + "#alone_ms"], tr[k + "#with_ms"]))
    report = [
        "# Optimizer steps on the GPU: trainrt vs PyTorch %s" % torch.__version__,
        "",
        "%s; %s; %d f32 params (%s); bench_optim --benchmark_repetitions=%d "
        "--benchmark_min_time=%g (medians); PyTorch: median of %d steps (%s) after 3 "
        "warm-up steps; torch fused SGD %s." % (
            datetime.date.today().isoformat(), gpu, args.params, "{:,}".format(args.params),
            args.reps, args.min_time, args.steps, "CUDA events" if d == "cuda" else "wall time",
            "available" if has_kwarg(torch.optim.SGD, "fused") else "not in this version"),
        "",
        "Bytes per param: AdamW 28, SGD momentum 20, clip + AdamW 32 (trainrt folds the clip "
        "coefficient into the step; PyTorch's clip writes the grads), grad_norm 4. Copy ceiling: "
        + ("%.0f GB/s (bench_optim ceiling_copy, a device-to-device copy, read + written bytes)"
           % (copy_bw / 1e9) if copy_bw else "not measured"),
        "",
    ] + lines + [
        "",
        "Paired clip + step / step alone (clip_overhead; target <= 1.1x): "
        + ("; ".join(paired) if paired else "not measured") + ".",
    ]
    text = "\n".join(report) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
