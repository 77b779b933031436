#!/usr/bin/env bash
# Ablations of the study (README "Results"): what the vanilla E-SPA recipe needs, and what does not
# help. Each run: the study settings, ITERS steps, E-SPA's swept learning rate unless said otherwise.
#   bash config/study/ablations.sh            # then: python compare.py out/ablations/* --baseline=espa
#   REVERSE=1 bash config/study/ablations.sh  # a second worker, from the other end (runs are claimed)
set -euo pipefail
cd "$(dirname "$0")/../.."
ITERS="${ITERS:-400}"
LR="${LR:-3e-3}"
OUT="${OUT:-out/ablations}"
RUNS=(
  "espa"                                                            # the recipe: blocks at lr / L, warmup 100
  "espa-global-lr        --block_lr_rule=global"                    # one Adam lr for everything (sec. 10: fails)
  "espa-global-lr3e-4    --block_lr_rule=global --learning_rate=3e-4 --warmup_iters=200"
  "espa-no-warmup        --warmup_iters=0"
  "espa-pos-learned      --pos=learned"                             # position embeddings on top of the bias
  "espa-q-correct        --q_correct=True"                          # sec. 7 (ours)
  "espa-paper-gamma-eta  --gamma_L=0.005 --eta=0.9"                 # public code's gamma_L and the paper's eta
  "vanilla-recipe        --model=vanilla"                           # the same recipe, rank-collapsed attention
  "uspa-pos-none         --model=uspa --pos=none --learning_rate=1e-2"       # position only through the bias
  "vskipinit-pos-none    --model=vskipinit --pos=none --learning_rate=1e-2"  # position only through causality
  "espa-L48              --n_layer=48"                              # does the lr / L rule carry to depth 48?
  "preln-L48             --model=preln --n_layer=48 --learning_rate=1e-2"    # preln's swept rate
)
[ -n "${REVERSE:-}" ] && RUNS=("${RUNS[@]}") && for ((i = ${#RUNS[@]} - 1; i >= 0; i--)); do R+=("${RUNS[i]}"); done && RUNS=("${R[@]}")
mkdir -p "$OUT"
for spec in "${RUNS[@]}"; do
  read -r label args <<<"$spec"
  dir="$OUT/$label"
  { grep -qs "\"iter\": $ITERS," "$dir/log.jsonl" || [ -f "$dir/DIVERGED" ]; } && continue
  mkdir "$dir.claimed" 2>/dev/null || continue      # another worker has it
  # shellcheck disable=SC2086
  if python train.py config/study/common.py --model=espa --learning_rate="$LR" --max_iters="$ITERS" \
       --out_dir="$dir" --overwrite=True --diag_interval=100 $args >/dev/null 2>"$dir.stderr"; then
    echo "$label: $(grep '"eval"' "$dir/log.jsonl" | tail -n 1)"
  else   # exit 3 is a diverged run: a result
    mkdir -p "$dir"; touch "$dir/DIVERGED"; echo "$label: diverged ($(tail -n 1 "$dir.stderr" | cut -c1-120))"
  fi
  rmdir "$dir.claimed"
done
