#!/bin/sh
# End-to-end checks of the trainrt command line on a tiny CSV dataset written here.
#   tests/cli_commands.sh good PATH/TO/trainrt WORKDIR   train, lr-find, compare succeed
#   tests/cli_commands.sh bad  PATH/TO/trainrt WORKDIR   bad configs fail with a clear message
# Exits 1 on the first check that does not hold, printing what was expected and the output.
set -u
mode=$1
bin=$2
dir=$3
rm -rf "$dir"
mkdir -p "$dir" || exit 1

fail() {
  echo "FAIL: $*"
  [ -f "$dir/out.log" ] && { echo "--- output:"; cat "$dir/out.log"; }
  exit 1
}

# run NAME ARGS...: runs the tool, output in $dir/out.log (also echoed), exit status in $rc.
run() {
  echo "+ trainrt $*"
  "$bin" "$@" >"$dir/out.log" 2>&1
  rc=$?
  cat "$dir/out.log"
}

# 3 well separated classes, 4 features (feature c is about 2 for class c, the last is noise),
# from a Park-Miller generator so every awk gives the same numbers.
write_csv() {  # FILE ROWS SEED
  awk -v rows="$2" -v seed="$3" 'BEGIN {
    s = seed
    print "f0,f1,f2,f3,label"
    for (i = 0; i < rows; i++) {
      c = i % 3
      line = ""
      for (j = 0; j < 4; j++) {
        s = (s * 16807) % 2147483647
        v = (j == c ? 2 : 0) + (s / 2147483647 - 0.5)
        line = line sprintf("%.5f,", v)
      }
      print line c
    }
  }' >"$1"
}

write_csv "$dir/train.csv" 96 12345
write_csv "$dir/val.csv" 48 777

config() {  # FILE OPTIMIZER: a complete, valid config apart from the optimizer name
  cat >"$1" <<EOF
{
  "optimizer": "$2", "lr": 0.05, "epochs": 5, "batch_size": 16, "seed": 1, "device": "cpu",
  "output_dir": "$dir/run", "checkpoint_dir": "$dir/ckpt",
  "data": {"format": "csv", "train": "$dir/train.csv", "val": "$dir/val.csv",
           "label_column": "label"},
  "model": {"hidden": [8], "activation": "relu"}
}
EOF
}

lines() { wc -l <"$1" | tr -d ' '; }

