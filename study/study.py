"""
The CPU study of README "Results" as one driver. Every run is plain `python train.py
study/common.py --model=NAME --learning_rate=LR --seed=S --out_dir=...` on one thread; the driver
runs --jobs of them at a time (two one-thread runs beat one two-thread run on a 2-core machine),
skips what is finished, resumes what was cut off, and lets a second driver (another shell) share a
stage: each run is claimed with mkdir before it starts.

    python study/study.py sweep       # lr grid per variant (seed 1337, 1000 steps) until interior
    python study/study.py seeds       # seeds 2 and 3 at every variant's chosen rate
    python study/study.py long        # Value-SkipInit, U-SPA, E-SPA for 3x the budget (the 5x)
    python study/study.py scale2      # depth 36, width 128, T = 128, 2000 steps (study/scale2.py)
    python study/study.py muon        # optimizer=muon: its own lr sweep, then three seeds
    python study/study.py long-muon   # the long runs with Muon at its chosen rate
    python study/study.py scale2-muon # E-SPA at the second scale with Muon at its chosen rate
    python study/study.py default     # `python train.py` itself (E-SPA, 24 x 128, T 128, 800 steps)
    python study/study.py ablations   # what the vanilla E-SPA recipe needs, and two extras
    python study/study.py family      # shaped, SAS, SAS-P, DyT and SAS's control: sweep, 3 seeds
    python study/study.py dyt-alpha   # DyT's alpha_0 (x0.25..x4 at every site), and the drop-in
    python study/study.py muon-rms    # Muon with adjust_lr_fn='match_rms_adamw': sweep, 3 seeds
    python study/study.py depth       # depths 12, 48 (1 seed); 96: lr swept until interior, 3 seeds
    python study/study.py table       # study.json, study_tables.md and the plots, from the results
    python study/study.py restore     # rebuild out/study/ from study/study_curves.json
    ... --jobs=1 | --dry_run (print the train.py commands) | --variants=espa,preln | --results=DIR
        | --depths=12,48 (depth: only these)

Runs land in out/study/STAGE/LABEL/ (log.jsonl, ckpt.pt, train.log), or under $STUDY_OUT; a
diverged run (train.py exit 3) leaves a DIVERGED file and counts as worse than any finished one.

What is kept in git, in study/:
- rates.json: the learning rates the study chose, {'adamw': {variant: lr}, 'muon': {variant:
  muon_lr}}. `sweep` and `muon` write them when their grids are done (the best final loss of seed
  1337), `seeds` and `muon` move a rate down the grid when another seed diverges at it (a rate at
  the edge of stability), and every later stage, and --dry_run of every stage, reads them.
- study_curves.json: every run's evaluations, and which runs diverged. `table` lays the runs of
  out/study/ over it (a run there wins when it diverged or got at least as far) and writes it back
  with study.json, study_tables.md and the plots; it needs no out/ and no data/ (the unigram loss
  is then kept from study.json), and --results=DIR writes all of that to DIR instead.
- `restore` writes a log.jsonl (and DIVERGED) into out/study/ for every run in study_curves.json
  that has none there: finished and diverged runs then count as done, and compare.py reads them.
  A run cut off on another machine left its checkpoint there (ckpt.pt is not in git): restored, it
  has only its curve so far, and its stage runs it again from step 0 (--overwrite=True); only a
  run whose ckpt.pt is in out/ continues exactly (--init_from=resume).
"""
import glob
import json
import math
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)   # model and data, for the plots and the unigram loss
OUT = os.environ.get('STUDY_OUT') or os.path.join(ROOT, 'out', 'study')
RATES = os.path.join(HERE, 'rates.json')
CURVES = os.path.join(HERE, 'study_curves.json')
GRID = ['1e-4', '3e-4', '1e-3', '3e-3', '1e-2', '3e-2', '1e-1', '3e-1', '1']   # half-decade steps
SEEDS = [1337, 2, 3]              # 1337 is train.py's default: the sweep's runs are the first seed
STUDY = ['preln', 'preln-espa', 'vanilla', 'vskipinit', 'uspa', 'espa', 'softmax-skip',
         'vskipinit-skip', 'uspa-skip', 'espa-skip']   # postln is swept only: no use at depth 24
VANILLA = ['vskipinit', 'uspa', 'espa']
BEST_NEW = 'sas-p'                      # the family's best under AdamW (RESULTS.md "family")
SECOND_NEW = 'sas'                      # and the second best: with Muon, both ways, too
SCALE2 = ['preln', 'preln-espa', 'espa', 'espa-skip', 'softmax-skip', BEST_NEW]
MUON = ['preln', 'preln-espa', 'vskipinit', 'uspa', 'espa', 'espa-skip', BEST_NEW, SECOND_NEW]
FAMILY = ['shaped', 'sas', 'sas-p', 'sas-p-nonorm', 'prermsnorm-relu', 'preln-dyt']   # successors
FAMILY_BASES = ['preln', 'preln-espa', 'prermsnorm-relu']   # prermsnorm-relu: SAS's own control
DYT_PLAIN = ['--embed_scale=False', '--dyt_alpha_attn=0.5', '--dyt_alpha_mlp=0.5',
             '--dyt_alpha_final=0.5']   # DyT as the paper's drop-in: every LayerNorm, alpha_0 0.5
