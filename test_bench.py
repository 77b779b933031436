"""Tests of bench.py (CPU, tiny models) and of what torch.compile needs: no graph breaks in any
preset's forward, and compiled forward + backward equal to eager. Never timings: those are
bench.py's output, not something a shared test machine can assert.

The compile tests pay inductor's first C++ build the first time (tens of seconds); later runs hit
the on-disk cache in /tmp/torchinductor_$USER."""

import copy
import json
import os
import statistics
import subprocess
import sys

import pytest
import torch
import torch._dynamo

import bench
import model
from model import GPT, PRESETS, config_for
from optim import configure_optimizers

HERE = os.path.dirname(os.path.abspath(__file__))
# 'tat' presets need n_layer >= 4 for the default eta; 2 heads of 16 channels
SMALL = dict(n_layer=4, n_embd=32, n_head=2, block_size=32)
TINY = ['--n_layer=4', '--n_embd=32', '--n_head=2', '--block_size=32', '--batch_size=2',
        '--device=cpu']
REQUIRED = ('train_tokens_per_s', 'fwd_tokens_per_s', 'ratio_to_preln', 'fwd_ratio_to_preln',
            'ratio_to_ref', 'fwd_ratio_to_ref', 'ratio_to_ref_q', 'fwd_ratio_to_ref_q',
            'peak_mem_mb', 'mfu', 'params')
# He & Hofmann's blocks, shaped attention and DyT: compiled like the paper's presets
FAMILY = ['shaped', 'sas', 'sas-p', 'prermsnorm-relu', 'preln-dyt']


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
    rc = bench.main(TINY + ['--models=espa,vskipinit', '--steps=3', '--warmup=1',
                            '--peak_flops=1e12', '--mem_scaling=True', f'--json={out}'])
    assert rc == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    # preln added first (the baseline of the ratios), the torch reference last, both always
    assert list(res) == ['preln', 'espa', 'vskipinit', bench.REF]
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
    ref, p = res[bench.REF], res['preln']
    assert ref['ratio_to_ref'] == 1.0 and ref['fwd_ratio_to_ref'] == 1.0
    assert ref['ratio_to_preln'] > 0
    for r in res.values():
        assert r['ratio_to_ref'] > 0 and r['fwd_ratio_to_ref'] > 0
        assert r['ratio_to_ref_q'][0] <= r['ratio_to_ref'] <= r['ratio_to_ref_q'][1]
        assert r['fwd_ratio_to_ref_q'][0] <= r['fwd_ratio_to_ref'] <= r['fwd_ratio_to_ref_q'][1]
    # the paired ratio is the median over rounds of the reference's time / preln's in the same round
    paired = statistics.median(a / b for a, b in zip(ref['train_ms_all'], p['train_ms_all']))
    assert p['ratio_to_ref'] == pytest.approx(paired, rel=1e-3)
    assert p['params'] == ref['params'] and p['flops_per_token'] == ref['flops_per_token']
    assert 'nn.MultiheadAttention' in ref['attention']
    assert (f"preln vs torch nn.TransformerEncoderLayer(norm_first=True): train "
            f"{p['ratio_to_ref']:.3f}") in printed
    assert f"forward {p['fwd_ratio_to_ref']:.3f}" in printed and 'load average' in printed
    # the measurement itself: preln's activations are exactly linear in T (SDPA saves no T x T)
    assert res['preln']['mem_scaling']['act_growth'] == pytest.approx(2.0, abs=0.02)
    assert abs(res['preln']['mem_scaling']['tt_per_layer']) < 0.05


def denormal_product():
    """1e-30 * 1e-10 in float32: 1e-40 is a denormal, and 0 where denormals are flushed."""
    return (torch.tensor([1e-30]) * torch.tensor([1e-10])).item()


