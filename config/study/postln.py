# Study variant: postln (python train.py config/study/common.py config/study/postln.py)
model = 'postln'
learning_rate = 3e-3   # no rate of the sweep trained it at depth 24 (unigram loss at 1e-3, 3e-3, 1e-2); kept for completeness
out_dir = 'out/study/postln'
