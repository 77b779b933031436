"""
Datasets, the read path: check a prepared dataset, then read random batches from its tokens.

A prepared dataset is DATA_DIR/NAME/ with train.bin and val.bin (flat token ids, no header,
uint16 when vocab_size <= 65536 else uint32) and meta.json, written last: a folder without
meta.json is an unfinished preparation. prepare.py makes one, once:

    python prepare.py pydocs                    # the default: offline, byte-level tokens
    python prepare.py --help                    # the other datasets, and how to use your own files

GPT-2 BPE needs tiktoken's vocabulary files: offline, point TIKTOKEN_CACHE_DIR at them.
"""
import json, os

import numpy as np

DEFAULT_DATASET = 'pydocs'
DEFAULT_DATA_DIR = 'data'
META_KEYS = ('name', 'tokenizer', 'vocab_size', 'dtype', 'train_tokens', 'val_tokens', 'source')
GPT2_EOT = 50256
DATASETS = {  # name: (default tokenizer, default url, description for --help)
    'pydocs': ('bytes', None,
               "Python's own docs: pydoc topics + stdlib docstrings (~2 MB, no download)"),
    'shakespeare': ('gpt2', 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/'
                            'tinyshakespeare/input.txt',
                    'tiny shakespeare (1 MB)'),
    'wikitext103': ('gpt2', 'https://wikitext.smerity.com/wikitext-103-raw-v1.zip',
                    'WikiText-103 raw (~540 MB)'),
    'c4': ('gpt2', 'https://huggingface.co/datasets/allenai/c4/resolve/main/en',
           'English C4, streamed until --max_tokens (default 1e8); '
           '--url is the folder of the shards'),
    'input': ('gpt2', None,
              'your own files, --input=PATH (.txt, .zip of texts, .jsonl/.json.gz with "text")'),
}

class DataError(Exception):
    """A problem the user can fix: missing or corrupt file, unprepared dataset, failed download."""

def token_dtype(vocab_size):
    return np.uint16 if vocab_size <= 65536 else np.uint32  # uint16 halves disk and page cache

def prepare_command(name, data_dir):
    """The command line that prepares dataset `name` into data_dir, for messages that say how to
    fix things."""
    cmd = f'python prepare.py {name}' + ('' if name in DATASETS else ' --input=PATH')
    if os.path.normpath(data_dir) != DEFAULT_DATA_DIR:
        cmd += f' --data_dir={data_dir}'
    return cmd

# -----------------------------------------------------------------------------
# tokenizers: 'bytes' (UTF-8 bytes, vocab 256) and 'gpt2' (tiktoken BPE, vocab 50257)

def _gpt2():
    try:  # imported here so that byte-level datasets work without tiktoken
        import tiktoken
        return tiktoken.get_encoding('gpt2')
    except Exception as e:  # no package, or no network and no cache: either way no GPT-2 BPE
        cache = os.environ.get('TIKTOKEN_CACHE_DIR', 'unset')
        raise DataError(f"could not load tiktoken's GPT-2 encoding ({type(e).__name__}: {e}). It "
                        f"needs the tiktoken package and its vocabulary files, downloaded on first "
                        f"use. Offline, set TIKTOKEN_CACHE_DIR to a folder holding them (now: "
                        f"{cache}), or use the byte-level tokenizer: --tokenizer=bytes") from None

def get_tokenizer(name):
    """What preparation needs to know about a tokenizer, as a plain dict."""
    if name == 'bytes':
        # all 256 ids are bytes, none is free for end-of-text: a blank line goes between documents
        encode_batch = lambda texts: [np.frombuffer(t.encode('utf-8'), np.uint8) for t in texts]
        return dict(name='bytes', vocab_size=256, sep=[10, 10], boundary=10,
                    encode_batch=encode_batch)
    if name == 'gpt2':
        enc, threads = _gpt2(), os.cpu_count() or 1
        encode_batch = lambda texts: enc.encode_ordinary_batch(texts, num_threads=threads)
        return dict(name='gpt2', vocab_size=enc.n_vocab, sep=[GPT2_EOT], boundary=GPT2_EOT,
                    encode_batch=encode_batch)
    raise DataError(f"unknown tokenizer {name!r}: expected 'bytes' or 'gpt2'")