DYT_ALPHA = ['0.25', '0.5', '2', '4']   # x preln-dyt's alpha_0 at every site (x1: the family's)
MUON_BOTH = ['preln', 'preln-espa', 'espa', BEST_NEW]   # Muon both ways, and the depths
MUON_RMS = MUON_BOTH + [SECOND_NEW]   # Muon's other lr parametrisation
DEPTHS = {12: [1337], 48: [1337], 96: SEEDS}   # depth: seeds (width 64, 1000 steps, AdamW)
TRAIN_PY_LR = '3e-3'              # train.py's default learning_rate, for the `default` stage

# -----------------------------------------------------------------------------
# the chosen rates, and one run: its name, its folder, its command

def rates():
    with open(RATES) as f:
        return json.load(f)

def run(stage, model, lr, seed=1337, iters=1000, extra=(), optimizer='adamw', label=None,
        base=('study/common.py',)):
    """One run of the study. With optimizer='muon' (torch's adjust_lr_fn 'original') or
    'muon-rms' ('match_rms_adamw'), lr is Muon's (muon_lr) and AdamW keeps the variant's chosen
    rate for the embeddings, readout and gains. base=(): train.py's defaults."""
    label = label or (f"{model}{'' if optimizer == 'adamw' else '-' + optimizer}_lr{lr}_s{seed}"
                      + (f"_{iters}" if iters != 1000 else ''))
    if optimizer == 'adamw':
        lrs = [f'--learning_rate={lr}', '--optimizer=adamw']
    else:
        adamw_lr = rates()['adamw'][model] if base else TRAIN_PY_LR
        lrs = [f'--learning_rate={adamw_lr}', '--optimizer=muon', f'--muon_lr={lr}']
        lrs += ['--muon_adjust_lr=match_rms_adamw'] if optimizer == 'muon-rms' else []
    args = [*base, f'--model={model}', *lrs, f'--seed={seed}', f'--max_iters={iters}', *extra]
    return dict(name=f'{stage}/{label}', dir=os.path.join(OUT, stage, label), args=args,
                iters=iters, model=model, lr=lr, seed=seed)

def evals(d):
    """[[iter, val_loss, train_loss], ...] of the run in folder d so far ([] when there is none)."""
    try:
        with open(os.path.join(d, 'log.jsonl')) as f:
            recs = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return []
    return [[r['iter'], r['val_loss'], r.get('train_loss')] for r in recs
            if r.get('kind') == 'eval']

def state(r):
    """Of the run's folder on this machine: 'done', 'diverged' or 'todo'."""
    if os.path.exists(os.path.join(r['dir'], 'DIVERGED')):
        return 'diverged'
    return 'done' if any(e[0] == r['iters'] for e in evals(r['dir'])) else 'todo'

def command(r):
    resume = os.path.exists(os.path.join(r['dir'], 'ckpt.pt'))   # cut off here: continue it exactly
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

def finished(r, p, t0):
    """Record how a run ended: train.py's exit 3 ("diverged") is a result, not an error."""
    name = os.path.relpath(r['dir'], OUT)
    if p.returncode == 3:
        last = open(os.path.join(r['dir'], 'train.log')).read().strip().splitlines()[-1:] or ['']
        with open(os.path.join(r['dir'], 'DIVERGED'), 'w') as f:
            f.write(last[0] + '\n')
        print(f"{name}: diverged ({time.time() - t0:.0f} s)", flush=True)
    elif p.returncode:
        print(f"{name}: FAILED with exit {p.returncode}; see {r['dir']}/train.log", flush=True)
    else:
        loss = evals(r['dir'])[-1][1]
        print(f"{name}: val loss {loss:.4f} ({time.time() - t0:.0f} s)", flush=True)
    release(r)

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
            p = subprocess.Popen(command(r), cwd=ROOT, env=env, stdout=log, stderr=log)
            active.append((r, p, log, time.time()))
        time.sleep(1)
        for item in list(active):
            r, p, log, t0 = item
            if p.poll() is not None:
                active.remove(item)
                log.close()
                finished(r, p, t0)

# -----------------------------------------------------------------------------
# the results: the committed curves with this machine's runs laid over them

def results():
    """{'curves': {name: evals}, 'diverged': [name]} of every run: study_curves.json, with the
    runs in OUT laid over it where they diverged or got at least as far."""
    with open(CURVES) as f:
        res = json.load(f)
    diverged = set(res['diverged'])
    for log in sorted(glob.glob(os.path.join(OUT, '*', '*', 'log.jsonl'))):
        d = os.path.dirname(log)
        if held_elsewhere(dict(dir=d)):
            continue   # still running: its curve so far is not a result yet
        name, evs = os.path.relpath(d, OUT), evals(d)
        if evs and len(evs) >= len(res['curves'].get(name, ())):
            res['curves'][name] = evs
            diverged.discard(name)
        if os.path.exists(os.path.join(d, 'DIVERGED')):
            res['curves'][name] = evs
            diverged.add(name)
    return dict(diverged=sorted(diverged), curves=dict(sorted(res['curves'].items())))

