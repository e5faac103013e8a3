#!/usr/bin/env bash
# The one command to run on a lent GPU machine (see the device tool's README): builds trainrt
# with the CUDA backend for Hopper, runs the whole ctest suite (CUDA tests included), runs
# every bench_* executable with JSON output, times PyTorch on the GPU beside bench_losses and
# beside bench_optim at 1e9 params (bench/compare_optim_cuda.py: fused AdamW, the copy
# ceiling, clip + step), and writes $OUT/summary.md. Exits non-zero if configure, build or
# tests fail (the summary is written all the same); 3 if only the benchmarks or the PyTorch
# comparisons failed.
#
# That machine has nvcc, CMake, ninja and PyTorch 2.x (python3) but no package registry and
# may lack the -dev packages, so run scripts/fetch_gpu_debs.sh HERE first: it fills .debs/,
# which this script unpacks with dpkg -x into a private prefix (never into /). Then, with
# the device tool:
#   run(command="bash scripts/gpu_check.sh", carry=[".debs"], timeout_s=600)
# and read $OUT/summary.md (also ctest.log, build.log, bench.log, compare_cuda.md,
# compare_optim_cuda.md and benchmarks.json, which holds every bench_* executable's JSON output
# by name: seven files whatever the number of benchmarks, as the tool brings back at most eight).
#
# Options:
#   --configure-only   unpack and configure, then stop (to check the prefix logic anywhere)
#   --no-bench         skip the benchmarks and the PyTorch comparison
# Environment (defaults):
#   OUT=./gpu_out  TRAINRT_DEPS_PREFIX=/tmp/trainrt-deps  TRAINRT_GPU_BUILD_DIR=build-gpu
#   TRAINRT_WITH_CUDA=ON  TRAINRT_CUDA_ARCH=90  TRAINRT_BENCH_REPS=3  TRAINRT_BENCH_MIN_TIME=0.2
#   TRAINRT_COMPARE_ROUNDS=2  PYTHON=python3
#   TRAINRT_GPU_OPTIM_PARAMS=1000000000 (0 skips compare_optim_cuda.py, e.g. short of time)
#   TRAINRT_GPU_DEADLINE_S=540: the script's own time limit, so that one 600 s device call
#     returns a summary. Each step after the build gets only the time left (less a reserve for
#     the summary) and is skipped when too little is left; summary.md is rewritten after every
#     step, so even a call killed at its limit brings back what had finished. The order is
#     what matters most first: ctest (CUDA parity), the optimizer figures at 1e9 params, the
#     CUDA benchmarks, the PyTorch loss comparison.
#   TRAINRT_GPU_BENCH_FILTER=/cuda: the --benchmark_filter of the bench_* run (the CPU
#     benchmarks are measured on the CPU machine; '.' runs them all)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
repo=$(pwd)

configure_only=0
run_bench=1
for arg in "$@"; do
  case "$arg" in
    --configure-only) configure_only=1 ;;
    --no-bench) run_bench=0 ;;
    -h | --help) sed -n '2,34p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown option $arg" >&2; exit 2 ;;
  esac
done

OUT=${OUT:-$repo/gpu_out}
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
prefix=${TRAINRT_DEPS_PREFIX:-/tmp/trainrt-deps}
build=${TRAINRT_GPU_BUILD_DIR:-build-gpu}
with_cuda=${TRAINRT_WITH_CUDA:-ON}
cuda_arch=${TRAINRT_CUDA_ARCH:-90}
bench_reps=${TRAINRT_BENCH_REPS:-3}
bench_min_time=${TRAINRT_BENCH_MIN_TIME:-0.2}
compare_rounds=${TRAINRT_COMPARE_ROUNDS:-2}
optim_params=${TRAINRT_GPU_OPTIM_PARAMS:-1000000000}
python=${PYTHON:-python3}
deadline=${TRAINRT_GPU_DEADLINE_S:-540}
bench_filter=${TRAINRT_GPU_BENCH_FILTER:-/cuda}
json_dir=${TMPDIR:-/tmp}/trainrt-bench-json  # per-executable JSON (outside $OUT: the tool brings back 8 files at most), combined into $OUT/benchmarks.json
jobs=$(nproc 2>/dev/null || echo 4)
arch_dir=$(gcc -print-multiarch 2>/dev/null)
arch_dir=${arch_dir:-x86_64-linux-gnu}
orig_ld_library_path=${LD_LIBRARY_PATH:-}

