# A one-to-two-minute smoke run on a laptop CPU: the default espa model, shallower and shorter.
#   python train.py config/quick.py
out_dir = 'out-quick'
n_layer = 8
batch_size = 8
max_iters = 200
warmup_iters = 40
eval_interval = 50
diag_interval = 50