def status(res, r):
    """'done', 'diverged', 'cut off' (stopped early for another reason) or None (never run)."""
    evs = res['curves'].get(r['name'])
    if evs is None:
        return None
    if r['name'] in res['diverged']:
        return 'diverged'
    return 'done' if evs[-1][0] == r['iters'] else 'cut off'

def final_loss(res, r):
    """Validation loss at the end of the run; inf for a diverged or unfinished one."""
    evs = res['curves'].get(r['name'])
    return evs[-1][1] if status(res, r) == 'done' and math.isfinite(evs[-1][1]) else math.inf

def restore():
    """Write study_curves.json's runs into OUT (see the top of this file)."""
    res = results()
    for name, evs in res['curves'].items():
        d = os.path.join(OUT, name)
        if os.path.exists(os.path.join(d, 'log.jsonl')):
            continue
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, 'log.jsonl'), 'w') as f:
            for it, val, train in evs:
                f.write(json.dumps(dict(kind='eval', iter=it, val_loss=val, train_loss=train))
                        + '\n')
        if name in res['diverged']:
            with open(os.path.join(d, 'DIVERGED'), 'w') as f:
                f.write('restored from study_curves.json\n')
        print(f"restored {name} (" + ('diverged' if name in res['diverged']
                                      else f'to step {evs[-1][0]}') + ')')

# -----------------------------------------------------------------------------
# choosing the rates

def stages_of(model, optimizer):
    """(stage of the lr sweep, stage of seeds 2 and 3) of a model under an optimizer."""
    if optimizer != 'adamw':
        return optimizer, optimizer
    return ('family', 'family') if model in FAMILY else ('sweep', 'seeds')

def pick_rate(res, model, optimizer='adamw'):
    """A variant's best rate among the finished sweep runs (seed 1337), or None before any; a
    rate at which another seed diverges is at the edge of stability: the best lower one replaces
    it (ours). The rank-collapse control trains at E-SPA's rate: it shares E-SPA's recipe and
    differs only in its attention."""
    if model == 'vanilla' and optimizer == 'adamw':
        model = 'espa'
    stage, seeds_stage = stages_of(model, optimizer)
    runs = [run(stage, model, lr, optimizer=optimizer) for lr in GRID]
    runs = [r for r in runs if status(res, r) in ('done', 'diverged')]
    seeds_at = lambda lr: [run(seeds_stage, model, lr, s, optimizer=optimizer)
                           for s in SEEDS[1:]]
    while runs:
        top = min(runs, key=lambda r: final_loss(res, r))
        if not any(status(res, r) == 'diverged' for r in seeds_at(top['lr'])):
            return top['lr']
        runs = [r for r in runs if float(r['lr']) < float(top['lr'])]
    return None

def choose_rates(models, optimizer):
    """Write the rates picked from the results into rates.json; True when one changed."""
    chosen, res = rates(), results()
    before = dict(chosen.setdefault(optimizer, {}))
    for m in models:
        chosen[optimizer][m] = pick_rate(res, m, optimizer) or chosen[optimizer].get(m)
    with open(RATES, 'w') as f:
        json.dump(chosen, f, indent=1)
        f.write('\n')
    print(f"{optimizer} rates: {chosen[optimizer]} (study/rates.json)")
    return chosen[optimizer] != before

def lr_sweep(models, start, make, jobs, dry_run):
    """Run `start` (a list of rates, or one list per model) for every model, all at once; then,
    while a model's best rate sits at the edge of what was run, add the next half-decade on that
    side (GRID bounds it)."""
    grids = {m: list(start[m] if isinstance(start, dict) else start) for m in models}
    while True:
        runs = {m: [make(m, lr) for lr in grids[m]] for m in models}
        execute([r for m in models for r in runs[m]], jobs, dry_run)
        if dry_run:
            return
        if any(state(r) == 'todo' and held_elsewhere(r) for m in models for r in runs[m]):
            time.sleep(20)   # another driver is running some of them: their results decide the grid
            continue
        res, grown = results(), False
        for m in models:
            if any(state(r) == 'todo' for r in runs[m]):
                continue
            ordered = sorted(runs[m], key=lambda r: float(r['lr']))
            i = min(range(len(ordered)), key=lambda k: final_loss(res, ordered[k]))
            if 0 < i < len(ordered) - 1:
                continue                    # interior: both neighbours were run and are worse
            k = GRID.index(ordered[i]['lr']) + (-1 if i == 0 else 1)
            if 0 <= k < len(GRID):
                grids[m].append(GRID[k])
                grown = True
        if not grown:
            return

def seeds(models, optimizer, jobs, dry_run):
    """Seeds 2 and 3 at every model's chosen rate, until no rate moves (see pick_rate)."""
    while True:
        chosen = rates().get(optimizer, {})
        for m in [m for m in models if m not in chosen]:
            print(f"# {m}: seeds 2 and 3 wait for its sweep to pick a rate")
        execute([run(stages_of(m, optimizer)[1], m, chosen[m], s, optimizer=optimizer)
                 for m in models if m in chosen for s in SEEDS[1:]], jobs, dry_run)
        if dry_run or not choose_rates(models, optimizer):
            return

