# WikiText-103 (GPT-2 BPE, about 117M training tokens): python prepare.py wikitext103
#   torchrun --standalone --nproc_per_node=8 train.py config/paper.py config/wikitext103.py
dataset = 'wikitext103'
max_iters = 100_000                # 6.5B tokens, about 56 epochs at 65,536 tokens per step
out_dir = 'out-wt103'              # pass --out_dir=... for each variant you train
