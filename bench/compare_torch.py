#!/usr/bin/python3
"""trainrt's bench_losses beside PyTorch, in the same run, on the same shapes.

Times, on one device (cpu or cuda):
  cross_entropy_fwd_bwd  F.cross_entropy(x, t) (reduction mean) and its input gradient
                         (torch.autograd.grad, a fresh gradient tensor, as trainrt returns)
  cross_entropy_ls_fwd_bwd  the same with label_smoothing=0.1
  softmax_fwd            torch.softmax(x, -1) under no_grad
  mse_fwd_bwd            F.mse_loss(x, y) (mean) and its input gradient, y another buffer
                         (torch 1.13 has no bf16 mse_loss on the CPU: n/a there)
at logits 4096x1000 and 512x32000, f32 and bf16, on random data, rotating among input
buffers whose total exceeds the last-level cache (the same total bench_losses uses). It runs
the bench_losses executable (--benchmark_format=json) in each round, alternating with the
PyTorch timings so that both see the same machine load, and prints a table: op, shape,
trainrt ms, torch ms, speedup (torch/trainrt), trainrt GB/s, ceiling GB/s (the faster of
bench_losses' ceiling_copy and ceiling_copy_nt over the same bytes, measured in the same run)
and the fraction of it. Times are
medians over all repetitions of all rounds (PyTorch: after warm-up). Bytes per call follow
docs/PERF.md: read the logits once and write one output of the same size (mse_fwd_bwd: read
input and target, write the gradient: three times the buffer).

CPU (Debian's python3-torch 1.13; use /usr/bin/python3, not a python3 without torch):
  /usr/bin/python3 bench/compare_torch.py build/bin/bench_losses --out bench/results/DATE-cpu.md
CUDA (torch timed with CUDA events around batches of calls, like bench_losses' CUDA timing):
  python3 bench/compare_torch.py build/bin/bench_losses --device cuda --out gpu_out/compare_cuda.md
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

SHAPES = [(4096, 1000), (512, 32000)]
DTYPES = ["f32", "bf16"]
OPS = ["cross_entropy_fwd_bwd", "cross_entropy_ls_fwd_bwd", "softmax_fwd", "mse_fwd_bwd"]
DTYPE_BYTES = {"f32": 4, "bf16": 2}
CUDA_BATCH = 32  # calls per timed batch on CUDA, as bench_losses
CE_TARGET_SPEEDUP = {"cpu": 4.0, "cuda": 2.0}  # docs/PERF.md targets for cross-entropy


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:  # noqa: BLE001 - best-effort machine description
        return ""


def machine_description():
    model, cores = "", ""
    for line in sh("lscpu").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            model = value.strip()
        elif key.strip() == "CPU(s)":
            cores = value.strip()
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
        mem = f", {kib / 2**20:.0f} GiB memory"
    except Exception:  # noqa: BLE001
        pass
    return f"{model or platform.processor() or 'unknown CPU'}, {cores or os.cpu_count()} logical CPUs{mem}"


def load_average():
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def cpu_times():
    """(steal, total) jiffies of all CPUs from /proc/stat, or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        return fields[7], sum(fields[:8])
    except Exception:  # noqa: BLE001
        return None


def cpu_pressure():
    """(total microseconds some task waited for a CPU, monotonic seconds) from /proc/pressure/cpu."""
    try:
        with open("/proc/pressure/cpu") as f:
            some = f.readline().split()
        return int(some[-1].split("=")[1]), time.monotonic()
    except Exception:  # noqa: BLE001 - PSI missing on older kernels
        return None


def pressure_share(before, after):
    if not before or not after or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) * 1e-6 / (after[1] - before[1])


def steal_share(before, after):
    if not before or not after or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def git_commit(repo):
    head = sh(f"git -C {shlex.quote(repo)} rev-parse HEAD")
    if not head:
        return "unknown (no git checkout)"
    dirty = sh(f"git -C {shlex.quote(repo)} status --porcelain -- src kernels include bench CMakeLists.txt")
    return head + (" (with uncommitted changes under src/kernels/include/bench)" if dirty else "")