ABLATIONS = [   # (label, model, extra args): 400 steps at the model's rate unless the args differ
    ('espa', 'espa', []),                                      # the recipe: lr / L inside, warmup
    ('espa-global-lr', 'espa', ['--block_lr_rule=global']),    # one Adam lr for all (sec. 10)
    ('espa-global-lr3e-4', 'espa', ['--block_lr_rule=global', '--learning_rate=3e-4',
                                    '--warmup_iters=200']),
    ('espa-no-warmup', 'espa', ['--warmup_iters=0']),
    ('espa-pos-learned', 'espa', ['--pos=learned']),           # position embeddings and the bias
    ('espa-q-correct', 'espa', ['--q_correct=True']),          # sec. 7 (ours)
    ('espa-gamma0.005', 'espa', ['--gamma_L=0.005']),          # public ViT code's (196 tokens)
    ('espa-eta0.9', 'espa', ['--eta=0.9']),                    # the paper's eta
    ('espa-gamma0.005-eta0.9', 'espa', ['--gamma_L=0.005', '--eta=0.9']),   # both
    ('vanilla-recipe', 'vanilla', []),                         # the recipe, rank-collapsed attn.
    ('uspa-pos-none', 'uspa', ['--pos=none']),                 # position only through the bias
    ('vskipinit-pos-none', 'vskipinit', ['--pos=none']),       # position only through causality
]
BEYOND = [('espa-q-correct', ['--q_correct=True']), ('espa-no-warmup', ['--warmup_iters=0'])]

def ablation_runs():
    chosen = rates()['adamw']
    return [run('ablations', model, chosen[model], iters=400, extra=extra, label=label)
            for label, model, extra in ABLATIONS]

def beyond_runs():
    """The two changes beyond the paper at 1000 steps and three seeds: {label: runs}."""
    lr = rates()['adamw']['espa']
    return {label: [run('beyond', 'espa', lr, s, extra=extra, label=f'{label}_s{s}') for s in SEEDS]
            for label, extra in BEYOND}

def seed_runs(model, optimizer='adamw'):
    """The three seeds at a model's chosen rate (the sweep's run is the first)."""
    sweep, seeds_stage = stages_of(model, optimizer)
    lr = rates()[optimizer][model]
    return [run(sweep if s == 1337 else seeds_stage, model, lr, s, optimizer=optimizer)
            for s in SEEDS]

def dyt_runs():
    """preln-dyt at its chosen rate with every alpha_0 scaled (DYT_ALPHA), and the drop-in."""
    from model import PRESETS
    lr, preset = rates()['adamw']['preln-dyt'], PRESETS['preln-dyt']
    sites = ('dyt_alpha_attn', 'dyt_alpha_mlp', 'dyt_alpha_final')
    runs = [run('dyt-alpha', 'preln-dyt', lr, extra=[f'--{k}={preset[k] * float(x):g}'
                                                    for k in sites], label=f'alpha-x{x}')
            for x in DYT_ALPHA]
    return runs + [run('dyt-alpha', 'preln-dyt', lr, extra=DYT_PLAIN, label='drop-in')]

def depth_run(model, L, lr, seed):
    return run('depth', model, lr, seed, extra=[f'--n_layer={L}'],
               label=f'{model}_L{L}_lr{lr}_s{seed}')

def depth_rate(res, model, L=96):
    """The best rate of seed 1337 at depth L among those run (the depth-24 rate before any)."""
    runs = [r for r in (depth_run(model, L, x, 1337) for x in GRID)
            if status(res, r) in ('done', 'diverged')]
    return min(runs, key=lambda r: final_loss(res, r))['lr'] if runs else rates()['adamw'][model]

def depth(models, jobs, dry_run):
    """Depths 12 and 48 at each model's depth-24 rate, one seed. At 96 the rate is swept as at
    24: from the depth-24 rate and either side (seed 1337) until interior, then seeds 2 and 3 at
    the best. The family's depth-dependent settings stay the presets' (SAS's beta_FF = 0.1 at
    every depth, as He & Hofmann keep it from 18 to 72)."""
    execute([depth_run(m, L, rates()['adamw'][m], s) for m in models
             for L, seeds in DEPTHS.items() if L != 96 for s in seeds], jobs, dry_run)
    if 96 not in DEPTHS:
        return
    either_side = lambda lr: [x for x in GRID if float(x) < float(lr)][-1:] + [lr] + \
        [x for x in GRID if float(x) > float(lr)][:1]
    starts = {m: either_side(rates()['adamw'][m]) for m in models}
    lr_sweep(models, starts, lambda m, x: depth_run(m, 96, x, 1337), jobs, dry_run)
    res = results()
    execute([depth_run(m, 96, depth_rate(res, m), s) for m in models for s in SEEDS[1:]], jobs,
            dry_run)

def default_runs():
    """`python train.py` as a newcomer runs it (E-SPA with Muon, MATH.md sec. 10.1) at four Muon
    rates, and with AdamW."""
    return [run('default', 'espa', lr, iters=800, optimizer='muon', base=())
            for lr in ('1e-2', '3e-3', '3e-2', '1e-1')] + \
        [run('default', 'espa', TRAIN_PY_LR, iters=800, base=())]

