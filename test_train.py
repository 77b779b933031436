"""End-to-end tests of train.py and sample.py on tiny models (CPU only, a few seconds each).

Most tests run train.py as a real subprocess, as a user would; a few run train.main in-process
where they patch a library call (a disk that fills up). Every run uses OMP_NUM_THREADS=1: on a
small shared machine, multi-threaded kernels on a 32-wide model are slower, not faster."""

import hashlib
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import train
from prepare import prepare

HERE = os.path.dirname(os.path.abspath(__file__))
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
ENV.pop('TRAIN_TEST_SAVE_DELAY', None)
TINY = ['--n_layer=4', '--n_embd=32', '--n_head=4', '--block_size=32', '--batch_size=4',
        '--eval_iters=2', '--sample_tokens=0', '--warmup_iters=2', '--log_interval=1']


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp('data')
    prepare('pydocs', data_dir=str(d), quiet=True)
    return str(d)


def run(args, data_dir, script='train.py', timeout=240, env=None, nproc=None):
    cmd = [sys.executable, os.path.join(HERE, script)]
    if nproc:
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone',
               f'--nproc_per_node={nproc}',
               os.path.join(HERE, script)]
    if script == 'train.py':
        args = [f'--data_dir={data_dir}', *args]
    r = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout,
                       env=env or ENV, cwd=HERE)
    return r


def tiny_run(out, data_dir, *extra, expect=0, **kw):
    r = run([f'--out_dir={out}', *TINY, *extra], data_dir, **kw)
    assert r.returncode == expect, \
        f"exit {r.returncode}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    return r


def read_log(out, kind='eval'):
    with open(os.path.join(out, 'log.jsonl')) as f:
        return [r for r in map(json.loads, f) if r.get('kind') == kind]


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def digest(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def assert_same_state(a, b):
    """Bit-identical model weights and optimizer state."""
    assert a.keys() == b.keys()
    for k in a['model']:
        assert torch.equal(a['model'][k], b['model'][k]), k
    assert len(a['optimizer']) == len(b['optimizer'])
    for oa, ob in zip(a['optimizer'], b['optimizer']):
        sa, sb = oa['state'], ob['state']
        assert sa.keys() == sb.keys()
        for i in sa:
            for k in sa[i]:
                assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), (i, k)


def losses(out):
    return [(r['iter'], r['train_loss'], r['val_loss'], r['lr'], r['tokens'])
            for r in read_log(out)]


# -----------------------------------------------------------------------------
# units

def test_lr_schedule():
    c = dict(learning_rate=1.0, warmup_iters=10, lr_decay_iters=100, min_lr=0.1)
    lr = [train.get_lr(i, c) for i in range(120)]
    assert lr[0] == pytest.approx(1 / 11) and lr[9] == pytest.approx(10 / 11)
    assert lr[10] == pytest.approx(1.0) and lr[100] == pytest.approx(0.1) and lr[119] == 0.1
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))  # monotone decay after warmup
    assert lr[55] == pytest.approx(0.55)                   # cosine midpoint


# -----------------------------------------------------------------------------
# one tiny run per preset family: loss falls, log, checkpoints, sample.py reads them

