#!/usr/bin/env bash
# The CPU backend and the whole test suite under AddressSanitizer + UndefinedBehaviorSanitizer
# (with float-cast-overflow) and LeakSanitizer, in a build directory of its own. Any report
# fails the run: UBSan with -fno-sanitize-recover (and halt_on_error), ASan/LSan with
# halt_on_error and detect_leaks=1. The flags go into CMAKE_CXX_FLAGS and the linker flags, so
# they reach every target: libtrainrt, the per-ISA CPU kernel object libraries (x86-64-v3/v4),
# the fake backend modules and the tests; the script checks compile_commands.json to be sure.
# libstdc++ assertions (_GLIBCXX_ASSERTIONS) are on too. No CUDA, benchmarks or examples.
#
#   scripts/sanitize.sh                     # build dir ./build-asan
#   TRAINRT_ASAN_BUILD_DIR=b scripts/sanitize.sh
#
# If LeakSanitizer cannot run here (it needs to ptrace the process's threads, which some
# sandboxes forbid), the script says so loudly and runs with detect_leaks=0 rather than
# pretending; set TRAINRT_REQUIRE_LSAN=1 to make that an error.
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=${TRAINRT_ASAN_BUILD_DIR:-build-asan}

# shellcheck source=scripts/deps.sh
source scripts/deps.sh
trainrt_install_missing cmake ninja-build g++ pkg-config libgtest-dev libgmock-dev \
  libspdlog-dev libfmt-dev libopenblas-dev librandom123-dev nlohmann-json3-dev zlib1g-dev

# float-cast-overflow (a float -> int conversion out of range or of NaN) is not part of GCC's
# "undefined" group, so it is named.
san="-fsanitize=address,undefined,float-cast-overflow -fno-omit-frame-pointer"
san+=" -fno-sanitize-recover=undefined,float-cast-overflow"
cxx=${CXX:-c++}

# ---- can LeakSanitizer run here? -------------------------------------------------------------
probe_dir=$(mktemp -d)
trap 'rm -rf "$probe_dir"' EXIT
printf '#include <cstdlib>\nvoid* volatile p;\nint main() { p = std::malloc(33); p = nullptr; return 0; }\n' \
  > "$probe_dir/leak.cpp"
$cxx $san -O0 "$probe_dir/leak.cpp" -o "$probe_dir/leak"
lsan_out=$(ASAN_OPTIONS=detect_leaks=1 "$probe_dir/leak" 2>&1 || true)
if grep -q "LeakSanitizer: detected memory leaks" <<< "$lsan_out"; then
  detect_leaks=1
  echo "sanitize: LeakSanitizer works here (a planted 33-byte leak was reported)"
else
  echo "$lsan_out"
  echo "sanitize: WARNING: LeakSanitizer cannot run in this environment (it did not report a" \
    "planted leak; usually ptrace is forbidden): leak checking is OFF for this run"
  [ "${TRAINRT_REQUIRE_LSAN:-0}" = 1 ] && exit 1
  detect_leaks=0
fi

# Applies to the test discovery during the build (gtest_discover_tests runs the binaries) and
# to ctest. abort_on_error=0: exit with an error code, no core dump.
export ASAN_OPTIONS="halt_on_error=1:abort_on_error=0:detect_leaks=$detect_leaks:strict_string_checks=1:check_initialization_order=1:strict_init_order=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export LSAN_OPTIONS="report_objects=1"
unset TRAINRT_BACKEND_PATH

# ---- configure and build -----------------------------------------------------------------------
jobs=$(nproc 2> /dev/null || echo 2)
# Debug with -O1: fast enough to run everything, keeps frames for reports. The CPU kernels
# keep their own -O3 (added per target after these flags), sanitized all the same.
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Debug \
  -DCMAKE_CXX_FLAGS="$san -D_GLIBCXX_ASSERTIONS" -DCMAKE_C_FLAGS="$san" \
  -DCMAKE_CXX_FLAGS_DEBUG="-g -O1" -DCMAKE_C_FLAGS_DEBUG="-g -O1" \
  -DCMAKE_EXE_LINKER_FLAGS="$san" -DCMAKE_SHARED_LINKER_FLAGS="$san" \
  -DCMAKE_MODULE_LINKER_FLAGS="$san" \
  -DTRAINRT_WITH_CUDA=OFF -DTRAINRT_BUILD_TESTS=ON -DTRAINRT_BUILD_BENCHMARKS=OFF \
  -DTRAINRT_BUILD_EXAMPLES=OFF
cmake --build "$build_dir" -j "$jobs"

# Every C/C++ compile command, the per-ISA kernels included, carries the sanitizer flags.
python3 - "$build_dir/compile_commands.json" << 'EOF'
import json, sys
cmds = json.load(open(sys.argv[1]))
bad = [c["file"] for c in cmds
       if "-fsanitize=address,undefined" not in c.get("command", " ".join(c.get("arguments", [])))]
kernels = [c for c in cmds if c["file"].endswith("cpu_kernels.cpp")]
if bad or not kernels:
    print("sanitize: compile commands without the sanitizer flags:", bad or "no kernels found")
    sys.exit(1)
print(f"sanitize: all {len(cmds)} compile commands sanitized ({len(kernels)} CPU kernel builds)")
EOF
# readelf into a variable, then grep: `ldd ... | grep -q` under pipefail fails now and then, when
# grep exits at the first match and ldd, still writing, dies of SIGPIPE (1 in 300 here; it
# failed a CI run).
needed=$(readelf -d "$build_dir/lib/libtrainrt.so" | grep NEEDED || true)
grep -q 'libasan\.so' <<< "$needed" || {
  echo "sanitize: libtrainrt.so is not linked with ASan; its NEEDED entries:"
  echo "$needed"
  exit 1
}

# ---- run everything ------------------------------------------------------------------------------
echo "sanitize: ASAN_OPTIONS=$ASAN_OPTIONS"
echo "sanitize: UBSAN_OPTIONS=$UBSAN_OPTIONS"
# The two slowest CUDA-emulator suites (the CPU/CUDA parity grid and the loss suite's /cuda
# cases, about 90 s together in Release) run in scripts/test.sh only; every other emulator
# suite runs here, sanitized.
ctest --test-dir "$build_dir" --output-on-failure -j "$jobs" \
  -E '^cuda_emulator_(parity|losses)$'

echo "sanitize: OK, the whole suite ran clean under ASan+UBSan (leak checking: $([ $detect_leaks = 1 ] && echo on || echo OFF))"
