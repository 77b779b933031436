"""
Deep transformers without shortcuts, as a lesson: run it, then read it from top to bottom.

    python lesson.py                                # a few minutes on a laptop CPU
    python lesson.py --out_dir=figures --small=True # a smaller lesson in seconds (the test's)

Part 1  kernels.png   rank collapse: at init, a deep transformer without skips or normalisation
                      makes every token of a sequence look alike; E-SPA keeps them apart.
Part 2  fixes.png     what each of the paper's fixes changes, layer by layer.
Part 3  training.png  why it matters: the collapsed model cannot learn past the unigram loss.

Every number comes from the project's own code: model.predict_kernels (the theory of spa.py),
model.measure_kernels (a freshly initialised GPT), spa.kernel_stats, data.load_tokens, and
train.py, run as a command as you would run it. The figures need matplotlib.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np

import data
import model
import prepare
import spa
from configurator import command_line, configure, format_help, key_comments

HERE = os.path.dirname(os.path.abspath(__file__))

DEFAULTS = dict(
    out_dir='lesson_out',   # the figures, and part 3's two runs in out_dir/runs
    data_dir='data',        # where the pydocs dataset is prepared on first use (as train.py does)
    small=False,            # True: a smaller model and shorter runs, the same conclusions
)

# One model size for the whole lesson: the kernels of parts 1-2 are those of the very model part 3
# trains. The full size trains at the preset's learning rate; the small one learns in fewer steps at
# a higher rate, which the shallower model tolerates.
SIZES = {
    False: dict(n_layer=12, n_embd=64, block_size=64, batch_size=16, max_iters=400,
                eval_interval=50),
    True: dict(n_layer=6, n_embd=64, block_size=64, batch_size=16, max_iters=150,
               eval_interval=25, learning_rate=1e-2),
}

# -----------------------------------------------------------------------------
# Part 1. The kernel Sigma_l = X_l X_l^T / d of layer l holds the inner products of the T token
# vectors of a sequence; divided by the norms it is their correlation matrix. At the embedding it
# is the identity (distinct tokens are orthogonal). Plain softmax attention at init averages the
# tokens before it (all logits are equal), layer after layer, so the correlations go to 1: every
# token carries the first token's vector, and the model cannot tell tokens apart, nor use the
# context (rank collapse, MATH.md sec. 1). E-SPA replaces the average by a designed attention
# matrix whose kernel decays with the distance |i - j|. Its tokens end up correlated too, but not
# alike: near tokens more than far ones, so the kernel keeps its full rank.

def correlation(sigma):
    q = np.sqrt(np.diag(sigma))
    return sigma / np.outer(q, q)

def kernels_at_init(name, size, **overrides):
    """(predicted, measured) kernels of a preset at init: two lists of n_layer + 1 T x T arrays."""
    T = size['block_size']
    config = model.config_for(name, n_layer=size['n_layer'], n_embd=size['n_embd'],
                              block_size=T, **overrides)
    return model.predict_kernels(config, T), model.measure_kernels(config, T, batch_size=8, seed=0)

def draw_kernels(plt, kernels, n_layer, path):
    """Correlation matrices at a few depths: one row per model and source, one column per layer."""
    layers = [0, 1, n_layer // 2, n_layer]
    rows = [(name, source, sigmas) for name, pair in kernels.items()
            for source, sigmas in zip(('predicted', 'measured'), pair)]
    fig, axes = plt.subplots(len(rows), len(layers), layout='constrained',
                             figsize=(2.2 * len(layers) + 1, 2.3 * len(rows)))
    for (name, source, sigmas), row in zip(rows, axes):
        for layer, ax in zip(layers, row):
            image = ax.imshow(correlation(sigmas[layer]), vmin=0, vmax=1, cmap='viridis')
            ax.set_title(f'{name} {source}, layer {layer}\nmean corr '
                         f'{spa.kernel_stats(sigmas[layer])[0]:.2f}', fontsize=8)
            ax.set_xticks([]), ax.set_yticks([])
    fig.colorbar(image, ax=axes, shrink=0.6, label='correlation of tokens i and j')
    fig.savefig(path, dpi=100)
    plt.close(fig)

# -----------------------------------------------------------------------------
# Part 2. The paper's fixes, each a preset of model.py, and one ablation. Value-SkipInit starts
# each attention layer as the identity (alpha I + beta A with beta = 0), so only the MLPs move the
# correlations. U-SPA and E-SPA design the attention matrices so that attention alone would reach a
# chosen kernel at the last layer: a uniform correlation rho_L, resp. exp(-gamma_L |i - j|) (secs.
# 4-5). Every MLP adds correlation on top of the design (sec. 7): ReLU a lot, TAT's leaky ReLU just
# enough that the network's MLPs together take correlation 0 to eta (sec. 6). The measured dots
# scatter around the predicted lines: attention's kernel map is exact at any width (sec. 1), the
# MLPs' only for wide layers.

FIXES = [  # (label, preset, overrides)
    ('vanilla (softmax)', 'vanilla', {}),
    ('Value-SkipInit', 'vskipinit', {}),
    ('U-SPA', 'uspa', {}),
    ('E-SPA', 'espa', {}),
    ('E-SPA with ReLU MLPs', 'espa', dict(act='relu')),
]

def draw_fixes(plt, curves, path):
    """Mean token correlation per layer: predicted as a line, measured as dots in its colour."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, (predicted, measured) in curves.items():
        line, = ax.plot(predicted, label=label)
        ax.plot(measured, 'o', color=line.get_color(), markersize=3)
    ax.set_xlabel('layer (0: the embedding)'), ax.set_ylabel('mean correlation of two tokens')
    ax.set_title('lines: predicted by spa.py; dots: measured in a fresh model', fontsize=9)
    ax.set_ylim(-0.02, 1.02), ax.grid(alpha=0.3), ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

