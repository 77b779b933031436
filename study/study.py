"""
The CPU study of README "Results" as one driver. Every run is plain `python train.py
config/study/common.py --model=NAME --learning_rate=LR --seed=S --out_dir=...` on one thread; the
driver runs --jobs of them at a time (two one-thread runs beat one two-thread run by ~40% on the
2-core machine it was measured on), skips what is finished, resumes what was cut off, and lets a
second driver (another shell) share a stage: each run is claimed with mkdir before it starts.

    python config/study/study.py sweep       # lr grid per variant (seed 1337, 1000 steps), extended until interior
    python config/study/study.py seeds       # seeds 2 and 3 at every variant's chosen lr
    python config/study/study.py long        # Value-SkipInit, U-SPA, E-SPA for 3x the budget: the 5x question
    python config/study/study.py scale2      # depth 36, width 128, T = 128, 2000 steps (config/study/scale2.py)
    python config/study/study.py muon        # the same grid with optimizer=muon (lr sweep, then three seeds)
    python config/study/study.py long-muon   # the long runs with Muon at its swept rate
    python config/study/study.py scale2-muon # E-SPA at the second scale with Muon at the study's muon_lr, 1e-2
    python config/study/study.py default     # `python train.py` itself (E-SPA, 24 x 128, T 128, 800 steps): muon_lr sweep, and AdamW
    python config/study/study.py ablations   # what the vanilla E-SPA recipe needs
    python config/study/study.py table       # the tables (out/study/*.json) and plots (assets/) of the README
    python config/study/study.py restore     # out/ lost: rebuild finished runs' logs from assets/study_curves.json
    ... --jobs=1 | --dry_run (print the commands) | --variants=espa,preln

Runs land in out/study/STAGE/LABEL/ (log.jsonl, ckpt.pt, train.log); a diverged run (train.py exit 3)
leaves a DIVERGED file and counts as worse than any finished one.
"""
import glob
import json
import math
import os
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, ROOT)   # compare.py and data.py, for the tables
OUT = os.environ.get('STUDY_OUT') or os.path.join(ROOT, 'out', 'study')   # STUDY_OUT: read runs made elsewhere
GRID = ['1e-4', '3e-4', '1e-3', '3e-3', '1e-2', '3e-2', '1e-1', '3e-1', '1']   # half-decade steps
SEEDS = [1337, 2, 3]                    # 1337 is train.py's default: the sweep's runs are the first seed
STUDY = ['preln', 'preln-espa', 'vanilla', 'vskipinit', 'uspa', 'espa', 'softmax-skip', 'vskipinit-skip',
         'uspa-skip', 'espa-skip']     # the main table; postln is swept only (it does not train at depth 24)
VANILLA = ['vskipinit', 'uspa', 'espa']
SCALE2 = ['preln', 'preln-espa', 'espa', 'espa-skip', 'softmax-skip']
MUON = ['preln', 'preln-espa', 'vskipinit', 'uspa', 'espa', 'espa-skip']

# -----------------------------------------------------------------------------
# one run: its folder, its state, its command

def run(stage, model, lr, seed=1337, iters=1000, extra=(), optimizer='adamw', base=('config/study/common.py',)):
    """One run of the study. With optimizer='muon', lr is Muon's (muon_lr) and AdamW keeps the
    variant's swept rate for the embeddings, readout and gains. base=(): train.py's own defaults."""
    label = f"{model}{'-muon' if optimizer == 'muon' else ''}_lr{lr}_s{seed}" + (f"_{iters}" if iters != 1000 else '')
    rates = [f'--learning_rate={lr}', '--optimizer=adamw'] if optimizer == 'adamw' else \
        [f'--learning_rate={chosen_lr(model) if base else 3e-3}', '--optimizer=muon', f'--muon_lr={lr}']  # 3e-3: train.py's
    args = [*base, f'--model={model}', *rates, f'--seed={seed}', f'--max_iters={iters}', *extra]
    return dict(dir=os.path.join(OUT, stage, label), args=args, iters=iters, model=model, lr=lr, seed=seed)

