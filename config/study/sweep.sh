#!/usr/bin/env bash
# Learning-rate sweep of the small-scale study: every variant at each rate for SWEEP_ITERS steps,
# then the table of final validation losses (the best rate of each variant goes in its config file).
#   bash config/study/sweep.sh                 # all variants, lrs 1e-3 3e-3 1e-2, 500 steps
#   VARIANTS="espa preln" LRS="3e-3" bash config/study/sweep.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
VARIANTS="${VARIANTS:-preln postln vanilla vskipinit uspa espa vskipinit-skip uspa-skip espa-skip}"
LRS="${LRS:-1e-3 3e-3 1e-2}"
SWEEP_ITERS="${SWEEP_ITERS:-500}"
OUT="${OUT:-out/sweep}"
mkdir -p "$OUT"
for model in $VARIANTS; do
  for lr in $LRS; do
    run="$OUT/$model-lr$lr"
    # done already (finished or diverged): the sweep can be stopped and started again
    { grep -qs "\"iter\": $SWEEP_ITERS," "$run/log.jsonl" || [ -f "$run/DIVERGED" ]; } && continue
    if python train.py config/study/common.py --model="$model" --learning_rate="$lr" --max_iters="$SWEEP_ITERS" \
         --out_dir="$run" --overwrite=True --diag_interval=0 >/dev/null 2>"$run.stderr"; then
      echo "$model lr=$lr: $(tail -n 1 "$run/log.jsonl")"
    else   # train.py stops a diverged run with exit status 3; that is a result, not an error
      touch "$run/DIVERGED"; echo "$model lr=$lr: diverged ($(tail -n 1 "$run.stderr" | cut -c1-120))"
    fi
  done
done
