"""
Prepare a dataset once: documents -> tokens -> DATA_DIR/NAME/ with train.bin, val.bin and
meta.json, the format data.py reads (its docstring describes it).

    python prepare.py pydocs                       # the default: offline, byte-level tokens
    python prepare.py shakespeare                  # tiny shakespeare, GPT-2 BPE
    python prepare.py wikitext103                  # WikiText-103 (raw), GPT-2 BPE
    python prepare.py c4 --max_tokens=1e8          # English C4, shards streamed until the budget
    python prepare.py input --input=my.txt         # your files: .txt, .zip, .jsonl, .json.gz
    python prepare.py mine --input=a.txt --input=b.jsonl --tokenizer=bytes

Downloads land in DATA_DIR/downloads/ and are skipped when the file is already there, so offline
you can put them there by hand (or use --input). GPT-2 BPE needs tiktoken's vocabulary files:
offline, point TIKTOKEN_CACHE_DIR at them.
"""
import argparse, contextlib, gzip, importlib, inspect, io, json, os, pkgutil, re, subprocess, sys
import sysconfig, time, urllib.error, urllib.request, warnings, zipfile, zlib

import numpy as np
from tqdm import tqdm

from data import DATASETS, DEFAULT_DATA_DIR, DataError, get_tokenizer, token_dtype

BATCH_CHARS = 1 << 22  # tokenise ~4M characters at a time: work for the threads, little memory
C4_DEFAULT_MAX_TOKENS = 100_000_000

# -----------------------------------------------------------------------------
# document sources. Each yields documents: a str, or an iterator of str pieces of one
# document (so a huge file is never in memory at once), or None meaning "tokenise what
# you have now and check the budget before reading on" (see c4_shards).

