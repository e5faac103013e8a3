#!/usr/bin/python3
"""Training-step throughput: trainrt's bench_train beside the same steps in PyTorch, in one run.

The Fashion-MNIST MLP 784-256-128-10 (ReLU) at batch 128, f32, on the CPU, on random data (8
batches of features U(-1, 1) and random labels, rotating; no dataset needed). One step, in both:

  train_step_adamw    zero_grad(set_to_none) -> forward -> cross_entropy (mean) -> loss.item()
                      -> backward -> AdamW(lr=1e-3, weight_decay=1e-4).step()
  train_step_sgd      the same with SGD(lr=1e-2, momentum=0.9, weight_decay=1e-4)
  trainer_step_adamw  train_step_adamw plus what trainrt's Trainer does per step: the accuracy
                      count (argmax == label, read on the host), the total grad norm
                      (clip_grad_norm_(params, inf).item(): PyTorch's way to read it) and a
                      CosineAnnealingLR step

trainrt runs bench_train (Google Benchmark, --benchmark_format=json, OMP_NUM_THREADS and
OPENBLAS_NUM_THREADS set to --threads); PyTorch runs in this process with
torch.set_num_threads(--threads) (default 2), torch.optim's default implementation of 1.13
(foreach=None: the per-tensor loop on the CPU), the input without requires_grad (no dx for the
first layer, as trainrt's Trainer sets with set_input_grad(false)). Rounds alternate bench_train
and PyTorch so that both see the same machine load; per round and step kind, bench_train gives
--reps repetitions of at least --min-time seconds, and PyTorch as many timed blocks of at least
--min-time seconds each, after 3 warm-up steps. The table holds steps/s (medians over all
repetitions of all rounds, and the best repetition), trainrt / PyTorch, and the share of the
wall time the timing thread was on a CPU (near 1: undisturbed; other load on the machine stalls
the two-thread teams and shows as a lower share), with the machine, the commit, the load and the
CPU pressure (PSI) of the run.

Accuracy "at the same accuracy": both sides run the same arithmetic, so the same steps reach the
same accuracy; this is checked elsewhere, not timed here: tests/test_train_golden.cpp
(tests/fixtures/gen_train_fixture.py) compares the losses, grad norms, lrs and final parameters
of the first 10 training steps of an MLP (SGD momentum, AdamW, AdamW + clipping + cosine) with
PyTorch 1.13, through an explicit loop and through Trainer::fit, and examples/fashion_mnist_mlp
(scripts/demo.sh) trains this very model on Fashion-MNIST to its test accuracy (README: 89.42 %
after 10 epochs).

  cmake --build build --target bench_train
  /usr/bin/python3 bench/compare_train.py build/bin/bench_train --out bench/results/DATE-train-cpu.md
  /usr/bin/python3 bench/compare_train.py build/bin/bench_train --rounds 1 --reps 1 --min-time 0.2  # smoke

Debian's python3-torch (1.13) lives in /usr/bin/python3, not in a pyenv python3 on PATH.
"""

import argparse
import datetime
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_torch import (  # noqa: E402 - the shared helpers of the bench scripts
    cpu_pressure,
    cpu_times,
    fmt,
    git_commit,
    load_average,
    machine_description,
    markdown_table,
    pressure_share,
    steal_share,
    text_table,
    wait_quiet,
)

KINDS = ["train_step_adamw", "train_step_sgd", "trainer_step_adamw"]
BATCH, IN, CLASSES, BATCHES = 128, 784, 10, 8
WARMUP = 3
COSINE_T_MAX = 4690  # the demo's cosine schedule: 10 epochs of 469 steps