started=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
configure_status="not run"
build_status="not run"
test_status="not run"
huge_status="not run"
bench_status="not run"
compare_status="not run"
optim_compare_status="not run"
deps_note="not run"
declare -A step_seconds=()
cmake_dep_args=()
exit_code=0

log() { echo "[gpu_check $(date +%T)] $*" >&2; }

# budget WANT MIN: the seconds a step may take, min(WANT, time left before the deadline less
# a 20 s reserve for the summary), or 0 when that is under MIN (the step is then skipped).
budget() {
  local want=$1 min=$2 left=$((deadline - SECONDS - 20))
  if [ "$left" -lt "$min" ]; then
    echo 0
  elif [ "$left" -lt "$want" ]; then
    echo "$left"
  else
    echo "$want"
  fi
}

# ---- 1. the dependencies: .debs/*.deb -> $prefix ---------------------------------------
unpack_one() {  # dpkg -x, or ar + tar where dpkg is missing
  local deb=$1 dest=$2
  if command -v dpkg >/dev/null 2>&1; then
    dpkg -x "$deb" "$dest"
  else
    local tmp
    tmp=$(mktemp -d) || return 1
    (cd "$tmp" && ar x "$deb" && tar -xf data.tar.* -C "$dest")
    local rc=$?
    rm -rf "$tmp"
    return $rc
  fi
}

