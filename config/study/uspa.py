# Study variant: uspa (python train.py config/study/common.py config/study/uspa.py)
model = 'uspa'
learning_rate = 1e-2   # best of the sweep (bash config/study/sweep.sh); README "Results"
out_dir = 'out/study/uspa'
