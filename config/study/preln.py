# Study variant: preln (python train.py config/study/common.py config/study/preln.py)
model = 'preln'
learning_rate = 1e-2   # best of the sweep (bash config/study/sweep.sh); README "Results"
out_dir = 'out/study/preln'