# -----------------------------------------------------------------------------
# Part 3. A model that sees one vector for every token can only learn which bytes are frequent:
# the unigram model, whose loss is the entropy of the byte frequencies. Both presets share one
# recipe (TAT MLPs, blocks trained at lr / n_layer after a warmup, sec. 10) and differ only in
# their attention: the gap between their validation curves is the attention's.

def unigram_loss(data_dir):
    """Cross-entropy on the validation split of the training split's byte frequencies (add-one
    smoothed): the best a model can do without looking at the context."""
    counts = np.bincount(data.load_tokens(data_dir, 'pydocs', 'train'),
                         minlength=data.load_meta(data_dir, 'pydocs')['vocab_size']) + 1.0
    return float(-np.log(counts / counts.sum())[data.load_tokens(data_dir, 'pydocs', 'val')].mean())

def train(names, size, data_dir, runs_dir):
    """Run train.py once per preset, all at once, and return {name: [(iter, val_loss), ...]}.
    Models this small gain nothing from a second thread: one thread each, side by side."""
    settings = [f'--{k}={v}' for k, v in size.items()] + [
        '--dataset=pydocs', f'--data_dir={data_dir}', '--optimizer=adamw', '--sample_tokens=0',
        '--diag_interval=0', '--overwrite=True']
    runs = {}
    for name in names:
        log = open(os.path.join(runs_dir, f'{name}.txt'), 'w')
        command = [sys.executable, os.path.join(HERE, 'train.py'), f'--model={name}',
                   f"--out_dir={os.path.join(runs_dir, name)}", *settings]
        runs[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                      env=dict(os.environ, OMP_NUM_THREADS='1')), log
    curves = {}
    for name, (run, log) in runs.items():
        status = run.wait()
        log.close()
        if status != 0:
            raise RuntimeError(f'train.py --model={name} failed (exit status {status}); its '
                               f'output is in {log.name}')
        with open(os.path.join(runs_dir, name, 'log.jsonl'), encoding='utf-8') as f:
            evals = [r for r in map(json.loads, f) if r['kind'] == 'eval']
        curves[name] = [(r['iter'], r['val_loss']) for r in evals]
    return curves