def scale2_runs(models):
    return [run('scale2', m, rates()['adamw'][m], iters=2000, extra=['study/scale2.py'])
            for m in models]

def scale2_muon_runs(models):
    return [run('scale2', m, rates()['muon'][m], iters=2000, extra=['study/scale2.py'],
                optimizer='muon') for m in models]

def long_runs(models, optimizer):
    chosen = rates()[optimizer]
    return [run('long', m, chosen[m], s, iters=3000, optimizer=optimizer)
            for m in models for s in SEEDS]

# -----------------------------------------------------------------------------
# the tables and plots of README "Results", from the results (compare.py does the arithmetic)

def seed_rows(res, stage_runs, baselines):
    """compare.summarize_seeds of {name: runs} (finished runs, and cut-off ones: their curve so
    far is exactly the full run's first steps), a cut-off row saying where it stopped."""
    import compare
    groups = {name: {r['seed']: res['curves'][r['name']] for r in rs
                     if status(res, r) == 'done' or status(res, r) == 'cut off'
                     and len(res['curves'][r['name']]) > 1} for name, rs in stage_runs.items()}
    groups = {k: v for k, v in groups.items() if v}
    rows = compare.summarize_seeds(groups, baselines)
    for row in rows:
        iters = stage_runs[row['run']][0]['iters']
        if row['iters'] < iters:
            row['run'] += f" (cut off at step {row['iters']} of {iters})"
    return rows, {row['run']: groups[row['run'].split(' (')[0]] for row in rows}

def done_curves(res, runs):
    """{seed: evals} of the finished runs."""
    return {r['seed']: res['curves'][r['name']] for r in runs if status(res, r) == 'done'}

def sweep_table(res, stage, models, optimizer='adamw'):
    """{model: {lr: final loss or 'diverged'}} of the rates run."""
    table = {}
    for m in models:
        runs = [run(stage, m, lr, optimizer=optimizer) for lr in GRID]
        table[m] = {r['lr']: final_loss(res, r) if status(res, r) == 'done' else 'diverged'
                    for r in runs if status(res, r) in ('done', 'diverged')}
    return table

def tables(res):
    """study.json's numbers, and the plots to draw: [(groups, file name, title)]."""
    chosen = rates()
    out, plots = {}, []
    out['sweep'] = sweep_table(res, 'sweep', STUDY + ['postln'])
    out['chosen_lr'] = {m: chosen['adamw'][m] for m in STUDY}
    main = {m: seed_runs(m) for m in STUDY}
    bases = {b: done_curves(res, main[b]) for b in ('preln', 'preln-espa')}
    out['study'], groups = seed_rows(res, main, bases)
    plots.append((groups, 'loss_curves.png',
                  'depth 24, width 64, T 64, 1,000 steps; mean of 3 seeds, band = min..max'))
    long = {m: long_runs([m], 'adamw') for m in VANILLA}
    out['long'], long_groups = seed_rows(res, long, bases)
    plots.append(({**{f'{m} (3,000 steps)': g for m, g in long_groups.items()},
                   **{f'{b} (1,000 steps)': g for b, g in bases.items() if g}},
                  'loss_curves_long.png', 'vanilla variants for 3x the budget'))
    s2 = {m: scale2_runs([m]) for m in SCALE2}
    s2['espa muon'] = scale2_muon_runs(['espa'])
    out['scale2'], s2_groups = seed_rows(res, s2, {b: done_curves(res, s2[b])
                                                   for b in ('preln', 'preln-espa')})
    plots.append((s2_groups, 'loss_curves_scale2.png',
                  'depth 36, width 128, T 128, 2,000 steps, one seed'))
    out['muon_sweep'] = {m: row for m, row in sweep_table(res, 'muon', MUON, 'muon').items()
                         if row}
    out['muon_chosen_lr'] = {m: chosen['muon'].get(m) for m in MUON}
    muon = {m: seed_runs(m, 'muon') for m in MUON if m in chosen['muon']}
    muon_bases = {b: done_curves(res, muon[b]) for b in ('preln', 'preln-espa')}
    out['muon'], muon_groups = seed_rows(res, muon, muon_bases)
    plots.append(({**{f'{m} muon': g for m, g in muon_groups.items()},
                   **{f'{m} adamw': groups[m] for m in MUON if m in groups}},
                  'loss_curves_muon.png', 'AdamW and Muon, 3 seeds each'))
    long_muon = {m: long_runs([m], 'muon') for m in VANILLA}
    out['long_muon'], lm_groups = seed_rows(res, long_muon, muon_bases)
    plots.append(({**{f'{m} muon': g for m, g in lm_groups.items()},
                   **{f'{m} adamw': g for m, g in long_groups.items()}},
                  'loss_curves_long_muon.png', 'vanilla variants, 3,000 steps, AdamW and Muon'))
    out['default'] = {r['name'].split('/')[1]: res['curves'][r['name']] for r in default_runs()
                      if status(res, r) == 'done'}
    plots.append(({k: {1337: v} for k, v in out['default'].items()}, 'loss_curves_default.png',
                  'python train.py: E-SPA, depth 24, width 128, T 128, 800 steps, seed 1337'))
    out['ablations'] = {r['name'].split('/')[1]: final_loss(res, r) if status(res, r) == 'done'
                        else 'diverged' for r in ablation_runs()
                        if status(res, r) in ('done', 'diverged')}
    out['beyond'], _ = seed_rows(res, {'espa': main['espa'], **beyond_runs()},
                                 {'preln': bases['preln']})
    family_tables(res, out, plots, main, groups)
    successor_tables(res, out)
    return out, plots

