"""study/compare.py turns runs' log.jsonl into the study table."""
import builtins
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'study'))
import compare  # noqa: E402


def _write_run(tmp_path, name, curve):
    run = tmp_path / name
    run.mkdir()
    with open(run / 'log.jsonl', 'w') as f:
        f.write(json.dumps(dict(kind='diag', iter=0, corr=[0.1, 0.9])) + '\n')   # not an eval
        for it, val in curve:
            f.write(json.dumps(dict(kind='eval', iter=it, train_loss=val + 0.01, val_loss=val,
                                    lr=1e-3, tokens=it * 100, elapsed_s=it / 10)) + '\n')
    return str(run)


def test_table_counts_steps_to_the_baseline_loss(tmp_path, capsys):
    preln = _write_run(tmp_path, 'preln', [(0, 5.5), (100, 3.0), (200, 2.5)])
    espa = _write_run(tmp_path, 'espa', [(0, 5.5), (100, 3.2), (200, 2.8), (300, 2.6), (400, 2.5),
                                         (500, 2.4)])
    slow = _write_run(tmp_path, 'vanilla', [(0, 5.5), (250, 3.2)])
    later = _write_run(tmp_path, 'uspa', [(0, 5.5), (250, 2.9)])   # preln's step-100 loss at 250
    out_json = tmp_path / 'table.json'
    assert compare.main([preln, espa, slow, later, '--unigram=3.23', f'--json={out_json}']) == 0
    text = capsys.readouterr().out
    rows = {r['run']: r for r in json.loads(out_json.read_text())['rows']}
    assert rows['espa']['steps_to_baseline'] == 400
    assert rows['espa']['ratio'] == 2.0   # 2.5 at 400 vs 200
    assert rows['espa']['baseline_step'] == 200
    assert rows['espa']['best_val'] == 2.4 and rows['espa']['final_val'] == 2.4
    assert rows['preln']['ratio'] == 1.0
    assert rows['vanilla']['steps_to_baseline'] is None and 'not in 250' in text
    assert rows['vanilla']['ratio'] is None and 'never' in text
    assert rows['uspa']['ratio'] == 2.5 and rows['uspa']['baseline_step'] == 100
    assert abs(rows['vanilla']['below_unigram'] - 0.03) < 1e-9
    assert 'espa' in text and '2.00' in text


def test_errors_and_missing_matplotlib(tmp_path, capsys, monkeypatch):
    espa = _write_run(tmp_path, 'espa', [(0, 5.5), (100, 3.0)])
    assert compare.main([espa, '--baseline=preln']) == 2     # a baseline asked for must be there
    assert "baseline 'preln' is not among espa" in capsys.readouterr().err
    assert compare.main([str(tmp_path / 'missing')]) == 2
    (tmp_path / 'bad').mkdir()
    (tmp_path / 'bad' / 'log.jsonl').write_text('{"kind": "eval", "iter": 0, "val_lo')
    assert compare.main([str(tmp_path / 'bad'), '--baseline=bad']) == 2
    assert 'not JSON' in capsys.readouterr().err
    real_import = builtins.__import__
    monkeypatch.setattr(builtins, '__import__', lambda name, *a, **k:
                        (_ for _ in ()).throw(ImportError(name)) if name.startswith('matplotlib')
                        else real_import(name, *a, **k))
    assert compare.main([espa, '--baseline=espa', f'--plots={tmp_path}']) == 0
    assert 'pip install matplotlib' in capsys.readouterr().out


def test_one_run_without_a_baseline(tmp_path, capsys):
    """`python study/compare.py out` after a plain `python train.py`: one run, no preln beside it.
    Its table has no baseline columns, and its curve lands in its own folder."""
    import pytest
    pytest.importorskip('matplotlib')
    out = _write_run(tmp_path, 'out', [(0, 5.5), (100, 3.0), (200, 2.75)])
    out_json = tmp_path / 't.json'
    assert compare.main([out, f'--json={out_json}']) == 0
    text = capsys.readouterr().out
    assert 'baseline' not in text and 'steps ratio' not in text
    assert text.splitlines()[2].split() == ['out', '200', '2.7500', '2.7500']
    table = json.loads(out_json.read_text())
    assert table['baseline'] is None and 'ratio' not in table['rows'][0]
    assert os.path.isfile(os.path.join(out, 'loss_curves.png')) and f"wrote {out}" in text


