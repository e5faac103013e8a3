#!/usr/bin/env bash
# Re-measures the figures the README quotes for the examples and the amp modes, on the CPU,
# and writes them as markdown (stdout, or the file given):
#   - the demo: fashion_mnist_mlp, 10 epochs (test accuracy, seconds per epoch, samples/s);
#   - optimizer_comparison, 5 epochs (validation accuracy per optimizer);
#   - the trainrt CLI on Fashion-MNIST, AdamW 1e-3, batch 128, 2 epochs, amp none / bf16 /
#     fp16 (val_acc, train loss, samples/s, skipped steps).
# Accuracies are deterministic on one machine; they move in the last digits between CPUs,
# because OpenBLAS picks its kernels (and so its rounding) per CPU model.
#
#   bench/example_figures.sh [build] [bench/results/DATE-examples-cpu.md]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
out=${2:-/dev/stdout}
bin=$build/bin
data=/usr/share/datasets/fashion-mnist
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for exe in fashion_mnist_mlp optimizer_comparison trainrt; do
  [ -x "$bin/$exe" ] || { echo "example_figures: $bin/$exe is not built" >&2; exit 1; }
done
[ -d "$data" ] || { echo "example_figures: $data is missing (dataset-fashion-mnist)" >&2; exit 1; }

"$bin/fashion_mnist_mlp" --epochs 10 --out "$work/demo" --device cpu >"$work/demo.log" 2>&1
"$bin/optimizer_comparison" --epochs 5 --out "$work/oc.csv" >"$work/oc.log" 2>&1
for amp in none bf16 fp16; do
  cat >"$work/amp_$amp.json" <<EOF
{"optimizer": "adamw", "lr": 1e-3, "epochs": 2, "batch_size": 128, "amp": "$amp",
 "seed": 0, "device": "cpu", "output_dir": "$work/amp_$amp",
 "data": {"format": "idx", "dir": "$data"},
 "model": {"hidden": [256, 128], "activation": "relu"}}
EOF
  "$bin/trainrt" train --config "$work/amp_$amp.json" >"$work/amp_$amp.log" 2>&1
done

{
  echo "# Example and amp figures on the CPU, $(date -u +%Y-%m-%d)"
  echo
  echo "Written by \`bench/example_figures.sh\`."
  echo
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "- machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) logical CPUs; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- $("$bin/trainrt" --version 2>/dev/null)"
  echo
  echo "## Demo: fashion_mnist_mlp --epochs 10 --device cpu"
  echo
  echo '```'
  grep -E '^(test accuracy|time):' "$work/demo.log"
  grep -E '^epoch 10/10 loss' "$work/demo.log" | sed 's/.*val_acc/last epoch: val_acc/'
  echo '```'
  echo
  echo "## optimizer_comparison --epochs 5"
  echo
  echo '```'
  sed -n '/^optimizer  *lr/,/^curves/p' "$work/oc.log" | grep -v '^curves'
  echo '```'
  echo
  echo "## trainrt train: AdamW 1e-3, batch 128, 2 epochs, MLP 784-256-128-10, amp none / bf16 / fp16"
  echo
  echo "| amp | final line | samples/s per epoch |"
  echo "|---|---|---|"
  for amp in none bf16 fp16; do
    final=$(grep -m1 '^final:' "$work/amp_$amp.log" || echo "no final line")
    rates=$(grep -E '^epoch [0-9]+/2 loss' "$work/amp_$amp.log" |
      sed -E 's/.* ([0-9]+) samples\/s.*/\1/' | paste -sd' ' -)
    echo "| $amp | $final | $rates |"
  done
} >"$out"
