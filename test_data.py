"""Tests for data.py, the read path: checking meta.json and the token files, and drawing batches.
CPU only, no network, no preparation: tiny datasets are written here by hand (prepare.py has its
own tests in test_prepare.py). Run: python -m pytest -q test_data.py"""
import json, os, subprocess, sys, tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import data  # noqa: E402
from data import DataError, get_batch, load_meta, load_tokens  # noqa: E402


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        f.write(text)
    return str(path)


def make_dataset(d, name, tokens, dtype='uint16', vocab_size=256, **meta):
    """A prepared dataset written by hand, for the loading checks."""
    os.makedirs(os.path.join(d, name), exist_ok=True)
    for split in ('train', 'val'):
        np.asarray(tokens, dtype).tofile(os.path.join(d, name, f'{split}.bin'))
    m = dict(name=name, tokenizer='bytes', vocab_size=vocab_size, dtype=dtype,
             train_tokens=len(tokens), val_tokens=len(tokens), source='test') | meta
    write(os.path.join(d, name, 'meta.json'), json.dumps(m))
    return os.path.join(d, name)


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    """200k random byte tokens, written by hand, for the batch tests: every window differs."""
    d = str(tmp_path_factory.mktemp('corpus'))
    make_dataset(d, 'corpus', np.random.default_rng(0).integers(0, 256, 200_000))
    return d

# -----------------------------------------------------------------------------
# loading: every broken state is a DataError that names the file


def test_vocabularies_over_65536_tokens_are_stored_as_uint32(tmp_path):
    assert data.token_dtype(256) == np.uint16 and data.token_dtype(65536) == np.uint16
    assert data.token_dtype(65537) == np.uint32 and data.token_dtype(100277) == np.uint32
    make_dataset(str(tmp_path), 'big', [0, 70000, 99999, 5], dtype='uint32', vocab_size=100000)
    assert load_tokens(str(tmp_path), 'big', 'train').tolist() == [0, 70000, 99999, 5]
    make_dataset(str(tmp_path), 'wrong', [1, 2], dtype='uint16', vocab_size=100000)
    with pytest.raises(DataError, match='cannot hold'):
        load_meta(str(tmp_path), 'wrong')


def test_an_unprepared_dataset_says_how_to_prepare_it(tmp_path):
    with pytest.raises(DataError,
                       match=r"'pydocs' is not prepared.*python prepare.py pydocs --data_dir="):
        load_tokens(str(tmp_path), 'pydocs', 'train')
    os.makedirs(tmp_path / 'half')
    with pytest.raises(DataError, match=r'meta.json is missing.*interrupted'):
        load_meta(str(tmp_path), 'half')


def test_a_corrupt_meta_json_says_what_is_wrong_with_it(tmp_path):
    d = str(tmp_path)
    folder = make_dataset(d, 'ds', list(range(100)))
    write(os.path.join(folder, 'meta.json'), '{"name": "ds", "tokeni')
    with pytest.raises(DataError, match='meta.json is not valid JSON'):
        load_meta(d, 'ds')
    write(os.path.join(folder, 'meta.json'), json.dumps({'name': 'ds', 'tokenizer': 'bytes'}))
    with pytest.raises(DataError, match='meta.json lacks required entries.*vocab_size'):
        load_meta(d, 'ds')
    make_dataset(d, 'ds', list(range(100)), tokenizer='sentencepiece')
    with pytest.raises(DataError, match="meta.json is invalid: tokenizer 'sentencepiece'"):
        load_meta(d, 'ds')