def parse_name(name):
    """'cross_entropy_fwd_bwd/cpu/f32/4096x1000/real_time' -> (op, device, dtype, (N, C))."""
    parts = name.split("/")
    if len(parts) < 4 or "x" not in parts[3]:
        return None
    rows, cols = parts[3].split("x")
    return parts[0], parts[1], parts[2], (int(rows), int(cols))


class BenchResults:
    """bench_losses' iteration runs (all repetitions of all rounds), keyed by name parts."""

    def __init__(self):
        self.runs = {}  # (op, device, dtype, shape) -> list of dict(ms, cpu_ms, bytes)
        self.errors = {}
        self.context = {}

    def add_json(self, doc):
        self.context = doc.get("context", self.context)
        for b in doc.get("benchmarks", []):
            key = parse_name(b.get("run_name", b.get("name", "")))
            if key is None:
                continue
            if b.get("error_occurred"):
                self.errors[key] = b.get("error_message", "error")
                continue
            if b.get("run_type", "iteration") != "iteration":
                continue
            scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b.get("time_unit", "ns")]
            self.runs.setdefault(key, []).append(
                {
                    "ms": b["real_time"] * scale,
                    "cpu_ms": b["cpu_time"] * scale,
                    "bytes": b.get("bytes_per_call", 0.0),
                }
            )

    def quiet_ms(self, key, threshold):
        """Median over the repetitions whose main thread ran for >= threshold of the time."""
        runs = [r for r in self.runs.get(key, []) if r["cpu_ms"] >= threshold * r["ms"]]
        return (statistics.median(r["ms"] for r in runs) if runs else None), len(runs), len(self.runs.get(key, []))

    def median_ms(self, key):
        runs = self.runs.get(key)
        return statistics.median(r["ms"] for r in runs) if runs else None

    def range_ms(self, key):
        runs = self.runs.get(key)
        return (min(r["ms"] for r in runs), max(r["ms"] for r in runs)) if runs else None

    def gbps(self, key):
        runs = self.runs.get(key)
        if not runs:
            return None
        return runs[0]["bytes"] / (self.median_ms(key) * 1e-3) / 1e9

    def cpu_share(self, key):
        """Median cpu_time / real_time of the main thread (CPU runs): well under 1 means the
        benchmark thread was not running for part of the time (another load on the machine)."""
        runs = self.runs.get(key)
        return statistics.median(r["cpu_ms"] / r["ms"] for r in runs) if runs else None