@pytest.mark.parametrize('preset', ['preln', 'espa', 'espa-skip'])
def test_end_to_end(preset, data_dir, tmp_path):
    out = str(tmp_path / 'out')
    if preset == 'espa':  # the default dataset is prepared on first use
        data_dir = str(tmp_path / 'fresh_data')
    r = tiny_run(out, data_dir, f'--model={preset}', '--max_iters=30', '--eval_interval=10',
                 '--diag_interval=15', '--keep_last=2', '--peak_flops=1e12', '--sample_tokens=20')
    evals = read_log(out)
    assert [e['iter'] for e in evals] == [0, 10, 20, 30]
    for e in evals:
        assert {'iter', 'train_loss', 'val_loss', 'lr', 'tokens', 'elapsed_s'} <= set(e)
    assert evals[-1]['tokens'] == 30 * 4 * 32
    assert evals[-1]['val_loss'] < evals[0]['val_loss'] - 0.5, evals  # it learns (5.5 -> ~3.5 nats)
    assert evals[-1]['train_loss'] < evals[0]['train_loss'] - 0.5
    diags = read_log(out, 'diag')
    assert [d['iter'] for d in diags] == [0, 15, 30] and len(diags[0]['corr']) == 4 + 1
    assert 'mfu' in r.stdout and '---------- sample' in r.stdout
    assert ("preparing the default dataset 'pydocs'" in r.stdout) == (preset == 'espa')
    assert sorted(os.listdir(out)) == ['ckpt.pt', 'ckpt_best.pt', 'ckpt_step0000020.pt',
                                       'ckpt_step0000030.pt', 'log.jsonl']
    ck = load(os.path.join(out, 'ckpt.pt'))  # weights_only: tensors and plain Python only
    assert ck['run']['iter_num'] == 30 and ck['config']['model'] == preset
    assert ck['model_args']['n_layer'] == 4 and ck['model_args']['vocab_size'] == 256
    assert not any(k.startswith(('_orig_mod.', 'module.')) for k in ck['model'])
    assert {'optimizer', 'rng', 'run', 'meta'} <= set(ck) and ck['version'] == 2
    assert ck['run']['best_val_loss'] == min(e['val_loss'] for e in evals[1:])
    s = run([f'--out_dir={out}', '--num_samples=2', '--max_new_tokens=30', '--start=def '],
            data_dir, 'sample.py')
    assert s.returncode == 0, s.stderr
    assert s.stdout.count('def ') >= 2 and s.stdout.count('---------------') == 2


# -----------------------------------------------------------------------------
# exact resume: N steps == N/2 steps + resume N/2 (weights, optimizer, logged losses)

RESUME = ['--optimizer=adamw', '--eval_interval=5', '--diag_interval=5',
          '--lr_decay_iters=20', '--dropout=0.1', '--gradient_accumulation_steps=2']


@pytest.mark.parametrize('preset', ['espa', 'sas'])
def test_exact_resume(preset, data_dir, tmp_path):
    full, half = str(tmp_path / 'full'), str(tmp_path / 'half')
    tiny_run(full, data_dir, f'--model={preset}', *RESUME, '--max_iters=20')
    tiny_run(half, data_dir, f'--model={preset}', *RESUME, '--max_iters=10')
    assert load(os.path.join(half, 'ckpt.pt'))['run']['iter_num'] == 10
    # only what changes is repeated: the rest of the config comes from the checkpoint
    r = tiny_run(half, data_dir, '--init_from=resume', '--max_iters=20')
    assert 'max_iters 10 -> 20' in r.stdout
    a, b = load(os.path.join(full, 'ckpt.pt')), load(os.path.join(half, 'ckpt.pt'))
    assert a['run']['iter_num'] == b['run']['iter_num'] == 20
    assert_same_state(a, b)
    assert losses(full) == losses(half)  # identical floats, one record per evaluation, no repeats
    assert read_log(full, 'diag') == read_log(half, 'diag')


def test_ddp_matches_single_process_and_resumes_exactly(data_dir, tmp_path):
    args = ['--model=espa-skip', '--eval_interval=5', '--diag_interval=0', '--lr_decay_iters=12',
            '--gradient_accumulation_steps=2']
    one, two, half = str(tmp_path / 'one'), str(tmp_path / 'two'), str(tmp_path / 'half')
    tiny_run(one, data_dir, *args, '--max_iters=12')              # 1 process x 2 micro-batches
    tiny_run(two, data_dir, *args, '--max_iters=12', nproc=2)     # 2 processes x 1 micro-batch
    l1, l2 = losses(one), losses(two)
    assert [x[0] for x in l1] == [x[0] for x in l2] == [0, 5, 10, 12]
    for a, b in zip(l1, l2):  # same global batch: equal up to float rounding in the all-reduce
        assert a[3:] == b[3:]
        assert math.isclose(a[1], b[1], rel_tol=1e-4) and math.isclose(a[2], b[2], rel_tol=1e-4)
    w1, w2 = load(os.path.join(one, 'ckpt.pt')), load(os.path.join(two, 'ckpt.pt'))
    for k in w1['model']:
        assert torch.allclose(w1['model'][k], w2['model'][k], atol=1e-4, rtol=1e-3), k
    assert len(w2['rng']) == 2  # each process's random state
    # and a 2-process run stopped at step 5 and resumed ends bit-identical to the uninterrupted one
    tiny_run(half, data_dir, *args, '--max_iters=5', nproc=2)
    tiny_run(half, data_dir, '--init_from=resume', '--max_iters=12', nproc=2)
    assert_same_state(load(os.path.join(two, 'ckpt.pt')), load(os.path.join(half, 'ckpt.pt')))
    assert losses(two) == losses(half)