def test_a_broken_token_file_is_named_with_what_is_wrong(tmp_path):
    d = str(tmp_path)
    folder = make_dataset(d, 'ds', list(range(100)))
    open(os.path.join(folder, 'train.bin'), 'wb').close()
    with pytest.raises(DataError, match='train.bin is empty'):
        load_tokens(d, 'ds', 'train')
    with open(os.path.join(folder, 'train.bin'), 'wb') as f:
        f.write(np.arange(100, dtype=np.uint16).tobytes()[:-1])  # half a token short
    with pytest.raises(DataError, match='train.bin is 199 bytes.*truncated'):
        load_tokens(d, 'ds', 'train')
    np.arange(50, dtype=np.uint16).tofile(os.path.join(folder, 'train.bin'))  # whole, too few
    with pytest.raises(DataError,
                       match='train.bin is 100 bytes, but meta.json says 100 uint16 tokens'):
        load_tokens(d, 'ds', 'train')
    os.remove(os.path.join(folder, 'val.bin'))
    with pytest.raises(DataError, match='val.bin is missing'):
        load_tokens(d, 'ds', 'val')
    make_dataset(d, 'ds', [1, 2, 300, 4])  # a GPT-2 id in a byte-level dataset
    with pytest.raises(DataError, match='train.bin contains token id 300.*another tokenizer'):
        load_tokens(d, 'ds', 'train')


def test_a_split_needs_block_size_plus_one_tokens(tmp_path):
    make_dataset(str(tmp_path), 'ds', list(range(10)))
    val = load_tokens(str(tmp_path), 'ds', 'val')
    x, y = get_batch(val, 0, 0, 2, 9)  # exactly block_size + 1 tokens is enough
    assert x.tolist() == [list(range(9))] * 2 and y.tolist() == [list(range(1, 10))] * 2
    with pytest.raises(DataError,
                       match=r'val.bin holds only 10 tokens, but block_size=10 needs at least 11'):
        get_batch(val, 0, 0, 2, 10)

# -----------------------------------------------------------------------------
# get_batch: stateless, deterministic, and the same global batch for any process layout


def test_a_batch_is_random_windows_and_targets_are_shifted_by_one(corpus):
    tokens = load_tokens(corpus, 'corpus', 'train')
    x, y = get_batch(tokens, 3, 0, batch_size=4, block_size=32)
    assert x.shape == y.shape == (4, 32) and x.dtype == y.dtype == np.int64
    assert (x[:, 1:] == y[:, :-1]).all()
    # each row is the window at its offset from rng([seed, step]), y one token later
    ar = np.asarray(tokens)
    offsets = np.random.default_rng([1337, 3]).integers(0, len(ar) - 32, size=4)
    assert (x == np.stack([ar[o:o + 32] for o in offsets])).all()
    assert (y == np.stack([ar[o + 1:o + 33] for o in offsets])).all()


def test_a_batch_depends_on_seed_and_step_only(corpus):
    tokens = load_tokens(corpus, 'corpus', 'train')
    a, b = get_batch(tokens, 7, 0, 8, 16), get_batch(tokens, 7, 0, 8, 16)
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    assert not (get_batch(tokens, 8, 0, 8, 16)[0] == a[0]).all()
    assert not (get_batch(tokens, 7, 0, 8, 16, seed=1)[0] == a[0]).all()


def test_any_process_layout_sees_the_same_global_batch(corpus):
    tokens = load_tokens(corpus, 'corpus', 'train')
    for step in (0, 5):
        one_proc = np.concatenate([get_batch(tokens, step, m, 4, 16, grad_accum=2)[0]
                                   for m in range(2)])
        two_ranks = np.concatenate([get_batch(tokens, step, 0, 4, 16, rank=r, world_size=2)[0]
                                    for r in range(2)])
        assert (one_proc == two_ranks).all()
        four = np.concatenate([get_batch(tokens, step, m, 2, 16, rank=r, world_size=2,
                                         grad_accum=2)[0] for m in range(2) for r in range(2)])
        whole = get_batch(tokens, step, 0, 8, 16)[0]  # the global batch, drawn by one process
        assert (four == whole).all()                  # rows in (micro_step, rank) order
        assert len({tuple(r) for r in four}) == 8
    with pytest.raises(ValueError, match='0 <= micro_step < grad_accum.*micro_step=2'):
        get_batch(tokens, 0, 2, 4, 16, grad_accum=2)

