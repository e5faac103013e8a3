#!/bin/sh
# Checks of the example programs that need more than their exit status.
#   tests/examples_check.sh regression-check-fails PATH/TO/regression_losses WORKDIR
#     without outliers the robust losses have no edge: --check must fail (status 1, message),
#     so the check of the regression_losses_check test can fail.
#   tests/examples_check.sh optimizer-csv PATH/TO/optimizer_comparison WORKDIR
#     a small synthetic run writes one CSV with the header and EPOCHS rows per optimizer.
set -u
mode=$1
bin=$2
dir=$3
rm -rf "$dir"
mkdir -p "$dir" || exit 1

fail() {
  echo "FAIL: $*"
  exit 1
}

if [ "$mode" = regression-check-fails ]; then
  "$bin" --device cpu --train 1000 --test 500 --epochs 15 --outlier-frac 0 --check \
    --out "$dir/curves.csv" >"$dir/out.log" 2>&1
  rc=$?
  cat "$dir/out.log"
  [ "$rc" -eq 1 ] || fail "regression_losses --check without outliers exited $rc, expected 1"
  grep -q '^check FAILED' "$dir/out.log" || fail "no 'check FAILED' line"
  echo "ok: --check fails when the robust losses do not beat mse"
  exit 0
fi

if [ "$mode" = optimizer-csv ]; then
  epochs=2
  csv=$dir/curves.csv
  "$bin" --synthetic --device cpu --epochs $epochs --train-samples 512 --val-samples 256 \
    --hidden 32 --out "$csv" >"$dir/out.log" 2>&1
  rc=$?
  cat "$dir/out.log"
  [ "$rc" -eq 0 ] || fail "optimizer_comparison exited $rc"
  [ -s "$csv" ] || fail "no CSV at $csv"
  header=$(head -n 1 "$csv")
  [ "$header" = "optimizer,epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds" ] ||
    fail "unexpected header: $header"
  for o in sgd sgd_momentum adam adamw rmsprop; do
    n=$(grep -c "^$o," "$csv")
    [ "$n" -eq "$epochs" ] || fail "expected $epochs rows of $o, found $n"
    grep -q "^$o " "$dir/out.log" || fail "no summary row for $o"
  done
  [ "$(wc -l <"$csv" | tr -d ' ')" -eq $((1 + 5 * epochs)) ] || fail "unexpected extra rows"
  # Every value is a finite number; accuracies in [0, 1], lr >= 0 (cosine ends at 0).
  awk -F, 'NR > 1 {
    if (NF != 8) { print "line " NR ": " NF " fields"; bad = 1 }
    for (i = 2; i <= 8; i++)
      if ($i !~ /^-?[0-9.]+(e[-+]?[0-9]+)?$/) { print "line " NR " field " i ": " $i; bad = 1 }
    if ($4 < 0 || $4 > 1 || $6 < 0 || $6 > 1 || $7 < 0) { print "line " NR ": range"; bad = 1 }
  } END { exit bad }' "$csv" || fail "bad values in $csv"
  echo "ok: one CSV with $epochs epochs of all five optimizers"
  exit 0
fi

echo "usage: $0 regression-check-fails|optimizer-csv BINARY WORKDIR"
exit 2