# -----------------------------------------------------------------------------
# crashes, signals, divergence, full disks

def _start(out, data_dir, *extra, env=None):
    cmd = [sys.executable, os.path.join(HERE, 'train.py'), f'--data_dir={data_dir}',
           f'--out_dir={out}', *TINY, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env or ENV, cwd=HERE)


def _wait_for(stream, pattern, proc, timeout=120):
    t0 = time.time()
    seen = []
    while time.time() - t0 < timeout:
        line = stream.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if pattern in line:
            return line
    proc.kill()
    raise AssertionError(f"never saw {pattern!r}; got:\n{''.join(seen)[-3000:]}")


def test_sigkill_during_save_keeps_previous_checkpoint(data_dir, tmp_path):
    out = str(tmp_path / 'out')
    env = {**ENV, 'TRAIN_TEST_SAVE_DELAY': '2'}
    p = _start(out, data_dir, '--max_iters=100', '--eval_interval=5', '--model=preln', env=env)
    _wait_for(p.stderr, '[test hook]', p)   # step 5: written, then renamed after 2 s
    _wait_for(p.stderr, '[test hook]', p)   # step 10: the new data is in the temporary file ...
    p.kill()                                # ... and the process dies before the rename
    p.wait(timeout=30)
    p.stdout.close(), p.stderr.close()
    ck = load(os.path.join(out, 'ckpt.pt'))
    assert ck['run']['iter_num'] == 5
    assert any(n.startswith('.tmp-') for n in os.listdir(out))  # the half-finished save
    r = tiny_run(out, data_dir, '--init_from=resume', '--max_iters=7')
    assert 'resuming' in r.stdout and load(os.path.join(out, 'ckpt.pt'))['run']['iter_num'] == 7
    assert not any(n.startswith('.tmp-') for n in os.listdir(out))  # cleaned up on the next run


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM], ids=['SIGINT', 'SIGTERM'])
def test_signal_saves_and_exits_cleanly(sig, data_dir, tmp_path):
    out = str(tmp_path / 'out')
    p = _start(out, data_dir, '--max_iters=100000', '--eval_interval=100000', '--model=preln')
    _wait_for(p.stdout, 'iter 3/', p)
    p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 0, stderr
    assert f'stopped by {signal.Signals(sig).name}' in stdout, stdout
    assert '--init_from=resume' in stdout, stdout
    ck = load(os.path.join(out, 'ckpt.pt'))
    step = ck['run']['iter_num']
    assert step >= 3 and os.path.exists(os.path.join(out, f"ckpt_step{step:07d}.pt"))
    assert 'Traceback' not in stderr


def test_divergence_stops_and_keeps_checkpoints(data_dir, tmp_path):
    out = str(tmp_path / 'out')
    tiny_run(out, data_dir, '--model=preln', '--max_iters=10', '--eval_interval=5')
    saved = {n: digest(os.path.join(out, n)) for n in os.listdir(out) if n.endswith('.pt')}
    # the same run continued with an absurd learning rate blows up at once
    r = tiny_run(out, data_dir, '--init_from=resume', '--max_iters=40', '--learning_rate=1000',
                 '--min_lr=0', '--max_bad_steps=3', expect=3)
    assert 'training diverged at step' in r.stderr
    assert f"last good checkpoint is {os.path.join(out, 'ckpt.pt')} (step 10)" in r.stderr
    assert '--learning_rate=' in r.stderr and '--warmup_iters=' in r.stderr
    assert r.stderr.count('update skipped') == 3
    assert {n: digest(os.path.join(out, n)) for n in os.listdir(out) if n.endswith('.pt')} == saved
    ck = load(os.path.join(out, 'ckpt.pt'))
    assert all(torch.isfinite(v).all() for v in ck['model'].values())