def run_bench(bench, reps, min_time, threads, extra):
    cmd = [
        bench,
        "--benchmark_format=json",
        "--benchmark_filter=/cpu",
        f"--benchmark_repetitions={reps}",
        f"--benchmark_min_time={min_time}",
    ] + extra
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    print(f"+ OMP_NUM_THREADS={threads} OPENBLAS_NUM_THREADS={threads} "
          + " ".join(shlex.quote(c) for c in cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{bench} failed with exit status {proc.returncode}")
    doc = json.loads(proc.stdout)
    runs = {}
    for b in doc["benchmarks"]:
        if b.get("run_type") != "iteration" or "error_occurred" in b:
            continue
        kind = b["run_name"].split("/")[0]
        runs.setdefault(kind, []).append(
            {"steps_per_s": b["items_per_second"], "cpu_share": b["cpu_time"] / b["real_time"]})
    return doc.get("context", {}), runs


class TorchSteps:
    """The three step kinds in PyTorch, each with its own model and optimizer state."""

    def __init__(self, torch, threads):
        self.torch = torch
        self.F = torch.nn.functional
        torch.set_num_threads(threads)
        g = torch.Generator().manual_seed(42)
        self.xs = [torch.rand(BATCH, IN, generator=g) * 2 - 1 for _ in range(BATCHES)]
        self.ys = [torch.randint(0, CLASSES, (BATCH,), generator=g) for _ in range(BATCHES)]
        self.state = {k: self.make(k) for k in KINDS}

    def make(self, kind):
        torch = self.torch
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(IN, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128), torch.nn.ReLU(),
            torch.nn.Linear(128, CLASSES))
        model.train()
        params = list(model.parameters())
        if kind == "train_step_sgd":
            opt = torch.optim.SGD(params, lr=1e-2, momentum=0.9, weight_decay=1e-4)
        else:
            opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
        sched = None
        if kind == "trainer_step_adamw":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=COSINE_T_MAX, eta_min=0.0)
        return {"model": model, "params": params, "opt": opt, "sched": sched, "b": 0, "sink": 0.0}

    def step(self, kind):
        s = self.state[kind]
        x, y = self.xs[s["b"]], self.ys[s["b"]]
        s["b"] = (s["b"] + 1) % BATCHES
        s["opt"].zero_grad(set_to_none=True)
        out = s["model"](x)
        loss = self.F.cross_entropy(out, y)
        s["sink"] += loss.item()
        if kind == "trainer_step_adamw":
            s["sink"] += (out.detach().argmax(dim=1) == y).sum().item()
        loss.backward()
        if kind == "trainer_step_adamw":
            s["sink"] += self.torch.nn.utils.clip_grad_norm_(s["params"], float("inf")).item()
        s["opt"].step()
        if s["sched"] is not None:
            s["sched"].step()

    def measure(self, kind, blocks, min_time):
        """`blocks` timed blocks of at least min_time seconds each: steps/s and CPU share."""
        for _ in range(WARMUP):
            self.step(kind)
        out = []
        for _ in range(blocks):
            n = 0
            t0, c0 = time.perf_counter(), time.thread_time()
            while True:
                self.step(kind)
                n += 1
                elapsed = time.perf_counter() - t0
                if elapsed >= min_time and n >= 3:
                    break
            out.append({"steps_per_s": n / elapsed, "cpu_share": (time.thread_time() - c0) / elapsed})
        if not math.isfinite(self.state[kind]["sink"]):
            raise SystemExit(f"PyTorch {kind}: the loss became non-finite")
        return out


