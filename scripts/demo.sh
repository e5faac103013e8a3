#!/usr/bin/env bash
# The demo (the README's first command): installs what is missing (Debian/Ubuntu, apt, only
# when missing; the Fashion-MNIST data comes from the dataset-fashion-mnist package), builds
# Release (with the CUDA backend module when nvcc is found), trains the Fashion-MNIST MLP
# 784-256-128-10 on the best device with the progress bar, and prints the test accuracy and
# where the metrics, the plots (scripts/plot_metrics.py) and the checkpoints are.
#
#   scripts/demo.sh                 # build dir ./build, 10 epochs, output ./fashion_mnist_run
#   TRAINRT_BUILD_DIR=b TRAINRT_DEMO_EPOCHS=3 TRAINRT_DEMO_OUT=/tmp/run scripts/demo.sh
#   TRAINRT_DEMO_DEVICE=cpu scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=${TRAINRT_BUILD_DIR:-build}
with_cuda=${TRAINRT_WITH_CUDA:-AUTO}
epochs=${TRAINRT_DEMO_EPOCHS:-10}
out=${TRAINRT_DEMO_OUT:-fashion_mnist_run}
device=${TRAINRT_DEMO_DEVICE:-auto}

# shellcheck source=scripts/deps.sh
source scripts/deps.sh
trainrt_install_missing cmake ninja-build g++ pkg-config libspdlog-dev libfmt-dev \
  libopenblas-dev librandom123-dev nlohmann-json3-dev zlib1g-dev dataset-fashion-mnist \
  python3-matplotlib

jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTRAINRT_WITH_CUDA="$with_cuda" \
  -DTRAINRT_BUILD_TESTS=OFF -DTRAINRT_BUILD_BENCHMARKS=OFF -DTRAINRT_BUILD_EXAMPLES=ON
cmake --build "$build_dir" -j "$jobs" --target fashion_mnist_mlp

"$build_dir/bin/fashion_mnist_mlp" --epochs "$epochs" --out "$out" --device "$device"
echo "plots:"
/usr/bin/python3 scripts/plot_metrics.py "$out/metrics.csv" | sed 's/^/  /'
