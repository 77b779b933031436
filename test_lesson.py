"""The lesson runs end to end at its small size, draws its figures, and its claims hold: vanilla
collapses at init and sits at the unigram loss, E-SPA does neither."""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def test_the_small_lesson_draws_its_figures_and_its_claims_hold(tmp_path):
    pytest.importorskip('matplotlib', reason='the lesson draws its figures with matplotlib')
    out = tmp_path / 'lesson'
    run = subprocess.run([sys.executable, os.path.join(HERE, 'lesson.py'), '--small=True',
                          f'--out_dir={out}', f"--data_dir={tmp_path / 'data'}"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    for figure in ('kernels.png', 'fixes.png', 'training.png'):
        assert (out / figure).stat().st_size > 10_000, figure
    summary = json.loads((out / 'summary.json').read_text())
    corr = {label: c['measured'] for label, c in summary['last_layer_mean_corr'].items()}
    assert corr['vanilla (softmax)'] > 0.99      # rank collapse at init
    assert corr['E-SPA'] < 0.9                   # E-SPA keeps the tokens apart
    assert corr['E-SPA with ReLU MLPs'] > corr['E-SPA']
    unigram = summary['unigram_loss']
    assert 3.3 < unigram < 3.6                   # byte frequencies of pydocs: about 3.44 nats
    final = {name: evals[-1][1] for name, evals in summary['val_losses'].items()}
    assert abs(final['vanilla'] - unigram) < 0.1  # stuck at the unigram loss
    assert final['espa'] < unigram - 0.25         # learns from the context
    assert 'unigram loss' in run.stdout and 'Part 3' in run.stdout


def test_without_matplotlib_the_lesson_says_how_to_install_it(tmp_path):
    blocker = tmp_path / 'matplotlib.py'
    blocker.write_text("raise ImportError('no matplotlib here')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    run = subprocess.run([sys.executable, os.path.join(HERE, 'lesson.py'),
                          f"--out_dir={tmp_path / 'out'}"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert run.returncode == 2
    assert 'pip install matplotlib' in run.stderr
    assert not (tmp_path / 'out').exists()
