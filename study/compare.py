"""
Compare training runs: a table of final/best validation loss, how many steps each run needs to
reach the baseline's final loss, and the ratio of steps at the longest baseline horizon it reaches
(the paper's "about 5 times more iterations": s / k where the run first matches the baseline's
step-k loss at step s).

    python study/compare.py out                                  # one run: its table and curve
    python study/compare.py out/study/sweep/preln_lr3e-3_s1337 out/study/sweep/espa_lr3e-3_s1337 \
        --baseline=preln_lr3e-3_s1337 --unigram=3.44
    python study/compare.py out/study/seeds/* --seeds --baseline=preln_lr3e-3

Each argument is a run's out_dir (its log.jsonl; ckpt.pt for the kernel heat-maps) or a log.jsonl.
Runs are labelled by their folder name. The baseline columns appear when there is a baseline: the
run named by --baseline, or a run called preln. With matplotlib installed it also draws the
validation curves (into --plots, by default the runs' common folder) and, for every run that has a
checkpoint, the token correlation of a freshly initialised model of that architecture at a few
depths: rank collapse is a uniformly bright matrix.
"""
import argparse
import json
import math
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # model, spa


class CompareError(Exception):
    pass


def read_log(path):
    """The 'eval' records of a run's log.jsonl, in order: [(iter, val_loss, train_loss), ...]."""
    log_path = os.path.join(path, 'log.jsonl') if os.path.isdir(path) else path
    if not os.path.isfile(log_path):
        raise CompareError(f"no log at {log_path}: pass a run's out_dir (containing log.jsonl) "
                           "or the log file itself")
    evals = []
    with open(log_path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise CompareError(f"{log_path}, line {n}: not JSON ({line[:60]!r}); "
                                   "was the file truncated?")
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
    """(k, s): the largest baseline step k whose loss this run reaches, and the step s where it
    does. s / k is "how many times more steps" (the paper's 5x) at the longest horizon the run
    can speak to."""
    best = None
    for k, loss, _ in base_evals:
        s = steps_to_reach(evals, loss)
        if k > 0 and s is not None:
            best = (k, s)
    return best


def summarize(runs, baseline=None, unigram=None):
    """One row per run: final and best val loss and, with a baseline, the steps to its final loss
    and the ratio of steps at the longest baseline horizon the run reaches."""
    base = runs[baseline] if baseline else None
    rows = []
    for label, evals in runs.items():
        finite = [v for _, v, _ in evals if math.isfinite(v)]
        row = dict(run=label, iters=evals[-1][0], final_val=evals[-1][1],
                   best_val=min(finite) if finite else math.nan,
                   below_unigram=(unigram - evals[-1][1]) if unigram is not None else None)
        if base:
            match = step_ratio(evals, base)
            row.update(steps_to_baseline=steps_to_reach(evals, base[-1][1]),
                       baseline_step=match[0] if match else None,
                       ratio=match[1] / match[0] if match else None)
        rows.append(row)
    return rows


def format_table(rows, baseline=None, base_final=None, unigram=None):
    w = max([16] + [len(r['run']) for r in rows])
    head = f"{'run':<{w}} {'iters':>6} {'final val':>10} {'best val':>9}"
    if baseline:
        head += f" {'steps to ' + baseline:>16} {'steps ratio (at ' + baseline + ' step)':>28}"
    head += f" {'below unigram':>14}" if unigram is not None else ''
    lines = [f"baseline {baseline}: final val loss {base_final:.4f}"] if baseline else []
    lines += [head, '-' * len(head)]
    for r in rows:
        line = f"{r['run']:<{w}} {r['iters']:>6} {r['final_val']:>10.4f} {r['best_val']:>9.4f}"
        if baseline:
            reach = r['steps_to_baseline'] if r['steps_to_baseline'] is not None \
                else f"not in {r['iters']}"
            ratio = f"{r['ratio']:.2f}x (at {r['baseline_step']})" if r['ratio'] is not None \
                else 'never'
            line += f" {reach:>16} {ratio:>28}"
        if unigram is not None:
            line += f" {r['below_unigram']:>+14.3f}"
        lines.append(line)
    return '\n'.join(lines)


SEED_LABEL = re.compile(r'^(?P<group>.+)_s(?P<seed>\d+)(_\d+)?$')   # espa_lr3e-3_s2(_3000)


def by_seed(runs):
    """{group: {seed: evals}} from labels NAME_sSEED (or NAME_sSEED_ITERS): one cell's seeds."""
    groups = {}
    for label, evals in runs.items():
        m = SEED_LABEL.match(label)
        if not m:
            raise CompareError(f"run {label!r} is not named NAME_sSEED (e.g. espa_lr3e-3_s2); "
                               "--seeds groups runs by that name")
        groups.setdefault(m['group'], {})[int(m['seed'])] = evals
    return groups


def summarize_seeds(groups, baselines):
    """One row per group: the final loss over its seeds (mean, min, max), and per seed the steps
    ratio against each baseline's run of the same seed at the longest horizon reached (s / k, as
    in step_ratio). baselines: {name: {seed: evals}}."""
    rows = []
    for name, seeds in groups.items():
        finals = [e[-1][1] for e in seeds.values()]
        row = dict(run=name, seeds=sorted(seeds), iters=max(e[-1][0] for e in seeds.values()),
                   final_mean=sum(finals) / len(finals), final_min=min(finals),
                   final_max=max(finals), ratios={})
        for base, base_seeds in baselines.items():
            per_seed = {}
            for seed, evals in seeds.items():
                if seed in base_seeds:
                    match, base_final = step_ratio(evals, base_seeds[seed]), base_seeds[seed][-1][1]
                    per_seed[seed] = dict(ratio=match[1] / match[0] if match else None,
                                          at=match[0] if match else None,
                                          steps_to_final=steps_to_reach(evals, base_final),
                                          base_final=base_final)
            row['ratios'][base] = per_seed
        rows.append(row)
    return rows


def format_seed_table(rows):
    fmt = lambda v: 'never' if v is None else f"{v:.2f}"
    lines = [f"{'run':<28} {'seeds':>5} {'final val: mean (min-max)':>27}  "
             "steps ratio per seed (s / k at baseline step k)"]
    for r in rows:
        ratios = '; '.join(f"{base}: " + ', '.join(f"{fmt(v['ratio'])}@{v['at']}" if v['ratio']
                                                    else 'never' for _, v in sorted(per.items()))
                           for base, per in r['ratios'].items())
        lines.append(f"{r['run']:<28} {len(r['seeds']):>5} {r['final_mean']:>10.4f} "
                     f"({r['final_min']:.4f}-{r['final_max']:.4f})  {ratios}")
    return '\n'.join(lines)


def bands(seeds):
    """(steps, mean, lowest, highest) over the seeds' validation curves, at the steps all share."""
    steps = sorted(set.intersection(*[{it for it, _, _ in e} for e in seeds.values()]))
    curves = [[dict((it, v) for it, v, _ in e)[s] for s in steps] for e in seeds.values()]
    columns = list(zip(*curves))   # (len(steps), seeds)
    return steps, [sum(c) / len(c) for c in columns], [min(c) for c in columns], \
        [max(c) for c in columns]


def plot_bands(groups, path, title=None):
    """Validation curves, one line per group (the mean over its seeds) and a band from the lowest
    to the highest seed at every evaluation. groups: {name: {seed: evals}}."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for name, seeds in groups.items():
        steps, mean, low, high = bands(seeds)
        line, = ax.plot(steps, mean, label=f"{name} ({len(seeds)} seeds)")
        if len(seeds) > 1:
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
    ax.set_xlabel('step'), ax.set_ylabel('validation loss (nats/token)')
    later = [v for seeds in groups.values() for e in seeds.values() for it, v, _ in e[1:]
             if math.isfinite(v)]
    if later:   # step 0 is the same for every run: zoom on the rest
        ax.set_ylim(min(later) - 0.05, max(later) + 0.05)
    return save(fig, ax, path, title, legend_size=7)


def plot_vs_depth(series, path, title=None):
    """Final validation loss against depth, one line per model through the means, a bar from
    the lowest to the highest seed. series: {name: {depth: (mean, min, max)}}."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, points in series.items():
        depths = sorted(points)
        mean = [points[L][0] for L in depths]
        err = [[points[L][0] - points[L][1] for L in depths],
               [points[L][2] - points[L][0] for L in depths]]
        ax.errorbar(depths, mean, yerr=err, marker='o', capsize=3, label=name)
    ax.set_xscale('log', base=2)
    ax.set_xticks(sorted({L for points in series.values() for L in points}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel('depth (blocks)'), ax.set_ylabel('final validation loss (nats/token)')
    return save(fig, ax, path, title, legend_size=8)


def save(fig, ax, path, title, legend_size):
    """Grid, legend and title, then the figure to path (its folder made), closed."""
    import matplotlib.pyplot as plt
    ax.grid(alpha=0.3), ax.legend(fontsize=legend_size)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def unigram_loss(tokens, vocab_size, eval_tokens=None):
    """Cross-entropy of the best context-free model (token frequencies of `tokens`, add-one
    smoothed when scored on other `eval_tokens`): the level a rank-collapsed model sits at."""
    import numpy as np
    counts = np.bincount(np.asarray(tokens), minlength=vocab_size).astype(np.float64)
    if eval_tokens is None:
        p = counts[counts > 0] / counts.sum()
        return float(-(p * np.log(p)).sum())
    p = (counts + 1) / (counts.sum() + vocab_size)
    return float(-np.log(p[np.asarray(eval_tokens)]).mean())


def plot_curves(runs, path):
    """Every run's validation curve in one figure."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, evals in runs.items():
        ax.plot([e[0] for e in evals], [e[1] for e in evals], label=label,
                marker='.' if len(evals) < 30 else None)
    ax.set_xlabel('step'), ax.set_ylabel('validation loss (nats/token)')
    ax.grid(alpha=0.3), ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def config_of_run(path):
    """The GPTConfig a run's checkpoint was trained with, or None when it has no checkpoint."""
    ckpt = os.path.join(path, 'ckpt.pt') if os.path.isdir(path) else None
    if not ckpt or not os.path.isfile(ckpt):
        return None
    import torch
    from model import GPTConfig
    return GPTConfig(**torch.load(ckpt, map_location='cpu', weights_only=True)['model_args'])


def plot_kernels(configs, path):
    """The token correlation of a fresh model of each architecture ({label: GPTConfig}) at a few
    depths, one row per label, with spa.kernel_stats' mean off-diagonal correlation above each:
    rank collapse is a uniformly bright matrix (mean 1)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    import spa
    from model import measure_kernels
    rows = {}
    for label, config in configs.items():
        kernels = measure_kernels(config, min(config.block_size, config.vocab_size, 64))
        L = config.n_layer
        rows[label] = [(l, kernels[l]) for l in sorted({0, L // 4, L // 2, 3 * L // 4, L})]
    n_cols = max(len(r) for r in rows.values())
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(2.1 * n_cols, 2.1 * len(rows)),
                             squeeze=False)
    for row, (label, mats) in enumerate(rows.items()):
        for col, (layer, K) in enumerate(mats):
            q = np.sqrt(np.diag(K))
            ax = axes[row][col]
            ax.imshow(K / np.outer(q, q), vmin=0, vmax=1, cmap='viridis', interpolation='nearest')
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"layer {layer}: {spa.kernel_stats(K)[0]:.2f}", fontsize=8)
            if col == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.suptitle('token correlation at init (bright = correlated; all bright = rank collapse)',
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    fig.savefig(path, dpi=60)
    plt.close(fig)
    return path


def write_plots(runs, paths, folder, groups=None):
    """The curves (bands over seeds when grouped) and, for the runs with a checkpoint, the kernels
    at init; says how to get matplotlib when it is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("(no plots: matplotlib is not installed; `pip install matplotlib` and run again)")
        return
    if groups:
        print(f"wrote {plot_bands(groups, os.path.join(folder, 'loss_curves_seeds.png'))}")
        return
    print(f"wrote {plot_curves(runs, os.path.join(folder, 'loss_curves.png'))}")
    configs = {label: config_of_run(p) for label, p in paths.items()}
    configs = {label: c for label, c in configs.items() if c is not None}
    if configs:
        print(f"wrote {plot_kernels(configs, os.path.join(folder, 'kernels_at_init.png'))}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('runs', nargs='+', help="out_dir of each run (or its log.jsonl)")
    p.add_argument('--baseline', default=None,
                   help="label (folder name) of the reference run (default: preln, if present)")
    p.add_argument('--unigram', type=float, default=None,
                   help="unigram loss of the data, to show each run's margin below it")
    p.add_argument('--plots', default=None, help="folder for loss_curves.png and "
                   "kernels_at_init.png (default: the runs' common folder; needs matplotlib)")
    p.add_argument('--json', default=None, help="also write the table as JSON to this file")
    p.add_argument('--seeds', action='store_true', help="group runs named NAME_sSEED: mean and "
                   "range over seeds, steps ratios per seed against the baseline's same seed")
    args = p.parse_args(argv)
    try:
        paths = {label_of(path): path for path in args.runs}
        if len(paths) < len(args.runs):
            raise CompareError("two runs share a folder name; labels must be unique")
        runs = {label: read_log(path) for label, path in paths.items()}
        groups = by_seed(runs) if args.seeds else None
        named = groups if args.seeds else runs
        if args.baseline and args.baseline not in named:
            raise CompareError(f"baseline {args.baseline!r} is not among {', '.join(named)}: "
                               "name its folder (its group with --seeds) or leave --baseline out")
    except CompareError as e:
        print(f"compare.py: {e}", file=sys.stderr)
        return 2
    baseline = args.baseline or ('preln' if 'preln' in named else None)
    if args.seeds:
        rows = summarize_seeds(groups, {baseline: groups[baseline]} if baseline else {})
        print(format_seed_table(rows))
        table = dict(baseline=baseline, rows=rows)
    else:
        rows = summarize(runs, baseline, args.unigram)
        base_final = runs[baseline][-1][1] if baseline else None
        print(format_table(rows, baseline, base_final, args.unigram))
        table = dict(baseline=baseline, baseline_final_val=base_final, rows=rows)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(table, f, indent=1)
    folder = args.plots or os.path.commonpath(
        [os.path.abspath(p if os.path.isdir(p) else os.path.dirname(p)) for p in args.runs])
    write_plots(runs, paths, folder, groups)
    return 0


if __name__ == '__main__':
    sys.exit(main())