setup_deps() {
  local t0=$SECONDS
  if ! ls .debs/*.deb >/dev/null 2>&1; then
    deps_note="no .debs/ (run scripts/fetch_gpu_debs.sh here and carry .debs): using the system's packages only"
    log "$deps_note"
    return 0
  fi
  rm -rf "$prefix" && mkdir -p "$prefix" || return 1
  local deb names=()
  for deb in .debs/*.deb; do
    if ! unpack_one "$repo/$deb" "$prefix"; then
      deps_note="failed to unpack $deb"
      log "$deps_note"
      return 1
    fi
    names+=("$(basename "$deb" .deb)")
  done
  local L=$prefix/usr/lib/$arch_dir I=$prefix/usr/include/$arch_dir

  # Absolute links (zlib1g-dev: libz.so -> /lib/<arch>/libz.so.1.2.13) point into the prefix.
  local link target
  while IFS= read -r link; do
    target=$(readlink "$link")
    [ -e "$prefix$target" ] && ln -sfn "$prefix$target" "$link"
  done < <(find "$prefix" -type l -lname '/*')

  # Debian "alternatives" links that the packages' postinst scripts would make: OpenBLAS.
  if [ -d "$L/openblas-pthread" ]; then
    local f
    for f in libopenblas.so libopenblas.so.0 libopenblas.a libblas.so libblas.so.3 libblas.a \
      liblapack.so liblapack.so.3 liblapack.a; do
      [ -e "$L/openblas-pthread/$f" ] && ln -sfn "openblas-pthread/$f" "$L/$f"
    done
    mkdir -p "$L/cmake/openblas" "$L/pkgconfig" "$I"
    for f in OpenBLASConfig.cmake OpenBLASConfigVersion.cmake; do
      [ -e "$L/openblas-pthread/cmake/openblas/$f" ] &&
        ln -sfn "../../openblas-pthread/cmake/openblas/$f" "$L/cmake/openblas/$f"
    done
    ln -sfn ../openblas-pthread/pkgconfig/openblas.pc "$L/pkgconfig/openblas.pc"
    ln -sfn ../openblas-pthread/pkgconfig/blas-openblas.pc "$L/pkgconfig/blas.pc"
    ln -sfn ../openblas-pthread/pkgconfig/lapack-openblas.pc "$L/pkgconfig/lapack.pc"
    for f in cblas.h f77blas.h openblas_config.h; do
      [ -e "$I/openblas-pthread/$f" ] && ln -sfn "openblas-pthread/$f" "$I/$f"
    done
    ln -sfn openblas-pthread/cblas.h "$I/cblas-openblas.h"
  fi
  # Absolute /usr paths in pkg-config files and OpenBLAS's CMake config point into the prefix
  # (the other CMake configs are relocatable). grep -r does not follow the links made above.
  grep -rl --include='*.pc' --include='OpenBLASConfig.cmake' '/usr' "$prefix/usr" 2>/dev/null |
    xargs -r sed -i -E "s#(^|[=\" ]|-I|-L)/usr(/|\$)#\\1$prefix/usr\\2#g"

  # Run-time libraries: $prefix/rt holds links to the shared libraries whose soname the
  # system does not already provide (the system's own, e.g. libz.so.1 or libgfortran.so.5,
  # are kept), and only that folder goes on LD_LIBRARY_PATH.
  mkdir -p "$prefix/rt"
  local system_sonames so soname added=()
  system_sonames=$(ldconfig -p 2>/dev/null | awk 'NR > 1 {print $1}')
  while IFS= read -r so; do
    soname=$(readelf -d "$so" 2>/dev/null | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p')
    [ -n "$soname" ] || continue
    # TRAINRT_DEPS_ALL_RT=1 puts every unpacked library there (to test the prefix anywhere).
    if [ "${TRAINRT_DEPS_ALL_RT:-0}" != 1 ] && grep -qxF "$soname" <<<"$system_sonames"; then
      continue
    fi
    [ -e "$prefix/rt/$soname" ] && continue
    ln -sfn "$so" "$prefix/rt/$soname"
    added+=("$soname")
  done < <(find "$L" "$prefix/lib" -type f -name '*.so*' 2>/dev/null | sort)

  export CMAKE_PREFIX_PATH="$prefix/usr:$L/cmake${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export CPATH="$prefix/usr/include:$I${CPATH:+:$CPATH}"
  export LIBRARY_PATH="$L:$L/openblas-pthread${LIBRARY_PATH:+:$LIBRARY_PATH}"
  export PKG_CONFIG_PATH="$L/pkgconfig:$prefix/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
  export LD_LIBRARY_PATH="$prefix/rt${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  cmake_dep_args=(
    -DCMAKE_PREFIX_PATH="${CMAKE_PREFIX_PATH//:/;}"
    -DCMAKE_LIBRARY_PATH="$L;$L/openblas-pthread"
    -DCMAKE_INCLUDE_PATH="$prefix/usr/include;$I")
  deps_note="unpacked ${#names[@]} packages (${names[*]}) into $prefix; run-time libraries on LD_LIBRARY_PATH: ${added[*]:-none}"
  log "$deps_note"
  step_seconds[deps]=$((SECONDS - t0))
}

# ---- the summary, written whatever happened ----------------------------------------------
ctest_counts() {  # "passed failed total skipped" from ctest.log
  local log=$OUT/ctest.log line passed=0 failed=0 total=0 skipped=0
  [ -f "$log" ] || { echo "0 0 0 0"; return; }
  line=$(grep -E '[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -1)
  if [ -n "$line" ]; then
    failed=$(sed -E 's/.* ([0-9]+) tests? failed.*/\1/' <<<"$line")
    total=$(sed -E 's/.*out of ([0-9]+).*/\1/' <<<"$line")
    passed=$((total - failed))
  fi
  skipped=$(grep -c '\*\*\*Skipped' "$log" 2>/dev/null)
  echo "$passed $failed $total ${skipped:-0}"
}

bench_table() {  # median time and GB/s of every benchmark in $json_dir/bench_*.json
  local files=("$json_dir"/bench_*.json)
  [ -e "${files[0]}" ] || { echo "(no benchmark JSON)"; return; }
  LD_LIBRARY_PATH=$orig_ld_library_path "$python" - "${files[@]}" <<'EOF' 2>&1 || echo "(could not read the benchmark JSON)"
import json, statistics, sys
rows = {}
for path in sys.argv[1:]:
    try:
        doc = json.load(open(path))
    except Exception as e:
        print(f"- {path}: unreadable ({e})")
        continue
    for b in doc.get("benchmarks", []):
        name = b.get("run_name", b["name"])
        if b.get("error_occurred"):
            rows.setdefault(name, {"err": b.get("error_message", "error")})
            continue
        if b.get("run_type", "iteration") != "iteration":
            continue
        scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b.get("time_unit", "ns")]
        r = rows.setdefault(name, {"ms": [], "bps": []})
        r.setdefault("ms", []).append(b["real_time"] * scale)
        if "bytes_per_second" in b:
            r.setdefault("bps", []).append(b["bytes_per_second"])
        if "ratio" in b:  # bench_optim's paired clip_overhead: clip + step / step alone
            r.setdefault("ratio", []).append(b["ratio"])