def successor_tables(res, out):
    """Muon with adjust_lr_fn='match_rms_adamw', and the gaps at other depths (empty until run)."""
    chosen = rates().get('muon-rms', {})
    sweep = sweep_table(res, 'muon-rms', MUON_RMS, 'muon-rms')
    out['muon_rms_sweep'] = {m: row for m, row in sweep.items() if row}
    runs = {m: seed_runs(m, 'muon-rms') for m in out['muon_rms_sweep'] if m in chosen}
    out['muon_rms'], _ = seed_rows(res, runs, {b: done_curves(res, runs[b])
                                               for b in ('preln', 'preln-espa') if b in runs})
    out['depth'] = {}
    for L, seeds in DEPTHS.items():   # at the depth-24 rate, at 96 at the rate picked there
        runs = {m: [depth_run(m, L, depth_rate(res, m) if L == 96 else rates()['adamw'][m], s)
                    for s in seeds] for m in MUON_BOTH}
        runs = {m: rs for m, rs in runs.items() if any(status(res, r) for r in rs)}
        bases = {b: done_curves(res, runs[b]) for b in ('preln', 'preln-espa') if b in runs}
        rows, _ = seed_rows(res, runs, bases) if runs else ([], {})
        if rows:
            out['depth'][str(L)] = rows
    out['depth_rates'] = {}   # at 96, seed 1337: every rate run, and the one picked
    for m in MUON_BOTH:
        row = {r['lr']: final_loss(res, r) if status(res, r) == 'done' else 'diverged'
               for r in (depth_run(m, 96, x, 1337) for x in GRID)
               if status(res, r) in ('done', 'diverged')}
        if row:
            out['depth_rates'][m] = row
    out['depth_chosen_lr'] = {m: depth_rate(res, m) for m in out['depth_rates']}

def family_tables(res, out, plots, main, groups):
    """The successors next to Pre-LN, the Pre-LN + bias control and SAS's control."""
    chosen = rates()['adamw']
    out['family_sweep'] = {m: row for m, row in sweep_table(res, 'family', FAMILY).items() if row}
    out['family_chosen_lr'] = {m: chosen.get(m) for m in out['family_sweep']}
    family = {m: seed_runs(m) for m in FAMILY if chosen.get(m)}
    runs = {**{b: main[b] for b in FAMILY_BASES if b in main}, **family}
    bases = {b: done_curves(res, runs[b]) for b in FAMILY_BASES if b in runs}
    out['family'], family_groups = seed_rows(res, family, bases)
    dyt = dyt_runs() if chosen.get('preln-dyt') else []
    dyt[2:2] = [dict(seed_runs('preln-dyt')[0], label='alpha-x1')] if dyt else []   # the preset
    out['dyt_alpha'] = {r.get('label', r['name'].split('/')[1]): final_loss(res, r)
                        if status(res, r) == 'done' else 'diverged'
                        for r in dyt if status(res, r) in ('done', 'diverged')}
    if family_groups:
        plots.append(({**family_groups, **{b: groups[b] for b in ('preln', 'preln-espa', 'espa')
                                           if b in groups}},
                      'loss_curves_family.png', 'the successors, depth 24, width 64, 3 seeds'))

def unigram(committed):
    """The unigram loss of pydocs (compare.unigram_loss), or the committed one without data/."""
    import compare
    import data
    data_dir = os.path.join(ROOT, 'data')
    if not os.path.exists(os.path.join(data_dir, 'pydocs', 'val.bin')):
        return committed
    return compare.unigram_loss(data.load_tokens(data_dir, 'pydocs', 'train'), 256,
                                data.load_tokens(data_dir, 'pydocs', 'val'))

def study_configs():
    """{variant: GPTConfig} of the study's architecture (study/common.py), for the kernel plot."""
    from model import config_for
    common = {}
    exec(open(os.path.join(HERE, 'common.py')).read(), {}, common)
    shape = {k: common[k] for k in ('n_layer', 'n_embd', 'n_head', 'block_size')}
    return {m: config_for(m, **shape) for m in STUDY}

def write_tables(dest):
    import compare
    res = results()
    with open(os.path.join(HERE, 'study.json')) as f:
        committed_unigram = json.load(f)['unigram']
    out, plots = tables(res)
    out['unigram'] = unigram(committed_unigram)
    os.makedirs(dest, exist_ok=True)
    with open(os.path.join(dest, 'study.json'), 'w') as f:
        json.dump(out, f, indent=1)
    with open(os.path.join(dest, 'study_tables.md'), 'w') as f:
        f.write(markdown(out))
    with open(os.path.join(dest, 'study_curves.json'), 'w') as f:   # out/ is not kept: this is
        json.dump(res, f, separators=(',', ':'))
    for groups, name, title in plots:
        if groups:
            compare.plot_bands(groups, os.path.join(dest, name), title)
    if out.get('depth'):
        compare.plot_vs_depth(depth_series(out), os.path.join(dest, 'loss_vs_depth.png'),
                              'width 64, T 64, 1,000 steps, AdamW (at 96 the rate swept there); '
                              'bars: min..max over seeds')
    compare.plot_kernels(study_configs(), os.path.join(dest, 'kernels_at_init.png'))
    print(f"wrote {os.path.join(dest, 'study.json')}, study_tables.md, study_curves.json and the "
          "plots beside them")

