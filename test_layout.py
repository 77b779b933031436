"""The shape of the house: imports point one way, no file leans on anything outside the repository,
and no function is longer than a reader can follow (about 80 lines). Parsed, not run."""
import ast
import glob
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(HERE, '*.py')))
PROJECT = {name[:-3] for name in SOURCES}


def project_imports(path):
    """Project modules a file imports anywhere in it (top level, inside functions, under __main__)."""
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding='utf-8').read())):
        if isinstance(node, ast.Import):
            found |= {a.name.split('.')[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split('.')[0])
    return found & PROJECT


def import_graph():
    return {name[:-3]: project_imports(os.path.join(HERE, name)) - {name[:-3]} for name in SOURCES}


def test_spa_imports_nothing_of_the_project():
    assert import_graph()['spa'] == set()
    out = subprocess.run([sys.executable, '-c', 'import sys, spa; print(sorted(m for m in sys.modules if m in '
                          f'{sorted(PROJECT)!r} or m == "torch"))'], capture_output=True, text=True, check=True, cwd=HERE)
    assert out.stdout.split() == ["['spa']"]   # not even torch


def test_nothing_imports_train_and_there_is_no_cycle():
    graph = import_graph()
    assert [m for m, deps in graph.items() if 'train' in deps and not m.startswith('test_')] == []
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
    """spa <- model <- checkpoint / report <- train; data reads, prepare writes, and neither knows the model."""
    graph = import_graph()
    assert graph['model'] == {'spa'}
    assert graph['data'] == set() and graph['prepare'] == {'data'}
    assert 'train' not in graph['sample'] and 'train' not in graph['bench']


def test_no_function_is_longer_than_about_80_lines():
    long = []
    for name in SOURCES:
        if name.startswith('test_'):
            continue
        for node in ast.walk(ast.parse(open(os.path.join(HERE, name), encoding='utf-8').read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == []


def test_no_file_points_outside_the_repository():
    """A clone has only itself: no sibling folders, no machine paths. .ci/run alone may offer tiktoken's cache
    from a folder beside the clone."""
    tracked = subprocess.run(['git', 'ls-files'], capture_output=True, text=True, cwd=HERE).stdout.split()
    assert tracked, 'not a git checkout'
    bad = []
    for path in tracked:
        if path == '.ci/run' or not path.endswith(('.py', '.md', '.sh', '.txt', '.json')):
            continue
        text = open(os.path.join(HERE, path), encoding='utf-8', errors='replace').read()
        if re.search('|'.join([r'\.\./' + 'shared', '/' + 'work/', 'method' + r'\.md']), text):
            bad.append(path)
    assert bad == []