print("| benchmark | median ms | GB/s (1e9 B/s) | paired ratio | runs |")
print("|---|---|---|---|---|")
for name, r in rows.items():
    if "err" in r:
        print(f"| {name} | error: {r['err']} | | | |")
        continue
    ms = statistics.median(r["ms"])
    gbps = f"{statistics.median(r['bps']) / 1e9:.1f}" if r.get("bps") else ""
    ratio = f"{statistics.median(r['ratio']):.3f}x" if r.get("ratio") else ""
    print(f"| {name} | {ms:.4f} | {gbps} | {ratio} | {len(r['ms'])} |")
EOF
}

write_summary() {
  local s=$OUT/summary.md passed failed total skipped gpu
  read -r passed failed total skipped <<<"$(ctest_counts)"
  gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
  {
    echo "# trainrt GPU check"
    echo
    echo "- started: $started; finished: $(date -u '+%Y-%m-%d %H:%M:%S UTC') ($SECONDS s)"
    echo "- GPU: ${gpu:-none found (nvidia-smi failed)}"
    echo "- host: $(uname -n), $(nproc 2>/dev/null) CPUs, $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ //')"
    echo "- commit: $(git -C "$repo" rev-parse HEAD 2>/dev/null || echo 'unknown (no .git in this copy)')"
    echo "- nvcc: $(nvcc --version 2>/dev/null | tail -1 || echo none); cmake: $(cmake --version 2>/dev/null | head -1); c++: $(c++ --version 2>/dev/null | head -1)"
    echo "- torch: $(LD_LIBRARY_PATH=$orig_ld_library_path "$python" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null || echo 'not importable')"
    echo "- dependencies: $deps_note"
    echo "- configure (TRAINRT_WITH_CUDA=$with_cuda, CMAKE_CUDA_ARCHITECTURES=$cuda_arch): $configure_status; build (-j $jobs): $build_status"
    echo "- ctest: $test_status: $total tests, $failed failed, $passed passed (of which $skipped skipped: GTEST_SKIP, e.g. a CUDA case without a usable GPU)"
    echo "- tensors past 2^31 elements (test_huge, TRAINRT_TEST_HUGE=1, output appended to ctest.log): $huge_status"
    echo "- benchmarks: $bench_status; PyTorch comparison: $compare_status; optimizers at $optim_params params vs PyTorch: $optim_compare_status"
    echo "- deadline: ${deadline} s (TRAINRT_GPU_DEADLINE_S); bench_* filter: $bench_filter"
    echo "- seconds per step: $(for k in "${!step_seconds[@]}"; do printf '%s %s; ' "$k" "${step_seconds[$k]}"; done)"
    echo "- exit code: $exit_code"
    if [ -f "$OUT/ctest.log" ] && grep -q 'The following tests FAILED' "$OUT/ctest.log"; then
      echo
      echo "## Failed tests"
      echo
      echo '```'
      sed -n '/The following tests FAILED/,$p' "$OUT/ctest.log" | head -60
      echo '```'
    fi
    if [ "$build_status" != ok ] && [ "$build_status" != "not run" ] && [ -f "$OUT/build.log" ]; then
      echo
      echo "## Build errors (first lines)"
      echo
      echo '```'
      grep -m 40 -E 'error|Error' "$OUT/build.log"
      echo '```'
    fi
    if [ "$bench_status" != ok ] && [ "$bench_status" != "not run" ] ||
      [ "$compare_status" = failed ] || [ "$optim_compare_status" = failed ]; then
      echo
      echo "## Benchmark / comparison errors (end of bench.log)"
      echo
      echo '```'
      tail -n 15 "$OUT/bench.log" 2>/dev/null
      echo '```'
    fi
    if [ -f "$OUT/compare_optim_cuda.md" ]; then
      echo
      echo "## Optimizer steps vs PyTorch on the GPU (compare_optim_cuda.py)"
      echo
      sed '1,2d' "$OUT/compare_optim_cuda.md"
    fi
    if [ -f "$OUT/compare_cuda.md" ]; then
      echo
      echo "## bench_losses vs PyTorch on the GPU"
      echo
      sed '1,2d' "$OUT/compare_cuda.md"
    fi
    echo
    echo "## All benchmarks (median of repetitions)"
    echo
    bench_table
  } >"$s"
  log "wrote $s"
}

