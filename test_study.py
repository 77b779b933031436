"""study/study.py, the CPU study's driver, on a fresh clone: no out/, no data/, no training.
Its stages print their train.py commands with the committed rates, `table` rebuilds the committed
tables from the committed curves, and `restore` gives compare.py runs to read."""
import json
import os
import re
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, 'study'))
import compare  # noqa: E402
import study  # noqa: E402

RUN_STAGES = ['sweep', 'seeds', 'long', 'scale2', 'muon', 'long-muon', 'scale2-muon', 'default',
              'ablations', 'family', 'dyt-alpha', 'muon-rms', 'depth']


@pytest.fixture
def empty_out(tmp_path, monkeypatch):
    out = tmp_path / 'out'
    monkeypatch.setattr(study, 'OUT', str(out))
    return out


def flags(line):
    """{'--model': 'espa', ...} of a printed train.py command (the last of a repeated flag wins)."""
    return dict(re.findall(r'(--\w+)=(\S+)', line))


def dry_run(stage, capsys):
    assert study.main(['study.py', stage, '--dry_run']) == 0
    lines = [line for line in capsys.readouterr().out.splitlines()
             if not line.startswith('# ')]   # '# ...': what waits for an earlier stage
    assert lines and all(line.startswith('train.py ') for line in lines), lines[:3]
    return [flags(line) for line in lines]


def test_dry_run_of_every_stage_prints_the_commands_with_the_rates_of_rates_json(
        empty_out, tmp_path, monkeypatch, capsys):
    """Made-up rates, one per variant: a rate that comes from anywhere but the file shows."""
    committed = study.rates()
    fake = {'adamw': {m: f'{i + 1}e-4' for i, m in enumerate(committed['adamw'])},
            'muon': {m: f'{i + 1}e-2' for i, m in enumerate(committed['muon'])}}
    (tmp_path / 'rates.json').write_text(json.dumps(fake))
    monkeypatch.setattr(study, 'RATES', str(tmp_path / 'rates.json'))
    adamw, muon = fake['adamw'], fake['muon']
    for stage in RUN_STAGES:
        cmds = dry_run(stage, capsys)
        assert all(c['--out_dir'].startswith(os.path.relpath(empty_out, study.ROOT)) for c in cmds)
        if stage in ('seeds', 'long', 'scale2'):
            assert all(c['--learning_rate'] == adamw[c['--model']] for c in cmds), stage
            assert {c['--model'] for c in cmds} == set({'seeds': study.STUDY, 'long': study.VANILLA,
                                                        'scale2': study.SCALE2}[stage])
        if stage in ('long-muon', 'scale2-muon'):
            assert all(c['--muon_lr'] == muon[c['--model']] for c in cmds), stage
        if stage in ('muon', 'long-muon', 'scale2-muon'):
            assert all(c['--optimizer'] == 'muon' and c['--learning_rate'] == adamw[c['--model']]
                       for c in cmds), stage
        if stage == 'muon':   # the start of the sweep, then seeds 2 and 3 at the chosen rates
            swept = {c['--muon_lr'] for c in cmds if c['--seed'] == '1337'}
            assert swept == {'1e-2', '3e-2', '1e-1'}
            assert all(c['--muon_lr'] == muon[c['--model']] for c in cmds if c['--seed'] != '1337')
        if stage == 'ablations':
            ablation = [c for c in cmds if c['--max_iters'] == '400']
            assert len(ablation) == len(study.ABLATIONS)
            assert ablation[0]['--learning_rate'] == adamw['espa']
            own = [c['--learning_rate'] for c in ablation if c['--out_dir'].endswith('lr3e-4')]
            assert own == ['3e-4']   # its own rate, given after the chosen one
        if stage == 'default':
            assert [c.get('--muon_lr') for c in cmds] == ['1e-2', '3e-3', '3e-2', '1e-1', None]
            assert {c['--learning_rate'] for c in cmds} == {'3e-3'}   # train.py's, not the file's
        if stage == 'family':   # every successor from the start of its sweep
            assert {c['--model'] for c in cmds} == set(study.FAMILY)
            assert {c['--learning_rate'] for c in cmds if c['--seed'] == '1337'} == \
                {'1e-3', '3e-3', '1e-2'}
        if stage == 'muon-rms':   # the other lr parametrisation, on every cell
            assert {c['--model'] for c in cmds} == set(study.MUON_RMS)
            assert all(c['--muon_adjust_lr'] == 'match_rms_adamw' for c in cmds)
        if stage == 'depth':   # 1 seed at 12 and 48; at 96 the rate and both neighbours,
            at = lambda m, L: [(c['--learning_rate'], c['--seed']) for c in cmds   # then seeds
                               if c['--model'] == m and c['--n_layer'] == str(L)]
            lr, best = adamw['espa'], study.depth_rate(study.results(), 'espa')
            assert at('espa', 12) == at('espa', 48) == [(lr, '1337')]
            swept = sorted(float(x) for x, s in at('espa', 96) if s == '1337')
            assert len(swept) == 3 and swept[0] < float(lr) < swept[2]
            assert sorted(s for x, s in at('espa', 96) if s != '1337') == ['2', '3']
            assert {x for x, s in at('espa', 96) if s != '1337'} == {best}
        if stage == 'dyt-alpha':   # preln-dyt's rate, every site scaled, and the drop-in
            assert all(c['--learning_rate'] == adamw['preln-dyt'] for c in cmds)
            assert len(cmds) == len(study.DYT_ALPHA) + 1
            assert cmds[-1]['--embed_scale'] == 'False'
    assert not empty_out.exists()   # a dry run writes nothing


