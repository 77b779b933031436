"""
Compare training runs: a table of final/best validation loss, how many steps each run needs to
reach the baseline's final loss, and the ratio of steps at the longest baseline horizon it reaches
(the paper's "about 5 times more iterations": s / k where the run first matches the baseline's
step-k loss at step s).

    python compare.py out/study/preln out/study/espa out/study/vanilla ...
    python compare.py out/study/* --baseline=preln --unigram=3.23 --plots=assets

Each argument is a run's out_dir (its log.jsonl; ckpt.pt for the kernel heat-maps) or a log.jsonl.
Runs are labelled by their folder name. With matplotlib installed it also draws the validation
curves and, for every run that has a checkpoint, the token-correlation matrix of a freshly
initialised model of that architecture at a few depths: rank collapse is a uniformly bright matrix.
"""
import argparse
import json
import math
import os
import sys


class CompareError(Exception):
    pass


def read_log(path):
    """The 'eval' records of a run's log.jsonl, in order: [(iter, val_loss, train_loss), ...]."""
    log_path = os.path.join(path, 'log.jsonl') if os.path.isdir(path) else path
    if not os.path.isfile(log_path):
        raise CompareError(f"no log at {log_path}: pass a run's out_dir (containing log.jsonl) or the log file itself")
    evals = []
    with open(log_path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise CompareError(f"{log_path}, line {n}: not JSON ({line[:60]!r}); was the file truncated?")
            if rec.get('kind', 'eval') == 'eval' and 'val_loss' in rec:
                evals.append((rec['iter'], rec['val_loss'], rec.get('train_loss')))
    if not evals:
        raise CompareError(f"{log_path} holds no evaluation records (kind 'eval' with 'val_loss')")
    return evals


def label_of(path):
    path = path.rstrip('/')
    return os.path.basename(os.path.dirname(path) if path.endswith('.jsonl') else path)


def steps_to_reach(evals, target):
    """First evaluated step whose validation loss is at or below target, or None."""
    return next((it for it, val, _ in evals if val <= target), None)


def step_ratio(evals, base_evals):
    """(k, s): the largest baseline step k whose loss this run reaches, and the step s where it does.
    s / k is "how many times more steps" (the paper's 5x) at the longest horizon the run can speak to."""
    best = None
    for k, loss, _ in base_evals:
        s = steps_to_reach(evals, loss)
        if k > 0 and s is not None:
            best = (k, s)
    return best


def summarize(runs, baseline, unigram=None):
    """One row per run: final and best val loss, steps to the baseline's final loss, and the ratio
    of steps at the longest baseline horizon the run reaches."""
    if baseline not in runs:
        raise CompareError(f"baseline run {baseline!r} not among {', '.join(runs)}: name its folder or pass --baseline=LABEL")
    base_final = runs[baseline][-1][1]
    rows = []
    for label, evals in runs.items():
        final_iter, final = evals[-1][0], evals[-1][1]
        finite = [v for _, v, _ in evals if math.isfinite(v)]
        match = step_ratio(evals, runs[baseline])
        rows.append(dict(run=label, iters=final_iter, final_val=final, best_val=min(finite) if finite else math.nan,
                         steps_to_baseline=steps_to_reach(evals, base_final),
                         baseline_step=match[0] if match else None, ratio=match[1] / match[0] if match else None,
                         below_unigram=(unigram - final) if unigram is not None else None))
    return rows, base_final


def format_table(rows, baseline, base_final, unigram=None):
    w = max([16] + [len(r['run']) for r in rows])
    head = (f"{'run':<{w}} {'iters':>6} {'final val':>10} {'best val':>9} {'steps to ' + baseline:>16}"
            f" {'steps ratio (at ' + baseline + ' step)':>28}")
    head += f" {'below unigram':>14}" if unigram is not None else ''
    lines = [f"baseline {baseline}: final val loss {base_final:.4f}", head, '-' * len(head)]
    for r in rows:
        reach = f"{r['steps_to_baseline']}" if r['steps_to_baseline'] is not None else f"not in {r['iters']}"
        ratio = f"{r['ratio']:.2f}x (at {r['baseline_step']})" if r['ratio'] is not None else 'never'
        line = f"{r['run']:<{w}} {r['iters']:>6} {r['final_val']:>10.4f} {r['best_val']:>9.4f} {reach:>16} {ratio:>28}"
        if unigram is not None:
            line += f" {r['below_unigram']:>+14.3f}"
        lines.append(line)
    return '\n'.join(lines)


def unigram_loss(tokens, vocab_size, eval_tokens=None):
    """Cross-entropy of the best context-free model (token frequencies of `tokens`, add-one smoothed
    when scored on other `eval_tokens`): the level a rank-collapsed model sits at."""
    import numpy as np
    counts = np.bincount(np.asarray(tokens), minlength=vocab_size).astype(np.float64)
    if eval_tokens is None:
        p = counts[counts > 0] / counts.sum()
        return float(-(p * np.log(p)).sum())
    p = (counts + 1) / (counts.sum() + vocab_size)
    return float(-np.log(p[np.asarray(eval_tokens)]).mean())


def plot(runs, paths, out_dir):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    os.makedirs(out_dir, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, evals in runs.items():
        ax.plot([e[0] for e in evals], [e[1] for e in evals], label=label, marker='.' if len(evals) < 30 else None)
    ax.set_xlabel('step'), ax.set_ylabel('validation loss (nats/token)'), ax.grid(alpha=0.3), ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, 'loss_curves.png'), dpi=120)
    written = [os.path.join(out_dir, 'loss_curves.png')]

    kernels = {label: init_correlations(paths[label]) for label in runs}
    kernels = {k: v for k, v in kernels.items() if v is not None}
    if kernels:
        n_cols = max(len(v) for v in kernels.values())
        fig, axes = plt.subplots(len(kernels), n_cols, figsize=(2.1 * n_cols, 2.1 * len(kernels)), squeeze=False)
        for row, (label, mats) in enumerate(kernels.items()):
            for col, (layer, corr) in enumerate(mats):
                ax = axes[row][col]
                ax.imshow(corr, vmin=0, vmax=1, cmap='viridis')
                ax.set_xticks([]), ax.set_yticks([])
                ax.set_title(f"layer {layer}", fontsize=8)
                if col == 0:
                    ax.set_ylabel(label, fontsize=9)
        fig.suptitle('token correlation at init (bright = correlated; all bright = rank collapse)', fontsize=9)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, 'kernels_at_init.png'), dpi=120)
        written.append(os.path.join(out_dir, 'kernels_at_init.png'))
    return written