finish() {
  write_summary
  echo
  head -n 40 "$OUT/summary.md"
  exit "$exit_code"
}

# ---- 2. configure, build, test, benchmark ------------------------------------------------
if ! setup_deps; then
  exit_code=1
  configure_status="not run (dependency unpack failed)"
  finish
fi

generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
t0=$SECONDS
log "configure $build"
if cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DTRAINRT_WITH_CUDA="$with_cuda" -DCMAKE_CUDA_ARCHITECTURES="$cuda_arch" \
  -DTRAINRT_BUILD_TESTS=ON -DTRAINRT_BUILD_BENCHMARKS=ON -DCMAKE_POLICY_VERSION_MINIMUM=3.5 \
  "${cmake_dep_args[@]}" >"$OUT/build.log" 2>&1; then
  configure_status=ok
else
  configure_status=failed
  exit_code=1
fi
step_seconds[configure]=$((SECONDS - t0))
if [ "$configure_only" = 1 ] || [ "$configure_status" != ok ]; then
  tail -n 30 "$OUT/build.log" >&2
  finish
fi

write_summary

t0=$SECONDS
t=$(budget 600 1)
log "build -j $jobs (at most $t s)"
timeout "$t" cmake --build "$build" -j "$jobs" >>"$OUT/build.log" 2>&1
rc=$?
step_seconds[build]=$((SECONDS - t0))
if [ "$rc" = 0 ]; then
  build_status=ok
else
  build_status=$([ "$rc" = 124 ] && echo "timed out after $t s (the deadline)" || echo failed)
  exit_code=1
  tail -n 40 "$OUT/build.log" >&2
  finish
fi
write_summary

t0=$SECONDS
t=$(budget 300 60)
if [ "$t" = 0 ]; then
  test_status="not run (no time left before the ${deadline} s deadline)"
else
  log "ctest (at most $t s)"
  timeout "$t" ctest --test-dir "$build" --output-on-failure -j "$jobs" --timeout 240 \
    >"$OUT/ctest.log" 2>&1
  rc=$?
  if [ "$rc" = 0 ]; then
    test_status=passed
  elif [ "$rc" = 124 ]; then
    test_status="timed out after $t s (the deadline)"
  else
    test_status=failed
  fi
  [ "$rc" = 0 ] || exit_code=1
  tail -n 5 "$OUT/ctest.log" >&2
fi
step_seconds[ctest]=$((SECONDS - t0))
write_summary

# Tensors past 2^31 elements (tests/test_huge.cpp, skipped in the ctest run above): the CUDA
# cases first, then the CPU ones (35 GB of host memory) if there is time.
t0=$SECONDS
huge_status=""
for dev_filter in cuda cpu; do
  t=$(budget 150 40)
  if [ "$t" = 0 ]; then
    huge_status+="$dev_filter: not run (no time left); "
    continue
  fi
  log "test_huge */$dev_filter (at most $t s)"
  TRAINRT_TEST_HUGE=1 timeout "$t" "$build/bin/test_huge" --gtest_filter="*/$dev_filter" \
    >>"$OUT/ctest.log" 2>&1
  rc=$?
  if [ "$rc" = 0 ]; then
    huge_status+="$dev_filter: passed; "
  else
    huge_status+="$dev_filter: $([ "$rc" = 124 ] && echo "timed out after $t s" || echo failed); "
    exit_code=1
  fi
done
step_seconds[huge]=$((SECONDS - t0))
write_summary