def wait_quiet(max_seconds, psi_threshold):
    """Waits (at most max_seconds) until /proc/pressure/cpu's 10-second 'some' average is under
    psi_threshold percent. Returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_seconds:
        try:
            with open("/proc/pressure/cpu") as f:
                avg10 = float(f.readline().split()[1].split("=")[1])
        except Exception:  # noqa: BLE001 - no PSI: do not wait
            break
        if avg10 < psi_threshold:
            break
        time.sleep(2)
    return time.monotonic() - t0


def run_bench(bench, bench_filter, reps, min_time, extra):
    cmd = [
        bench,
        "--benchmark_format=json",
        f"--benchmark_filter={bench_filter}",
        f"--benchmark_repetitions={reps}",
        f"--benchmark_min_time={min_time}",
    ] + extra
    print("+ " + " ".join(shlex.quote(c) for c in cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench_losses failed with exit status {proc.returncode}")
    return json.loads(proc.stdout)


class TorchTimer:
    def __init__(self, torch, device, rotate_bytes, min_runs, min_seconds):
        self.torch = torch
        self.F = torch.nn.functional
        self.device = device
        self.rotate_bytes = rotate_bytes
        self.min_runs = min_runs
        self.min_seconds = min_seconds
        self.pools = {}
        self.times = {}  # (op, dtype, shape) -> list of ms per call
        self.shares = {}  # CPU: (op, dtype, shape) -> main-thread CPU time / wall time per call

    def pool(self, dtype, shape):
        key = (dtype, shape)
        if key not in self.pools:
            torch = self.torch
            tdt = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
            nbytes = shape[0] * shape[1] * DTYPE_BYTES[dtype]
            count = max(2, -(-self.rotate_bytes // nbytes))
            gen = torch.Generator().manual_seed(1234 + shape[1])
            xs, ts = [], []
            for _ in range(count):
                x = (torch.randn(shape, generator=gen) * 2.0).to(self.device, tdt)
                xs.append(x.requires_grad_())
                ts.append(torch.randint(0, shape[1], (shape[0],), generator=gen).to(self.device))
            self.pools[key] = (xs, ts)
        return self.pools[key]

    def call(self, op, x, t, y):
        if op == "cross_entropy_fwd_bwd":
            (g,) = self.torch.autograd.grad(self.F.cross_entropy(x, t), x)
            return g
        if op == "cross_entropy_ls_fwd_bwd":
            (g,) = self.torch.autograd.grad(self.F.cross_entropy(x, t, label_smoothing=0.1), x)
            return g
        if op == "mse_fwd_bwd":  # y: another buffer of the pool, as bench_losses' target
            (g,) = self.torch.autograd.grad(self.F.mse_loss(x, y.detach()), x)
            return g
        with self.torch.no_grad():
            return self.torch.softmax(x, -1)

    def measure(self, op, dtype, shape):
        xs, ts = self.pool(dtype, shape)
        n = len(xs)
        torch = self.torch
        try:
            self.call(op, xs[0], ts[0], xs[1 % n])
        except RuntimeError as e:  # e.g. torch 1.13 has no bf16 mse_loss on the CPU
            print(f"  torch {op} {dtype}: {str(e).splitlines()[0]} (n/a)", file=sys.stderr, flush=True)
            return
        out = self.times.setdefault((op, dtype, shape), [])
        i = 0
        if self.device == "cpu":
            for _ in range(3):  # warm-up
                self.call(op, xs[i % n], ts[i % n], xs[(i + 1) % n])
                i += 1
            start = time.perf_counter()
            runs = 0
            while runs < self.min_runs or time.perf_counter() - start < self.min_seconds:
                x, t, y = xs[i % n], ts[i % n], xs[(i + 1) % n]
                c0 = time.thread_time()
                t0 = time.perf_counter()
                r = self.call(op, x, t, y)
                wall = time.perf_counter() - t0
                out.append(wall * 1e3)
                self.shares.setdefault((op, dtype, shape), []).append((time.thread_time() - c0) / wall)
                del r
                i += 1
                runs += 1
        else:
            for _ in range(CUDA_BATCH):  # warm-up
                self.call(op, xs[i % n], ts[i % n], xs[(i + 1) % n])
                i += 1
            torch.cuda.synchronize()
            e0 = torch.cuda.Event(enable_timing=True)
            e1 = torch.cuda.Event(enable_timing=True)
            start = time.perf_counter()
            runs = 0
            while runs < self.min_runs or time.perf_counter() - start < self.min_seconds:
                e0.record()
                for _ in range(CUDA_BATCH):
                    self.call(op, xs[i % n], ts[i % n], xs[(i + 1) % n])
                    i += 1
                e1.record()
                e1.synchronize()
                out.append(e0.elapsed_time(e1) / CUDA_BATCH)
                runs += 1

    def measure_copy(self, dtype, shape):
        """PyTorch's own copy of the same bytes (dst.copy_(src)), for reference."""
        xs, _ = self.pool(dtype, shape)
        torch = self.torch
        key = ("copy", dtype, shape)
        out = self.times.setdefault(key, [])
        with torch.no_grad():
            dsts = [torch.empty_like(x).fill_(1.0) for x in xs]
            n = len(xs)
            for i in range(3):
                dsts[i % n].copy_(xs[i % n])
            if self.device == "cpu":
                for i in range(max(self.min_runs, 2 * n)):
                    t0 = time.perf_counter()
                    dsts[i % n].copy_(xs[i % n])
                    out.append((time.perf_counter() - t0) * 1e3)
            else:
                torch.cuda.synchronize()
                e0 = torch.cuda.Event(enable_timing=True)
                e1 = torch.cuda.Event(enable_timing=True)
                for r in range(self.min_runs):
                    e0.record()
                    for k in range(CUDA_BATCH):
                        dsts[(r + k) % n].copy_(xs[(r + k) % n])
                    e1.record()
                    e1.synchronize()
                    out.append(e0.elapsed_time(e1) / CUDA_BATCH)
        del dsts


def fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def quiet_cell(q):
    """'2/3': rounds under the pressure limit (used) of all; '0/3 (noisy)': none, all used."""
    if not q:
        return "n/a"
    return f"{q[0]}/{q[1]}" + (" (noisy)" if q[0] == 0 else "")


def ceiling_gbps(bench, device, dtype, shape):
    """The faster of bench_losses' plain copy and streaming-store copy of the same bytes."""
    vals = [bench.gbps((op, device, dtype, shape)) for op in ("ceiling_copy", "ceiling_copy_nt")]
    vals = [v for v in vals if v]
    return max(vals) if vals else None


def build_table(device, bench, timer, group_quiet=None):
    header = [
        "op",
        "dtype",
        "shape",
        "trainrt ms",
        "torch ms",
        "speedup (torch/trainrt)",
        "trainrt GB/s",
        "ceiling GB/s",
        "fraction of ceiling",
        "trainrt min–max ms",
        "torch min–max ms",
        "quiet rounds",
    ]
    rows = []
    for shape in SHAPES:
        for op in OPS:
            for dtype in DTYPES:
                key = (op, device, dtype, shape)
                tr_ms = bench.median_ms(key)
                times = timer.times.get((op, dtype, shape)) if timer else None
                th_ms = statistics.median(times) if times else None
                tr_gbps = bench.gbps(key)
                ceil = ceiling_gbps(bench, device, dtype, shape)
                rng = bench.range_ms(key)
                rows.append(
                    [
                        op,
                        dtype,
                        f"{shape[0]}x{shape[1]}",
                        fmt(tr_ms, ".3f") if key not in bench.errors else "error",
                        fmt(th_ms, ".3f"),
                        fmt(th_ms / tr_ms if (tr_ms and th_ms) else None, ".2f"),
                        fmt(tr_gbps, ".1f"),
                        fmt(ceil, ".1f"),
                        fmt(tr_gbps / ceil if (tr_gbps and ceil) else None, ".2f"),
                        f"{rng[0]:.3f}–{rng[1]:.3f}" if rng else "n/a",
                        f"{min(times):.3f}–{max(times):.3f}" if times else "n/a",
                        quiet_cell((group_quiet or {}).get((dtype, shape))),
                    ]
                )
    return header, rows


QUIET = 0.85  # a run counts as quiet when its main thread ran >= 85 % of the wall time


