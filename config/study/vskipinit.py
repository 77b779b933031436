# Study variant: vskipinit (python train.py config/study/common.py config/study/vskipinit.py)
model = 'vskipinit'
learning_rate = 1e-2   # best of the sweep (bash config/study/sweep.sh); README "Results"
out_dir = 'out/study/vskipinit'
