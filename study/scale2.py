# The second scale of the study (README "Results"): deeper, wider, longer context, on the same 2-core CPU.
#   python study/study.py scale2      (or: python train.py study/common.py study/scale2.py --model=espa)
n_layer = 36
n_embd = 128
n_head = 4
block_size = 128
batch_size = 8                 # 1024 tokens per step
max_iters = 2000
warmup_iters = 200