def test_unigram_loss_of_a_known_distribution():
    import math
    assert abs(compare.unigram_loss([0, 1, 0, 1], 4) - math.log(2)) < 1e-12
    assert abs(compare.unigram_loss([0, 1, 0, 1], 2, eval_tokens=[0, 0]) - math.log(2)) < 1e-12
    assert compare.unigram_loss([0, 0, 0, 1], 2, eval_tokens=[1]) > math.log(2)


def test_seed_groups_mean_range_and_ratios_against_the_same_seed(tmp_path, capsys):
    """Each seed of a variant is compared with the baseline run of that seed; the table gives the
    mean and range of the final loss and every seed's ratio."""
    runs = [_write_run(tmp_path, 'preln_lr1e-2_s1', [(0, 5.5), (100, 3.0), (200, 2.6)]),
            _write_run(tmp_path, 'preln_lr1e-2_s2', [(0, 5.5), (100, 3.1), (200, 2.8)]),
            _write_run(tmp_path, 'espa_lr3e-3_s1_3000', [(0, 5.5), (200, 3.0), (400, 2.7),
                                                         (600, 2.6)]),
            _write_run(tmp_path, 'espa_lr3e-3_s2_3000', [(0, 5.5), (200, 3.0), (400, 2.8),
                                                         (600, 2.7)])]
    out_json = tmp_path / 't.json'
    assert compare.main([*runs, '--seeds', '--baseline=preln_lr1e-2', f'--json={out_json}']) == 0
    rows = {r['run']: r for r in json.loads(out_json.read_text())['rows']}
    espa = rows['espa_lr3e-3']
    assert espa['seeds'] == [1, 2] and abs(espa['final_mean'] - 2.65) < 1e-12
    assert (espa['final_min'], espa['final_max']) == (2.6, 2.7)
    per_seed = espa['ratios']['preln_lr1e-2']
    # 2.6 at 600 vs 200; seed 2 against its own seed's 2.8
    assert per_seed['1'] == dict(ratio=3.0, at=200, steps_to_final=600, base_final=2.6)
    assert per_seed['2'] == dict(ratio=2.0, at=200, steps_to_final=400, base_final=2.8)
    assert rows['preln_lr1e-2']['ratios']['preln_lr1e-2']['1']['ratio'] == 1.0
    assert '3.00@200, 2.00@200' in capsys.readouterr().out
    bad = _write_run(tmp_path, 'no_seed_here', [(0, 5.5)])
    assert compare.main([*runs, bad, '--seeds', '--baseline=preln_lr1e-2']) == 2
    assert 'NAME_sSEED' in capsys.readouterr().err


def test_band_plot_draws_the_mean_and_the_range_of_the_seeds(tmp_path, monkeypatch):
    import pytest
    pytest.importorskip('matplotlib')
    import matplotlib.pyplot as plt
    figures = []
    monkeypatch.setattr(plt, 'close', figures.append)   # keep the figure to look at what it drew
    seeds = {1: [(0, 5.0, None), (10, 4.0, None), (20, 3.5, None)],
             2: [(0, 5.0, None), (10, 3.0, None)],      # stopped early: only shared steps count
             3: [(0, 5.0, None), (10, 3.5, None), (20, 3.0, None)]}
    assert compare.bands(seeds) == ([0, 10], [5.0, 3.5], [5.0, 3.0], [5.0, 4.0])
    path = compare.plot_bands({'a': seeds, 'b': {1: seeds[1]}}, str(tmp_path / 'p' / 'bands.png'))
    assert open(path, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
    ax = figures[0].axes[0]
    assert [list(line.get_ydata()) for line in ax.lines] == [[5.0, 3.5], [5.0, 4.0, 3.5]]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ['a (3 seeds)', 'b (1 seeds)']
    band = ax.collections[0].get_paths()[0].vertices    # one band: 'b' has a single seed
    assert len(ax.collections) == 1
    assert (band[:, 1].min(), band[:, 1].max()) == (3.0, 5.0)
    at_10 = band[band[:, 0] == 10][:, 1]
    assert min(at_10) == 3.0 and max(at_10) == 4.0