def test_disk_full_during_run_is_reported(data_dir, tmp_path, monkeypatch, capsys):
    """Run train.main in-process with torch.save failing from the second save on."""
    out = str(tmp_path / 'out')
    real_save, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(28, 'No space left on device')
        return real_save(obj, f, *a, **k)
    monkeypatch.setattr(torch, 'save', save)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = train.main([f'--data_dir={data_dir}', f'--out_dir={out}', *TINY, '--model=preln',
                         '--max_iters=10', '--eval_interval=5'])
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert rc == 1
    assert 'could not save the checkpoint of step 10' in err and 'No space left on device' in err
    assert f"the previous checkpoint {os.path.join(out, 'ckpt.pt')} (step 5) is intact" in err
    assert load(os.path.join(out, 'ckpt.pt'))['run']['iter_num'] == 5
    assert not any(n.startswith('.tmp-') for n in os.listdir(out))


# -----------------------------------------------------------------------------
# bad checkpoints and mismatched architectures: exit 2, a message, nothing modified

@pytest.fixture(scope='module')
def trained(data_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('trained') / 'out')
    tiny_run(out, data_dir, '--model=espa', '--max_iters=10', '--eval_interval=5')
    return out


@pytest.mark.parametrize('args, pattern', [
    (['--init_from=resume', '--n_layer=6'],
     r"different architecture: n_layer=4 \(you asked for 6\)"),
    (['--init_from=resume', '--model=preln'],
     r"holds a --model=espa run; you asked for --model=preln"),
    (['--init_from=resume', '--block_size=64'], r"block_size=32 \(you asked for 64\)"),
    ([], r"already holds a run. Continue it with --init_from=resume"),
], ids=['n_layer', 'model', 'block_size', 'scratch_over_existing_run'])
def test_resume_mismatch_errors(trained, data_dir, tmp_path, args, pattern):
    out = str(tmp_path / 'out')
    shutil.copytree(trained, out)
    before = {n: digest(os.path.join(out, n)) for n in os.listdir(out)}
    r = run([f'--out_dir={out}', *args], data_dir)
    assert r.returncode == 2, r.stderr
    assert re.search(pattern, r.stderr), r.stderr
    assert 'Traceback' not in r.stderr
    assert {n: digest(os.path.join(out, n)) for n in os.listdir(out)} == before


