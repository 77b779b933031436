"""Tests for prepare.py: CPU only, no network (urlopen is patched to refuse anything but file:// and
localhost), tiny fixtures built here. Run: python -m pytest -q test_prepare.py
GPT-2 tests need tiktoken's vocabulary files: offline, point TIKTOKEN_CACHE_DIR at them."""
import gzip, hashlib, http.server, json, os, subprocess, sys, threading, zipfile
import urllib.error, urllib.request

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import data  # noqa: E402
from data import DataError, load_meta, load_tokens  # noqa: E402
from prepare import fetch, prepare  # noqa: E402
from test_data import write  # noqa: E402

EOT = 50256


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any download attempt to the internet fails at once, as it would offline."""
    real = urllib.request.urlopen

    def urlopen(req, *a, **k):
        url = req.full_url if isinstance(req, urllib.request.Request) else req
        if url.startswith(('file:', 'http://127.0.0.1')):
            return real(req, *a, **k)
        raise urllib.error.URLError(f'network disabled in tests ({url})')
    monkeypatch.setattr(urllib.request, 'urlopen', urlopen)


@pytest.fixture(scope='session')
def enc():
    """tiktoken's GPT-2 encoding. Skipped only where no cache exists at all; with a cache it must
    load."""
    try:
        import tiktoken
        return tiktoken.get_encoding('gpt2')
    except Exception as e:
        if not os.environ.get('TIKTOKEN_CACHE_DIR'):
            pytest.skip(f'no tiktoken cache here and no network: {e}')
        pytest.fail(f"GPT-2 encoding did not load from "
                    f"TIKTOKEN_CACHE_DIR={os.environ['TIKTOKEN_CACHE_DIR']}: {e!r}")


@pytest.fixture(scope='session')
def pydocs(tmp_path_factory):
    # an environment variable that must never reach the corpus (see the pydocs tests)
    os.environ['PREPARE_PY_CANARY'] = 'canary-a8f3e1-secret'
    d = str(tmp_path_factory.mktemp('pydocs'))
    prepare('pydocs', d, quiet=True)
    return d


def all_tokens(d, name):
    return np.concatenate([np.asarray(load_tokens(d, name, s)) for s in ('train', 'val')]).tolist()

# -----------------------------------------------------------------------------
# pydocs: the offline default


def test_pydocs_is_readable_byte_level_text_without_the_environment(pydocs):
    meta = load_meta(pydocs, 'pydocs')
    assert meta['tokenizer'] == 'bytes' and meta['vocab_size'] == 256 and meta['dtype'] == 'uint16'
    assert set(meta) == set(data.META_KEYS) and meta['name'] == 'pydocs'
    train, val = load_tokens(pydocs, 'pydocs', 'train'), load_tokens(pydocs, 'pydocs', 'val')
    assert len(train) == meta['train_tokens'] > 1_000_000 and len(val) == meta['val_tokens'] > 5_000
    assert int(train.max()) < 256 and int(val.max()) < 256
    encode, decode = data.encoder(meta)
    s = 'Détente: naïve café ✓ ok'
    assert decode(encode(s)) == s and max(encode(s)) < 256
    assert 'statement' in decode(train[:2000])  # starts with pydoc's topics, readable text
    text = decode(np.concatenate([train, val]))
    assert 'canary-a8f3e1' not in text and os.environ['PATH'] not in text  # no environment leaks
    assert decode([104, 105, 300]) == 'hi'  # ids outside the vocabulary are dropped, not fatal


def test_pydocs_gives_the_same_bytes_in_a_fresh_interpreter(pydocs, tmp_path):
    # a fresh process (nothing else imported) must give the very same bytes as this one
    code = f'import prepare; prepare.prepare("pydocs", {str(tmp_path)!r}, quiet=True)'
    subprocess.run([sys.executable, '-c', code], cwd=HERE, check=True, timeout=120)
    for split in ('train.bin', 'val.bin', 'meta.json'):
        a, b = (open(os.path.join(d, 'pydocs', split), 'rb').read()
                for d in (pydocs, str(tmp_path)))
        assert hashlib.sha1(a).digest() == hashlib.sha1(b).digest(), f'{split} differs between runs'


def test_pydocs_refuses_input_files(tmp_path):
    with pytest.raises(DataError, match='no --input'):
        prepare('pydocs', str(tmp_path), input_paths=[write(tmp_path / 'a.txt', 'hi')])

# -----------------------------------------------------------------------------
# GPT-2 datasets from local files


def test_text_files_become_gpt2_tokens_with_an_eot_between_files(enc, tmp_path):
    a = write(tmp_path / 'alpha.txt', 'First document.\nIt has two lines.\n' * 20)
    b = write(tmp_path / 'beta.txt', 'Second document, <|endoftext|> here is plain text.\n' * 10)
    folder = prepare('input', str(tmp_path / 'data'), input_paths=[a, b], val_fraction=0.4,
                     quiet=True)
    assert folder.endswith('alpha')  # named after the first file
    meta = load_meta(str(tmp_path / 'data'), 'alpha')
    assert (meta['tokenizer'], meta['vocab_size'], meta['dtype']) == ('gpt2', 50257, 'uint16')
    expected = enc.encode_ordinary(open(a).read()) + [EOT] + enc.encode_ordinary(open(b).read())
    # a literal '<|endoftext|>' in the text stays text
    assert all_tokens(str(tmp_path / 'data'), 'alpha') == expected
    val = load_tokens(str(tmp_path / 'data'), 'alpha', 'val')
    assert load_tokens(str(tmp_path / 'data'), 'alpha', 'train')[-1] == EOT  # val starts a document
    assert val.tolist() == enc.encode_ordinary(open(b).read())
    encode, decode = data.encoder(meta)
    assert decode(encode('hello <|endoftext|>')) == 'hello <|endoftext|>'
    assert encode('<|endoftext|>') == [EOT]


def test_jsonl_and_zip_documents_are_separated_by_a_blank_line_in_bytes(tmp_path):
    j = tmp_path / 'docs.jsonl'
    j.write_text(''.join(json.dumps({'text': t, 'id': i}) + '\n'
                         for i, t in enumerate(['one', 'two', 'three'])))
    z = tmp_path / 'texts.zip'
    with zipfile.ZipFile(z, 'w') as zf:
        zf.writestr('b.txt', 'bee')
        zf.writestr('a.txt', 'ay')
        zf.writestr('dir/', '')
    prepare('mine', str(tmp_path / 'd'), input_paths=[j, z], tokenizer='bytes', val_fraction=0.1,
            quiet=True)
    meta = load_meta(str(tmp_path / 'd'), 'mine')
    assert meta['tokenizer'] == 'bytes' and meta['name'] == 'mine'
    text = bytes(all_tokens(str(tmp_path / 'd'), 'mine')).decode()
    assert text == 'one\n\ntwo\n\nthree\n\nay\n\nbee'   # zip members in name order


def test_a_download_already_in_place_is_used_as_is(enc, tmp_path):
    text = 'First Citizen:\nBefore we proceed any further, hear me speak.\n\n' * 50
    d = str(tmp_path)
    write(os.path.join(d, 'downloads', 'tinyshakespeare.txt'), text)  # as if downloaded already
    prepare('shakespeare', d, val_fraction=0.1, quiet=True)
    assert all_tokens(d, 'shakespeare') == enc.encode_ordinary(text)  # one document: no EOT
    assert 0.05 < load_meta(d, 'shakespeare')['val_tokens'] / len(enc.encode_ordinary(text)) < 0.25


def make_wikitext_zip(path):
    train = (' \n = Alpha = \n \n Alpha is a letter . \n \n = = History = = \n \n It is old . \n'
             ' \n = Beta = \n \n Beta follows alpha . \n \n = Gamma = \n \n Gamma is third . \n')
    valid = ' \n = Delta = \n \n Delta is a river mouth . \n'
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as zf:
        zf.writestr('wikitext-103-raw/wiki.train.raw', train)
        zf.writestr('wikitext-103-raw/wiki.valid.raw', valid)
        zf.writestr('wikitext-103-raw/wiki.test.raw', ' \n = Test = \n')
    return train, valid


def test_wikitext103_splits_articles_and_keeps_its_own_val_split(enc, tmp_path):
    d = str(tmp_path)
    train, valid = make_wikitext_zip(os.path.join(d, 'downloads', 'wikitext-103-raw-v1.zip'))
    prepare('wikitext103', d, quiet=True)
    tr, va = (load_tokens(d, 'wikitext103', s).tolist() for s in ('train', 'val'))
    assert tr.count(EOT) == 2  # three articles (the '= = History = =' subheading does not split)
    assert enc.decode(tr).replace('<|endoftext|>', '') == train
    assert enc.decode(va) == valid  # the zip's own validation split, not a slice of train
    assert 'Test' not in enc.decode(tr + va)


def test_a_bad_wikitext_zip_is_named_and_left_in_place(enc, tmp_path):
    p = write(tmp_path / 'downloads' / 'wikitext-103-raw-v1.zip', 'this is no zip')
    with pytest.raises(DataError, match='wikitext-103-raw-v1.zip'):
        prepare('wikitext103', str(tmp_path), quiet=True)
    z = tmp_path / 'other.zip'
    with zipfile.ZipFile(z, 'w') as zf:
        zf.writestr('readme.txt', 'hi')
    with pytest.raises(DataError, match='no wiki.train.raw'):
        prepare('wikitext103', str(tmp_path), input_paths=[z], quiet=True)
    assert os.path.exists(p)


def c4_shard(path, texts):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with gzip.open(path, 'wt', encoding='utf-8') as f:
        for t in texts:
            f.write(json.dumps({'text': t, 'timestamp': '2019', 'url': 'http://x'}) + '\n')


def test_c4_stops_at_the_token_budget_and_fetches_no_shard_beyond_it(enc, tmp_path):
    d = str(tmp_path)
    dl = os.path.join(d, 'downloads')
    shard0 = [f'Document number {i} of shard zero talks about cats.' for i in range(40)]
    shard1 = [f'Shard one document {i} talks about dogs.' for i in range(40)]
    c4_shard(os.path.join(dl, 'c4-train.00000-of-01024.json.gz'), shard0)
    c4_shard(os.path.join(dl, 'c4-train.00001-of-01024.json.gz'), shard1)
    c4_shard(os.path.join(dl, 'c4-validation.00000-of-00008.json.gz'),
             ['A validation document.'] * 30)
    n0 = len(shard0) - 1 + sum(map(len, enc.encode_ordinary_batch(shard0)))  # with EOTs between
    for budget in (50, n0 + 30):  # inside shard 0; then into shard 1 (never asking for shard 2)
        prepare('c4', d, max_tokens=budget, val_fraction=0.1, quiet=True)
        meta = load_meta(d, 'c4')
        assert meta['train_tokens'] == budget and meta['val_tokens'] == budget // 10
        tokens = load_tokens(d, 'c4', 'train').tolist()
        expected = sum(([EOT] + enc.encode_ordinary(t) for t in shard0 + shard1), [])[1:]
        assert tokens[:budget] == expected[:budget]
    assert not os.path.exists(os.path.join(dl, 'c4-train.00002-of-01024.json.gz.part'))
    # a budget beyond the local shards needs shard 2: offline that fails, naming the URL and the fix
    with pytest.raises(DataError) as e:
        prepare('c4', d, max_tokens=10 * n0, quiet=True)
    assert 'c4-train.00002-of-01024.json.gz' in str(e.value) and 'downloads' in str(e.value)
    assert load_meta(d, 'c4')['train_tokens'] == n0 + 30  # the failed run left the last dataset
    assert [f for f in os.listdir(os.path.join(d, 'c4')) if f.endswith('.tmp')] == []


def test_c4_local_validation_shards_go_to_val(enc, tmp_path):
    tr = str(tmp_path / 'c4-train.00000-of-01024.json.gz')
    va = str(tmp_path / 'c4-validation.00000-of-00008.json.gz')
    c4_shard(tr, ['one train doc', 'two train doc'])
    c4_shard(va, ['the val doc'])
    prepare('c4', str(tmp_path / 'd'), input_paths=[tr, va], quiet=True)
    decoded = lambda split: enc.decode(load_tokens(str(tmp_path / 'd'), 'c4', split).tolist())
    assert decoded('val') == 'the val doc'
    assert decoded('train') == 'one train doc<|endoftext|>two train doc'


def test_bad_inputs_name_the_file(tmp_path):
    bad_gz = tmp_path / 'broken.json.gz'
    bad_gz.write_bytes(gzip.compress(b'{"text": "ok"}\n' * 100)[:-30])  # truncated download
    not_json = write(tmp_path / 'notes.jsonl', '{"text": "fine"}\nnot json at all\n')
    latin1 = tmp_path / 'old.txt'
    latin1.write_bytes('caf\xe9'.encode('latin-1'))
    for path, msg in ((bad_gz, 'broken.json.gz'), (not_json, 'notes.jsonl, line 2'),
                      (latin1, 'old.txt'), (tmp_path / 'absent.txt', 'absent.txt')):
        with pytest.raises(DataError, match=msg):
            prepare('input', str(tmp_path / 'd'), input_paths=[path], tokenizer='bytes', quiet=True)
    empty = write(tmp_path / 'empty.txt', '')
    with pytest.raises(DataError, match='too little'):
        prepare('input', str(tmp_path / 'd'), input_paths=[empty], tokenizer='bytes', quiet=True)
    assert not [f for _, _, fs in os.walk(tmp_path / 'd') for f in fs if f.endswith('.tmp')]


def test_a_missing_gpt2_vocabulary_says_how_to_work_offline(monkeypatch, tmp_path):
    import tiktoken

    def broken(name):
        raise ConnectionError('no network')
    monkeypatch.setattr(tiktoken, 'get_encoding', broken)
    with pytest.raises(DataError, match='TIKTOKEN_CACHE_DIR.*--tokenizer=bytes'):
        prepare('input', str(tmp_path), input_paths=[write(tmp_path / 'a.txt', 'hello')],
                quiet=True)


def test_bad_arguments_say_what_is_expected(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        prepare('nope', str(tmp_path))
    with pytest.raises(DataError, match='val_fraction must be between 0 and 1'):
        prepare('pydocs', str(tmp_path), val_fraction=1.5)
    with pytest.raises(DataError, match='--input=PATH'):
        prepare('input', str(tmp_path))

# -----------------------------------------------------------------------------
# downloads, without the internet: file:// URLs and a localhost server


def test_fetch_downloads_once_and_a_failure_says_how_to_work_offline(tmp_path):
    src = write(tmp_path / 'src.txt', 'payload ' * 1000)
    dest = str(tmp_path / 'dl' / 'got.txt')
    assert fetch('file://' + src, dest, quiet=True) == dest
    assert open(dest).read() == open(src).read() and not os.path.exists(dest + '.part')
    os.remove(src)
    assert fetch('file://' + src, dest, quiet=True) == dest  # present: not fetched again
    with pytest.raises(DataError) as e:
        fetch('https://example.com/big.zip', str(tmp_path / 'dl' / 'big.zip'), quiet=True)
    message = str(e.value)
    assert 'https://example.com/big.zip' in message and '--input' in message
    assert f"put it at {tmp_path / 'dl' / 'big.zip'}" in message


def test_fetch_resumes_an_interrupted_download_with_a_range_request(tmp_path):
    body, ranges = bytes(range(256)) * 400, []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            asked = self.headers['Range']   # 'bytes=N-'
            start = int(asked.split('=')[1].rstrip('-')) if asked else 0
            ranges.append(self.headers['Range'])
            self.send_response(206 if start else 200)
            self.send_header('Content-Length', str(len(body) - start))
            self.end_headers()
            self.wfile.write(body[start:])

        def log_message(self, *a):
            pass
    server = http.server.HTTPServer(('127.0.0.1', 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dest = str(tmp_path / 'file.bin')
        with open(dest + '.part', 'wb') as f:
            f.write(body[:30000])  # an interrupted earlier download
        fetch(f'http://127.0.0.1:{server.server_port}/file.bin', dest, quiet=True)
    finally:
        server.shutdown()
    assert ranges == ['bytes=30000-'] and open(dest, 'rb').read() == body

# -----------------------------------------------------------------------------
# command line


def run_prepare(*args):
    return subprocess.run([sys.executable, os.path.join(HERE, 'prepare.py'), *args],
                          capture_output=True, text=True, timeout=60)


def test_cli_unknown_dataset_exits_2(tmp_path):
    r = run_prepare('nonexistent', f'--data_dir={tmp_path}')
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("prepare.py: error: unknown dataset 'nonexistent'")
    assert 'pydocs' in r.stderr and 'python prepare.py nonexistent --input=PATH' in r.stderr
    assert 'Traceback' not in r.stderr


def test_cli_help_lists_datasets():
    r = run_prepare('--help')
    assert r.returncode == 0
    for name, (_, _, description) in data.DATASETS.items():
        assert f'  {name:<12} {description}' in r.stdout
