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
import re
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


SEED_LABEL = re.compile(r'^(?P<group>.+)_s(?P<seed>\d+)(_\d+)?$')   # e.g. espa_lr3e-3_s2 (and _3000: a longer run)


def by_seed(runs):
    """{group: {seed: evals}} from labels NAME_sSEED (NAME_sSEED_ITERS): the seeds of one cell together."""
    groups = {}
    for label, evals in runs.items():
        m = SEED_LABEL.match(label)
        if not m:
            raise CompareError(f"run {label!r} is not named NAME_sSEED (e.g. espa_lr3e-3_s2); --seeds groups runs by that name")
        groups.setdefault(m['group'], {})[int(m['seed'])] = evals
    return groups


def summarize_seeds(groups, baselines):
    """One row per group: the final loss over its seeds (mean, min, max), and per seed the steps ratio
    against each baseline's run of the same seed at the longest horizon reached (s / k, as in
    step_ratio), with their mean and range. baselines: {name: {seed: evals}}."""
    rows = []
    for name, seeds in groups.items():
        finals = [e[-1][1] for e in seeds.values()]
        row = dict(run=name, seeds=sorted(seeds), iters=max(e[-1][0] for e in seeds.values()),
                   final_mean=sum(finals) / len(finals), final_min=min(finals), final_max=max(finals), ratios={})
        for base, base_seeds in baselines.items():
            per_seed = {}
            for seed, evals in seeds.items():
                if seed in base_seeds:
                    match = step_ratio(evals, base_seeds[seed])
                    reached = steps_to_reach(evals, base_seeds[seed][-1][1])
                    per_seed[seed] = dict(ratio=match[1] / match[0] if match else None, at=match[0] if match else None,
                                          steps_to_final=reached, base_final=base_seeds[seed][-1][1])
            row['ratios'][base] = per_seed
        rows.append(row)
    return rows


def format_seed_table(rows):
    fmt = lambda v: 'never' if v is None else f"{v:.2f}"
    lines = [f"{'run':<28} {'seeds':>5} {'final val: mean (min-max)':>27}  steps ratio per seed (s / k at baseline step k)"]
    for r in rows:
        ratios = '; '.join(f"{base}: " + ', '.join(f"{fmt(v['ratio'])}@{v['at']}" if v['ratio'] else 'never'
                                                    for _, v in sorted(per_seed.items()))
                           for base, per_seed in r['ratios'].items())
        lines.append(f"{r['run']:<28} {len(r['seeds']):>5} {r['final_mean']:>10.4f} ({r['final_min']:.4f}-{r['final_max']:.4f})  {ratios}")
    return '\n'.join(lines)


def plot_bands(groups, path, title=None):
    """Validation curves, one line per group (the mean over its seeds) and a band from the lowest to
    the highest seed at every evaluation."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for name, seeds in groups.items():
        steps = sorted(set.intersection(*[{it for it, _, _ in e} for e in seeds.values()]))
        curves = [[dict((it, v) for it, v, _ in e)[s] for s in steps] for e in seeds.values()]
        mean = [sum(c[i] for c in curves) / len(curves) for i in range(len(steps))]
        line, = ax.plot(steps, mean, label=f"{name} ({len(curves)} seeds)")
        if len(curves) > 1:
            ax.fill_between(steps, [min(c[i] for c in curves) for i in range(len(steps))],
                            [max(c[i] for c in curves) for i in range(len(steps))], color=line.get_color(), alpha=0.2)
    ax.set_xlabel('step'), ax.set_ylabel('validation loss (nats/token)'), ax.grid(alpha=0.3), ax.legend(fontsize=7)
    later = [v for seeds in groups.values() for e in seeds.values() for it, v, _ in e[1:] if math.isfinite(v)]
    if later:   # step 0 is the same for every run: zoom on the rest
        ax.set_ylim(min(later) - 0.05, max(later) + 0.05)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
    """loss_curves.png, and kernels_at_init.png for the runs that have a checkpoint."""
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
    kernels = plot_kernels(paths, os.path.join(out_dir, 'kernels_at_init.png'))
    return written + ([kernels] if kernels else [])


def plot_kernels(paths, path):
    """The token correlation of a fresh model of each run's architecture at a few depths (one row per
    run with a checkpoint): rank collapse is a uniformly bright matrix. Returns the path, or None."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    kernels = {label: init_correlations(p) for label, p in paths.items()}
    kernels = {k: v for k, v in kernels.items() if v is not None}
    if not kernels:
        return None
    n_cols = max(len(v) for v in kernels.values())
    fig, axes = plt.subplots(len(kernels), n_cols, figsize=(2.1 * n_cols, 2.1 * len(kernels)), squeeze=False)
    for row, (label, mats) in enumerate(kernels.items()):
        for col, (layer, corr) in enumerate(mats):
            ax = axes[row][col]
            ax.imshow(corr, vmin=0, vmax=1, cmap='viridis', interpolation='nearest')
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"layer {layer}", fontsize=8)
            if col == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.suptitle('token correlation at init (bright = correlated; all bright = rank collapse)', fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(path, dpi=60)
    plt.close(fig)
    return path


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


def seed_table(runs, args):
    groups = by_seed(runs)
    if args.baseline not in groups:
        raise CompareError(f"baseline {args.baseline!r} is not among the groups {', '.join(groups)}")
    rows = summarize_seeds(groups, {args.baseline: groups[args.baseline]})
    print(format_seed_table(rows))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(baseline=args.baseline, rows=rows), f, indent=1)
    if args.plots:
        try:
            import matplotlib  # noqa: F401
            print(f"wrote {plot_bands(groups, os.path.join(args.plots, 'loss_curves_seeds.png'))}")
        except ImportError:
            print("(no plots: matplotlib is not installed; `pip install matplotlib` and run again)")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('runs', nargs='+', help="out_dir of each run (or its log.jsonl)")
    p.add_argument('--baseline', default='preln', help="label (folder name) of the reference run (default: preln)")
    p.add_argument('--unigram', type=float, default=None, help="unigram loss of the data, to show each run's margin below it")
    p.add_argument('--plots', default=None, help="folder for loss_curves.png and kernels_at_init.png (needs matplotlib)")
    p.add_argument('--json', default=None, help="also write the table as JSON to this file")
    p.add_argument('--seeds', action='store_true', help="group runs named NAME_sSEED: mean and range over seeds, "
                   "steps ratios per seed against the baseline run of the same seed (--baseline=NAME)")
    args = p.parse_args(argv)
    try:
        paths = {label_of(path): path for path in args.runs}
        if len(paths) < len(args.runs):
            raise CompareError("two runs share a folder name; labels must be unique")
        runs = {label: read_log(path) for label, path in paths.items()}
        if args.seeds:
            return seed_table(runs, args)
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