if [ "$mode" = good ]; then
  # --help, also after a command, prints the usage with the config keys and exits 0.
  for args in "--help" "train --help" "lr-find -h" "compare --help"; do
    # shellcheck disable=SC2086
    run $args
    [ "$rc" -eq 0 ] || fail "trainrt $args exited $rc"
    grep -q 'usage: trainrt train' "$dir/out.log" || fail "trainrt $args printed no usage"
    grep -q 'label_smoothing' "$dir/out.log" || fail "trainrt $args: the usage lacks label_smoothing"
  done

  run --version
  [ "$rc" -eq 0 ] || fail "trainrt --version exited $rc"
  grep -Eq '^trainrt [0-9][0-9.]* \(headers [0-9][0-9.]*\); (cpu|cuda)' "$dir/out.log" ||
    fail "trainrt --version printed no 'trainrt X.Y.Z (headers X.Y.Z); DEVICE ...'"

  config "$dir/train.json" adam

  run train --config "$dir/train.json"
  [ "$rc" -eq 0 ] || fail "train exited $rc"
  grep -q '^final: train_loss' "$dir/out.log" || fail "train printed no final line"
  for f in run/metrics.csv run/metrics.jsonl ckpt/best/manifest.json ckpt/last/manifest.json \
    ckpt/last/model.safetensors; do
    [ -s "$dir/$f" ] || fail "train did not write $f"
  done
  head -n 1 "$dir/run/metrics.csv" | grep -q 'epoch' || fail "metrics.csv has no header"
  [ "$(lines "$dir/run/metrics.csv")" -eq 6 ] || fail "metrics.csv: expected a header and 5 epochs"
  # The classes are separable: 5 epochs must learn them.
  acc=$(sed -n 's/^final: .* val_acc \([0-9.]*\)$/\1/p' "$dir/out.log")
  [ -n "$acc" ] || fail "no val_acc in the final line"
  awk -v a="$acc" 'BEGIN { exit !(a >= 0.95) }' || fail "val_acc $acc < 0.95 after 5 epochs"

  run lr-find --config "$dir/train.json" --start 1e-5 --end 1 --iters 20 --out "$dir/lr_find.csv"
  [ "$rc" -eq 0 ] || fail "lr-find exited $rc"
  grep -q 'suggested lr' "$dir/out.log" || fail "lr-find printed no suggested lr"
  [ -s "$dir/lr_find.csv" ] || fail "lr-find did not write lr_find.csv"
  head -n 1 "$dir/lr_find.csv" | grep -q '^lr,loss' || fail "lr_find.csv: expected an lr,loss header"
  [ "$(lines "$dir/lr_find.csv")" -ge 3 ] || fail "lr_find.csv: expected at least 2 rows"
  # A subnormal start lr is a finite number > 0 (std::stod refused it as out of range).
  run lr-find --config "$dir/train.json" --start 1e-320 --end 1 --iters 5 --out "$dir/lr_sub.csv"
  [ "$rc" -eq 0 ] || fail "lr-find --start 1e-320 exited $rc"
  [ -s "$dir/lr_sub.csv" ] || fail "lr-find --start 1e-320 did not write its CSV"

  run compare --config "$dir/train.json" --optimizers sgd,adam --out "$dir/compare.csv"
  [ "$rc" -eq 0 ] || fail "compare exited $rc"
  [ -s "$dir/compare.csv" ] || fail "compare did not write compare.csv"
  head -n 1 "$dir/compare.csv" | grep -q '^run,optimizer,' || fail "compare.csv: bad header"
  for o in sgd adam; do
    n=$(grep -c "^$o,$o," "$dir/compare.csv")
    [ "$n" -eq 5 ] || fail "compare.csv: expected 5 epochs of $o, found $n"
  done
  # col FILE NAME: the values of column NAME (by the header), one per line.
  col() {
    awk -F, -v name="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == name) c = i; next }
                          c { print $c }' "$1"
  }
  head -n 1 "$dir/compare.csv" | grep -q ',base_lr,.*,lr,' ||
    fail "compare.csv: expected base_lr and lr columns"
  head -n 1 "$dir/compare.csv" | grep -q 'cur_lr' && fail "compare.csv: cur_lr is gone (lr)"
  # Without --lrs, base_lr is the config's lr (0.05), and with no scheduler so is every lr.
  [ "$(col "$dir/compare.csv" base_lr | sort -u)" = "0.05" ] ||
    fail "compare.csv: base_lr must be the config's 0.05 without --lrs"
  col "$dir/compare.csv" lr | awk '{ if ($1 != 0.05) bad = 1 } END { exit bad }' ||
    fail "compare.csv: lr must be 0.05 in every epoch without a scheduler"

  # With --lrs and a cosine schedule: base_lr is the swept value, lr the per-epoch lr.
  sed 's/"optimizer": "adam"/"optimizer": "sgd", "scheduler": "cosine"/' "$dir/train.json" \
    >"$dir/cosine.json"
  run compare --config "$dir/cosine.json" --lrs 0.1,0.02 --out "$dir/compare_lrs.csv"
  [ "$rc" -eq 0 ] || fail "compare --lrs exited $rc"
  [ "$(lines "$dir/compare_lrs.csv")" -eq 11 ] || fail "compare_lrs.csv: expected 2 runs x 5 epochs"
  [ "$(col "$dir/compare_lrs.csv" base_lr | sort -u | tr '\n' ' ')" = "0.02 0.1 " ] ||
    fail "compare_lrs.csv: base_lr must be the --lrs values"
  # Per run: lr decreases every epoch, below its base_lr, to 0 at the end of the schedule.
  awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) { if ($i == "base_lr") b = i; if ($i == "lr") l = i }; next }
    { if ($b == prev_b && !($l < prev_l)) bad = 1
      if (!($l < $b)) bad = 1
      prev_b = $b; prev_l = $l }
    END { if (prev_l > 1e-9) bad = 1; exit bad }' "$dir/compare_lrs.csv" ||
    fail "compare_lrs.csv: lr is not the per-epoch cosine lr"
  # max_steps inside an epoch (6 steps per epoch: step 8 is batch 2 of the second epoch). fit() writes
  # metrics and checkpoints at epoch ends only: the run prints that it stopped, saves the
  # trainer to checkpoint_dir/last, prints only what exists, and resumes from there.
  sed -e 's|"seed": 1,|"seed": 1, "max_steps": 8,|' -e "s|$dir/run|$dir/ms_run|" \
    -e "s|$dir/ckpt|$dir/ms_ckpt|" "$dir/train.json" >"$dir/ms.json"
  run train --config "$dir/ms.json"
  [ "$rc" -eq 0 ] || fail "train with max_steps 8 exited $rc"
  grep -q '^stopped: max_steps 8 reached in epoch 2/5 after batch 2 of 6 (running train_loss [0-9]' \
    "$dir/out.log" || fail "train with max_steps 8: no 'stopped: max_steps 8 ...' line"
  grep -q '^final:' "$dir/out.log" && fail "train with max_steps 8: a final line for an unfinished epoch"
  grep -qF "metrics: $dir/ms_run/metrics.csv" "$dir/out.log" || fail "max_steps 8: no metrics line"
  [ "$(lines "$dir/ms_run/metrics.csv")" -eq 2 ] || fail "max_steps 8: expected 1 epoch in metrics.csv"
  grep -qF "checkpoint: $dir/ms_ckpt/best (best), $dir/ms_ckpt/last (last)" "$dir/out.log" ||
    fail "max_steps 8: no checkpoint line"
  sed -e 's|"max_steps": 8,|"resume": "'"$dir"'/ms_ckpt/last",|' "$dir/ms.json" >"$dir/ms_resume.json"
  run train --config "$dir/ms_resume.json"
  [ "$rc" -eq 0 ] || fail "train resumed from max_steps 8 exited $rc"
  grep -q '^final: train_loss' "$dir/out.log" || fail "the resumed run printed no final line"
  # ... and it is the uninterrupted run (seconds and samples/s aside), to the last digit.
  [ "$(cut -d, -f1-9 "$dir/ms_run/metrics.csv")" = "$(cut -d, -f1-9 "$dir/run/metrics.csv")" ] ||
    fail "the run resumed from max_steps 8 differs from the uninterrupted one"
  # max_steps inside the first epoch: no metrics and no best were written, so none is printed.
  sed -e 's|"max_steps": 8|"max_steps": 3|' -e "s|$dir/ms_run|$dir/ms3_run|" \
    -e "s|$dir/ms_ckpt|$dir/ms3_ckpt|" "$dir/ms.json" >"$dir/ms3.json"
  run train --config "$dir/ms3.json"
  [ "$rc" -eq 0 ] || fail "train with max_steps 3 exited $rc"
  grep -q '^stopped: max_steps 3 reached in epoch 1/5 after batch 3 of 6' "$dir/out.log" ||
    fail "train with max_steps 3: no stopped line"
  grep -q '^metrics:' "$dir/out.log" && fail "max_steps 3 printed a metrics.csv it did not write"
  [ ! -e "$dir/ms3_run/metrics.csv" ] || fail "max_steps 3 wrote a metrics.csv without an epoch"
  grep -qxF "checkpoint: $dir/ms3_ckpt/last (last)" "$dir/out.log" ||
    fail "max_steps 3: expected only the last checkpoint"
  [ -s "$dir/ms3_ckpt/last/manifest.json" ] || fail "max_steps 3 did not save ms3_ckpt/last"
  [ ! -e "$dir/ms3_ckpt/best" ] || fail "max_steps 3 wrote a best checkpoint"
  sed -e 's|"max_steps": 3,|"resume": "'"$dir"'/ms3_ckpt/last",|' "$dir/ms3.json" >"$dir/ms3_resume.json"
  run train --config "$dir/ms3_resume.json"
  [ "$rc" -eq 0 ] || fail "train resumed from max_steps 3 exited $rc"
  [ "$(cut -d, -f1-9 "$dir/ms3_run/metrics.csv")" = "$(cut -d, -f1-9 "$dir/run/metrics.csv")" ] ||
    fail "the run resumed from max_steps 3 differs from the uninterrupted one"
  # compare reports the unfinished epoch as a row with partial 1 (it wrote only the header).
  run compare --config "$dir/ms.json" --optimizers sgd,adam --out "$dir/compare_ms.csv"
  [ "$rc" -eq 0 ] || fail "compare with max_steps 8 exited $rc"
  head -n 1 "$dir/compare_ms.csv" | grep -q ',partial$' || fail "compare_ms.csv: no partial column"
  for o in sgd adam; do
    [ "$(grep -c "^$o,$o,.*,0$" "$dir/compare_ms.csv")" -eq 1 ] ||
      fail "compare_ms.csv: expected 1 whole epoch of $o"
    grep -q "^$o,$o,0.05,1,8,[0-9][^,]*,[0-9][^,]*,[0-9][^,]*,[0-9][^,]*,0.05,.*,1$" \
      "$dir/compare_ms.csv" || fail "compare_ms.csv: expected $o's partial epoch 1 at step 8"
  done

  # Every run has its own name, also for two lrs that print alike with 9 digits; base_lr is the
  # lr that ran, to the last digit.
  sed 's/"epochs": 5/"epochs": 1/' "$dir/train.json" >"$dir/one_epoch.json"
  run compare --config "$dir/one_epoch.json" --optimizers sgd --lrs 0.1,0.1000000001 \
    --out "$dir/compare_close.csv"
  [ "$rc" -eq 0 ] || fail "compare --lrs 0.1,0.1000000001 exited $rc"
  [ "$(col "$dir/compare_close.csv" run | sort -u | wc -l | tr -d ' ')" -eq 2 ] ||
    fail "compare_close.csv: the two runs have the same name"
  [ "$(col "$dir/compare_close.csv" base_lr | sort -u | tr '\n' ' ')" = "0.1 0.1000000001 " ] ||
    fail "compare_close.csv: base_lr must be the --lrs values"
  # Without --optimizers, the optimizer column is the config's.
  run compare --config "$dir/one_epoch.json" --lrs 0.1 --out "$dir/compare_cfg_opt.csv"
  [ "$rc" -eq 0 ] || fail "compare --lrs 0.1 exited $rc"
  [ "$(col "$dir/compare_cfg_opt.csv" optimizer)" = "adam" ] ||
    fail "compare_cfg_opt.csv: the optimizer column must be the config's adam"
  echo "cli good: train, lr-find and compare passed"
  exit 0