def evals(d):
    try:
        with open(os.path.join(d, 'log.jsonl')) as f:
            recs = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return []
    return [(r['iter'], r['val_loss']) for r in recs if r.get('kind') == 'eval']

def state(r):
    if os.path.exists(os.path.join(r['dir'], 'DIVERGED')):
        return 'diverged'
    return 'done' if any(it == r['iters'] for it, _ in evals(r['dir'])) else 'todo'

def final_loss(r):
    """Validation loss at the end of the run; inf for a diverged or unfinished one."""
    e = evals(r['dir'])
    return e[-1][1] if state(r) == 'done' and math.isfinite(e[-1][1]) else math.inf

def command(r):
    resume = os.path.exists(os.path.join(r['dir'], 'ckpt.pt'))   # cut off earlier: continue it exactly
    return [sys.executable, 'train.py', *r['args'], f"--out_dir={os.path.relpath(r['dir'], ROOT)}",
            '--init_from=resume' if resume else '--overwrite=True']

# -----------------------------------------------------------------------------
# running many: --jobs at a time, each claimed with mkdir so that two drivers can share a stage

def claim(r):
    lock = r['dir'] + '.claim'
    try:
        os.makedirs(lock)
    except FileExistsError:
        try:
            pid = int(open(os.path.join(lock, 'pid')).read())
            os.kill(pid, 0)           # a live driver holds it
            return False
        except (OSError, ValueError):
            pass                      # a dead driver's claim: take it over
    with open(os.path.join(lock, 'pid'), 'w') as f:
        f.write(str(os.getpid()))
    return True

def held_elsewhere(r):
    """Claimed by another live driver."""
    try:
        pid = int(open(os.path.join(r['dir'] + '.claim', 'pid')).read())
        os.kill(pid, 0)
        return pid != os.getpid()
    except (OSError, ValueError):
        return False

def release(r):
    lock = r['dir'] + '.claim'
    for p in (os.path.join(lock, 'pid'), lock):
        try:
            (os.remove if p.endswith('pid') else os.rmdir)(p)
        except OSError:
            pass

def execute(runs, jobs, dry_run=False):
    todo = [r for r in runs if state(r) == 'todo']
    if dry_run:
        for r in todo:
            print(' '.join(command(r)[1:]))
        return
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
    active = []
    while todo or active:
        while todo and len(active) < jobs:
            r = todo.pop(0)
            if state(r) != 'todo' or not claim(r):
                continue
            os.makedirs(r['dir'], exist_ok=True)
            log = open(os.path.join(r['dir'], 'train.log'), 'a')
            active.append((r, subprocess.Popen(command(r), cwd=ROOT, env=env, stdout=log, stderr=log), log, time.time()))
        time.sleep(1)
        for item in list(active):
            r, p, log, t0 = item
            if p.poll() is None:
                continue
            active.remove(item)
            log.close()
            name = os.path.relpath(r['dir'], OUT)
            if p.returncode == 3:     # train.py's "diverged": a result, not an error
                last = open(os.path.join(r['dir'], 'train.log')).read().strip().splitlines()[-1:] or ['']
                with open(os.path.join(r['dir'], 'DIVERGED'), 'w') as f:
                    f.write(last[0] + '\n')
                print(f"{name}: diverged ({time.time() - t0:.0f} s)", flush=True)
            elif p.returncode:
                print(f"{name}: FAILED with exit {p.returncode}; see {r['dir']}/train.log", flush=True)
            else:
                print(f"{name}: val loss {final_loss(r):.4f} ({time.time() - t0:.0f} s)", flush=True)
            release(r)

# -----------------------------------------------------------------------------
# the stages

def best(runs):
    """The run with the lowest final loss, and whether both its grid neighbours were run and are worse."""
    runs = sorted(runs, key=lambda r: float(r['lr']))
    i = min(range(len(runs)), key=lambda k: final_loss(runs[k]))
    return runs[i], 0 < i < len(runs) - 1