def trainrt_coretype(bench):
    """The OPENBLAS_CORETYPE trainrt itself sets when it opens OpenBLAS (src/backend/cpu_gemm.cpp),
    read from bench_train's context (trainrt::cpu_gemm_info()) after one short run, or None
    when trainrt leaves the choice to OpenBLAS."""
    cmd = [bench, "--benchmark_format=json", "--benchmark_filter=train_step_sgd/cpu",
           "--benchmark_min_time=0.01"]
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{bench} failed with exit status {proc.returncode}")
    info = json.loads(proc.stdout).get("context", {}).get("cpu_gemm", "")
    m = re.search(r"OPENBLAS_CORETYPE=(\w+) set by trainrt", info)
    return m.group(1) if m else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", nargs="?", default="build/bin/bench_train", help="bench_train executable")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch.set_num_threads, and OMP_NUM_THREADS / OPENBLAS_NUM_THREADS of bench_train")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of bench_train + PyTorch, alternating")
    ap.add_argument("--reps", type=int, default=5,
                    help="bench_train --benchmark_repetitions, and PyTorch timed blocks, per round")
    ap.add_argument("--min-time", type=float, default=1.0,
                    help="seconds per bench_train repetition (--benchmark_min_time) and per PyTorch block")
    ap.add_argument("--bench-arg", action="append", default=[], help="extra argument for bench_train")
    ap.add_argument("--wait-quiet", type=float, default=0.0,
                    help="before each round wait up to this many seconds for CPU pressure avg10 < --quiet-psi")
    ap.add_argument("--quiet-psi", type=float, default=2.0, help="CPU PSI threshold (%%) of --wait-quiet")
    ap.add_argument("--commit", help="commit to name in the report (default: git rev-parse HEAD of this checkout)")
    ap.add_argument("--out", help="write the report as markdown to this file")
    ap.add_argument("--json-out", help="write all raw measurements as JSON to this file")
    ap.add_argument("--note", action="append", default=[], help="a line to add to the report")
    ap.add_argument("--torch-openblas", choices=["same", "own"], default="same",
                    help="same (default): PyTorch's OpenBLAS runs the kernels trainrt picks for this "
                         "CPU (OPENBLAS_CORETYPE set before torch is imported, unless already set); "
                         "own: OpenBLAS's own choice (Prescott on CPUs that OpenBLAS 0.3.21 does not know)")
    args = ap.parse_args()
    core = trainrt_coretype(args.bench)
    if args.torch_openblas == "same" and core and "OPENBLAS_CORETYPE" not in os.environ:
        os.environ["OPENBLAS_CORETYPE"] = core  # read once, when torch loads OpenBLAS
    torch_blas = os.environ.get("OPENBLAS_CORETYPE", "OpenBLAS's own choice")
    import torch  # noqa: PLC0415 - after argument parsing so --help works without torch

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = load_average()
    psi_before, stat_before = cpu_pressure(), cpu_times()
    torch_steps = TorchSteps(torch, args.threads)
    tr, th, rounds, ctx = {}, {}, [], {}
    for r in range(args.rounds):
        waited = wait_quiet(args.wait_quiet, args.quiet_psi) if args.wait_quiet > 0 else 0.0
        psi0 = cpu_pressure()
        ctx, runs = run_bench(args.bench, args.reps, args.min_time, args.threads, args.bench_arg)
        for k, v in runs.items():
            tr.setdefault(k, []).extend(v)
        torch_runs = {}
        for k in KINDS:
            torch_runs[k] = torch_steps.measure(k, args.reps, args.min_time)
            th.setdefault(k, []).extend(torch_runs[k])
        share = pressure_share(psi0, cpu_pressure())
        rounds.append({"round": r + 1, "waited_s": waited, "pressure": share, "trainrt": runs, "torch": torch_runs})
        print(f"round {r + 1}/{args.rounds}: CPU pressure {fmt(None if share is None else 100 * share, '.1f')} %"
              + (f" (waited {waited:.0f} s for a quiet machine)" if args.wait_quiet > 0 else ""),
              file=sys.stderr, flush=True)

    missing = [k for k in KINDS if k not in tr]
    if missing:
        raise SystemExit(f"{args.bench} reported no result for {', '.join(missing)}")

    def med(runs, key):
        return statistics.median(v[key] for v in runs)

    header = ["step", "trainrt steps/s", "PyTorch steps/s", "trainrt / PyTorch", "trainrt best", "PyTorch best",
              "best / best", "trainrt samples/s", "CPU share trainrt / PyTorch"]
    rows = []
    for k in KINDS:
        a, b = med(tr[k], "steps_per_s"), med(th[k], "steps_per_s")
        abest, bbest = max(v["steps_per_s"] for v in tr[k]), max(v["steps_per_s"] for v in th[k])
        rows.append([k, f"{a:.1f}", f"{b:.1f}", f"{a / b:.2f}x", f"{abest:.1f}", f"{bbest:.1f}",
                     f"{abest / bbest:.2f}x", f"{a * BATCH:.0f}",
                     f"{med(tr[k], 'cpu_share'):.2f} / {med(th[k], 'cpu_share'):.2f}"])
    load_after = load_average()
    pressure = pressure_share(psi_before, cpu_pressure())
    steal = steal_share(stat_before, cpu_times())

    print()
    print(text_table(header, rows))
    if pressure is not None:
        print(f"\nCPU pressure during the run (some task waiting for a CPU): {100 * pressure:.1f} % of the time")

    build_dir = os.path.dirname(os.path.dirname(args.bench)) or "build"
    argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        f"# Training steps per second on the CPU: trainrt vs PyTorch, {started.date().isoformat()}",
        "",
        "Fashion-MNIST MLP 784-256-128-10 (ReLU), batch 128, f32, random data; one step = zero_grad, "
        "forward, cross-entropy loss and grad, backward, optimizer step (see bench/compare_train.py).",
        "",
        f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}",
        f"- trainrt commit measured: {args.commit or git_commit(repo)}",
        f"- machine: {machine_description()}",
        f"- trainrt {ctx.get('trainrt_version', '?')}; CPU backend: {ctx.get('cpu_backend', 'unknown')}; "
        f"OpenMP threads {ctx.get('omp_max_threads', '?')}",
        f"- CPU GEMM: trainrt: {ctx.get('cpu_gemm', 'unknown')}; PyTorch's OpenBLAS: "
        f"OPENBLAS_CORETYPE={torch_blas} (--torch-openblas {args.torch_openblas})",
        f"- PyTorch {torch.__version__}, torch.set_num_threads({args.threads})",
        f"- load average (1, 5, 15 min) before: {load_before}; after: {load_after}",
    ]
    if pressure is not None:
        lines.append(f"- CPU pressure during the run (/proc/pressure/cpu 'some': share of the time at least one "
                     f"runnable task waited for a CPU): {100 * pressure:.1f} %; per round: "
                     + ", ".join(fmt(None if x["pressure"] is None else 100 * x["pressure"], ".1f") for x in rounds))
    if steal is not None:
        lines.append(f"- CPU time stolen by the hypervisor during the run (/proc/stat steal): {100 * steal:.1f} %")
    lines += [f"- note: {n}" for n in args.note]
    lines += [
        f"- method: {args.rounds} round(s); per round bench_train (--benchmark_repetitions={args.reps}, "
        f"--benchmark_min_time={args.min_time:g}) then PyTorch ({args.reps} timed blocks of at least "
        f"{args.min_time:g} s per step kind, after {WARMUP} warm-up steps)"
        + (f", each round after waiting up to {args.wait_quiet:g} s for CPU pressure avg10 < {args.quiet_psi:g} %"
           if args.wait_quiet > 0 else "")
        + "; medians and best over all repetitions / blocks; CPU share = the timing thread's CPU time / wall time.",
        "",
        markdown_table(header, rows),
        "",
        "Reproduce:",
        "",
        "```sh",
        f"cmake -S . -B {build_dir} -G Ninja -DCMAKE_BUILD_TYPE=Release && cmake --build {build_dir} --target bench_train",
        f"/usr/bin/python3 bench/compare_train.py {argv}",
        "```",
        "",
    ]
    text = "\n".join(lines)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)
        print(f"\nwrote {args.out}")
    else:
        print()
        print(text)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"context": ctx, "rounds": rounds}, f, indent=1)


if __name__ == "__main__":
    main()
