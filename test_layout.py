"""The shape of the house: imports point one way, no file leans on anything outside the repository,
no function is longer than a reader can follow (about 80 lines) and no line of the core is wider
than 100 characters. Parsed, not run."""
import ast
import glob
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# the root files and the study's folder: 'spa', 'model', ..., 'study/study', 'study/compare'
SOURCES = sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, '*.py'))
                 + glob.glob(os.path.join(HERE, 'study', '*.py')))
MODULES = {path[:-3] for path in SOURCES}
CORE = ('spa.py', 'model.py', 'train.py', 'data.py', 'checkpoint.py', 'prepare.py',
        'configurator.py')

# Imports point one way, down this list: a file imports only from the rows above its own.
ORDER = [
    ('spa', 'configurator', 'data', 'optim', 'hardware', 'fastpaths'),  # import nothing of ours
    ('model', 'prepare'),
    ('checkpoint', 'report'),
    ('train', 'sample', 'bench', 'lesson'),                # the commands
]


def parse(path):
    with open(os.path.join(HERE, path), encoding='utf-8') as f:
        return ast.parse(f.read())


def resolve(name, folder):
    """The project module an import name means, as Python finds it from a file in `folder`: a root
    module first (the study puts the root on sys.path), then one beside the file, then the only
    module of that name anywhere (a test that puts a folder on sys.path)."""
    top = name.split('.')[0]
    candidates = [name.replace('.', '/'), top, f'{folder}/{top}' if folder else None]
    for candidate in candidates:
        if candidate in MODULES:
            return candidate
    same_name = [m for m in MODULES if m.split('/')[-1] == top]
    return same_name[0] if len(same_name) == 1 else None


def project_imports(path):
    """Project modules a file imports anywhere in it (top level, in functions, under __main__)."""
    names = set()
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f'{node.module}.{a.name}' for a in node.names}
    found = {resolve(name, os.path.dirname(path)) for name in names}
    return found - {None, path[:-3]}


def import_graph():
    return {path[:-3]: project_imports(path) for path in SOURCES}


def is_test(module):
    return module.split('/')[-1].startswith('test_')


def test_spa_imports_nothing_of_the_project_not_even_torch():
    assert import_graph()['spa'] == set()
    probe = (f'import sys, spa; print(sorted(m for m in sys.modules '
             f'if m in {sorted(MODULES)!r} or m == "torch"))')
    out = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True,
                         check=True, cwd=HERE)
    assert out.stdout.split() == ["['spa']"]


def test_nothing_imports_train_and_there_is_no_cycle():
    graph = import_graph()
    assert [m for m, deps in graph.items() if 'train' in deps and not is_test(m)] == []
    state = {}

    def visit(m, path):
        if state.get(m) == 'open':
            raise AssertionError(f"import cycle: {' -> '.join(path + [m])}")
        if state.get(m) != 'done':
            state[m] = 'open'
            for d in sorted(graph.get(m, ())):
                visit(d, path + [m])
            state[m] = 'done'
    for m in graph:
        visit(m, [])


def test_the_one_way_order():
    """Imports point one way, down ORDER; each file imports only from the rows above its own:

        spa  configurator  data  optim  hardware   the math, the settings, the tokens, the
        fastpaths                                  optimizers, the machine, the CPU fast paths:
                                                   nothing of the project
        model  prepare                             model <- spa, configurator, fastpaths;
                                                   prepare <- data
        checkpoint  report                         what a run saves and what it prints
        train  sample  bench  lesson               the commands; none imports another
        study/                                     the study: the modules above but train, and
                                                   its own files

    So spa.py reads alone, the model knows nothing of data or training, and the read path
    (data.py) knows nothing of preparation or of the model."""
    graph = import_graph()
    above = set()
    for row in ORDER:
        for m in row:
            assert graph[m] <= above, f'{m} imports {sorted(graph[m] - above)}, not above it'
        above |= set(row)
    assert graph['model'] <= {'spa', 'configurator', 'fastpaths'}, \
        f"model imports {sorted(graph['model'])}"
    assert graph['prepare'] == {'data'}, f"prepare imports {sorted(graph['prepare'])}"
    study = {m for m in graph if m.startswith('study/')}
    for m in study:
        assert graph[m] <= (above - {'train'}) | study, f'{m} imports {sorted(graph[m])}'


def test_every_root_module_has_a_place_in_the_order():
    placed = {m for row in ORDER for m in row}
    assert sorted(m for m in MODULES if '/' not in m and not is_test(m)) == sorted(placed)


def test_no_function_is_longer_than_about_80_lines():
    long = []
    for path in SOURCES:
        if is_test(path):
            continue
        functions = (n for n in ast.walk(parse(path))
                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
        long += [f'{path}:{f.name} ({f.end_lineno - f.lineno + 1} lines)' for f in functions
                 if f.end_lineno - f.lineno + 1 > 80]
    assert long == []


def test_no_line_of_the_core_is_longer_than_100_characters():
    long = []
    for name in CORE:
        with open(os.path.join(HERE, name), encoding='utf-8') as f:
            long += [f'{name}:{i} ({len(line)})' for i, line in enumerate(f.read().splitlines(), 1)
                     if len(line) > 100]
    assert long == []


def test_no_file_points_outside_the_repository():
    """A clone has only itself: no sibling folders, no machine paths. .ci/run alone may offer
    tiktoken's cache from a folder beside the clone."""
    tracked = subprocess.run(['git', 'ls-files'], capture_output=True, text=True,
                             cwd=HERE).stdout.split()
    assert tracked, 'not a git checkout'
    bad = []
    for path in tracked:
        if path == '.ci/run' or not path.endswith(('.py', '.md', '.sh', '.txt', '.json')):
            continue
        text = open(os.path.join(HERE, path), encoding='utf-8', errors='replace').read()
        if re.search('|'.join([r'\.\./' + 'shared', '/' + 'work/', 'method' + r'\.md']), text):
            bad.append(path)
    assert bad == []