def lr_sweep(models, start, make, jobs, dry_run):
    """Run `start` for every model; then, while a model's best rate sits at the edge of what was run,
    add the next half-decade on that side (GRID bounds it). Returns {model: runs}."""
    grids = {m: list(start) for m in models}
    while True:
        runs = {m: [make(m, lr) for lr in grids[m]] for m in models}
        execute([r for m in models for r in runs[m]], jobs, dry_run)
        if dry_run:
            return runs
        if any(state(r) == 'todo' and held_elsewhere(r) for m in models for r in runs[m]):
            time.sleep(20)   # another driver is running some of them: their results decide the grid
            continue
        grown = False
        for m in models:
            top, interior = best(runs[m])
            if interior or any(state(r) == 'todo' for r in runs[m]):
                continue
            lo, hi = GRID.index(min(grids[m], key=float)), GRID.index(max(grids[m], key=float))
            edge = lo if float(top['lr']) == float(GRID[lo]) else hi
            step = -1 if edge == lo else 1
            if 0 <= edge + step < len(GRID):
                grids[m].append(GRID[edge + step])
                grown = True
        if not grown:
            return runs

def chosen_lr(model, optimizer='adamw'):
    """A variant's best rate among the finished sweep runs (seed 1337). The rank-collapse control
    trains at E-SPA's rate: it shares E-SPA's recipe and differs only in its attention."""
    if model == 'vanilla' and optimizer == 'adamw':
        model = 'espa'
    stage = 'sweep' if optimizer == 'adamw' else 'muon'
    runs = [run(stage, model, lr, optimizer=optimizer) for lr in GRID if lr != '1' or optimizer == 'muon']
    runs = [r for r in runs if state(r) != 'todo']
    if not runs:
        raise SystemExit(f"no finished {stage} run of {model}: run `python config/study/study.py {stage}` first")
    top = best(runs)[0]
    # a rate that diverges in another seed is at the edge of stability: take the best lower one (ours)
    seed_stage = 'seeds' if optimizer == 'adamw' else 'muon'
    while any(state(run(seed_stage, model, top['lr'], s, optimizer=optimizer)) == 'diverged' for s in SEEDS[1:]):
        runs = [r for r in runs if float(r['lr']) < float(top['lr'])]
        if not runs:
            break
        top = best(runs)[0]
    return top['lr']

ABLATIONS = [   # (label, model, extra args): 400 steps at E-SPA's swept rate unless the args say otherwise
    ('espa', 'espa', []),                                                 # the recipe: blocks at lr / L, warmup 100
    ('espa-global-lr', 'espa', ['--block_lr_rule=global']),               # one Adam lr for everything (sec. 10: fails)
    ('espa-global-lr3e-4', 'espa', ['--block_lr_rule=global', '--learning_rate=3e-4', '--warmup_iters=200']),
    ('espa-no-warmup', 'espa', ['--warmup_iters=0']),
    ('espa-pos-learned', 'espa', ['--pos=learned']),                      # position embeddings on top of the bias
    ('espa-q-correct', 'espa', ['--q_correct=True']),                     # sec. 7 (ours)
    ('espa-gamma0.005', 'espa', ['--gamma_L=0.005']),                     # public ViT code's gamma_L (196 tokens there)
    ('espa-eta0.9', 'espa', ['--eta=0.9']),                               # the paper's eta
    ('espa-gamma0.005-eta0.9', 'espa', ['--gamma_L=0.005', '--eta=0.9']),  # both
    ('vanilla-recipe', 'vanilla', []),                                    # the same recipe, rank-collapsed attention
    ('uspa-pos-none', 'uspa', ['--pos=none']),                            # position only through the bias
    ('vskipinit-pos-none', 'vskipinit', ['--pos=none']),                  # position only through causality
]
BEYOND = [('espa-q-correct', ['--q_correct=True']), ('espa-no-warmup', ['--warmup_iters=0'])]   # 1000 steps, 3 seeds