def build_quiet_table(device, bench, timer):
    """CPU only: medians over the runs that were not visibly disturbed by other load."""
    header = ["op", "dtype", "shape", "trainrt ms (quiet runs)", "torch ms (quiet calls)", "speedup"]
    rows = []
    for shape in SHAPES:
        for op in OPS + ["ceiling_copy", "ceiling_copy_nt"]:
            for dtype in DTYPES:
                tr, ntr, alltr = bench.quiet_ms((op, device, dtype, shape), QUIET)
                th, nth, allth = None, 0, 0
                if timer and op in OPS:
                    pairs = list(zip(timer.times.get((op, dtype, shape), []), timer.shares.get((op, dtype, shape), [])))
                    quiet = [ms for ms, share in pairs if share >= QUIET]
                    th, nth, allth = (statistics.median(quiet) if quiet else None), len(quiet), len(pairs)
                rows.append([op, dtype, f"{shape[0]}x{shape[1]}", f"{fmt(tr, '.3f')} ({ntr}/{alltr})",
                             f"{fmt(th, '.3f')} ({nth}/{allth})" if op in OPS else "",
                             fmt(th / tr if (th and tr) else None, ".2f") if op in OPS else ""])
    return header, rows


def build_ceiling_table(device, bench, timer):
    header = ["dtype", "shape", "bytes/call (MB)", "copy GB/s", "copy, streaming stores GB/s",
              "read-only GB/s", "torch copy_ GB/s", "copy ms min–max"]
    rows = []
    for shape in SHAPES:
        for dtype in DTYPES:
            ck = ("ceiling_copy", device, dtype, shape)
            rk = ("ceiling_read", device, dtype, shape)
            nbytes = 2 * shape[0] * shape[1] * DTYPE_BYTES[dtype]
            tcopy = timer.times.get(("copy", dtype, shape)) if timer else None
            tgbps = nbytes / (statistics.median(tcopy) * 1e-3) / 1e9 if tcopy else None
            rng = bench.range_ms(ck)
            nk = ("ceiling_copy_nt", device, dtype, shape)
            rows.append([dtype, f"{shape[0]}x{shape[1]}", f"{nbytes / 1e6:.1f}", fmt(bench.gbps(ck), ".1f"),
                         fmt(bench.gbps(nk), ".1f"), fmt(bench.gbps(rk), ".1f"), fmt(tgbps, ".1f"),
                         f"{rng[0]:.3f}–{rng[1]:.3f}" if rng else "n/a"])
    return header, rows


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def text_table(header, rows):
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", nargs="?", default="build/bin/bench_losses", help="bench_losses executable")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads on the CPU (default 2)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of bench_losses + PyTorch, alternating")
    ap.add_argument("--reps", type=int, default=3, help="bench_losses --benchmark_repetitions per round")
    ap.add_argument("--min-time", default="0.5", help="bench_losses --benchmark_min_time (seconds)")
    ap.add_argument("--torch-min-runs", type=int, default=10, help="timed PyTorch calls (CUDA: batches) per round")
    ap.add_argument("--torch-min-seconds", type=float, default=0.5, help="least PyTorch time per op per round")
    ap.add_argument("--bench-json", action="append", default=[],
                    help="use bench_losses JSON output from a file instead of running it (repeatable)")
    ap.add_argument("--bench-arg", action="append", default=[], help="extra argument for bench_losses")
    ap.add_argument("--no-torch", action="store_true", help="time trainrt only")
    ap.add_argument("--wait-quiet", type=float, default=0.0,
                    help="before each group, wait up to this many seconds for the CPU to be quiet")
    ap.add_argument("--quiet-psi", type=float, default=2.0,
                    help="quiet: /proc/pressure/cpu 'some' avg10 under this percentage (default 2)")
    ap.add_argument("--retry-noisy", type=int, default=0,
                    help="measure a group again (up to N more times) when the CPU pressure while measuring "
                    "it exceeded --max-psi; the least disturbed attempt is kept")
    ap.add_argument("--max-psi", type=float, default=10.0,
                    help="CPU pressure (percent of the time) above which a group's measurement counts as noisy")
    ap.add_argument("--commit", help="commit to name in the report (default: git rev-parse HEAD of this checkout)")
    ap.add_argument("--out", help="write the report as markdown to this file")
    ap.add_argument("--json-out", help="write all raw times as JSON to this file")
    ap.add_argument("--note", action="append", default=[], help="a line to add to the report")
    args = ap.parse_args()

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = load_average()
    stat_before = cpu_times()
    psi_before = cpu_pressure()

    torch = None
    if not args.no_torch:
        try:
            import torch  # noqa: PLC0415
        except ImportError:
            raise SystemExit(f"{sys.executable} has no torch (on Debian use /usr/bin/python3 with python3-torch)")
        if args.device == "cpu":
            torch.set_num_threads(args.threads)
        elif not torch.cuda.is_available():
            raise SystemExit("--device cuda but torch.cuda.is_available() is False")

    bench = BenchResults()
    for path in args.bench_json:
        with open(path) as f:
            bench.add_json(json.load(f))
    run_it = not args.bench_json
    if run_it and not os.access(args.bench, os.X_OK):
        raise SystemExit(f"bench_losses not found at {args.bench} (build with TRAINRT_BUILD_BENCHMARKS=ON)")

    timer = None
    # Each round measures one (dtype, shape) group at a time: bench_losses filtered to it, then
    # PyTorch on it, so both see nearly the same machine load; with --wait-quiet each group
    # first waits for the CPU pressure to drop (other work on a shared machine).
    groups = [(dtype, shape) for shape in SHAPES for dtype in DTYPES]
    group_pressure = []  # (round, group, pressure, attempts, used)
    group_rounds = {}  # (dtype, shape) -> [(round, pressure, bench JSON, torch times, torch shares, attempts)]
    raw_rounds = []
    group_quiet = {}  # (dtype, shape) -> (rounds under the pressure limit, rounds)
    for rnd in range(args.rounds):
        for dtype, shape in groups:
            tag = f"{dtype} {shape[0]}x{shape[1]}"
            attempts = []  # (pressure, bench JSON, torch times, torch shares)
            for attempt in range(1 + args.retry_noisy):
                waited = wait_quiet(args.wait_quiet, args.quiet_psi)
                print(f"round {rnd + 1}/{args.rounds}, {tag}, attempt {attempt + 1} "
                      f"(load {load_average()}, waited {waited:.0f} s)", file=sys.stderr, flush=True)
                psi0 = cpu_pressure()
                doc = None
                if run_it:
                    flt = f"/{args.device}/{dtype}/{shape[0]}x{shape[1]}"
                    doc = run_bench(args.bench, flt, args.reps, args.min_time, args.bench_arg)
                    bench.context = doc.get("context", bench.context)
                times, shares = {}, {}
                if torch is not None:
                    if timer is None:
                        key = "rotate_bytes_cuda" if args.device == "cuda" else "rotate_bytes_cpu"
                        rotate = int(bench.context.get(key, 0)) or (256 << 20)
                        timer = TorchTimer(torch, args.device, rotate, args.torch_min_runs, args.torch_min_seconds)
                    saved = timer.times, timer.shares
                    timer.times, timer.shares = times, shares
                    for op in OPS:
                        timer.measure(op, dtype, shape)
                    timer.measure_copy(dtype, shape)
                    timer.times, timer.shares = saved
                    timer.pools.pop((dtype, shape), None)  # free before the next group
                    if args.device == "cuda":
                        torch.cuda.empty_cache()
                share = pressure_share(psi0, cpu_pressure())
                print(f"  CPU pressure while measuring: {fmt(None if share is None else 100 * share, '.1f')} %",
                      file=sys.stderr, flush=True)
                attempts.append((share if share is not None else 0.0, doc, times, shares))
                if share is None or share * 100 <= args.max_psi:
                    break
            # Keep the least disturbed attempt of this round (the only one unless --retry-noisy).
            share, doc, times, shares = min(attempts, key=lambda a: a[0])
            group_rounds.setdefault((dtype, shape), []).append((rnd + 1, share, doc, times, shares, len(attempts)))

    # Per group, use the rounds measured under at most --max-psi CPU pressure when there are
    # any, else all rounds (and say so).
    for (dtype, shape), kept in group_rounds.items():
        quiet = [k for k in kept if k[1] * 100 <= args.max_psi]
        use = quiet or kept
        group_quiet[(dtype, shape)] = (len(quiet), len(kept))
        for k in kept:
            group_pressure.append((k[0], f"{dtype} {shape[0]}x{shape[1]}", k[1], k[5], any(k is u for u in use)))
        for _, _, doc, times, shares, _ in use:
            if doc is not None:
                bench.add_json(doc)
            if timer is not None:
                for k, v in times.items():
                    timer.times.setdefault(k, []).extend(v)
                for k, v in shares.items():
                    timer.shares.setdefault(k, []).extend(v)
        raw_rounds.append({"dtype": dtype, "shape": list(shape), "rounds": [
            {"round": r, "pressure": sh, "attempts": n, "used": any(u[0] == r for u in use), "bench": d,
             "torch": {"/".join(map(str, k)): v for k, v in t.items()}}
            for r, sh, d, t, _, n in kept]})

    header, rows = build_table(args.device, bench, timer, group_quiet)
    cheader, crows = build_ceiling_table(args.device, bench, timer)
    qheader, qrows = build_quiet_table(args.device, bench, timer) if args.device == "cpu" else (None, None)
    load_after = load_average()
    steal = steal_share(stat_before, cpu_times())
    pressure = pressure_share(psi_before, cpu_pressure())

    ce_target = CE_TARGET_SPEEDUP[args.device]
    verdicts = []
    for r in rows:
        if r[0] == "cross_entropy_fwd_bwd" and r[1] == "f32" and r[5] != "n/a":
            ok = float(r[5]) >= ce_target
            verdicts.append(f"{r[2]}: {r[5]}x ({'meets' if ok else 'misses'} the {ce_target:g}x target)")

    ctx = bench.context
    shares = [bench.cpu_share(k) for k in bench.runs if k[1] == "cpu"]
    shares = [s for s in shares if s is not None]

    print()
    print(text_table(header, rows))
    print()
    print(text_table(cheader, crows))
    if qrows:
        print()
        print(text_table(qheader, qrows))
    if pressure is not None:
        print(f"\nCPU pressure during the run (some task waiting for a CPU): {100 * pressure:.1f} % of the time")
    if steal is not None:
        print(f"CPU time stolen by the hypervisor during the run: {100 * steal:.1f} %")
    if verdicts:
        print("\ncross-entropy f32 fwd+bwd vs PyTorch: " + "; ".join(verdicts))

    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        cmd = "python3" if args.device == "cuda" else "/usr/bin/python3"
        build_dir = os.path.dirname(os.path.dirname(args.bench)) or "build"
        argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
        lines = [
            f"# bench_losses vs PyTorch ({args.device}), {started.date().isoformat()}",
            "",
            f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}",
            f"- trainrt commit measured: {args.commit or git_commit(repo)}",
            f"- machine: {machine_description()}",
        ]
        if args.device == "cuda":
            lines.append(f"- GPU: {sh('nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader') or 'unknown'}")
            lines.append(f"- trainrt CUDA backend: {ctx.get('cuda_backend', 'unknown')}")
        lines += [
            f"- trainrt CPU backend: {ctx.get('cpu_backend', 'unknown')}; "
            f"trainrt {ctx.get('trainrt_version', '?')}; last-level cache {int(ctx.get('llc_bytes', 0)) / 2**20:.0f} MiB; "
            f"rotating {int(ctx.get(('rotate_bytes_cuda' if args.device == 'cuda' else 'rotate_bytes_cpu'), 0)) / 2**20:.0f} MiB of inputs",
            f"- PyTorch: {torch.__version__ if torch else 'not run'}"
            + (f", torch.set_num_threads({args.threads})" if args.device == "cpu" and torch else ""),
            f"- load average (1, 5, 15 min) before: {load_before}; after: {load_after}",
        ]
        if pressure is not None:
            lines.append(
                f"- CPU pressure during the run (/proc/pressure/cpu 'some': share of the time at least one "
                f"runnable task waited for a CPU; other work on the machine shows here): {100 * pressure:.1f} %"
            )
        if steal is not None:
            lines.append(f"- CPU time stolen by the hypervisor during the run (/proc/stat steal): {100 * steal:.1f} %")
        if shares:
            lines.append(
                f"- benchmark thread CPU share (cpu_time/real_time, median per benchmark): "
                f"{min(shares):.2f}–{max(shares):.2f} (near 1 = undisturbed; ~0.5 = the thread lost half its time)"
            )
        if group_pressure:
            lines.append(
                "- CPU pressure while each group was measured (round, group: % of the time, attempts; "
                "* = round used): "
                + "; ".join(f"{r}, {t}: {100 * p:.0f} ({n}){'*' if u else ''}" for r, t, p, n, u in group_pressure)
            )
        lines += [f"- note: {n}" for n in args.note]
        lines += [
            f"- method: {args.rounds} round(s) over the 4 (dtype, shape) groups; per group "
            + (f"(after waiting up to {args.wait_quiet:g} s for CPU pressure avg10 < {args.quiet_psi:g} %) " if args.wait_quiet else "")
            + (f"(measured up to {1 + args.retry_noisy} times while the pressure exceeded {args.max_psi:g} %, "
               "keeping the least disturbed attempt) " if args.retry_noisy else "")
            + f"bench_losses filtered to the group (--benchmark_repetitions={args.reps}, "
            f"--benchmark_min_time={args.min_time}) then PyTorch ({args.torch_min_runs}+ timed "
            f"{'batches of ' + str(CUDA_BATCH) + ' calls, CUDA events' if args.device == 'cuda' else 'calls, perf_counter'} "
            "per op, after warm-up); per group, only the rounds measured under at most "
            f"{args.max_psi:g} % CPU pressure are used when there are any (else all rounds); medians over "
            "the runs of the rounds used; ceiling = the faster of bench_losses' ceiling_copy "
            "and ceiling_copy_nt (streaming stores) over the same bytes in the same run (read + write counted); "
            "GB/s = bytes per call (docs/PERF.md: read the input once, write one output of its size) / median "
            "time, 1 GB = 1e9 bytes.",
            "",
            markdown_table(header, rows),
            "",
            "Ceilings measured in the same run:",
            "",
            markdown_table(cheader, crows),
            "",
        ]
        if qrows:
            lines += [
                f"Quiet runs only (main thread on CPU >= {QUIET:.0%} of the wall time; other load on the machine "
                "stalls the OpenMP team and shows as a lower share). Counts: quiet/all runs (trainrt: "
                "repetitions; torch: calls):",
                "",
                markdown_table(qheader, qrows),
                "",
            ]
        if verdicts:
            lines += ["Cross-entropy f32 fwd+bwd vs PyTorch: " + "; ".join(verdicts) + ".", ""]
        if bench.errors:
            lines += ["Benchmark errors:", ""] + [f"- {'/'.join(map(str, k))}: {v}" for k, v in bench.errors.items()] + [""]
        lines += [
            "Reproduce:",
            "",
            "```sh",
            f"cmake -S . -B {build_dir} -G Ninja -DCMAKE_BUILD_TYPE=Release && cmake --build {build_dir} --target bench_losses",
            f"{cmd} bench/compare_torch.py {argv}",
            "```",
            "",
        ]
        with open(args.out, "w") as f:
            f.write("\n".join(lines))
        print(f"\nwrote {args.out}")

    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(
                {
                    "context": ctx,
                    "trainrt": {"/".join(map(str, k)): v for k, v in bench.runs.items()},
                    "torch": {"/".join(map(str, k)): v for k, v in (timer.times.items() if timer else [])},
                    "rounds": raw_rounds,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
