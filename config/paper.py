# Paper-scale model and optimizer, on GPUs, for any preset (default espa; --model=NAME). Our
# choices (README "Multi-GPU and paper scale"): the paper's hyper-parameters are not available to
# this project. Pair it with a dataset file:
#   torchrun --standalone --nproc_per_node=8 train.py config/paper.py config/wikitext103.py
#   torchrun --standalone --nproc_per_node=8 train.py config/paper.py config/c4.py --model=preln
#   ... --n_layer=72 for the depth study
n_layer = 36
n_embd = 768
n_head = 12
block_size = 512
batch_size = 16                    # per GPU micro-batch
gradient_accumulation_steps = 8    # over all GPUs: 16 * 512 * 8 = 65,536 tokens per step
optimizer = 'adamw'                # Adam-family as the paper's (vanilla presets default to Muon:
                                   # MATH.md sec. 10.1); decay, betas and lr / L are ours
learning_rate = 1e-3               # embedding and readout; vanilla presets: blocks at 1e-3 / L
warmup_iters = 2000                # MATH.md sec. 10: vanilla models need the warmup as well as lr / L
min_lr = 1e-4
weight_decay = 0.1
eval_interval = 1000
eval_iters = 50
diag_interval = 1000
keep_last = 3
compile = True                     # E-SPA's bias then runs inside FlexAttention (no T x T tensor)