def ablation_runs():
    runs = []
    for label, model, extra in ABLATIONS:
        r = run('ablations', model, chosen_lr(model), iters=400, extra=extra)
        runs.append(dict(r, dir=os.path.join(OUT, 'ablations', label)))
    for label, extra in BEYOND:
        for s in SEEDS:
            r = run('beyond', 'espa', chosen_lr('espa'), s, extra=extra)
            runs.append(dict(r, dir=os.path.join(OUT, 'beyond', f'{label}_s{s}')))
    return runs

def default_runs():
    """`python train.py` as a newcomer runs it (E-SPA, Muon since sec. 10.1), at four Muon rates, and with AdamW."""
    return [run('default', 'espa', lr, iters=800, optimizer='muon', base=()) for lr in ('1e-2', '3e-3', '3e-2', '1e-1')] + \
        [run('default', 'espa', '3e-3', iters=800, base=())]

def restore(assets):
    """Rebuild the logs of finished and diverged runs from assets/study_curves.json, for a machine
    whose out/ was lost: those runs then count as done and are not run again. A run cut off midway
    has no checkpoint to resume from and is left to run again from the start."""
    with open(os.path.join(assets, 'study_curves.json')) as f:
        saved = json.load(f)
    for name, evs in saved.items():
        d = os.path.join(OUT, name)
        tail = name.rsplit('_', 1)[-1]
        iters = int(tail) if tail.isdigit() else 1000
        finished = evs and evs[-1][0] == iters
        diverged = not finished and name.split('/')[0] in ('sweep', 'seeds', 'muon')   # stages that ran to completion
        if os.path.exists(os.path.join(d, 'log.jsonl')) or not (finished or diverged):
            continue
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, 'log.jsonl'), 'w') as f:
            for it, val, train in evs:
                f.write(json.dumps(dict(kind='eval', iter=it, val_loss=val, train_loss=train)) + '\n')
        if diverged:
            with open(os.path.join(d, 'DIVERGED'), 'w') as f:
                f.write('restored from study_curves.json\n')
        print(f"restored {name} ({'diverged' if diverged else f'{iters} steps'})")

# -----------------------------------------------------------------------------
# the tables and plots of README "Results", from the runs' logs (compare.py does the arithmetic)

def curves(runs, partial=False):
    """{seed: evals} of the finished runs (a diverged run has no curve to compare); with partial, also
    of runs cut off before their end (their curve so far is exactly the full run's first steps)."""
    import compare
    return {r['seed']: compare.read_log(r['dir']) for r in runs
            if state(r) == 'done' or partial and state(r) == 'todo' and len(evals(r['dir'])) > 1}

def seed_rows(stage_runs, baselines, partial=False):
    import compare
    groups = {name: curves(rs, partial) for name, rs in stage_runs.items()}
    rows = compare.summarize_seeds({k: v for k, v in groups.items() if v}, baselines)
    for row in rows:   # a run cut off says where
        iters = stage_runs[row['run']][0]['iters']
        row['run'] += f" (cut off at step {row['iters']} of {iters})" if row['iters'] < iters else ''
    return rows, groups

