# Study variant: uspa-skip (python train.py config/study/common.py config/study/uspa-skip.py)
model = 'uspa-skip'
learning_rate = 3e-3   # best of the sweep (bash config/study/sweep.sh); README "Results"
out_dir = 'out/study/uspa-skip'