def encoder(meta):
    """(encode, decode) for a dataset: encode str -> list of ids, decode ids -> str. Ids beyond the
    vocabulary (a padded output layer can sample them) are dropped rather than crash sampling."""
    if meta['tokenizer'] == 'bytes':
        encode = lambda s: list(s.encode('utf-8'))
        decode = lambda ids: bytes(i for i in map(int, ids) if 0 <= i < 256).decode(
            'utf-8', errors='replace')
        return encode, decode
    enc = _gpt2()
    encode = lambda s: enc.encode(s, allowed_special={'<|endoftext|>'})
    decode = lambda ids: enc.decode([i for i in map(int, ids) if 0 <= i < enc.n_vocab])
    return encode, decode

# -----------------------------------------------------------------------------
# reading prepared data

def load_meta(data_dir, name):
    """meta.json of a prepared dataset, checked; a DataError says how to fix any problem."""
    folder, cmd = os.path.join(data_dir, name), prepare_command(name, data_dir)
    again = f'Prepare the dataset again with: {cmd}'
    if not os.path.isdir(folder):
        raise DataError(f'dataset {name!r} is not prepared: there is no folder {folder}. '
                        f'Prepare it with: {cmd}')
    path = os.path.join(folder, 'meta.json')
    if not os.path.exists(path):
        raise DataError(f'{path} is missing, so dataset {name!r} is not (completely) prepared; '
                        f'perhaps its preparation was interrupted. Prepare it again with: {cmd}')
    try:
        with open(path, encoding='utf-8') as f:
            meta = json.load(f)
    except (OSError, ValueError, RecursionError) as e:  # bad JSON and bad UTF-8 are ValueErrors
        raise DataError(f'{path} is not valid JSON ({e}): the file is corrupt. {again}') from None
    if not isinstance(meta, dict) or not all(k in meta for k in META_KEYS):
        found = (sorted(map(str, meta)) if isinstance(meta, dict)
                 else f'a JSON {type(meta).__name__}')
        raise DataError(f'{path} lacks required entries: expected an object with the keys '
                        f'{", ".join(META_KEYS)}; found {found}. {again}')
    count = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0
    v, dt = meta['vocab_size'], meta['dtype']
    problem = (
        f"tokenizer {meta['tokenizer']!r} is not 'bytes' or 'gpt2'"
        if meta['tokenizer'] not in ('bytes', 'gpt2')
        else f'vocab_size {v!r} is not a positive integer' if not count(v) or v == 0
        else f"dtype {dt!r} is not 'uint16' or 'uint32'" if dt not in ('uint16', 'uint32')
        else f'dtype uint16 cannot hold vocab_size {v}' if dt == 'uint16' and v > 65536
        else 'train_tokens or val_tokens is not a token count'
        if not (count(meta['train_tokens']) and count(meta['val_tokens']))
        else None)
    if problem:
        raise DataError(f'{path} is invalid: {problem}. {again}')
    return meta

def check_dataset(name, data_dir, block_size, vocab_size=None):
    """meta.json of a dataset a run is about to train on, checked against the run: DataError when
    it is not prepared (or not usable with this block_size / vocab_size); None only for the
    default dataset before its first preparation, which train.py does itself."""
    meta_path = os.path.join(data_dir, name, 'meta.json')
    if not os.path.exists(meta_path):
        if name == DEFAULT_DATASET:
            return None
        raise DataError(f"dataset '{name}' is not prepared: {meta_path} does not exist. Prepare it "
                        f"first with `{prepare_command(name, data_dir)}` (known datasets: "
                        f"{', '.join(DATASETS)}), or pick another --dataset / --data_dir.")
    meta = load_meta(data_dir, name)
    if vocab_size is not None and vocab_size < meta['vocab_size']:
        raise DataError(f"vocab_size={vocab_size} is smaller than the dataset's vocabulary "
                        f"({meta['vocab_size']} tokens); leave it unset, or make it larger to pad.")
    for split in ('train', 'val'):
        if meta[f'{split}_tokens'] < block_size + 1:
            raise DataError(f"the {split} split of {name} has {meta[f'{split}_tokens']} tokens, "
                            f"fewer than block_size+1={block_size + 1}: use a smaller --block_size "
                            f"or more data.")
    return meta