def write_tables(assets):
    import compare
    out, cell = {}, lambda m, lr, s=1337, **k: run('sweep' if s == 1337 and not k else 'seeds', m, lr, s, **k)
    # the sweep grid: every rate run, each variant's choice
    out['sweep'] = {m: {r['lr']: (final_loss(r) if state(r) == 'done' else 'diverged') for r in
                        [run('sweep', m, lr) for lr in GRID] if state(r) != 'todo'} for m in STUDY + ['postln']}
    out['chosen_lr'] = {m: chosen_lr(m) for m in STUDY}
    # the main table: three seeds at the chosen rate, ratios against Pre-LN and the Pre-LN + E-SPA-bias control
    main_runs = {m: [cell(m, out['chosen_lr'][m], s) for s in SEEDS] for m in STUDY}
    bases = {b: curves(main_runs[b]) for b in ('preln', 'preln-espa')}
    out['study'], groups = seed_rows(main_runs, bases)
    compare.plot_bands({m: g for m, g in groups.items() if g}, os.path.join(assets, 'loss_curves.png'),
                       'depth 24, width 64, T 64, 1,000 steps; mean of 3 seeds, band = min..max')
    compare.plot_kernels({m: run('sweep', m, out['chosen_lr'][m])['dir'] for m in STUDY},
                         os.path.join(assets, 'kernels_at_init.png'))
    # the 5x question: the vanilla variants for 3x the budget, against the baselines' 1,000-step runs
    long_runs = {m: [run('long', m, out['chosen_lr'][m], s, iters=3000) for s in SEEDS] for m in VANILLA}
    out['long'], long_groups = seed_rows(long_runs, bases)
    compare.plot_bands({**{f'{m} (3,000 steps)': g for m, g in long_groups.items() if g},
                        **{f'{b} (1,000 steps)': g for b, g in bases.items() if g}},
                       os.path.join(assets, 'loss_curves_long.png'), 'vanilla variants for 3x the budget')
    # the second scale, one seed
    s2 = {m: [run('scale2', m, out['chosen_lr'][m], iters=2000, extra=['config/study/scale2.py'])] for m in SCALE2}
    s2['espa muon'] = [run('scale2', 'espa', '1e-2', iters=2000, extra=['config/study/scale2.py'], optimizer='muon')]
    s2_bases = {b: curves(s2[b]) for b in ('preln', 'preln-espa')}
    out['scale2'], s2_groups = seed_rows(s2, s2_bases, partial=True)
    if any(s2_groups.values()):
        compare.plot_bands({m: g for m, g in s2_groups.items() if g}, os.path.join(assets, 'loss_curves_scale2.png'),
                           'depth 36, width 128, T 128, 2,000 steps, one seed')
    # Muon: its own lr grid, then three seeds; ratios against the baselines under the same optimizer
    out['muon_sweep'] = {m: {r['lr']: (final_loss(r) if state(r) == 'done' else 'diverged') for r in
                             [run('muon', m, lr, optimizer='muon') for lr in GRID] if state(r) != 'todo'} for m in MUON}
    if all(out['muon_sweep'].values()):
        mlr = {m: chosen_lr(m, 'muon') for m in MUON}
        muon_runs = {m: [run('muon', m, mlr[m], s, optimizer='muon') for s in SEEDS] for m in MUON}
        out['muon_chosen_lr'] = mlr
        out['muon'], muon_groups = seed_rows(muon_runs, {b: curves(muon_runs[b]) for b in ('preln', 'preln-espa')})
        compare.plot_bands({**{f'{m} muon': g for m, g in muon_groups.items() if g},
                            **{f'{m} adamw': groups[m] for m in MUON if groups.get(m)}},
                           os.path.join(assets, 'loss_curves_muon.png'), 'AdamW and Muon, 3 seeds each')
        # the long runs with Muon, against Muon's 1,000-step baselines
        long_muon = {m: [run('long', m, mlr[m], s, iters=3000, optimizer='muon') for s in SEEDS] for m in VANILLA}
        out['long_muon'], lm_groups = seed_rows(long_muon, {b: curves(muon_runs[b]) for b in ('preln', 'preln-espa')})
        if any(lm_groups.values()):
            compare.plot_bands({**{f'{m} muon': g for m, g in lm_groups.items() if g},
                                **{f'{m} adamw': g for m, g in long_groups.items() if g}},
                               os.path.join(assets, 'loss_curves_long_muon.png'), 'vanilla variants, 3,000 steps, AdamW and Muon')
    # `python train.py` itself: Muon at four rates and AdamW, one seed
    out['default'] = {os.path.basename(r['dir']): compare.read_log(r['dir']) for r in default_runs() if state(r) == 'done'}
    if out['default']:
        compare.plot_bands({k: {1337: v} for k, v in out['default'].items()}, os.path.join(assets, 'loss_curves_default.png'),
                           'python train.py: E-SPA, depth 24, width 128, T 128, 800 steps, seed 1337')
    # ablations (400 steps, one seed) and the two changes beyond the paper (1,000 steps, three seeds)
    out['ablations'] = {os.path.basename(r['dir']): (final_loss(r) if state(r) == 'done' else 'diverged')
                        for r in ablation_runs() if state(r) != 'todo'}
    beyond = {label: [r for r in ablation_runs() if os.path.basename(r['dir']).startswith(label + '_s')] for label, _ in BEYOND}
    out['beyond'], _ = seed_rows({'espa': main_runs['espa'], **beyond}, {'preln': bases['preln']})
    import data
    out['unigram'] = compare.unigram_loss(data.load_tokens(os.path.join(ROOT, 'data'), 'pydocs', 'train'), 256,
                                          data.load_tokens(os.path.join(ROOT, 'data'), 'pydocs', 'val'))
    os.makedirs(assets, exist_ok=True)
    with open(os.path.join(assets, 'study.json'), 'w') as f:
        json.dump(out, f, indent=1)
    with open(os.path.join(assets, 'study_tables.md'), 'w') as f:
        f.write(markdown(out))
    with open(os.path.join(assets, 'study_curves.json'), 'w') as f:   # every run's evaluations: out/ is not kept
        logs = sorted(glob.glob(os.path.join(OUT, '*', '*', 'log.jsonl')))
        json.dump({os.path.relpath(os.path.dirname(p), OUT): compare.read_log(p) for p in logs}, f, separators=(',', ':'))
    print(f"wrote {os.path.join(assets, 'study.json')}, study_tables.md and the plots beside them")

