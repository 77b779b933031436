# The small-scale study of README "Results": every variant sees the same data, the same model size
# and the same token budget; only the preset and its learning rate differ (study/rates.json holds
# the rates the sweep chose; study/study.py passes them on the command line):
#   python train.py study/common.py --model=espa --learning_rate=3e-3
# A deep, narrow model so that a 2-core CPU runs all nine variants in well under an hour.
dataset = 'pydocs'
n_layer = 24
n_embd = 64
n_head = 4
block_size = 64
batch_size = 8                 # 512 tokens per step
max_iters = 1000
optimizer = 'adamw'            # the study's baseline; its Muon cells add --optimizer=muon --muon_lr=...
warmup_iters = 100             # MATH.md sec. 10: the vanilla models need a warmup (and lr/L in the blocks)
eval_interval = 100
eval_iters = 20
diag_interval = 500
sample_tokens = 0
keep_last = 1