@pytest.mark.parametrize('damage', ['garbage', 'truncated', 'empty', 'not_ours'])
def test_corrupt_checkpoint_errors(trained, data_dir, tmp_path, damage):
    out = str(tmp_path / 'out')
    shutil.copytree(trained, out)
    path = os.path.join(out, 'ckpt.pt')
    raw = open(path, 'rb').read()
    if damage == 'not_ours':
        torch.save({'weights': torch.ones(2)}, path)
    else:
        with open(path, 'wb') as f:
            f.write({'garbage': os.urandom(1000), 'truncated': raw[:len(raw) // 2],
                     'empty': b''}[damage])
    before = {n: digest(os.path.join(out, n)) for n in os.listdir(out)}
    r = run([f'--out_dir={out}', '--init_from=resume'], data_dir)
    assert r.returncode == 2, r.stderr
    if damage == 'not_ours':
        assert 'lacks model, model_args, run, config' in r.stderr
    else:
        assert f"checkpoint {path} cannot be read" in r.stderr, r.stderr
    assert '--resume_from=' in r.stderr and 'ckpt_step0000010.pt' in r.stderr  # what survives
    assert 'Traceback' not in r.stderr
    assert {n: digest(os.path.join(out, n)) for n in os.listdir(out)} == before
    s = run([f'--out_dir={out}'], data_dir, 'sample.py')
    assert s.returncode == 2 and 'Traceback' not in s.stderr and 'error:' in s.stderr


def test_resume_from_other_checkpoint(trained, data_dir, tmp_path):
    """After a damaged ckpt.pt, the step checkpoints still resume, via --resume_from."""
    out = str(tmp_path / 'out')
    shutil.copytree(trained, out)
    with open(os.path.join(out, 'ckpt.pt'), 'wb') as f:
        f.write(b'junk')
    r = tiny_run(out, data_dir, '--init_from=resume',
                 f"--resume_from={os.path.join(out, 'ckpt_step0000005.pt')}",
                 '--max_iters=12')
    assert 'at step 5' in r.stdout
    assert load(os.path.join(out, 'ckpt.pt'))['run']['iter_num'] == 12
    assert [e['iter'] for e in read_log(out)] == [0, 5, 10, 12]  # old step-10 record replaced


def test_sample_py_errors(trained, data_dir):
    r = run([f'--out_dir={trained}', '--temperature=0'], data_dir, 'sample.py')
    assert r.returncode == 2 and 'temperature must be > 0' in r.stderr
    r = run([f'--out_dir={trained}', '--tmperature=1'], data_dir, 'sample.py')
    assert r.returncode == 2 and "did you mean 'temperature'" in r.stderr


def test_eval_only_writes_nothing_and_overwrite_replaces_the_run(trained, data_dir, tmp_path):
    out = str(tmp_path / 'out')
    shutil.copytree(trained, out)
    before = {n: digest(os.path.join(out, n)) for n in os.listdir(out)}
    r = tiny_run(out, data_dir, '--init_from=resume', '--eval_only=True')
    assert 'step 10: train loss' in r.stdout
    assert {n: digest(os.path.join(out, n)) for n in os.listdir(out)} == before
    # --overwrite=True: the old run goes as a whole (no stale step checkpoints or log lines)
    tiny_run(out, data_dir, '--overwrite=True', '--model=preln', '--max_iters=3',
             '--eval_interval=100')
    assert sorted(os.listdir(out)) == ['ckpt.pt', 'ckpt_best.pt', 'ckpt_step0000003.pt',
                                       'log.jsonl']
    assert [e['iter'] for e in read_log(out)] == [0, 3]
    assert load(os.path.join(out, 'ckpt.pt'))['config']['model'] == 'preln'


def test_data_errors(trained, data_dir, tmp_path):
    """A checkpoint resumed on data from another tokenizer, and a truncated token file: exit 2."""
    other = tmp_path / 'data'
    shutil.copytree(os.path.join(data_dir, 'pydocs'), other / 'pydocs')
    meta_path = other / 'pydocs' / 'meta.json'
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, 'tokenizer': 'gpt2', 'vocab_size': 50257}))
    out = str(tmp_path / 'out')
    shutil.copytree(trained, out)
    r = run([f'--out_dir={out}', '--init_from=resume', f'--data_dir={other}'], data_dir)
    assert r.returncode == 2 and 'was trained on bytes tokens (vocab 256)' in r.stderr, r.stderr
    meta_path.write_text(json.dumps(meta))
    train_bin = other / 'pydocs' / 'train.bin'
    train_bin.write_bytes(train_bin.read_bytes()[:1001])
    r = run([f'--out_dir={tmp_path / "new"}', f'--data_dir={other}', *TINY], data_dir)
    assert r.returncode == 2 and 'train.bin' in r.stderr and 'truncated' in r.stderr, r.stderr
    assert 'Traceback' not in r.stderr and not (tmp_path / 'new').exists()


# -----------------------------------------------------------------------------
# first tries that are never refused: short runs, torchrun with the defaults, wandb

def test_short_run_needs_no_warmup_flag_but_an_explicit_long_warmup_is_refused(data_dir, tmp_path):
    args = [a for a in TINY if not a.startswith('--warmup_iters')]
    r = run([f'--out_dir={tmp_path / "a"}', *args, '--max_iters=20'], data_dir)
    assert r.returncode == 0, r.stderr
    lrs = [e['lr'] for e in read_log(str(tmp_path / 'a'))]
    assert lrs[0] == pytest.approx(3e-3 / 3)  # warmup min(100, 20 // 10) = 2: lr (0+1)/(2+1)
    r = run([f'--out_dir={tmp_path / "b"}', *args, '--max_iters=20', '--warmup_iters=100'],
            data_dir)
    assert r.returncode == 2 and 'warmup_iters=100 is more than max_iters=20' in r.stderr
    assert not (tmp_path / 'b').exists()


@pytest.mark.parametrize('nproc', [2, 4])
def test_torchrun_with_the_default_accumulation(nproc, data_dir, tmp_path):
    """No --gradient_accumulation_steps: one micro-batch per process, whatever the world size."""
    out = str(tmp_path / 'out')
    tiny_run(out, data_dir, '--model=espa-skip', '--max_iters=3', '--eval_interval=3', nproc=nproc,
             timeout=400)
    evals = read_log(out)
    assert [e['iter'] for e in evals] == [0, 3]
    assert evals[-1]['tokens'] == 3 * 4 * 32 * nproc
    assert len(load(os.path.join(out, 'ckpt.pt'))['rng']) == nproc