def load_tokens(data_dir, name, split):
    """The tokens of split 'train' or 'val' as a read-only memmap, checked against meta.json:
    missing, empty, truncated or foreign files raise DataError."""
    if split not in ('train', 'val'):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    meta, cmd = load_meta(data_dir, name), prepare_command(name, data_dir)
    again = f'Prepare the dataset again with: {cmd}'
    path, expected = os.path.join(data_dir, name, f'{split}.bin'), meta[f'{split}_tokens']
    if not os.path.isfile(path):
        raise DataError(f'{path} is missing although meta.json exists. {again}')
    size, itemsize = os.path.getsize(path), np.dtype(meta['dtype']).itemsize
    if size == 0:
        raise DataError(f'{path} is empty, but meta.json says {expected:,} tokens. {again}')
    if size != expected * itemsize:
        raise DataError(f"{path} is {size:,} bytes, but meta.json says {expected:,} "
                        f"{meta['dtype']} tokens ({expected * itemsize:,} bytes): the file is "
                        f"truncated, corrupt, or from another preparation. {again}")
    try:
        tokens = np.memmap(path, dtype=meta['dtype'], mode='r')
    except OSError as e:
        raise DataError(f'cannot read {path}: {e}') from None
    # check the ends only: cheap even for huge files, and a foreign file shows there too
    top = int(max(tokens[:1 << 20].max(), tokens[-(1 << 20):].max()))
    if top >= meta['vocab_size']:
        raise DataError(f"{path} contains token id {top}, but the dataset's vocab_size is "
                        f"{meta['vocab_size']} ({meta['tokenizer']} tokenizer): the file is from "
                        f"another tokenizer, or corrupt. {again}")
    return tokens

def get_batch(tokens, step, micro_step, batch_size, block_size, seed=1337, rank=0, world_size=1,
              grad_accum=1):
    """Inputs x and next-token targets y, int64 arrays of shape (batch_size, block_size).

    Stateless: each optimisation step draws all batch_size * grad_accum * world_size start offsets
    from rng([seed, step]), and rank r at micro-step m takes rows (m * world_size + r) * batch_size
    onwards. So an exact resume needs no saved state, and 2 processes with grad_accum=1 see the
    same global batch as 1 process with grad_accum=2."""
    if not (step >= 0 and 0 <= micro_step < grad_accum and 0 <= rank < world_size
            and batch_size > 0 and block_size > 0):
        raise ValueError(f'get_batch needs step >= 0, 0 <= micro_step < grad_accum, 0 <= rank < '
                         f'world_size and positive sizes; got step={step} micro_step={micro_step} '
                         f'grad_accum={grad_accum} rank={rank} world_size={world_size} '
                         f'batch_size={batch_size} block_size={block_size}')
    if len(tokens) < block_size + 1:
        # a memmap knows its file, e.g. .../val.bin
        where = getattr(tokens, 'filename', None) or 'the token array'
        raise DataError(f'{where} holds only {len(tokens):,} tokens, but block_size={block_size} '
                        f'needs at least {block_size + 1:,} (a block plus its next-token targets). '
                        f'Use a smaller block_size, or more data (for val: a larger --val_fraction '
                        f'when preparing).')
    n_rows = batch_size * grad_accum * world_size
    offsets = np.random.default_rng([seed, step]).integers(0, len(tokens) - block_size, size=n_rows)
    rows = offsets[(micro_step * world_size + rank) * batch_size:][:batch_size]
    window = np.asarray(tokens[rows[:, None] + np.arange(block_size + 1)]).astype(np.int64)
    return np.ascontiguousarray(window[:, :-1]), np.ascontiguousarray(window[:, 1:])