def markdown(out):
    """The README's tables, written from study.json (so that no number is copied by hand)."""
    grid = [lr for lr in GRID if any(lr in row for row in out['sweep'].values())]
    num = lambda v: v if isinstance(v, str) else f"{v:.3f}"
    lines = ['## sweep', '', '| variant | ' + ' | '.join(grid) + ' | chosen |', '| --- ' * (len(grid) + 2) + '|']
    for m, row in out['sweep'].items():
        pick = out['chosen_lr'].get(m, min(row, key=lambda k: row[k] if not isinstance(row[k], str) else 9e9))
        cells = [('**' + num(row[lr]) + '**' if lr == pick else num(row[lr])) if lr in row else '' for lr in grid]
        lines.append(f"| {m} | " + ' | '.join(cells) + f" | {pick} |")

    def ratios(r, base):   # per seed s / k, '@k' the baseline step it is measured at (the longest reached)
        per = r['ratios'].get(base, {})
        return ', '.join('never' if per[s]['ratio'] is None else f"{per[s]['ratio']:.2f}@{per[s]['at']}"
                         for s in sorted(per, key=lambda s: SEEDS.index(int(s))))

    def seed_table(title, rows, bases, unigram=None):
        head = '| variant | seeds | final val loss: mean (min-max) |' + (' below unigram |' if unigram else '') + \
            ''.join(f' steps ratio vs {b}, per seed |' for b in bases)
        lines = ['', f'## {title}', '', head, '| --- ' * (head.count('|') - 1) + '|']
        for r in rows:
            lines.append(f"| {r['run']} | {len(r['seeds'])} | {r['final_mean']:.3f} ({r['final_min']:.3f}-{r['final_max']:.3f}) |"
                         + (f" {unigram - r['final_mean']:.3f} |" if unigram else '') + ''.join(f" {ratios(r, b)} |" for b in bases))
        return lines
    lines += seed_table('study (1000 steps)', out['study'], ['preln', 'preln-espa'], out['unigram'])
    lines += seed_table('long (3000 steps) against the 1000-step baselines', out['long'], ['preln', 'preln-espa'])
    lines += seed_table('scale 2 (2000 steps)', out['scale2'], ['preln', 'preln-espa'])
    if out.get('muon'):
        lines += ['', '## muon sweep (muon_lr)', '']
        for m, row in out['muon_sweep'].items():
            lines.append(f"- {m}: " + ', '.join(f"{lr}: {num(v)}" for lr, v in sorted(row.items(), key=lambda kv: float(kv[0])))
                         + f" -> {out['muon_chosen_lr'][m]}")
        lines += seed_table('muon (1000 steps)', out['muon'], ['preln', 'preln-espa'])
        lines += seed_table('long with muon (3000 steps) against the 1000-step muon baselines', out.get('long_muon', []),
                            ['preln', 'preln-espa'])
    if out.get('default'):
        steps = [0, 200, 400, 600, 800]
        lines += ['', '## python train.py (800 steps, seed 1337): val loss at step', '',
                  '| run | ' + ' | '.join(map(str, steps)) + ' |', '| --- ' * (len(steps) + 1) + '|']
        for label, evs in out['default'].items():
            at = {e[0]: e[1] for e in evs}
            lines.append(f"| {label} | " + ' | '.join(num(at[k]) if k in at else '' for k in steps) + ' |')
    lines += ['', '## ablations (400 steps)', ''] + [f"- {k}: {num(v)}" for k, v in out['ablations'].items()]
    lines += seed_table('beyond the paper (1000 steps)', out['beyond'], ['preln'])
    return '\n'.join(lines) + '\n'

