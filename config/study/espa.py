# Study variant: espa (python train.py config/study/common.py config/study/espa.py)
model = 'espa'
learning_rate = 3e-3   # best of the sweep (bash config/study/sweep.sh); README "Results"
out_dir = 'out/study/espa'