def depth_series(out):
    """{model: {depth: (mean, min, max) final loss}} of the depth stage's models, depth 24 from
    the main study and the family table."""
    at24 = {r['run']: r for r in out['study'] + out.get('family', [])}
    series = {}
    for m in MUON_BOTH:
        rows = {24: at24.get(m), **{int(L): next((r for r in rows if r['run'] == m), None)
                                    for L, rows in out['depth'].items()}}
        series[m] = {L: (r['final_mean'], r['final_min'], r['final_max'])
                     for L, r in sorted(rows.items()) if r}
    return series

def sweep_list(sweep, chosen=None):
    """'- model: lr: loss, ... -> chosen rate' per model of a sweep table."""
    num = lambda v: v if isinstance(v, str) else f"{v:.3f}"
    return [f"- {m}: " + ', '.join(f"{lr}: {num(v)}" for lr, v in
                                   sorted(row.items(), key=lambda kv: float(kv[0])))
            + (f" -> {chosen.get(m)}" if chosen is not None else '') for m, row in sweep.items()]

def markdown(out):
    """The README's tables, written from study.json (so that no number is copied by hand)."""
    grid = [lr for lr in GRID if any(lr in row for row in out['sweep'].values())]
    num = lambda v: v if isinstance(v, str) else f"{v:.3f}"
    lines = ['## sweep', '', '| variant | ' + ' | '.join(grid) + ' | chosen |',
             '| --- ' * (len(grid) + 2) + '|']
    for m, row in out['sweep'].items():
        pick = out['chosen_lr'].get(m) or min(row, key=lambda k: 9e9 if isinstance(row[k], str)
                                              else row[k])
        cells = [('**' + num(row[lr]) + '**' if lr == pick else num(row[lr])) if lr in row else ''
                 for lr in grid]
        lines.append(f"| {m} | " + ' | '.join(cells) + f" | {pick} |")

    def ratios(r, base):   # per seed s / k, '@k' the baseline step it is measured at
        per = r['ratios'].get(base, {})
        return ', '.join('never' if per[s]['ratio'] is None
                         else f"{per[s]['ratio']:.2f}@{per[s]['at']}"
                         for s in sorted(per, key=lambda s: SEEDS.index(int(s))))

    def seed_table(title, rows, bases, unigram=None):
        head = '| variant | seeds | final val loss: mean (min-max) |' + \
            (' below unigram |' if unigram else '') + \
            ''.join(f' steps ratio vs {b}, per seed |' for b in bases)
        lines = ['', f'## {title}', '', head, '| --- ' * (head.count('|') - 1) + '|']
        for r in rows:
            lines.append(f"| {r['run']} | {len(r['seeds'])} | {r['final_mean']:.3f} "
                         f"({r['final_min']:.3f}-{r['final_max']:.3f}) |"
                         + (f" {unigram - r['final_mean']:.3f} |" if unigram else '')
                         + ''.join(f" {ratios(r, b)} |" for b in bases))
        return lines
    both = ['preln', 'preln-espa']
    lines += seed_table('study (1000 steps)', out['study'], both, out['unigram'])
    lines += seed_table('long (3000 steps) against the 1000-step baselines', out['long'], both)
    lines += seed_table('scale 2 (2000 steps)', out['scale2'], both)
    lines += ['', '## muon sweep (muon_lr)', '']
    lines += sweep_list(out['muon_sweep'], out['muon_chosen_lr'])
    lines += seed_table('muon (1000 steps)', out['muon'], both)
    lines += seed_table('long with muon (3000 steps) against the 1000-step muon baselines',
                        out['long_muon'], both)
    steps = [0, 200, 400, 600, 800]
    lines += ['', '## python train.py (800 steps, seed 1337): val loss at step', '',
              '| run | ' + ' | '.join(map(str, steps)) + ' |', '| --- ' * (len(steps) + 1) + '|']
    for label, evs in out['default'].items():
        at = {e[0]: e[1] for e in evs}
        lines.append(f"| {label} | " + ' | '.join(num(at[k]) if k in at else '' for k in steps)
                     + ' |')
    lines += ['', '## ablations (400 steps)', '']
    lines += [f"- {k}: {num(v)}" for k, v in out['ablations'].items()]
    lines += seed_table('beyond the paper (1000 steps)', out['beyond'], ['preln'])
    if out.get('family_sweep'):
        lines += ['', '## family sweep (1000 steps, seed 1337)', '']
        lines += sweep_list(out['family_sweep'], out['family_chosen_lr'])
        lines += seed_table('family (1000 steps)', out['family'], FAMILY_BASES)
    if out.get('muon_rms_sweep'):
        lines += ['', "## muon, adjust_lr_fn='match_rms_adamw' (muon_lr sweep, 1000 steps)", '']
        lines += sweep_list(out['muon_rms_sweep'])
        lines += seed_table("muon, match_rms_adamw (1000 steps)", out['muon_rms'], both)
    for L, rows in out.get('depth', {}).items():
        lines += seed_table(f'depth {L} (width 64, 1000 steps, AdamW)', rows, both)
    if out.get('depth_rates'):
        lines += ['', '## depth 96: the rate swept from the depth-24 one (seed 1337)', '']
        lines += sweep_list(out['depth_rates'], out['depth_chosen_lr'])
    if out.get('dyt_alpha'):
        lines += ['', "## preln-dyt's alpha_0 (1000 steps, seed 1337, x: at every site)", '']
        lines += [f"- {k}: {num(v)}" for k, v in out['dyt_alpha'].items()]
    return '\n'.join(lines) + '\n'