def test_wandb_offline_logs_what_log_jsonl_holds(data_dir, tmp_path, monkeypatch):
    wandb = pytest.importorskip('wandb', reason='wandb is optional; .ci/run installs it')
    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.setenv('WANDB_SILENT', 'true')
    sent, real_log = [], wandb.sdk.wandb_run.Run.log  # every logged dict passes here, on to wandb
    monkeypatch.setattr(wandb.sdk.wandb_run.Run, 'log',
                        lambda self, d, step=None, **k: (sent.append((step, dict(d))),
                                                         real_log(self, d, step=step, **k)))
    out = str(tmp_path / 'out')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = train.main([f'--data_dir={data_dir}', f'--out_dir={out}', *TINY, '--max_iters=6',
                         '--eval_interval=3', '--wandb_log=True', '--wandb_run_name=test'])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    assert [(e['iter'], e['train_loss'], e['val_loss'], e['lr']) for e in read_log(out)] == \
        [(step, d['train/loss'], d['val/loss'], d['lr']) for step, d in sent]
    wandb_files = os.listdir(os.path.join(out, 'wandb'))
    assert any(n.startswith('offline-run-') for n in wandb_files)   # wandb really ran


def test_wandb_missing_is_a_clear_error_before_anything_is_written(data_dir, tmp_path, monkeypatch,
                                                                   capsys):
    monkeypatch.setitem(sys.modules, 'wandb', None)      # `import wandb` now raises ImportError
    rc = train.main([f'--data_dir={data_dir}', f'--out_dir={tmp_path / "out"}', *TINY,
                     '--wandb_log=True'])
    assert rc == 2 and 'pip install wandb' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


# -----------------------------------------------------------------------------
# Muon: the same loop, schedule, checkpoints and exact resume as AdamW

MUON = ['--model=espa', '--optimizer=muon', '--muon_lr=0.2', '--eval_interval=5',
        '--lr_decay_iters=20', '--gradient_accumulation_steps=2', '--dropout=0.1']


def test_muon_trains_and_resumes_exactly(data_dir, tmp_path):
    full, half = str(tmp_path / 'full'), str(tmp_path / 'half')
    tiny_run(full, data_dir, *MUON, '--max_iters=20')
    evals = read_log(full)
    assert evals[-1]['val_loss'] < evals[0]['val_loss'] - 0.5, evals
    ck = load(os.path.join(full, 'ckpt.pt'))
    muon_state = ck['optimizer'][1]['state']
    assert len(ck['optimizer']) == 2 and all('momentum_buffer' in s for s in muon_state.values())
    tiny_run(half, data_dir, *MUON, '--max_iters=10')
    tiny_run(half, data_dir, '--init_from=resume', '--max_iters=20')
    assert_same_state(ck, load(os.path.join(half, 'ckpt.pt')))
    assert losses(full) == losses(half)


@pytest.mark.parametrize('args, pattern', [
    (['--optimizer=muon', '--muon_lr=0'], r'muon_lr must be > 0'),
    (['--optimizer=muon', '--muon_lr=-1e-2'], r'muon_lr must be > 0'),
    (['--optimizer=lion'], r"optimizer must be one of adamw, muon \(got 'lion'\)"),
    (['--optimizer=muon', '--muon_adjust_lr=sqrt'],
     r'muon_adjust_lr must be one of original, match_rms_adamw'),
    (['--optimizer=muon', '--muon_momentum=1.0'], r'muon_momentum must be in \[0, 1\)'),
])
def test_muon_config_errors(args, pattern, data_dir, tmp_path):
    r = run([f'--out_dir={tmp_path / "out"}', *TINY, *args], data_dir)
    assert r.returncode == 2 and re.search(pattern, r.stderr), r.stderr
    assert not (tmp_path / 'out').exists()


def test_resuming_with_another_optimizer_is_refused(trained, data_dir, tmp_path):
    out = str(tmp_path / 'out')
    shutil.copytree(trained, out)     # espa: Muon by default
    r = run([f'--out_dir={out}', '--init_from=resume', '--optimizer=adamw', '--max_iters=12'],
            data_dir)
    assert r.returncode == 2, r.stderr
    assert 'was the run trained with another --optimizer' in r.stderr, r.stderr


@pytest.mark.parametrize('model, optimizer', [('espa', 'muon'), ('vanilla', 'muon'),
                                              ('uspa', 'muon'), ('preln', 'adamw'),
                                              ('espa-skip', 'adamw')])
