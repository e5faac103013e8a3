#!/usr/bin/python3
"""trainrt's bench_optim beside PyTorch's CPU optimizers, in the same run, on the same sizes.

Times, over 16M f32 parameters held in 1 tensor and in 200 tensors (docs/PERF.md):
  adamw              torch.optim.AdamW(lr=1e-3, wd=1e-2).step(), foreach False and True
  sgd_momentum       torch.optim.SGD(lr=1e-3, momentum=0.9, wd=1e-4).step(), foreach False/True
  clip_adamw         torch.nn.utils.clip_grad_norm_(params, 1.0) + AdamW.step()
  grad_norm          the total norm as clip_grad_norm_ computes it (torch.norm of the stacked
                     per-grad norms), against trainrt::grad_norm and ceiling_norm
against bench_optim's fused steps (one pass; clip_adamw folds the clip coefficient into the step)
and the one-pass bandwidth ceilings it measures in the same run (ceiling_adamw: the AdamW access
pattern, 28 B/param; ceiling_sgd: 20 B/param; ceiling_read: the norm's read pass, 4 B/param;
ceiling_clip_adamw: a read pass over g, then the AdamW pattern, as clip + step; each ceiling in two
forms, with and without software prefetches, the faster one taken), the paired clip_overhead
benchmarks (the step alone and clip + step in alternating pairs) and the paired
ceiling_adamw_reads (the AdamW pattern's reads without its writes, against the pattern: how
read-bound the step is, which sets what a separate norm pass costs). PyTorch runs with
torch.set_num_threads(2) (this machine's core count), on random data, median of many steps after
warm-up. Rounds alternate trainrt and PyTorch so both see the same machine load; the table holds
medians over rounds, the load average and CPU pressure (PSI) of the run.

  /usr/bin/python3 bench/compare_optim.py build/bin/bench_optim --out bench/results/DATE-optim-cpu.md

Debian's python3-torch (1.13) lives in /usr/bin/python3, not in a pyenv python3 on PATH.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

N_PARAMS = 16 << 20
LAYOUTS = [1, 200]
OPS = ("adamw", "sgd_momentum", "clip_adamw", "grad_norm")


def psi_some_avg10():
    try:
        with open("/proc/pressure/cpu") as f:
            return float(f.readline().split()[1].split("=")[1])
    except Exception:  # noqa: BLE001 - no PSI on this kernel
        return None


def psi_some_total():
    """Microseconds some task waited for a CPU, since boot (None without PSI)."""
    try:
        with open("/proc/pressure/cpu") as f:
            return int(f.readline().split()[4].split("=")[1])
    except Exception:  # noqa: BLE001
        return None


def wait_quiet(max_seconds, threshold):
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_seconds:
        v = psi_some_avg10()
        if v is None or v < threshold:
            break
        time.sleep(2)
    return time.monotonic() - t0


def machine():
    model = ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
    except Exception:  # noqa: BLE001
        pass
    return "%s, %d logical CPUs" % (model or platform.processor(), os.cpu_count())


def run_bench(bench, reps, min_time, bench_filter="/cpu", env=None):
    """bench_optim's JSON as {name: [ms per repetition], name#counter: [...], _context: ...}
    (also used by compare_optim_cuda.py)."""
    cmd = [bench, "--benchmark_format=json", "--benchmark_filter=" + bench_filter,
           "--benchmark_repetitions=%d" % reps, "--benchmark_min_time=%g" % min_time]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    doc = json.loads(out)
    res = {"_context": doc.get("context", {}).get("cpu_backend", "?")}
    for b in doc["benchmarks"]:
        if b.get("run_type") != "iteration":
            continue
        name = b["run_name"].split("/min_time")[0].split("/manual_time")[0]
        unit = {"ms": 1e-3, "us": 1e-6, "ns": 1e-9, "s": 1.0}[b["time_unit"]]
        res.setdefault(name, []).append(b["real_time"] * unit * 1e3)  # ms
        # the paired benchmarks' counters (run_paired), and the device's copy ceiling's rate
        for counter in ("ratio", "alone_ms", "with_ms", "bytes_per_second"):
            if counter in b:
                res.setdefault(name + "#" + counter, []).append(b[counter])
    return res


def torch_times(torch, steps, threads):
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    out = {}
    for tensors in LAYOUTS:
        sizes = [N_PARAMS // tensors + (1 if t < N_PARAMS % tensors else 0) for t in range(tensors)]
        params = [torch.nn.Parameter(torch.rand(n, generator=g) * 2 - 1) for n in sizes]
        grads = [(torch.rand(n, generator=g) * 2 - 1) * 1e-2 for n in sizes]

        def set_grads():
            for p, gr in zip(params, grads):
                p.grad = gr.clone()

        def timed(fn):
            for _ in range(2):
                fn()
            ts = []
            for _ in range(steps):
                t0 = time.perf_counter()
                fn()
                ts.append((time.perf_counter() - t0) * 1e3)
            return ts

        for foreach in (False, True):
            set_grads()
            opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2, foreach=foreach)
            out[("adamw", tensors, foreach)] = timed(opt.step)
            opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4, foreach=foreach)
            out[("sgd_momentum", tensors, foreach)] = timed(opt.step)
            opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2, foreach=foreach)

            def clip_step():
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()

            out[("clip_adamw", tensors, foreach)] = timed(clip_step)
            # torch 1.13's clip_grad_norm_ computes its total norm this way (foreach does not
            # apply; both keys hold the same measurement so the table code stays uniform).
            out[("grad_norm", tensors, foreach)] = timed(
                lambda: torch.norm(torch.stack([torch.norm(p.grad.detach(), 2.0) for p in params]), 2.0))
        del params, grads
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", help="path to bench_optim")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3, help="bench_optim repetitions per round")
    ap.add_argument("--min-time", type=float, default=0.3, help="bench_optim seconds per benchmark")
    ap.add_argument("--steps", type=int, default=15, help="timed PyTorch steps per config")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--wait-quiet", type=float, default=0.0,
                    help="before each round wait up to this many seconds for CPU PSI < 10%%")
    ap.add_argument("--psi", type=float, default=10.0, help="PSI threshold of --wait-quiet")
    ap.add_argument("--out", help="write the markdown report here")
    args = ap.parse_args()
    import torch  # noqa: E402 - after argument parsing so --help works without torch

    tr, th, loads, psis, shares = {}, {}, [], [], []
    backend = "?"
    for r in range(args.rounds):
        if args.wait_quiet > 0:
            wait_quiet(args.wait_quiet, args.psi)
        loads.append(os.getloadavg()[0])
        psis.append(psi_some_avg10())
        p0, t0 = psi_some_total(), time.monotonic()
        for k, v in run_bench(args.bench, args.reps, args.min_time).items():
            if k == "_context":
                backend = v
                continue
            tr.setdefault(k, []).extend(v)
        for k, v in torch_times(torch, args.steps, args.threads).items():
            th.setdefault(k, []).extend(v)
        p1, t1 = psi_some_total(), time.monotonic()
        if p0 is not None and p1 is not None:
            shares.append(100.0 * (p1 - p0) / 1e6 / (t1 - t0))
        print("round %d/%d done (load %.2f, PSI at start %s, CPU pressure during %s %%)"
              % (r + 1, args.rounds, loads[-1], psis[-1], "%.0f" % shares[-1] if shares else "?"),
              file=sys.stderr)
    trm = {k: statistics.median(v) for k, v in tr.items()}
    thm = {k: statistics.median(v) for k, v in th.items()}
    trmin = {k: min(v) for k, v in tr.items()}
    thmin = {k: min(v) for k, v in th.items()}
    # Each ceiling loop runs with and without software prefetches (bench_optim.cpp); the
    # ceiling is the faster form in each statistic.
    ceiling_loop = {"adamw": "ceiling_adamw", "sgd_momentum": "ceiling_sgd",
                    "clip_adamw": "ceiling_clip_adamw", "grad_norm": "ceiling_norm"}

    def best_form(stats, loop):
        return min(stats.get(loop + "/cpu", float("inf")), stats.get(loop + "_hw/cpu", float("inf")))

    ceil = {op: best_form(trm, loop) for op, loop in ceiling_loop.items()}
    ceil_clip_ratio = "%.2fx (medians), %.2fx (best times)" % (
        best_form(trm, "ceiling_clip_adamw") / best_form(trm, "ceiling_adamw"),
        best_form(trmin, "ceiling_clip_adamw") / best_form(trmin, "ceiling_adamw"))
    bytes_per = {"adamw": 28, "sgd_momentum": 20, "clip_adamw": 32, "grad_norm": 4}
    rows = []
    for op in OPS:
        for tensors in LAYOUTS:
            t = trm["%s/cpu/tensors:%d" % (op, tensors)]
            tf, tt = thm[(op, tensors, False)], thm[(op, tensors, True)]
            best = min(tf, tt)
            gbps = bytes_per[op] * N_PARAMS / (t * 1e-3) / 1e9
            rows.append([op, str(tensors), "%.1f" % t, "%.1f" % tf, "%.1f" % tt, "%.2fx" % (best / t),
                         "%.1f" % gbps, "%.1f" % ceil[op], "%.2fx" % (t / ceil[op])])
    min_rows = []
    for op in OPS:
        ceil_min = best_form(trmin, ceiling_loop[op])
        for tensors in LAYOUTS:
            t = trmin["%s/cpu/tensors:%d" % (op, tensors)]
            best = min(thmin[(op, tensors, False)], thmin[(op, tensors, True)])
            min_rows.append([op, str(tensors), "%.1f" % t, "%.1f" % best, "%.2fx" % (best / t),
                             "%.1f" % ceil_min, "%.2fx" % (t / ceil_min)])
    clip_ratio_min = ["%d tensors: %.2fx" % (n, trmin["clip_adamw/cpu/tensors:%d" % n] /
                                              trmin["adamw/cpu/tensors:%d" % n]) for n in LAYOUTS]
    clip_ratio = ["%d tensors: %.2fx" % (n, trm["clip_adamw/cpu/tensors:%d" % n] /
                                          trm["adamw/cpu/tensors:%d" % n]) for n in LAYOUTS]
    header = ["op", "tensors", "trainrt ms", "torch ms (foreach=False)", "torch ms (foreach=True)",
              "speedup vs torch's fastest", "trainrt GB/s", "ceiling ms", "trainrt / ceiling"]
    lines = []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for row in rows:
        lines.append("| " + " | ".join(row) + " |")
    min_header = ["op", "tensors", "trainrt min ms", "torch fastest min ms", "speedup",
                  "ceiling min ms", "trainrt / ceiling"]
    min_lines = ["| " + " | ".join(min_header) + " |", "|" + "---|" * len(min_header)]
    min_lines += ["| " + " | ".join(r) + " |" for r in min_rows]
    extra = [k for k in sorted(trm) if k.startswith("clip_params") and "#" not in k]

    def paired(name):
        return "%.2fx (step %.1f ms, clip + step %.1f ms)" % (
            trm[name + "#ratio"], trm[name + "#alone_ms"], trm[name + "#with_ms"])

    ceil_pair = min(("ceiling_clip_overhead/cpu", "ceiling_clip_overhead_hw/cpu"),
                    key=lambda k: trm.get(k + "#alone_ms", float("inf")))
    paired_line = (
        "Paired (clip_overhead: the step alone and clip + step timed in alternating pairs, the "
        "median of the per-pair ratios over all rounds, robust against the load drift between "
        "benchmarks): " + ", ".join("%d tensors %s" % (n, paired("clip_overhead/cpu/tensors:%d" % n))
                                    for n in LAYOUTS)
        + "; the ceiling loops (%s) %s." % (ceil_pair.split("/")[0], paired(ceil_pair)))
    reads_pair = min(("ceiling_adamw_reads/cpu", "ceiling_adamw_reads_hw/cpu"),
                     key=lambda k: trm.get(k + "#alone_ms", float("inf")))
    reads_line = ""
    if reads_pair + "#ratio" in trm:
        share = trm[reads_pair + "#ratio"]
        reads_line = (
            "Is the step read-bound? The AdamW pattern's four reads without its three writes "
            "(%s, paired with the pattern) take %.2fx the step's time (reads %.1f ms, step %.1f ms). "
            "A separate norm pass adds one read stream to the step's four, so at the same read rate "
            "it costs about %.2f x 1/4 = %.2f of the step: clip + step >= ~%.2fx here, not the "
            "32/28 = 1.14x of the byte count, which holds only where writes cost as much as reads."
            % (reads_pair.split("/")[0], share, trm[reads_pair + "#with_ms"],
               trm[reads_pair + "#alone_ms"], share, share / 4, 1 + share / 4))
    report = [
        "# Optimizer steps on the CPU: trainrt vs PyTorch %s" % torch.__version__,
        "",
        "%s; %s; trainrt CPU backend: %s; PyTorch threads %d; %d rounds (medians); "
        "load average at round starts %s; "
        "CPU PSI some avg10 at round starts %s; share of each round's time in which some task "
        "waited for a CPU (other helpers' builds and tests) %s %%." % (
            datetime.date.today().isoformat(), machine(), backend, args.threads, args.rounds,
            ", ".join("%.2f" % v for v in loads), ", ".join("%s" % v for v in psis),
            ", ".join("%.0f" % v for v in shares)),
        "",
        "16M f32 params (16,777,216). Bytes per param: AdamW 28, SGD momentum 20, clip + AdamW 32 "
        "(trainrt folds the clip coefficient into the step; PyTorch's clip writes the grads), "
        "grad_norm 4 (its ceiling is ceiling_norm, the same read pass over one buffer).",
        "",
    ] + lines + [
        "",
        "clip + step / step alone (trainrt, medians): " + ", ".join(clip_ratio) + "; the same ratio "
        "for the ceiling loops (what a separate read pass costs on this machine): " + ceil_clip_ratio
        + ".",
        "",
        paired_line,
        "",
        reads_line,
        "",
        "Best times (the least disturbed run of each; the machine is shared, so medians include "
        "time other processes took from our two threads):",
        "",
    ] + min_lines + [
        "",
        "clip + step / step alone (trainrt, best times): " + ", ".join(clip_ratio_min) + ".",
        "",
        "trainrt's clip in PyTorch's way (clip_grad_norm_(params) writes the grads, then the step; "
        "the grads are restored, untimed, before each): "
        + ", ".join("%s %.1f ms" % (k.split("/")[2], trm[k]) for k in extra) + ".",
        "",
        "Ceilings (same run; _hw: the same loop without software prefetches; the table uses the "
        "faster form): " + ", ".join("%s %.1f ms" % (k.split("/")[0], v) for k, v in sorted(trm.items())
                                               if k.startswith("ceiling") and "#" not in k
                                               and "clip_overhead" not in k
                                               and "adamw_reads" not in k) + ".",
    ]
    text = "\n".join(report) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
