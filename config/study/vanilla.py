# Study variant: vanilla (python train.py config/study/common.py config/study/vanilla.py)
model = 'vanilla'
learning_rate = 3e-3   # no rate of the sweep trained it (all stayed at the unigram loss); that of espa, for a fair control
out_dir = 'out/study/vanilla'
