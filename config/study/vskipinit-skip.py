# Study variant: vskipinit-skip (python train.py config/study/common.py config/study/vskipinit-skip.py)
model = 'vskipinit-skip'
learning_rate = 3e-3   # best of the sweep (bash config/study/sweep.sh); README "Results"
out_dir = 'out/study/vskipinit-skip'