def pydocs_documents():
    """Text that ships with Python: pydoc's help topics, then the docstrings of the standard
    library, module by module in sorted order, so one Python installation always gives the
    same bytes (about 2 MB). Returns (documents, description). It runs in a fresh interpreter:
    in this one, earlier imports may have patched the stdlib (typing_extensions replaces some
    typing helpers), and importing hundreds of modules here could have side effects."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = (f'import json, sys; sys.path[0] = {here!r}; import prepare; '
            'json.dump(prepare._pydocs_here(), sys.stdout)')
    # only what finds Python: no secrets in the corpus, no drift with the caller's settings
    env = {k: v for k, v in os.environ.items() if k in ('PATH', 'PYTHONPATH', 'SYSTEMROOT')}
    env |= {'PYTHONHASHSEED': '0', 'PYTHONUTF8': '1'}
    r = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                       encoding='utf-8')
    if r.returncode:
        raise DataError(f'building the pydocs corpus failed in a fresh {sys.executable}:\n'
                        f'{r.stderr[-3000:]}')
    return json.loads(r.stdout)

def _pydocs_here():
    from pydoc_data.topics import topics
    docs, seen, names = [topics[k].strip() for k in sorted(topics)], set(), []
    # skip modules with effects on import (a browser, a poem, GUIs), test suites, codec stubs, and
    # distutils (setuptools may swap in its own copy, making the text depend on the environment)
    skip = {'antigravity', 'this', 'idlelib', 'tkinter', 'turtle', 'turtledemo', 'test', 'tests',
            'ensurepip', 'distutils', 'encodings', 'pydoc_data', '__main__'}
    wanted = lambda n: not any(p in skip or p.startswith('_') for p in n.split('.'))
    stdlib = os.path.realpath(sysconfig.get_paths()['stdlib'])

    def load(name):
        try:
            return importlib.import_module(name)
        except (Exception, SystemExit):  # platform-specific modules (winreg, ...) just aren't here
            return None
    with (warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()),
          contextlib.redirect_stderr(io.StringIO())):
        warnings.simplefilter('ignore')  # deprecated modules warn on import and on attribute access
        modules = set()
        for name in filter(wanted, sys.stdlib_module_names):
            if m := load(name):
                modules.add(name)
                walk = pkgutil.walk_packages(getattr(m, '__path__', []), name + '.',
                                             onerror=lambda n: None)
                modules.update(i.name for i in walk if wanted(i.name))
        for name in sorted(modules):
            m = load(name)
            file = os.path.realpath(getattr(m, '__file__', None) or stdlib) if m is not None else ''
            if not file.startswith(stdlib):
                continue  # not importable, or a shim from site-packages: not shipped with Python
            names.append(name)
            entries = [(name, m)]
            for attr in sorted(dir(m)):
                try:
                    obj = getattr(m, attr)
                except Exception:  # lazy attributes that fail on this platform
                    continue
                defined_here = getattr(obj, '__module__', None) == name   # not a re-export
                if (inspect.isroutine(obj) or inspect.isclass(obj)) and defined_here:
                    entries.append((f'{name}.{attr}', obj))
                    if inspect.isclass(obj):
                        entries += [(f'{name}.{attr}.{k}', v) for k, v in sorted(vars(obj).items())
                                    if inspect.isroutine(v) or isinstance(v, property)]
            for head, obj in entries:
                doc = getattr(obj, '__doc__', None)
                if not isinstance(doc, str) or len(doc.strip()) < 20 or doc in seen:
                    continue  # (inherited and copied docstrings would repeat thousands of times)
                seen.add(doc)
                signature = _signature(obj) if inspect.isroutine(obj) else ''
                docs.append(f'{head}{signature}\n{inspect.cleandoc(doc)}')
    return docs, (f'Python {sys.version.split()[0]} pydoc_data.topics + docstrings of '
                  f'{len(names)} stdlib modules')

def _signature(obj):
    try:
        sig = inspect.signature(obj)
    except (ValueError, TypeError):
        return ''
    # show only literal defaults: others print addresses, sys.stdout or even os.environ (secrets!)
    plain = lambda v: v is None or type(v) in (bool, int, float, str, bytes) and len(repr(v)) < 40
    return str(sig.replace(parameters=[
        p if p.default is p.empty or plain(p.default) else p.replace(default=...)
        for p in sig.parameters.values()]))

@contextlib.contextmanager
def _reading(path):
    """Turn the many ways a file can be unreadable into one DataError that names it."""
    try:
        yield
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise DataError(f'could not read {path}: {e}. Expected UTF-8 text, a .zip of text files, '
                        f'or JSON lines (optionally .gz). If the file was downloaded it is '
                        f'probably truncated: delete it and run the preparation again.') from None

def text_file(path):
    """One document: a UTF-8 text file, read in ~1 MB pieces that end at a line end."""
    with _reading(path), open(path, encoding='utf-8') as f:
        while piece := f.read(1 << 20):
            yield piece + f.readline()  # finish the line, so that no word is split between pieces

def jsonl_docs(path):
    """Documents from JSON lines, optionally gzipped, one {"text": ...} per line, as C4 ships
    them."""
    opener = gzip.open if path.endswith('.gz') else open
    with _reading(path), opener(path, 'rt', encoding='utf-8') as f:
        for i, line in enumerate(f, 1):
            try:
                doc = json.loads(line) if line.strip() else {'text': ''}
            except ValueError:
                doc = None
            if not isinstance(doc, dict) or not isinstance(doc.get('text'), str):
                raise DataError(f'{path}, line {i}: expected one JSON object with a "text" string '
                                f'per line, got {line[:60]!r}. Is this a JSON-lines file?')
            if doc['text']:
                yield doc['text']

def zip_docs(path):
    """Each file inside a zip is one text document, in name order."""
    with _reading(path), zipfile.ZipFile(path) as zf:
        files = [m for m in zf.namelist() if not m.endswith('/') and not m.startswith('__MACOSX/')]
        for member in sorted(files):
            yield zf.read(member).decode('utf-8')

def wikitext_docs(path, split):
    """The articles of wiki.{split}.raw inside the WikiText zip. An article starts at a top-level
    heading line ' = Title = ', so the EOT token goes between articles as between C4 documents."""
    with _reading(path), zipfile.ZipFile(path) as zf:
        members = [m for m in zf.namelist()
                   if m.endswith((f'wiki.{split}.raw', f'wiki.{split}.tokens'))]
        if not members:
            raise DataError(f'{path} holds no wiki.{split}.raw: expected the WikiText-103 zip with '
                            f'wikitext-103-raw/wiki.train.raw and wiki.valid.raw; it holds '
                            f'{zf.namelist()[:6]}')
        article = []
        for line in io.TextIOWrapper(zf.open(members[0]), encoding='utf-8'):
            if re.match(r' = [^=].* = $', line.rstrip('\n')) and ''.join(article).strip():
                yield ''.join(article)
                article = []
            article.append(line)
        if ''.join(article).strip():
            yield ''.join(article)

def file_docs(paths):
    for path in paths:
        if path.endswith('.zip'):
            yield from zip_docs(path)
        elif path.endswith(('.jsonl', '.json', '.jsonl.gz', '.json.gz')):
            yield from jsonl_docs(path)
        else:
            yield text_file(path)

def c4_shards(url, downloads, quiet, split='train'):
    """C4 documents shard after shard, each shard downloaded only when reached. The None after a
    shard makes write_tokens check the budget before it asks for (and downloads) the next one."""
    n_shards = 1024 if split == 'train' else 8
    for i in range(n_shards if split == 'train' else 1):  # validation: shard 0 of 8 is plenty
        file = f'c4-{split}.{i:05d}-of-{n_shards:05d}.json.gz'
        path = fetch(f'{url.rstrip("/")}/{file}', os.path.join(downloads, file), quiet)
        yield from jsonl_docs(path)
        yield None

def fetch(url, dest, quiet=False):
    """Download url to dest, unless dest exists. Bytes go to dest.part, which the next call resumes
    with an HTTP Range request after an interruption; dest appears only once complete."""
    if os.path.exists(dest):
        return dest
    os.makedirs(os.path.dirname(dest) or '.', exist_ok=True)
    part = dest + '.part'
    have = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {'User-Agent': 'nanogpt-data'} | ({'Range': f'bytes={have}-'} if have else {})
    offline = (f'To work offline, download {url} by hand and put it at {dest}, '
               f'or pass --input=PATH to it.')
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as r:
            if getattr(r, 'status', None) != 206:
                have = 0  # the server ignored the Range (or there was none): start over
            length = r.headers.get('Content-Length', '')
            total = have + int(length) if length.isdigit() else None
            bar = tqdm(total=total, initial=have, unit='B', unit_scale=True,
                       desc=os.path.basename(dest), disable=quiet)
            with open(part, 'ab' if have else 'wb') as f, bar:
                while chunk := r.read(1 << 20):
                    bar.update(f.write(chunk))
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # our .part no longer fits the file on the server: start over
            os.remove(part)
            return fetch(url, dest, quiet)
        raise DataError(f'downloading {url} failed: HTTP {e.code} {e.reason}. {offline}') from None
    except (urllib.error.URLError, OSError, ValueError) as e:  # also timeouts, resets, bad URLs
        resume = f'Running again resumes from {part}. ' if os.path.exists(part) else ''
        raise DataError(f'downloading {url} failed: {e}. {resume}{offline}') from None
    if total is not None and os.path.getsize(part) < total:
        raise DataError(f'downloading {url} stopped after {os.path.getsize(part):,} of {total:,} '
                        f'bytes. Run again to resume it. {offline}')
    os.replace(part, dest)
    return dest

def dataset_documents(kind, input_paths, url, downloads, quiet):
    """(train documents, val documents, source) of a dataset of this kind, from the local
    input_paths if any, else downloaded from url into downloads/. val_docs is the dataset's own
    validation split, or None if it has none (then prepare() splits off the tail of train)."""
    val_docs, source = None, ' '.join(input_paths) or url
    download = lambda file: fetch(url, os.path.join(downloads, file), quiet)
    if kind == 'pydocs':
        train_docs, source = pydocs_documents()
    elif kind == 'shakespeare':
        train_docs = file_docs(input_paths or [download('tinyshakespeare.txt')])
    elif kind == 'wikitext103':
        path = input_paths[0] if input_paths else download('wikitext-103-raw-v1.zip')
        train_docs, val_docs = wikitext_docs(path, 'train'), wikitext_docs(path, 'valid')
    elif kind == 'c4':
        if input_paths:  # local shards: validation files go to val
            val_paths = [p for p in input_paths if 'validation' in os.path.basename(p)]
            train_docs = file_docs([p for p in input_paths if p not in val_paths])
            val_docs = file_docs(val_paths) if val_paths else None
        else:
            train_docs = c4_shards(url, downloads, quiet)
            val_docs = c4_shards(url, downloads, quiet, 'validation')
    else:
        train_docs = file_docs(input_paths)
    return train_docs, val_docs, source

# -----------------------------------------------------------------------------
# preparation: documents -> tokens -> .bin files

def write_tokens(f, docs, tok, bar, max_tokens=None):
    """Tokenise documents into the open binary file f with tok['sep'] between documents, in batches,
    so memory stays small for any corpus size. Stops at max_tokens; returns the count written."""
    dtype = token_dtype(tok['vocab_size'])
    written, texts, starts = 0, [], []  # starts[i]: texts[i] begins a document (vs. continues one)

    def flush(written):
        out = []
        for ids, start in zip(tok['encode_batch'](texts), starts):
            if start and (written or out):  # between documents, not before the first
                out.append(np.array(tok['sep'], dtype))
            out.append(np.asarray(ids, dtype))
        out = np.concatenate(out)[:None if max_tokens is None else max_tokens - written]
        out.tofile(f)
        bar.update(len(out))
        texts.clear()
        starts.clear()
        return written + len(out)
    chars = 0
    for doc in docs:
        for i, text in enumerate([doc] if doc is None or isinstance(doc, str) else doc):
            if text is not None:
                texts.append(text)
                starts.append(i == 0)
                chars += len(text)
            if texts and (text is None or chars >= BATCH_CHARS):
                written, chars = flush(written), 0
                if max_tokens is not None and written >= max_tokens:
                    return written  # (unread files close as their generators are dropped)
    return flush(written) if texts else written

def split_tail(train_path, val_path, dtype, val_fraction, boundary):
    """For data without a validation split of its own: move the last val_fraction of the tokens to
    val, starting after a document boundary if one is near, so no document is cut in two."""
    empty = os.path.getsize(train_path) == 0   # (a memmap of an empty file is an error)
    tokens = np.zeros(0, dtype) if empty else np.memmap(train_path, dtype, mode='r')
    n = len(tokens)
    if n < 2:
        raise DataError(f'the input gave only {n} token(s), too little to make a train and a val '
                        f'split. Are the input files empty?')
    n_val = min(n - 1, max(1, int(n * val_fraction)))
    lo = max(1, n - 2 * n_val)  # look back at most n_val tokens for a boundary
    hits = np.flatnonzero(tokens[lo:n - n_val] == boundary)
    cut = lo + hits[-1] + 1 if len(hits) else n - n_val
    tokens[cut:].tofile(val_path)
    del tokens  # unmap before truncating
    os.truncate(train_path, cut * np.dtype(dtype).itemsize)
    return cut, n - cut

def prepare(name, data_dir=DEFAULT_DATA_DIR, input_paths=None, max_tokens=None, val_fraction=0.01,
            url=None, quiet=False, tokenizer=None):
    """Prepare dataset `name` into data_dir/name/ and return that folder. With input_paths, a known
    dataset reads those local files instead of downloading; 'input' (named after the first file)
    or any new name makes a dataset of them. max_tokens caps the training tokens."""
    t0, input_paths = time.time(), [os.fspath(p) for p in input_paths or []]
    if not 0 < val_fraction < 1:
        raise DataError(f'val_fraction must be between 0 and 1 (the share held out for val), '
                        f'got {val_fraction}')
    if max_tokens is not None and max_tokens < 1:
        raise DataError(f'max_tokens must be a positive number of tokens, got {max_tokens}')
    for p in input_paths:
        if not os.path.isfile(p):
            raise DataError(f'input file {p} does not exist (or is not a file)')
    if name not in DATASETS and not input_paths:
        raise DataError(f"unknown dataset {name!r}. Known datasets: {', '.join(DATASETS)}. To make "
                        f"a dataset from your own files, pass them: "
                        f"python prepare.py {name} --input=PATH")
    if name == 'input':
        if not input_paths:
            raise DataError('the input dataset is made from your own files: '
                            'pass them with --input=PATH')
        name = os.path.basename(input_paths[0]).split('.')[0] or 'input'
    if name == 'pydocs' and input_paths:
        raise DataError('pydocs is built from the running Python itself and takes no --input files')
    kind = name if name in DATASETS else 'input'
    tok_name, default_url = DATASETS[kind][:2]
    if url and not default_url:
        raise DataError(f'--url applies to downloaded datasets only, not to {name}')
    url = url or default_url
    tok = get_tokenizer(tokenizer or tok_name)   # a missing tokenizer fails before any download
    downloads, dtype = os.path.join(data_dir, 'downloads'), token_dtype(tok['vocab_size'])
    val_budget = None  # a cap on val tokens, for val data of its own that is larger than needed
    if kind == 'c4':
        max_tokens = max_tokens or C4_DEFAULT_MAX_TOKENS
        # C4's validation split is large: keep val in proportion to train
        val_budget = max(1, int(max_tokens * val_fraction))
    train_docs, val_docs, source = dataset_documents(kind, input_paths, url, downloads, quiet)

    folder = os.path.join(data_dir, name)
    os.makedirs(folder, exist_ok=True)
    meta_path, train_tmp, val_tmp = (os.path.join(folder, f)
                                     for f in ('meta.json', 'train.bin.tmp', 'val.bin.tmp'))
    progress = lambda split, total: tqdm(total=total, unit='tok', unit_scale=True,
                                         desc=f'{name} {split}', disable=quiet)
    # write to .tmp files and rename at the end: an interruption never leaves a dataset that
    # looks complete
    try:
        with open(train_tmp, 'wb') as f, progress('train', max_tokens) as bar:
            n_train = write_tokens(f, train_docs, tok, bar, max_tokens)
        if val_docs is None:
            n_train, n_val = split_tail(train_tmp, val_tmp, dtype, val_fraction, tok['boundary'])
        else:
            with open(val_tmp, 'wb') as f, progress('val', val_budget) as bar:
                n_val = write_tokens(f, val_docs, tok, bar, val_budget)
        for split, n in (('train', n_train), ('val', n_val)):
            if n == 0:
                raise DataError(f'preparing {name} gave no {split} tokens: its input ({source}) '
                                f'holds no text')
        if os.path.exists(meta_path):
            os.remove(meta_path)  # from here until the new meta.json exists: "not prepared"
        os.replace(train_tmp, os.path.join(folder, 'train.bin'))
        os.replace(val_tmp, os.path.join(folder, 'val.bin'))
    finally:
        for p in (train_tmp, val_tmp):
            if os.path.exists(p):
                os.remove(p)
    meta = dict(name=name, tokenizer=tok['name'], vocab_size=tok['vocab_size'],
                dtype=np.dtype(dtype).name, train_tokens=int(n_train), val_tokens=int(n_val),
                source=source)
    with open(meta_path + '.tmp', 'w', encoding='utf-8') as f:
        json.dump(meta, f, indent=2)
    os.replace(meta_path + '.tmp', meta_path)
    if not quiet:
        print(f'{folder}: {n_train:,} train + {n_val:,} val tokens ({tok["name"]}) '
              f'in {time.time() - t0:.1f}s')
    return folder

# -----------------------------------------------------------------------------
# command line: python prepare.py NAME [--input PATH ...] [options]

def _count(s):
    try:
        return int(float(s))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number of tokens such as 1000000 or 1e6, '
                                         f'got {s!r}') from None

def main(argv=None):
    listing = '\n'.join(f'  {k:<12} {v[2]}' for k, v in DATASETS.items())
    p = argparse.ArgumentParser(
        description='Prepare dataset NAME into DATA_DIR/NAME/ (train.bin, val.bin, meta.json).',
        epilog=f'datasets:\n{listing}\nAny other NAME with --input makes a dataset of that name.',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('name', help='the dataset (listed below)')
    p.add_argument('--data_dir', default=DEFAULT_DATA_DIR,
                   help='where datasets live (default: %(default)s)')
    p.add_argument('--input', dest='input_paths', action='extend', nargs='+', metavar='PATH',
                   default=[],
                   help='local file(s): instead of downloading, or to build a dataset from')
    p.add_argument('--max_tokens', type=_count,
                   help='stop after this many training tokens (c4 default: 1e8)')
    p.add_argument('--val_fraction', type=float, default=0.01,
                   help='share held out for val when the data has no validation split '
                        '(default: %(default)s)')
    p.add_argument('--url', help='download from here instead of the default')
    p.add_argument('--tokenizer', choices=['bytes', 'gpt2'],
                   help="override the dataset's tokenizer")
    p.add_argument('--quiet', action='store_true', help='no progress bars')
    a = p.parse_args(argv)
    try:
        prepare(a.name, a.data_dir, a.input_paths, a.max_tokens, a.val_fraction, a.url, a.quiet,
                a.tokenizer)
    except DataError as e:
        print(f'prepare.py: error: {e}', file=sys.stderr)
        sys.exit(2)

if __name__ == '__main__':
    main()