def draw_training(plt, curves, unigram, path):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, evals in curves.items():
        ax.plot(*zip(*evals), marker='o', markersize=3, label=name)
    ax.axhline(unigram, color='gray', linestyle='--', label=f'unigram loss {unigram:.2f}')
    ax.set_xlabel('step'), ax.set_ylabel('validation loss (nats/byte)')
    ax.set_ylim(top=unigram + 1), ax.grid(alpha=0.3), ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

# -----------------------------------------------------------------------------

def lesson(argv):
    c = configure(DEFAULTS, argv)
    try:
        import matplotlib
        matplotlib.use('Agg')   # files only: no window, no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        print('error: the lesson draws figures with matplotlib, which is not installed. '
              'Install it with: pip install matplotlib', file=sys.stderr)
        return 2
    size, out_dir, t0 = SIZES[c['small']], c['out_dir'], time.time()
    data_dir, runs_dir = os.path.abspath(c['data_dir']), os.path.join(c['out_dir'], 'runs')
    os.makedirs(runs_dir, exist_ok=True)
    L = size['n_layer']
    print(f"models: {L} layers x {size['n_embd']}, sequences of T = {size['block_size']} tokens")

    print('\nPart 1: rank collapse at init (kernels.png)')
    kernels = {name: kernels_at_init(name, size) for name in ('vanilla', 'espa')}
    draw_kernels(plt, kernels, L, os.path.join(out_dir, 'kernels.png'))
    for name, (predicted, measured) in kernels.items():
        print(f'  {name:8s} mean token correlation at layer {L}: predicted '
              f'{spa.kernel_stats(predicted[-1])[0]:.3f}, '
              f'measured {spa.kernel_stats(measured[-1])[0]:.3f}')

    print('\nPart 2: what each fix changes (fixes.png)')
    curves = {}
    for label, name, overrides in FIXES:
        curves[label] = [[spa.kernel_stats(k)[0] for k in sigmas]
                         for sigmas in kernels_at_init(name, size, **overrides)]
        print(f'  {label:22s} layer {L}: predicted {curves[label][0][-1]:.3f}, '
              f'measured {curves[label][1][-1]:.3f}')
    draw_fixes(plt, curves, os.path.join(out_dir, 'fixes.png'))

    print(f"\nPart 3: training, {size['max_iters']} steps each (training.png)")
    try:
        data.load_meta(data_dir, 'pydocs')
    except data.DataError:   # prepared here, once, rather than by both runs at the same time
        prepare.prepare('pydocs', data_dir=data_dir)
    unigram = unigram_loss(data_dir)
    losses = train(('vanilla', 'espa'), size, data_dir, runs_dir)
    draw_training(plt, losses, unigram, os.path.join(out_dir, 'training.png'))
    print(f'  unigram loss {unigram:.3f}')
    for name, evals in losses.items():
        print(f'  {name:8s} validation loss at step {evals[-1][0]}: {evals[-1][1]:.3f} '
              f'({evals[-1][1] - unigram:+.3f} from the unigram loss)')

    summary = dict(size=size, unigram_loss=unigram, val_losses=losses,
                   last_layer_mean_corr={label: dict(predicted=p[-1], measured=m[-1])
                                         for label, (p, m) in curves.items()})
    with open(os.path.join(out_dir, 'summary.json'), 'w', encoding='utf-8') as f:
        json.dump(summary, f, indent=1)
    print(f'\nfigures and summary.json in {out_dir}/ ({time.time() - t0:.0f} s)')
    return 0

def main(argv):
    help_text = format_help(DEFAULTS, key_comments(__file__),
                            usage='python lesson.py [--key=value ...]')
    return command_line(lesson, argv, help_text, (data.DataError,))

if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