fi

if [ "$mode" = bad ]; then
  # expect_error MESSAGE ARGS...: exit status 1 (an error, not a crash or usage) and MESSAGE
  expect_error() {
    msg=$1
    shift
    run "$@"
    [ "$rc" -eq 1 ] || fail "trainrt $* exited $rc, expected 1"
    grep -qF -- "$msg" "$dir/out.log" || fail "trainrt $*: no message \"$msg\""
  }
  expect_error "cannot open $dir/missing.json" train --config "$dir/missing.json"

  printf '{"optimizer": "adam", "lr": 0.01,\n' >"$dir/broken.json"
  expect_error "invalid JSON" train --config "$dir/broken.json"
  expect_error "invalid JSON" lr-find --config "$dir/broken.json"

  # Option values that are not numbers are named, not reported as std::stod.
  config "$dir/opts.json" adam
  expect_error '--start needs a finite number' lr-find --config "$dir/opts.json" --start abc
  expect_error '--end needs a finite number' lr-find --config "$dir/opts.json" --end 1e400
  expect_error '--iters needs a positive integer' lr-find --config "$dir/opts.json" --iters 99999999999999999999
  expect_error '--lrs needs a finite number' compare --config "$dir/opts.json" --lrs 0.1,abc
  # Leading blanks are malformed numbers too (stod / stoll skipped them); a value that underflows
  # to 0 is not the number that was written.
  expect_error "--iters needs a positive integer, got ' 10'" lr-find --config "$dir/opts.json" --iters " 10"
  expect_error "--start needs a finite number, got ' 1e-3'" lr-find --config "$dir/opts.json" --start " 1e-3"
  expect_error "--start: '1e-400' underflows to 0" lr-find --config "$dir/opts.json" --start 1e-400

  # --lrs values are lrs: finite and > 0 (-1 and 0 ran with the config's lr); a run twice is an
  # error (its rows could not be told apart).
  expect_error "--lrs needs finite numbers > 0, got '-1'" compare --config "$dir/opts.json" \
    --lrs -1 --out "$dir/c.csv"
  expect_error "--lrs needs finite numbers > 0, got '0'" compare --config "$dir/opts.json" \
    --lrs 0.1,0 --out "$dir/c.csv"
  expect_error "--lrs lists 0.1 twice" compare --config "$dir/opts.json" \
    --lrs 0.1,0.10 --out "$dir/c.csv"
  expect_error "--optimizers lists sgd twice" compare --config "$dir/opts.json" \
    --optimizers sgd,adam,sgd --out "$dir/c.csv"

  # Layer widths must be whole numbers in range (1.5 was truncated, a huge one ran out of memory).
  sed 's/"hidden": \[8\]/"hidden": [1.5]/' "$dir/opts.json" >"$dir/frac.json"
  expect_error 'model.hidden must hold whole numbers' train --config "$dir/frac.json"
  sed 's/"hidden": \[8\]/"hidden": [8], "classes": 1000000000000/' "$dir/opts.json" >"$dir/wide.json"
  expect_error 'model.classes must hold whole numbers' train --config "$dir/wide.json"

  config "$dir/unknown_opt.json" adamx
  expect_error 'unknown optimizer "adamx"' train --config "$dir/unknown_opt.json"
  expect_error 'unknown optimizer "adamx"' lr-find --config "$dir/unknown_opt.json"

  config "$dir/good.json" adam
  expect_error 'unknown optimizer "nadam"' compare --config "$dir/good.json" --optimizers nadam
  # stdout is flushed before the error goes to stderr: the run's header line comes first.
  head_line=$(grep -n '^== nadam' "$dir/out.log" | cut -d: -f1)
  err_line=$(grep -n 'unknown optimizer "nadam"' "$dir/out.log" | cut -d: -f1)
  [ -n "$head_line" ] && [ "$head_line" -lt "$err_line" ] ||
    fail "compare: the error was printed before the output that preceded it"

  config "$dir/bad_delta.json" adam
  sed 's/"lr": 0.05/"lr": 0.05, "loss": "huber", "huber_delta": 0/' "$dir/bad_delta.json" \
    >"$dir/bad_delta2.json"
  expect_error 'huber_delta must be a finite number > 0' train --config "$dir/bad_delta2.json"

  # The keys inside data, model and early_stopping are checked as the Trainer's are: unknown
  # keys (they were ignored), wrong types (nlohmann's message without the key), bad values.
  # variant NAME SED: opts.json edited by SED, as NAME.json
  variant() { sed "$2" "$dir/opts.json" >"$dir/$1.json"; }
  variant hiden 's/"hidden"/"hiden"/'
  expect_error 'unknown key "model.hiden"' train --config "$dir/hiden.json"
  variant lable 's/"label_column"/"lable_column"/'
  expect_error 'unknown key "data.lable_column"' train --config "$dir/lable.json"
  variant vla 's/"val":/"vla":/'
  expect_error 'unknown key "data.vla"' train --config "$dir/vla.json"
  variant idx_key_in_csv 's/"format": "csv",/"format": "csv", "dir": "x",/'
  expect_error 'unknown key "data.dir"' train --config "$dir/idx_key_in_csv.json"
  variant patiense 's/"model": /"early_stopping": {"patiense": 3}, "model": /'
  expect_error 'unknown key "early_stopping.patiense"' train --config "$dir/patiense.json"
  variant es_array 's/"model": /"early_stopping": [1], "model": /'
  expect_error '"early_stopping" must be an object, got [1]' train --config "$dir/es_array.json"
  variant ckpt_num 's/"checkpoint_dir": "[^"]*"/"checkpoint_dir": 5/'
  expect_error '"checkpoint_dir" must be a string, got 5' train --config "$dir/ckpt_num.json"
  variant train_num 's/"train": "[^"]*"/"train": 5/'
  expect_error '"data.train" must be a string, got 5' train --config "$dir/train_num.json"
  variant act_num 's/"activation": "relu"/"activation": 3/'
  expect_error '"model.activation" must be a string, got 3' train --config "$dir/act_num.json"
  variant act_bad 's/"activation": "relu"/"activation": "elu"/'
  expect_error '"model.activation" must be one of relu, gelu, tanh, sigmoid, got "elu"' \
    train --config "$dir/act_bad.json"
  variant pat_str 's/"model": /"early_stopping": {"patience": "3"}, "model": /'
  expect_error '"early_stopping.patience" must be an integer' train --config "$dir/pat_str.json"
  variant pat_neg 's/"model": /"early_stopping": {"patience": -1}, "model": /'
  expect_error '"early_stopping.patience" must be >= 0, got -1' train --config "$dir/pat_neg.json"
  variant delta_neg 's/"model": /"early_stopping": {"min_delta": -0.5}, "model": /'
  expect_error '"early_stopping.min_delta" must be a finite number >= 0, got -0.5' \
    train --config "$dir/delta_neg.json"
  variant restore_num 's/"model": /"early_stopping": {"restore_best": 1}, "model": /'
  expect_error '"early_stopping.restore_best" must be true or false, got 1' \
    train --config "$dir/restore_num.json"
  variant monitor 's/"model": /"early_stopping": {"monitor": "bogus"}, "model": /'
  expect_error '"early_stopping.monitor" must be one of train_loss, loss, ' \
    train --config "$dir/monitor.json"
  grep -qF 'got "bogus"' "$dir/out.log" || fail "the monitor error does not show the value"
  variant model_str 's/"model": {[^}]*}/"model": "mlp"/'
  expect_error '"model" must be an object, got "mlp"' train --config "$dir/model_str.json"
  cat >"$dir/mean_str.json" <<EOF
{"device": "cpu", "data": {"format": "idx", "dir": "$dir", "mean": "x"}}
EOF
  expect_error '"data.mean" must be a number, got "x"' train --config "$dir/mean_str.json"
  cat >"$dir/std_zero.json" <<EOF
{"device": "cpu", "data": {"format": "idx", "dir": "$dir", "std": 0}}
EOF
  expect_error '"data.std" must be a finite number > 0, got 0' train --config "$dir/std_zero.json"
  # A directory as the config is named as such (was basic_filebuf::underflow ... without it).
  expect_error "cannot read $dir: it is a directory" train --config "$dir"
  # A patience past the int64 range (nlohmann's unchecked cast: undefined under UBSan), a key
  # given twice (the last one won), and a label that would make a 1e8-class output layer (9.5
  # GB) are errors (found by a file-format fuzz).
  variant pat_huge 's/"model": /"early_stopping": {"patience": 1e300}, "model": /'
  expect_error '"early_stopping.patience" must be an integer of at most 2^53' \
    train --config "$dir/pat_huge.json"
  variant lr_twice 's/"lr": 0.05,/"lr": 0.05, "lr": 5,/'
  expect_error 'the key "lr" is given twice' train --config "$dir/lr_twice.json"
  printf 'f0,label\n0.5,0\n0.25,100000000\n' >"$dir/huge_label.csv"
  variant huge_label "s|\"train\": \"[^\"]*\"|\"train\": \"$dir/huge_label.csv\"|; s|, \"val\": \"[^\"]*\"||"
  expect_error 'the largest training label is 100000000' train --config "$dir/huge_label.json"

  cat >"$dir/no_train.json" <<EOF
{"optimizer": "adam", "device": "cpu", "data": {"format": "csv"}}
EOF
  expect_error "data.train" train --config "$dir/no_train.json"

  # Nothing may be left behind by the failed runs.
  [ ! -e "$dir/run" ] || fail "a failed run wrote $dir/run"
  echo "cli bad: every bad config failed with its message"
  exit 0
fi

echo "usage: $0 good|bad TRAINRT WORKDIR"
exit 2
