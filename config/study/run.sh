#!/usr/bin/env bash
# The small-scale study: every variant for the full token budget at its swept learning rate,
# then the table and the plots of README "Results".
#   bash config/study/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
VARIANTS="${VARIANTS:-preln vanilla vskipinit uspa espa vskipinit-skip uspa-skip espa-skip}"
for model in $VARIANTS; do
  [ -f "out/study/$model/ckpt.pt" ] || python train.py config/study/common.py "config/study/$model.py" --overwrite=True >/dev/null
  echo "$model: $(grep '"eval"' "out/study/$model/log.jsonl" | tail -n 1)"
done
python compare.py $(for m in $VARIANTS; do echo "out/study/$m"; done) --baseline=preln \
  --unigram="$(python -c "import compare, data; print(round(compare.unigram_loss(data.load_tokens('data', 'pydocs', 'train'), 256, data.load_tokens('data', 'pydocs', 'val')), 4))")" \
  --json=out/study/table.json --plots=assets