# -----------------------------------------------------------------------------

def sweep_and_seeds(models, stage, start, optimizer, jobs, dry_run):
    """An lr sweep from `start` until interior, the rates it picks into rates.json, then seeds 2
    and 3 at them."""
    lr_sweep(models, start, lambda m, lr: run(stage, m, lr, optimizer=optimizer), jobs, dry_run)
    if not dry_run:
        choose_rates(models, optimizer)
    seeds(models, optimizer, jobs, dry_run)

def run_stage(stage, pick, jobs, dry_run):
    if stage == 'sweep':
        models = pick(STUDY + ['postln'])
        lr_sweep(models, ['3e-4', '1e-3', '3e-3', '1e-2', '3e-2'],
                 lambda m, lr: run('sweep', m, lr), jobs, dry_run)
        if not dry_run:
            choose_rates([m for m in models if m in STUDY], 'adamw')
    elif stage == 'seeds':
        seeds(pick(STUDY), 'adamw', jobs, dry_run)
    elif stage == 'long':
        execute(long_runs(pick(VANILLA), 'adamw'), jobs, dry_run)
    elif stage == 'scale2':
        execute(scale2_runs(pick(SCALE2)), jobs, dry_run)
    elif stage == 'muon':
        sweep_and_seeds(pick(MUON), 'muon', ['1e-2', '3e-2', '1e-1'], 'muon', jobs, dry_run)
    elif stage == 'long-muon':
        execute(long_runs(pick(VANILLA), 'muon'), jobs, dry_run)
    elif stage == 'scale2-muon':
        execute(scale2_muon_runs(pick(['espa'])), jobs, dry_run)
    elif stage == 'default':
        execute(default_runs(), jobs, dry_run)
    elif stage == 'family':
        sweep_and_seeds(pick(FAMILY), 'family', ['1e-3', '3e-3', '1e-2'], 'adamw', jobs, dry_run)
    elif stage == 'muon-rms':
        sweep_and_seeds(pick(MUON_RMS), 'muon-rms', ['3e-3', '1e-2', '3e-2'], 'muon-rms', jobs,
                        dry_run)
    elif stage == 'depth':
        depth(pick(MUON_BOTH), jobs, dry_run)
    elif stage == 'dyt-alpha':
        if 'preln-dyt' not in rates()['adamw']:
            print("# dyt-alpha runs at preln-dyt's chosen rate, which the family stage picks: "
                  "run `python study/study.py family --variants=preln-dyt` first")
            return dry_run or None
        execute(dyt_runs(), jobs, dry_run)
    elif stage == 'ablations':
        execute(ablation_runs() + [r for rs in beyond_runs().values() for r in rs], jobs, dry_run)
    else:
        return False
    return True

def main(argv):
    opts = dict(a[2:].split('=', 1) if '=' in a else (a[2:], '1')
                for a in argv[1:] if a.startswith('--'))
    stages = [a for a in argv[1:] if not a.startswith('--')]
    jobs, dry_run = int(opts.get('jobs', 2)), 'dry_run' in opts
    pick = lambda default: opts['variants'].split(',') if 'variants' in opts else default
    if 'depths' in opts:   # e.g. --depths=12,48: the cheap depths first
        global DEPTHS
        DEPTHS = {L: seeds for L, seeds in DEPTHS.items() if str(L) in opts['depths'].split(',')}
    if not stages or 'help' in opts or '-h' in argv:
        print(__doc__)
        return 0 if stages or 'help' in opts or '-h' in argv else 2
    for stage in stages:
        if stage == 'restore':
            restore()
        elif stage == 'table':
            write_tables(opts.get('results', HERE))
        elif (done := run_stage(stage, pick, jobs, dry_run)) is None:
            return 2
        elif not done:
            import configurator
            hint = configurator.did_you_mean(stage, STAGES)
            print(f"study.py: unknown stage {stage!r}{'; ' + hint if hint else ''} "
                  f"(stages: {', '.join(STAGES)})", file=sys.stderr)
            return 2
    return 0

STAGES = ['sweep', 'seeds', 'long', 'scale2', 'muon', 'long-muon', 'scale2-muon', 'default',
          'ablations', 'family', 'dyt-alpha', 'muon-rms', 'depth', 'table', 'restore']

if __name__ == '__main__':
    sys.exit(main(sys.argv))
