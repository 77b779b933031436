"""Tests of bench.py (CPU, tiny models) and of issue 5's torch.compile requirements: no graph breaks
in any preset's forward, and compiled forward + backward equal to eager. Never timings: those are
bench.py's output, not something a shared test machine can assert.

The compile test pays inductor's first C++ build (about 40 s on a loaded 2-core machine the first
time; later runs hit the on-disk cache in /tmp/torchinductor_$USER and take a few seconds)."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
import torch._dynamo

import bench
import model
from model import GPT, PRESETS, config_for

HERE = os.path.dirname(os.path.abspath(__file__))
# 'tat' presets need n_layer >= 4 for the default eta; 2 heads of 16 channels
SMALL = dict(n_layer=4, n_embd=32, n_head=2, block_size=32)
TINY = ['--n_layer=4', '--n_embd=32', '--n_head=2', '--block_size=32', '--batch_size=2', '--device=cpu']
REQUIRED = ('train_tokens_per_s', 'fwd_tokens_per_s', 'ratio_to_preln', 'peak_mem_mb', 'mfu')


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """Tiny models on a shared 2-core machine: with 2 threads, OpenMP's spinning threads fight the
    other jobs and a 32 x 32 QR or a 32-wide backward gets tens of times slower, not faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_bench_writes_json(tmp_path, capsys):
    out = tmp_path / 'bench.json'
    rc = bench.main(TINY + ['--models=espa,vskipinit', '--steps=3', '--warmup=1', '--peak_flops=1e12',
                            '--mem_scaling=True', f'--json={out}'])
    assert rc == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert list(res) == ['preln', 'espa', 'vskipinit']          # preln added first: the baseline of the ratios
    for name, r in res.items():
        assert name in printed
        for key in REQUIRED:
            assert key in r, (name, key)
        assert r['train_tokens_per_s'] > 0 and r['fwd_tokens_per_s'] > 0
        assert r['ratio_to_preln'] > 0 and r['peak_mem_mb'] > r['act_mem_mb'] > 0
        assert r['peak_mem_mb'] >= r['state_mem_mb'] > 0
        assert len(r['train_ms_all']) == 3
        # MFU from the given peak and the model's own FLOP count
        assert r['mfu'] == pytest.approx(r['flops_per_token'] * r['train_tokens_per_s'] / 1e12)
        assert r['settings']['n_layer'] == 4 and r['settings']['dtype'] == 'float32'
        assert r['machine']['torch'] == torch.__version__ and r['machine']['cpu_count'] >= 1
        s = r['mem_scaling']
        assert s['T'] == 32 and s['act_mb_2T'] > s['act_mb_T'] > 0
    assert res['preln']['ratio_to_preln'] == 1.0 and res['preln']['fwd_ratio_to_preln'] == 1.0
    # the measurement itself: preln's activations are exactly linear in T (SDPA saves no T x T tensor)
    assert res['preln']['mem_scaling']['act_growth'] == pytest.approx(2.0, abs=0.02)
    assert abs(res['preln']['mem_scaling']['tt_per_layer']) < 0.05


def test_unknown_preset_exits_2_and_lists_the_valid_ones():
    p = subprocess.run([sys.executable, os.path.join(HERE, 'bench.py'), '--models=preln,espax'],
                       capture_output=True, text=True, timeout=120, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert p.returncode == 2, p.stderr
    assert "'espax'" in p.stderr
    for name in PRESETS:
        assert name in p.stderr
    assert p.stdout == ''


@pytest.mark.parametrize('arg, words', [
    ('--dtype=float16', 'dtype'), ('--device=tpu', 'device'), ('--steps=-1', 'steps'), ('--steps=0', 'nothing to do'),
    ('--n_embd=30', 'divisible'), ('--bogus=1', 'bogus'), ('--models=', 'empty'), ('--peak_flops=0', 'peak_flops'),
    ('--compile=yes', 'bool'),
])
def test_bad_flags_exit_2(arg, words, capsys):
    assert bench.main(['--device=cpu', arg]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error:') and words in err


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a GPU')
def test_cuda_without_gpu_exits_2(capsys):
    assert bench.main(['--device=cuda']) == 2
    assert 'no CUDA GPU' in capsys.readouterr().err


def explain(m, *args):
    out = torch._dynamo.explain(m)(*args)
    where = '\n'.join(f"{r.reason}\n" + ''.join(f"    {f}\n" for f in r.user_stack) for r in out.break_reasons)
    return out, where


@pytest.mark.parametrize('name', list(PRESETS))
def test_no_graph_breaks(name):
    torch.manual_seed(0)
    m = GPT(config_for(name, **SMALL))
    idx = torch.randint(0, 256, (2, 32))
    out, where = explain(m, idx, idx)
    assert out.graph_break_count == 0, f"{name}: {out.graph_break_count} graph breaks:\n{where}"


@pytest.mark.skipif(model.flex_attention is None, reason='no FlexAttention in this torch')
def test_no_graph_breaks_flex_path(monkeypatch):
    """The GPU path (FlexAttention score_mod + block mask), traced on CPU; no_grad because
    FlexAttention has no CPU backward."""
    monkeypatch.setattr(model.Attention, 'impl', 'flex')
    torch.manual_seed(0)
    m = GPT(config_for('espa', **SMALL))
    idx = torch.randint(0, 256, (2, 32))
    with torch.no_grad():
        out, where = explain(m, idx, idx)
    assert out.graph_break_count == 0, f"espa (flex): {out.graph_break_count} graph breaks:\n{where}"


@pytest.mark.parametrize('name', ['preln', 'espa'])
def test_compiled_matches_eager(name):
    torch.manual_seed(0)
    eager = GPT(config_for(name, **SMALL))
    with torch.no_grad():
        # leave the init: the SPA one has W_Q = 0 and a zero readout, so every body gradient is
        # exactly 0 there and the comparison would prove nothing
        for p in eager.parameters():
            p.add_(0.05 * torch.randn_like(p))
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin)
    idx, targets = torch.randint(0, 256, (2, 32)), torch.randint(0, 256, (2, 32))
    logits_e, loss_e = eager(idx, targets)
    loss_e.backward()
    logits_c, loss_c = compiled(idx, targets)
    loss_c.backward()
    torch.testing.assert_close(logits_c, logits_e, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    body = [p.grad.abs().max().item() for n, p in eager.named_parameters() if n.startswith('h.')]
    assert max(body) > 1e-4, "the body gets no gradient: the test would compare zeros"
    for (n, pe), pc in zip(eager.named_parameters(), twin.parameters()):
        torch.testing.assert_close(pc.grad, pe.grad, rtol=1e-4, atol=1e-5 * pe.grad.abs().max().item() + 1e-8,
                                   msg=lambda m, n=n: f"{name} grad of {n}: {m}")