# -----------------------------------------------------------------------------
# fuzz: whatever is on disk, loading either works or raises DataError


junk = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.floats(allow_nan=True),
                 st.text(max_size=5), st.lists(st.integers(), max_size=2),
                 st.dictionaries(st.sampled_from('ab'), st.integers(), max_size=2))
token_lists = (st.lists(st.integers(0, top), max_size=40) for top in (255, 70000))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=st.one_of(st.binary(max_size=80), *token_lists),
       tokenizer=st.sampled_from(['bytes', 'gpt2']), vocab=st.sampled_from([256, 50257, 70000, 1]),
       dtype=st.sampled_from(['uint16', 'uint32']),
       corrupt=st.dictionaries(st.sampled_from(data.META_KEYS), junk, max_size=2),
       drop=st.sets(st.sampled_from(data.META_KEYS), max_size=1),
       raw_meta=st.one_of(st.none(), st.binary(max_size=40)),
       how=st.sampled_from(['valid'] * 3 + ['corrupt', 'drop', 'raw']),
       split=st.sampled_from(['train', 'val']))
def test_any_files_on_disk_load_and_batch_or_raise_a_data_error(content, tokenizer, vocab, dtype,
                                                                corrupt, drop, raw_meta, how,
                                                                split):
    """Random token files under random (mostly well-formed) meta.json: loading and batching either
    work or raise DataError naming the dataset, never anything else."""
    raw = content if isinstance(content, bytes) else \
        np.array(content, np.int64).astype(dtype).tobytes()
    n = len(raw) // np.dtype(dtype).itemsize
    meta = dict(name='fz', tokenizer=tokenizer, vocab_size=vocab, dtype=dtype, train_tokens=n,
                val_tokens=n, source='x')
    if how == 'corrupt':
        meta |= corrupt
    elif how == 'drop':
        meta = {k: v for k, v in meta.items() if k not in drop}
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, 'fz'))
        with open(os.path.join(d, 'fz', 'meta.json'), 'wb') as f:
            written_raw = how == 'raw' and raw_meta is not None
            f.write(raw_meta if written_raw else json.dumps(meta).encode())
        for s in ('train', 'val'):
            with open(os.path.join(d, 'fz', f'{s}.bin'), 'wb') as f:
                f.write(raw)
        try:
            tokens = load_tokens(d, 'fz', split)
            x, y = get_batch(tokens, 0, 0, 2, 4)
            assert x.shape == (2, 4) and (x[:, 1:] == y[:, :-1]).all() and x.max() < vocab
            event('loaded and batched')
        except DataError as e:
            assert 'fz' in str(e)  # names the dataset's file or folder
            # `pytest --hypothesis-show-statistics` shows which checks fired
            event(str(e).replace(d, '')[:32])

# -----------------------------------------------------------------------------
# the read path stands alone


def test_the_prepare_command_in_messages_names_only_what_differs_from_the_defaults():
    assert data.prepare_command('pydocs', 'data') == 'python prepare.py pydocs'
    assert data.prepare_command('pydocs', './data/') == 'python prepare.py pydocs'
    assert data.prepare_command('mine', 'other/') == \
        'python prepare.py mine --input=PATH --data_dir=other/'


def test_reading_data_loads_no_preparation_code():
    # training and sampling import data.py only: the preparation code (and tqdm) stay unloaded
    code = 'import sys, data; print(sorted({"prepare", "tqdm", "numpy"} & set(sys.modules)))'
    out = subprocess.run([sys.executable, '-c', code], cwd=HERE, check=True, timeout=60,
                         capture_output=True, text=True).stdout
    assert out.split() == ["['numpy']"]   # numpy is there: the check sees what data.py imports
