#!/usr/bin/env bash
# Ablations of the study (README "Results"): what the vanilla E-SPA recipe needs, and what does not
# help. Each run: the study settings, ITERS steps, E-SPA's swept learning rate unless said otherwise.
#   bash config/study/ablations.sh            # then: python compare.py out/ablations/* --baseline=espa
set -euo pipefail
cd "$(dirname "$0")/../.."
ITERS="${ITERS:-400}"
LR="${LR:-3e-3}"
OUT="${OUT:-out/ablations}"
run() {   # run LABEL ARGS...: skipped when already finished (or diverged)
  local label="$1"; shift
  local dir="$OUT/$label"
  { grep -qs "\"iter\": $ITERS," "$dir/log.jsonl" || [ -f "$dir/DIVERGED" ]; } && return 0
  mkdir -p "$dir"
  if python train.py config/study/common.py --model=espa --learning_rate="$LR" --max_iters="$ITERS" \
       --out_dir="$dir" --overwrite=True --diag_interval=100 "$@" >/dev/null 2>"$dir.stderr"; then
    echo "$label: $(grep '"eval"' "$dir/log.jsonl" | tail -n 1)"
  else
    touch "$dir/DIVERGED"; echo "$label: diverged ($(tail -n 1 "$dir.stderr" | cut -c1-120))"
  fi
}
run espa                                                       # the recipe: blocks at lr / L, warmup 100
run espa-global-lr        --block_lr_rule=global               # one Adam lr for everything (sec. 10: fails)
run espa-global-lr3e-4    --block_lr_rule=global --learning_rate=3e-4 --warmup_iters=200
run espa-no-warmup        --warmup_iters=0
run espa-pos-learned      --pos=learned                        # position embeddings on top of the bias
run espa-q-correct        --q_correct=True                     # sec. 7 (ours)
run espa-paper-gamma-eta  --gamma_L=0.005 --eta=0.9            # public code's gamma_L and the paper's eta
run vanilla-recipe        --model=vanilla                      # the same recipe with rank-collapsed attention
run espa-L48              --n_layer=48                         # does the lr / L rule carry to depth 48?
run preln-L48             --model=preln --n_layer=48 --learning_rate=1e-2   # preln's swept rate
run uspa-pos-none         --model=uspa --pos=none --learning_rate=1e-2        # position only through the bias
run vskipinit-pos-none    --model=vskipinit --pos=none --learning_rate=1e-2   # position only through causality
