#!/usr/bin/env bash
# The test command: installs what is missing (Debian/Ubuntu, apt, only when missing),
# configures, builds (with the CUDA backend module when nvcc is found) and runs the whole
# test suite with ctest. Exits non-zero on any failure.
#
#   scripts/test.sh                 # build dir ./build
#   TRAINRT_BUILD_DIR=b scripts/test.sh
#   TRAINRT_WITH_CUDA=OFF scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=${TRAINRT_BUILD_DIR:-build}
with_cuda=${TRAINRT_WITH_CUDA:-AUTO}

# shellcheck source=scripts/deps.sh
source scripts/deps.sh
trainrt_install_missing cmake ninja-build g++ pkg-config libgtest-dev libgmock-dev \
  libbenchmark-dev libspdlog-dev libfmt-dev libopenblas-dev librandom123-dev \
  nlohmann-json3-dev zlib1g-dev dataset-fashion-mnist

jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTRAINRT_WITH_CUDA="$with_cuda"
cmake --build "$build_dir" -j "$jobs"
ctest --test-dir "$build_dir" --output-on-failure -j "$jobs"
