# Vanilla E-SPA (no skips, no normalisation) on WikiText-103 with GPT-2 BPE, on GPUs.
#   python data.py wikitext103
#   torchrun --standalone --nproc_per_node=8 train.py config/wikitext103_espa.py
# Compare against the same file with --model=preln --out_dir=out-wt103-preln; the paper reports
# that vanilla models match Pre-LN after about 5x more steps (method.md section 9).
model = 'espa'
out_dir = 'out-wt103-espa'
dataset = 'wikitext103'
n_layer = 36
n_embd = 768
n_head = 12
block_size = 512
batch_size = 16                    # per GPU micro-batch
gradient_accumulation_steps = 8    # over all GPUs: 16 * 512 * 8 = 65,536 tokens per step
learning_rate = 1e-3               # the blocks train at learning_rate / n_layer (block_lr_rule='depth')
warmup_iters = 2000
max_iters = 100_000
min_lr = 1e-4
weight_decay = 0.1
eval_interval = 1000
eval_iters = 50
diag_interval = 1000
keep_last = 3
compile = True
sample_start = '\n'