def test_denormals_are_flushed_on_cpu_and_the_run_says_so(tmp_path, capsys):
    supported = torch.set_flush_denormal(False)   # True where this CPU can flush them
    assert denormal_product() > 0
    out = tmp_path / 'bench.json'
    try:
        assert bench.main(TINY + ['--models=espa', '--steps=1', '--warmup=0', f'--json={out}']) == 0
        assert (denormal_product() == 0) == supported
    finally:
        torch.set_flush_denormal(False)
    assert ('cpu float32, denormals flushed' in capsys.readouterr().out) == supported
    assert json.loads(out.read_text())['espa']['settings']['denormals_flushed'] == supported


def test_unknown_preset_exits_2_suggests_and_lists_the_valid_ones():
    p = subprocess.run([sys.executable, os.path.join(HERE, 'bench.py'), '--models=preln,espax'],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert p.returncode == 2, p.stderr
    assert "'espax'" in p.stderr and "did you mean 'espa'" in p.stderr
    for name in PRESETS:
        assert name in p.stderr
    assert p.stdout == ''


@pytest.mark.parametrize('arg, words', [
    ('--dtype=float16', 'dtype'), ('--device=tpu', 'device'), ('--steps=-1', 'steps'),
    ('--steps=0', 'nothing to do'), ('--n_embd=30', 'divisible'), ('--bogus=1', 'bogus'),
    ('--models=', 'empty'), ('--peak_flops=0', 'peak_flops'), ('--compile=yes', 'bool'),
    ('--dtype=float16', 'loss scaler'), ('--dtype=float64', 'dtype'),
])
def test_bad_flags_exit_2(arg, words, capsys):
    assert bench.main(['--device=cpu', arg]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error:') and words in err


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a GPU')
def test_cuda_without_gpu_exits_2(capsys):
    assert bench.main(['--device=cuda']) == 2
    assert 'no CUDA GPU' in capsys.readouterr().err


def test_reference_can_be_named_and_is_always_last():
    cfg, names, device, dtype, _ = bench.parse(['--device=cpu',
                                                f'--models={bench.REF},espa,preln,espa'])
    assert names == ['espa', 'preln', bench.REF] and device.type == 'cpu' and dtype == 'float32'
    assert bench.parse(['--device=cpu', f'--models={bench.REF}'])[1] == ['preln', bench.REF]


def reference_and_preln(**sizes):
    """A TorchReference and a preln GPT of the same sizes, the GPT carrying the reference's
    weights."""
    torch.manual_seed(0)
    config = config_for('preln', **sizes)
    ref = bench.TorchReference(config)
    # off the init (LayerNorm weights 1, tiny output projections), so nothing is trivially equal
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    gpt = GPT(config)
    mine = {'wte.weight': 'wte.weight', 'wpe.weight': 'wpe.weight',
            'ln_f.weight': 'encoder.norm.weight'}
    for l in range(config.n_layer):
        for a, b in (('ln_1', 'norm1'), ('attn.c_attn', 'self_attn.in_proj'),
                     ('attn.c_proj', 'self_attn.out_proj'), ('ln_2', 'norm2'),
                     ('mlp.c_fc', 'linear1'), ('mlp.c_proj', 'linear2')):
            b = b + '_weight' if b.endswith('in_proj') else b + '.weight'
            mine[f'h.{l}.{a}.weight'] = f'encoder.layers.{l}.{b}'
    theirs = dict(ref.named_parameters())
    state = {k: theirs[v].detach().clone() for k, v in mine.items()}
    tied = {'lm_head.weight': state['wte.weight']}   # tied in both
    gpt.load_state_dict(dict(state, **tied), strict=True)
    return ref, gpt, mine


def test_reference_has_prelns_parameters_and_computes_the_same_function():
    """At bias=False nothing legitimately differs: every preln parameter has a reference parameter
    of the same shape (only the names differ; c_attn packs q, k, v in in_proj_weight's order) and
    the tied readout is counted once in both. Loaded with the same weights, the two give the same
    logits and loss: same architecture, GELU, LayerNorm eps, attention scale and causal mask."""
    ref, gpt, mine = reference_and_preln(**SMALL)
    assert ref.num_params() == gpt.num_params()
    assert ref.flops_per_token(32) == gpt.flops_per_token(32)
    shapes = {n: p.shape for n, p in ref.named_parameters()}
    assert sorted(mine.values()) == sorted(shapes)              # one to one: no extra, none missing
    assert all(dict(gpt.named_parameters())[k].shape == shapes[v] for k, v in mine.items())
    assert ref.lm_head.weight is ref.wte.weight
    idx, targets = torch.randint(0, 256, (2, 32)), torch.randint(0, 256, (2, 32))
    logits_r, loss_r = ref(idx, targets)
    logits_g, loss_g = gpt(idx, targets)
    torch.testing.assert_close(logits_r, logits_g, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss_r, loss_g)
    # and the same optimizer work: AdamW over the same groups (decay: matrices and embeddings)
    sizes = lambda opts: [(g['weight_decay'], sorted(p.numel() for p in g['params']))
                          for o in opts for g in o.param_groups]
    args = (0.1, 1e-4, (0.9, 0.95), 'cpu')
    assert sizes(ref.configure_optimizers(*args)) == sizes(configure_optimizers(gpt, *args))


@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_reference_is_causal(mode):
    """Changing the tokens from position t on leaves the logits before t exactly as they were, and
    changes those from t on; and the is_causal=True hint gives what the explicit -inf mask gives."""
    ref, _, _ = reference_and_preln(**SMALL)
    ref.train(mode == 'train')
    idx = torch.randint(0, 256, (2, 32))
    with torch.set_grad_enabled(mode == 'train'):
        before, _ = ref(idx, idx)
        for t in (1, 9, 31):
            changed = idx.clone()
            shift = 1 + torch.randint(0, 255, changed[:, t:].shape)
            changed[:, t:] = (changed[:, t:] + shift) % 256
            after, _ = ref(changed, changed)
            assert torch.equal(after[:, :t], before[:, :t]), f"position < {t} sees a later token"
            assert (after[:, t] - before[:, t]).abs().max() > 1e-3
        x = ref.wte(idx) + ref.wpe(torch.arange(32))
        mask = torch.nn.Transformer.generate_square_subsequent_mask(32)
        explicit = ref.encoder(x, mask=mask, is_causal=False)
        torch.testing.assert_close(ref.lm_head(explicit), before, rtol=1e-5, atol=1e-5)
        unmasked = ref.lm_head(ref.encoder(x))
        assert (unmasked[:, :-1] - before[:, :-1]).abs().max() > 1e-3   # the test can see a leak


def test_reference_no_graph_breaks():
    torch.manual_seed(0)
    m = bench.TorchReference(config_for('preln', **SMALL))
    idx = torch.randint(0, 256, (2, 32))
    out, where = explain(m, idx, idx)
    # is_causal=True is what keeps it whole: with the mask alone, the encoder's
    # _detect_is_causal_mask calls .item() on a T x T comparison, which dynamo cannot trace
    assert out.graph_break_count == 0 and not out.break_reasons, f"torch-ref:\n{where}"
    assert out.graph_count == 1, f"torch-ref:\n{where}"


def explain(m, *args):
    out = torch._dynamo.explain(m)(*args)
    where = '\n'.join(f"{r.reason}\n" + ''.join(f"    {f}\n" for f in r.user_stack)
                      for r in out.break_reasons)
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
    assert out.graph_break_count == 0, \
        f"espa (flex): {out.graph_break_count} graph breaks:\n{where}"


@pytest.mark.parametrize('name', ['preln', 'espa'] + FAMILY)
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
    # a scalar gain's gradient sums every activation it scales, with cancellation: float32 order
    # of summation moves it by ~1e-8 whatever its own size, hence the absolute floor
    for (n, pe), pc in zip(eager.named_parameters(), twin.parameters()):
        torch.testing.assert_close(pc.grad, pe.grad, rtol=1e-4,
                                   atol=1e-5 * pe.grad.abs().max().item() + 1e-7,
                                   msg=lambda m, n=n: f"{name} grad of {n}: {m}")