def init_correlations(path):
    """[(layer, T x T correlation)] of a fresh model with the run's architecture, or None without a checkpoint."""
    ckpt = os.path.join(path, 'ckpt.pt') if os.path.isdir(path) else None
    if not ckpt or not os.path.isfile(ckpt):
        return None
    import numpy as np
    import torch
    from model import GPTConfig, measure_kernels
    config = GPTConfig(**torch.load(ckpt, map_location='cpu', weights_only=True)['model_args'])
    T = min(config.block_size, config.vocab_size, 64)
    kernels = measure_kernels(config, T, batch_size=8)
    L = config.n_layer
    out = []
    for layer in sorted({0, L // 4, L // 2, 3 * L // 4, L}):
        K = kernels[layer]
        q = np.sqrt(np.diag(K))
        out.append((layer, K / np.outer(q, q)))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('runs', nargs='+', help="out_dir of each run (or its log.jsonl)")
    p.add_argument('--baseline', default='preln', help="label (folder name) of the reference run (default: preln)")
    p.add_argument('--unigram', type=float, default=None, help="unigram loss of the data, to show each run's margin below it")
    p.add_argument('--plots', default=None, help="folder for loss_curves.png and kernels_at_init.png (needs matplotlib)")
    p.add_argument('--json', default=None, help="also write the table as JSON to this file")
    args = p.parse_args(argv)
    try:
        paths = {label_of(path): path for path in args.runs}
        if len(paths) < len(args.runs):
            raise CompareError("two runs share a folder name; labels must be unique")
        runs = {label: read_log(path) for label, path in paths.items()}
        rows, base_final = summarize(runs, args.baseline, args.unigram)
    except CompareError as e:
        print(f"compare.py: {e}", file=sys.stderr)
        return 2
    print(format_table(rows, args.baseline, base_final, args.unigram))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(baseline=args.baseline, baseline_final_val=base_final, rows=rows), f, indent=1)
    if args.plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("(no plots: matplotlib is not installed; `pip install matplotlib` and run again)")
            return 0
        for path in plot(runs, paths, args.plots):
            print(f"wrote {path}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
