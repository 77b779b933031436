# English C4 (GPT-2 BPE), streamed until a budget: python prepare.py c4 --max_tokens=2e9
#   torchrun --standalone --nproc_per_node=8 train.py config/paper.py config/c4.py
dataset = 'c4'
max_iters = 30_000                 # about 2B tokens at 65,536 tokens per step: one pass over the budget
out_dir = 'out-c4'