def main(argv):
    opts = dict(a[2:].split('=', 1) if '=' in a else (a[2:], '1') for a in argv[1:] if a.startswith('--'))
    stages = [a for a in argv[1:] if not a.startswith('--')]
    jobs, dry_run = int(opts.get('jobs', 2)), 'dry_run' in opts
    pick = lambda default: opts['variants'].split(',') if 'variants' in opts else default
    if not stages:
        print(__doc__)
        return 2
    for stage in stages:
        if stage == 'sweep':
            lr_sweep(pick(STUDY + ['postln']), ['3e-4', '1e-3', '3e-3', '1e-2', '3e-2'],
                     lambda m, lr: run('sweep', m, lr), jobs, dry_run)
        elif stage == 'seeds':
            execute([run('seeds', m, chosen_lr(m), s) for m in pick(STUDY) for s in SEEDS[1:]], jobs, dry_run)
        elif stage == 'long':
            execute([run('long', m, chosen_lr(m), s, iters=3000) for m in pick(VANILLA) for s in SEEDS], jobs, dry_run)
        elif stage == 'scale2':
            execute([run('scale2', m, chosen_lr(m), iters=2000, extra=['config/study/scale2.py'])
                     for m in pick(SCALE2)], jobs, dry_run)
        elif stage == 'muon':
            lr_sweep(pick(MUON), ['1e-2', '3e-2', '1e-1'], lambda m, lr: run('muon', m, lr, optimizer='muon'), jobs, dry_run)
            execute([run('muon', m, chosen_lr(m, 'muon'), s, optimizer='muon') for m in pick(MUON) for s in SEEDS[1:]],
                    jobs, dry_run)
        elif stage == 'long-muon':
            execute([run('long', m, chosen_lr(m, 'muon'), s, iters=3000, optimizer='muon') for s in SEEDS
                     for m in pick(VANILLA)], jobs, dry_run)
        elif stage == 'scale2-muon':
            execute([run('scale2', m, '1e-2', iters=2000, extra=['config/study/scale2.py'], optimizer='muon')
                     for m in pick(['espa'])], jobs, dry_run)
        elif stage == 'default':
            execute(default_runs(), jobs, dry_run)
        elif stage == 'ablations':
            execute(ablation_runs(), jobs, dry_run)
        elif stage == 'restore':
            restore(opts.get('assets', os.path.join(ROOT, 'assets')))
        elif stage == 'table':
            write_tables(opts.get('assets', os.path.join(ROOT, 'assets')))
        else:
            print(f"unknown stage {stage!r}; see the top of {__file__}", file=sys.stderr)
            return 2
    return 0

if __name__ == '__main__':
    sys.exit(main(sys.argv))
