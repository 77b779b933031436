# Vanilla E-SPA (no skips, no normalisation) on English C4 with GPT-2 BPE, on GPUs. Our choices
# (README "Paper scale"); not yet run at this scale by this project.
#   python data.py c4 --max_tokens=2e9                # streams shards until 2B training tokens
#   torchrun --standalone --nproc_per_node=8 train.py config/c4_espa.py
#   ... --model=preln --out_dir=out-c4-preln          # the baseline; --n_layer=72 for the depth study
model = 'espa'
out_dir = 'out-c4-espa'
dataset = 'c4'
n_layer = 36
n_embd = 768
n_head = 12
block_size = 512
batch_size = 16                    # per GPU micro-batch
gradient_accumulation_steps = 8    # over all GPUs: 16 * 512 * 8 = 65,536 tokens per step
learning_rate = 1e-3               # embedding and readout; the blocks train at 1e-3 / n_layer (block_lr_rule='depth')
warmup_iters = 2000
max_iters = 30_000                 # about 2B tokens: one pass over the prepared budget
min_lr = 1e-4
weight_decay = 0.1
eval_interval = 1000
eval_iters = 50
diag_interval = 1000
compile = True                     # E-SPA's bias then runs inside FlexAttention (no T x T tensor)