if [ "$run_bench" = 1 ]; then
  # The optimizer issue's GPU figures: 1e9 params in 1 and 200 tensors against
  # torch.optim.AdamW(fused=True) and the device's copy bandwidth.
  t0=$SECONDS
  t=$(budget 300 90)
  : >"$OUT/bench.log"
  if [ "$optim_params" = 0 ]; then
    optim_compare_status="not run (TRAINRT_GPU_OPTIM_PARAMS=0)"
  elif [ "$t" = 0 ]; then
    optim_compare_status="not run (no time left before the ${deadline} s deadline)"
  else
    log "compare_optim_cuda --params $optim_params (at most $t s)"
    # PyTorch gets the system's library path, bench_optim (through the script) ours:
    # shellcheck disable=SC2097,SC2098
    LD_LIBRARY_PATH=$orig_ld_library_path TRAINRT_BENCH_LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-} \
      PYTHONUNBUFFERED=1 timeout "$t" "$python" bench/compare_optim_cuda.py \
      "$build/bin/bench_optim" --params "$optim_params" --reps 2 --min-time 0.1 --steps 20 \
      --out "$OUT/compare_optim_cuda.md" >>"$OUT/bench.log" 2>&1
    rc=$?
    if [ "$rc" = 0 ]; then
      optim_compare_status=ok
    else
      optim_compare_status=$([ "$rc" = 124 ] && echo "timed out after $t s" || echo failed)
      [ "$exit_code" = 0 ] && exit_code=3
    fi
  fi
  step_seconds[compare_optim]=$((SECONDS - t0))
  write_summary

  t0=$SECONDS
  bench_status=ok
  rm -rf "$json_dir" && mkdir -p "$json_dir"
  for exe in "$build"/bin/bench_*; do
    [ -x "$exe" ] || continue
    name=$(basename "$exe")
    t=$(budget 240 30)
    if [ "$t" = 0 ]; then
      bench_status="stopped before $name (no time left before the ${deadline} s deadline)"
      [ "$exit_code" = 0 ] && exit_code=3
      break
    fi
    log "$name --benchmark_filter=$bench_filter (at most $t s)"
    if ! timeout "$t" "$exe" --benchmark_out="$json_dir/$name.json" --benchmark_out_format=json \
      --benchmark_filter="$bench_filter" --benchmark_repetitions="$bench_reps" \
      --benchmark_min_time="$bench_min_time" >>"$OUT/bench.log" 2>&1; then
      bench_status="failed ($name)"
      [ "$exit_code" = 0 ] && exit_code=3
    fi
  done
  step_seconds[bench]=$((SECONDS - t0))

  # One file for all the benchmark JSON: {"bench_losses": {...}, ...}.
  LD_LIBRARY_PATH=$orig_ld_library_path "$python" - "$OUT/benchmarks.json" "$json_dir"/bench_*.json \
    <<'EOF' || log "could not combine the benchmark JSON"
import json, os, sys
out = {}
for path in sys.argv[2:]:
    try:
        out[os.path.basename(path)[:-5]] = json.load(open(path))
    except Exception as e:  # a crashed benchmark leaves a partial file
        out[os.path.basename(path)[:-5]] = {"error": str(e)}
json.dump(out, open(sys.argv[1], "w"), indent=1)
EOF
  write_summary

  t0=$SECONDS
  t=$(budget 300 60)
  if [ ! -f "$json_dir/bench_losses.json" ]; then
    compare_status="not run (no bench_losses.json)"
  elif [ "$t" = 0 ]; then
    compare_status="not run (no time left before the ${deadline} s deadline)"
  else
    log "compare_torch --device cuda (at most $t s)"
    if LD_LIBRARY_PATH=$orig_ld_library_path PYTHONUNBUFFERED=1 timeout "$t" "$python" \
      bench/compare_torch.py --device cuda --bench-json "$json_dir/bench_losses.json" \
      --rounds "$compare_rounds" --out "$OUT/compare_cuda.md" \
      --note "trainrt times from bench_losses run once (--benchmark_repetitions=$bench_reps, --benchmark_min_time=$bench_min_time) by scripts/gpu_check.sh" \
      >>"$OUT/bench.log" 2>&1; then
      compare_status=ok
    else
      compare_status=failed
      [ "$exit_code" = 0 ] && exit_code=3
    fi
  fi
  step_seconds[compare]=$((SECONDS - t0))
fi

finish