def test_the_vanilla_presets_train_with_muon_by_default(model, optimizer, data_dir, tmp_path):
    """MATH.md sec. 10.1: Muon beat AdamW for every vanilla preset in every seed of the study, so
    it is their default; the presets with skips or norms keep AdamW. The choice is saved and
    resumed."""
    out = str(tmp_path / 'out')
    r = tiny_run(out, data_dir, f'--model={model}', '--max_iters=2', '--eval_interval=2')
    assert ('Muon lr 0.03 + AdamW' in r.stdout) == (optimizer == 'muon'), r.stdout
    ck = load(os.path.join(out, 'ckpt.pt'))
    assert ck['config']['optimizer'] == optimizer
    assert len(ck['optimizer']) == 1 + (optimizer == 'muon')
    tiny_run(out, data_dir, '--init_from=resume', '--max_iters=4', '--eval_interval=2')
    assert len(load(os.path.join(out, 'ckpt.pt'))['optimizer']) == 1 + (optimizer == 'muon')


def test_a_two_layer_model_trains_and_says_which_tat_target_it_uses(data_dir, tmp_path):
    args = [a for a in TINY if not a.startswith('--n_layer')]
    r = tiny_run(str(tmp_path / 'out'), data_dir, *args, '--model=espa', '--n_layer=2',
                 '--max_iters=3', '--eval_interval=3')
    notes = [l for l in r.stdout.splitlines() if l.startswith('TAT:')]
    assert len(notes) == 1 and 'eta=0.5 is out of reach for 2 blocks' in notes[0]
    assert 'eta=0.4937' in notes[0]
    # 4 blocks: reachable
    r = tiny_run(str(tmp_path / 'deep'), data_dir, '--model=espa', '--max_iters=3',
                 '--eval_interval=3')
    assert 'TAT:' not in r.stdout


def denormal_product():
    """1e-30 * 1e-10 in float32: 1e-40 is a denormal, and 0 where denormals are flushed."""
    return (torch.tensor([1e-30]) * torch.tensor([1e-10])).item()


def test_training_on_cpu_flushes_denormals_and_the_opening_line_says_so(data_dir, tmp_path,
                                                                        capsys):
    """E-SPA's attention weights fall below float32's normal range, where some CPUs are many
    times slower: train.py flushes denormals to 0 where the CPU can (set_flush_denormal: True)."""
    supported = torch.set_flush_denormal(False)
    assert denormal_product() > 0
    try:
        train.setup([f'--data_dir={data_dir}', f'--out_dir={tmp_path / "out"}', *TINY,
                     '--device=cpu', '--max_iters=4'])
        assert (denormal_product() == 0) == supported
    finally:
        torch.set_flush_denormal(False)
    assert ('(float32, denormals flushed' in capsys.readouterr().out) == supported


MAPPED_BLOCKS = """
import ctypes, sys, torch, hardware
class Info(ctypes.Structure):   # glibc's struct mallinfo2: hblks counts the blocks mmap serves
    _fields_ = [(n, ctypes.c_size_t) for n in 'arena ordblks smblks hblks hblkhd usmblks fsmblks '
                'uordblks fordblks keepcost'.split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
settings = hardware.tune_cpu() if sys.argv[1] == 'tuned' else []
before = libc.mallinfo2().hblks
x = torch.empty(6 << 20)   # 24 MiB: an activation of a mid-sized run
print(settings, libc.mallinfo2().hblks - before)
"""

@pytest.mark.skipif(not (sys.platform == 'linux' and platform.libc_ver()[0] == 'glibc'),
                    reason='mallopt and mallinfo2 are glibc\'s')
def test_on_cpu_freed_memory_is_kept_in_the_heap_not_mapped_afresh():
    """glibc maps a 24 MiB block afresh (page faults on every first touch) until tune_cpu raises
    its threshold; train.py and bench.py call tune_cpu on a CPU."""
    run = lambda mode: subprocess.run([sys.executable, '-c', MAPPED_BLOCKS, mode], cwd=HERE,
                                      capture_output=True, text=True, check=True).stdout.split()
    assert run('plain')[-1] == '1'
    tuned = run('tuned')
    assert "'freed memory kept']" in ' '.join(tuned) and tuned[-1] == '0'