def test_dry_run_as_a_script_on_a_fresh_clone(tmp_path):
    env = {**os.environ, 'STUDY_OUT': str(tmp_path / 'out')}
    p = subprocess.run([sys.executable, 'study/study.py', 'long-muon', '--dry_run'], cwd=HERE,
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    muon = study.rates()['muon']
    cmds = [flags(line) for line in p.stdout.splitlines()]
    assert len(cmds) == 9 and all(c['--muon_lr'] == muon[c['--model']] for c in cmds)
    assert p.stdout.startswith('train.py study/common.py --model=vskipinit')


def test_rates_json_is_what_the_committed_results_pick(empty_out):
    res, committed = study.results(), study.rates()
    assert {m: study.pick_rate(res, m) for m in study.STUDY + study.FAMILY} == committed['adamw']
    assert {m: study.pick_rate(res, m, 'muon') for m in study.MUON} == committed['muon']
    assert {m: study.pick_rate(res, m, 'muon-rms') for m in study.MUON_RMS} == \
        committed['muon-rms']
    # sas-p-nonorm's best sweep rate, 3e-3, diverged in seed 3: the rule moved it down too
    assert committed['adamw']['sas-p-nonorm'] == '1e-3'
    # espa-skip's best sweep rate, 1e-2, diverged in seeds 2 and 3: the rule moved it down
    sweep = study.sweep_table(res, 'sweep', ['espa-skip'])['espa-skip']
    assert sweep['1e-2'] < sweep['3e-3'] and sweep['3e-2'] == 'diverged'
    assert committed['adamw']['espa-skip'] == '3e-3'


def test_table_rebuilds_the_committed_tables_from_the_committed_curves(empty_out, tmp_path,
                                                                        monkeypatch):
    kernels = {}
    monkeypatch.setattr(compare, 'plot_kernels', lambda configs, path: kernels.update(configs))
    dest = tmp_path / 'tables'
    assert study.main(['study.py', 'table', f'--results={dest}']) == 0
    for name in ('study_tables.md', 'study.json', 'study_curves.json'):
        with open(os.path.join(study.HERE, name)) as f:
            assert (dest / name).read_text() == f.read(), name
    assert {p.name for p in dest.glob('*.png')} == {
        'loss_curves.png', 'loss_curves_long.png', 'loss_curves_scale2.png', 'loss_curves_muon.png',
        'loss_curves_long_muon.png', 'loss_curves_default.png', 'loss_curves_family.png',
        'loss_vs_depth.png'}
    tables = (dest / 'study_tables.md').read_text()
    assert '| espa-skip (cut off at step 1400 of 2000) | 1 |' in tables
    assert '| softmax-skip (cut off at step 1000 of 2000) | 1 |' in tables
    assert list(kernels) == study.STUDY
    shapes = {(c.n_layer, c.n_embd, c.n_head, c.block_size) for c in kernels.values()}
    assert shapes == {(24, 64, 4, 64)}


def test_restore_rebuilds_every_run_for_compare_and_the_stages(empty_out, capsys):
    assert study.main(['study.py', 'restore']) == 0
    res = study.results()
    assert len(capsys.readouterr().out.splitlines()) == len(res['curves'])
    diverged = empty_out.glob('*/*/DIVERGED')
    assert sorted(str(p.parent.relative_to(empty_out)) for p in diverged) == res['diverged']
    # the 400-step ablations, one of them diverged, read back as compare.py reads any run
    ablations = {r['name'].split('/')[1]: r for r in study.ablation_runs()}
    assert all(study.state(r) == ('diverged' if name == 'espa-global-lr' else 'done')
               for name, r in ablations.items())
    runs = [ablations['espa']['dir'], ablations['vanilla-recipe']['dir']]
    assert compare.main([*runs, '--baseline=espa', '--plots=' + str(empty_out / 'plots')]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[3:]}
    assert rows['espa'][2] == '2.9282' and rows['vanilla-recipe'][2] == '3.4370'   # study.json's
    assert rows['vanilla-recipe'][4:] == ['not', 'in', '400', 'never']
    # every finished run counts as done; the two cut-off scale-2 runs start again from step 0
    for stage in ('seeds', 'long', 'muon', 'long-muon', 'default', 'ablations'):
        assert study.main(['study.py', stage, '--dry_run']) == 0
        assert capsys.readouterr().out == '', stage
    assert study.main(['study.py', 'scale2', '--dry_run']) == 0
    cmds = capsys.readouterr().out.splitlines()
    assert [flags(c)['--model'] for c in cmds] == ['espa-skip', 'softmax-skip']
    assert all(c.endswith('--overwrite=True') for c in cmds)


def test_a_run_here_lies_over_the_committed_curve(empty_out):
    run = study.scale2_runs(['softmax-skip'])[0]
    res = study.results()
    assert study.status(res, run) == 'cut off'
    os.makedirs(run['dir'])
    with open(os.path.join(run['dir'], 'log.jsonl'), 'w') as f:
        for it in range(0, 2001, 100):
            f.write(json.dumps(dict(kind='eval', iter=it, val_loss=3.0 - it / 1000)) + '\n')
    res = study.results()
    assert study.status(res, run) == 'done' and study.final_loss(res, run) == 1.0
    open(os.path.join(run['dir'], 'DIVERGED'), 'w').close()
    assert study.status(study.results(), run) == 'diverged'


def test_unknown_stage_says_what_there_is(capsys):
    assert study.main(['study.py', 'seeed']) == 2
    err = capsys.readouterr().err
    assert "unknown stage 'seeed'; did you mean 'seeds'" in err and 'scale2-muon' in err
