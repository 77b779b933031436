"""
The docs tell the truth. Every results table in RESULTS.md is the one the study's driver writes
from the committed results (study/study_curves.json), and each benchmark table is a committed
benchmark's output. Every shell command in a ```-fenced block of README.md and RESULTS.md runs: as
written where that takes seconds, shrunk (a tiny model, two steps, --dry_run) where it would take
minutes, and inside a temporary folder. A command that cannot run on this machine (a GPU, a
download, several processes, a test run of this very suite) is checked without running it: the
script exists, its config files exist, and every --key it passes is one the script lists in its
--help. The commands are read from the markdown, so a new command is tested as soon as it is
written, and one the test does not know how to run fails until the test learns it.
"""
import concurrent.futures
import functools
import json
import os
import re
import shlex
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.abspath(__file__))
DOCS = ('README.md', 'RESULTS.md')
BENCHMARKS = ('bench_cpu_eager.json', 'bench_cpu_family.json')   # in assets/
PROGRAMS = ('python', 'torchrun', 'pip', 'bash')
# A model small enough that a run is a second of compute, whatever the command asked for (later
# keys win, so these override the command's own).
TINY_RUN = ['--max_iters=2', '--eval_interval=2', '--eval_iters=1', '--warmup_iters=0',
            '--n_layer=2', '--n_embd=32', '--n_head=2', '--block_size=16', '--batch_size=2',
            '--sample_tokens=0', '--device=cpu']


def read(name):
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def fenced_commands(doc):
    """Every line of a ```-fenced block in doc that starts with a program, without its comment."""
    commands, fenced = [], False
    for line in read(doc).splitlines():
        if line.startswith('```'):
            fenced = not fenced
        elif fenced and line.split()[:1] and line.split()[0] in PROGRAMS:
            commands.append(shlex.join(shlex.split(line, comments=True)))
    return commands


COMMANDS = [(doc, command) for doc in DOCS for command in fenced_commands(doc)]


def has_module(name):
    try:
        __import__(name)
        return True
    except ImportError:
        return False


# -----------------------------------------------------------------------------
# what the test runs for each documented command

def plan(command, tmp):
    """('run', argv, cwd, env, after_default_run) for a command that runs here (shrunk where it
    would take minutes), ('check', script, args) for one that can only be checked, or
    ('unknown', reason). tmp/out stands for the out/ of the README's default run."""
    argv = shlex.split(command)
    env = dict(os.environ, STUDY_OUT=os.path.join(tmp, 'study_out'), WANDB_MODE='offline',
               WANDB_DIR=tmp)
    out, data = os.path.join(tmp, 'out'), f"--data_dir={os.path.join(tmp, 'data')}"
    if argv[:4] == ['python', '-m', 'pytest', '-q']:
        return ('ci',)   # running the suite inside itself: checked against .ci/run instead
    if argv[0] == 'pip':
        return ('run', [sys.executable, '-m', 'pip', *argv[1:2], '--dry-run', '--no-index',
                        '--quiet', *argv[2:]], ROOT, env, False)
    if argv[0] == 'torchrun':   # several processes: its options and the train.py command
        script = next(a for a in argv if a.endswith('.py'))
        return ('check', script, argv[argv.index(script) + 1:], argv[1:argv.index(script)])
    if argv[0] != 'python' or len(argv) < 2:
        return ('unknown', f"no rule for {argv[0]!r}")
    script, args = argv[1], argv[2:]
    python = [sys.executable, os.path.join(ROOT, script)]
    run = lambda extra, cwd=ROOT, after=False: ('run', python + args + extra, cwd, env, after)
    if script == 'train.py':
        if 'wandb_log=True' in command and not has_module('wandb'):
            return ('check', script, args)   # an optional package this machine lacks
        if '--init_from=resume' in args or args == []:
            return run([*TINY_RUN, data, f'--out_dir={out}'], after=bool(args))
        own_dir = os.path.join(tmp, 'runs', re.sub(r'\W+', '_', command))
        return run([*TINY_RUN, data, f'--out_dir={own_dir}'])
    if script == 'sample.py':
        return run([f'--out_dir={out}', '--max_new_tokens=5'], after=True)
    if script == 'study/compare.py':
        if args != ['out']:
            return ('check', script, args)   # runs of paper scale
        return ('run', python + [out], ROOT, env, True)
    if script == 'prepare.py':
        inputs = args[args.index('--input') + 1:] if '--input' in args else []
        if args[0] != 'pydocs' and not inputs:
            return ('check', script, args)   # a download
        write_inputs([a for a in inputs if not a.startswith('--')], tmp)
        return run([f"--data_dir={os.path.join(tmp, 'prepared')}", '--quiet'], cwd=tmp)
    if script == 'model.py':
        return run(['--n_layer=3', '--block_size=16', '--n_embd=32', '--batch_size=2'])
    if script == 'bench.py':
        if '--device=cuda' in args:
            return ('check', script, args)
        return run(['--models=preln', '--n_layer=1', '--n_embd=32', '--n_head=2',
                    '--block_size=16', '--batch_size=1', '--steps=1', '--warmup=0',
                    f"--json={os.path.join(tmp, 'bench.json')}"])
    if script == 'study/study.py':
        if args[:1] == ['table']:
            return run([f"--results={os.path.join(tmp, 'results')}"])
        return run([] if args[:1] == ['restore'] else ['--dry_run'])
    if script == 'lesson.py':
        return ('check', script, args)   # minutes on a laptop; test_lesson.py runs it small
    return ('unknown', f"no rule for {script}")


def write_inputs(names, folder):
    """Small files of each kind prepare.py reads: text, a zip of text, JSON lines."""
    for name in names:
        path = os.path.join(folder, name)
        if name.endswith('.zip'):
            with zipfile.ZipFile(path, 'w') as z:
                z.writestr('inside.txt', 'Text inside a zip archive. ' * 400)
        elif name.endswith('.jsonl'):
            with open(path, 'w') as f:
                f.writelines(json.dumps({'text': f'Record {i} of a JSON lines file.'}) + '\n'
                             for i in range(400))
        else:
            with open(path, 'w') as f:
                f.write('Plain text, one more input file. ' * 400)


@functools.lru_cache(maxsize=None)
def help_text(script):
    p = subprocess.run([sys.executable, os.path.join(ROOT, script), '--help'], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout + p.stderr


def check_statically(script, args, launcher_args=()):
    """What can be checked without running: the problems found, [] if none."""
    problems = []
    if not os.path.isfile(os.path.join(ROOT, script)):
        return [f"{script} does not exist"]
    rc, text = help_text(script)
    if rc != 0:
        problems.append(f"{script} --help exited {rc}: {text[-500:]}")
    for arg in args:
        if arg.startswith('--'):
            key = arg[2:].split('=')[0]
            if not re.search(rf'\b{re.escape(key)}\b', text):
                problems.append(f"{script} has no key {key!r} (not in its --help)")
        elif arg.endswith('.py') and not os.path.isfile(os.path.join(ROOT, arg)):
            problems.append(f"config file {arg} does not exist")
    if launcher_args:
        rc, text = torchrun_help()
        for arg in launcher_args:
            key = arg[2:].split('=')[0]
            if not re.search(rf'--{re.escape(key)}\b', text):
                problems.append(f"torchrun has no option --{key}")
    return problems


@functools.lru_cache(maxsize=None)
def torchrun_help():
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--help'],
                       capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout


def execute(step):
    _, argv, cwd, env, _ = step
    p = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return p.returncode, (p.stdout + p.stderr)[-3000:]


@pytest.fixture(scope='module')
def outcomes(tmp_path_factory):
    """{command: (status, output)} of every documented command, run two at a time (the ones that
    read the default run's out/ after it)."""
    tmp = str(tmp_path_factory.mktemp('docs'))
    prepared = subprocess.run([sys.executable, os.path.join(ROOT, 'prepare.py'), 'pydocs',
                               f"--data_dir={os.path.join(tmp, 'data')}", '--quiet'],
                              capture_output=True, text=True, timeout=120)
    assert prepared.returncode == 0, prepared.stderr
    plans = {command: plan(command, tmp) for _, command in COMMANDS}
    result = {}
    for command, step in plans.items():
        if step[0] == 'ci':
            ci = read(os.path.join('.ci', 'run')).splitlines()
            ok = 'python -m pytest -q' in ci
            result[command] = (0 if ok else 1, '' if ok else ".ci/run does not run " + command)
        elif step[0] == 'check':
            problems = check_statically(*step[1:])
            result[command] = (1 if problems else 0, '\n'.join(problems))
        elif step[0] == 'unknown':
            result[command] = (1, f"test_docs.py does not know how to run this command "
                                  f"({step[1]}): add a rule to plan()")
    for after in (False, True):
        todo = [c for c, s in plans.items() if s[0] == 'run' and s[4] == after]
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            result.update(zip(todo, pool.map(execute, [plans[c] for c in todo])))
    return result, tmp


@pytest.mark.parametrize('doc, command', COMMANDS, ids=[c for _, c in COMMANDS])
def test_documented_command_works(outcomes, doc, command):
    status, output = outcomes[0][command]
    assert status == 0, f"{doc}: `{command}` failed:\n{output}"


def test_the_docs_quote_the_commands_this_test_relies_on():
    commands = [c for _, c in COMMANDS]
    for needed in ('pip install -r requirements.txt', 'python train.py', 'python -m pytest -q',
                   'python study/study.py table', 'python study/study.py restore'):
        assert needed in commands, f"the docs no longer quote `{needed}` in a fenced block"


# -----------------------------------------------------------------------------
# the results tables

def blocks(markdown):
    """The tables and bullet lists of a markdown text: runs of lines starting with '|' or '- '."""
    found, current, kind = [], [], None
    for line in markdown.splitlines() + ['']:
        line_kind = '|' if line.startswith('|') else '- ' if line.startswith('- ') else None
        if line_kind != kind and current:
            found.append('\n'.join(current))
            current = []
        kind = line_kind
        if line_kind:
            current.append(line)
    return found


@pytest.fixture(scope='module')
def driver_tables(outcomes):
    """study_tables.md as the driver writes it now from the committed results."""
    path = os.path.join(outcomes[1], 'results', 'study_tables.md')
    assert os.path.isfile(path), "`python study/study.py table` did not write study_tables.md"
    with open(path) as f:
        return f.read()


def tables_not_from_the_results(results_md, driver_tables):
    """The tables of numbers in results_md that neither the study's driver nor a committed
    benchmark (assets/bench_cpu_*.json, BENCHMARKS) wrote."""
    benches = [json.loads(read(os.path.join('assets', name))) for name in BENCHMARKS]
    return [table for table in blocks(results_md) if table.startswith('|')
            and re.search(r'\d\.\d', table) and table not in driver_tables
            and not any(is_the_benchmark(table, bench) for bench in benches)]


def is_the_benchmark(table, bench):
    """Rows, one per preset of the run in its order: preset, training tokens/s, x preln (train /
    forward), x torch-ref (the same), and the parameter count where the header has that column."""
    lines = table.splitlines()
    if not lines[0].startswith('| preset | training tokens/s |'):
        return False
    params = lines[0].rstrip(' |').endswith('| parameters')
    rows = [[c.strip() for c in line.strip('|').split('|')] for line in lines[2:]]
    return rows == [[name, f"{b['train_tokens_per_s']:.0f}",
                     f"{b['ratio_to_preln']:.3f} / {b['fwd_ratio_to_preln']:.3f}",
                     f"{b['ratio_to_ref']:.3f} / {b['fwd_ratio_to_ref']:.3f}",
                     *([f"{b['params']:,}"] if params else [])]
                    for name, b in bench.items()]


def test_the_committed_tables_are_what_the_driver_writes(driver_tables):
    assert driver_tables == read(os.path.join('study', 'study_tables.md')), \
        "study/study_tables.md is stale: run `python study/study.py table`"


def test_every_driver_table_is_in_results_md(driver_tables):
    results = read('RESULTS.md')
    for block in blocks(driver_tables):
        assert block in results, f"RESULTS.md lacks the driver's block (or changed it):\n{block}"


def test_every_table_of_numbers_in_results_md_comes_from_the_results(driver_tables):
    results = read('RESULTS.md')
    assert tables_not_from_the_results(results, driver_tables) == []
    for number in ('2.637 (2.613-2.656)', '| 739 | 1.000 / 1.000 |',   # and the check can fail
                   '| 1527 | 1.000 / 1.000 |', '| 9,509,120 |'):
        assert number in results
        changed = results.replace(number, number.replace('1', '2'), 1)
        assert len(tables_not_from_the_results(changed, driver_tables)) == 1


def test_every_committed_benchmark_has_its_table_in_results_md():
    tables = [t for t in blocks(read('RESULTS.md')) if t.startswith('| preset | training')]
    for name in BENCHMARKS:
        bench = json.loads(read(os.path.join('assets', name)))
        assert any(is_the_benchmark(t, bench) for t in tables), \
            f"RESULTS.md has no table rendered from assets/{name} (or it is stale)"


# -----------------------------------------------------------------------------
# the names the docs cite

def test_every_function_and_test_the_docs_cite_exists():
    import importlib
    defined = {name for path in os.listdir(ROOT) if re.fullmatch(r'test_\w+\.py', path)
               for name in re.findall(r'^def (test_\w+)', read(path), re.M)}
    missing = []
    for doc in (*DOCS, 'MATH.md'):
        for cited in re.findall(r'`([^`\s]+)`', read(doc)):
            name = cited.split('::')[-1].split('[')[0]
            if re.fullmatch(r'test_\w+', name) and name not in defined:
                missing.append(f"{doc}: {cited}")
            module, _, path = cited.partition('.')
            ours = ('spa', 'model', 'optim', 'hardware', 'fastpaths', 'GPT', 'Attention')
            if module in ours and re.fullmatch(r'[\w.]+', path) and not path.endswith('py'):
                obj = importlib.import_module('model' if module in ('GPT', 'Attention')
                                              else module)
                for part in ([module] if module in ('GPT', 'Attention') else []) + \
                        path.split('.'):
                    obj = getattr(obj, part, None)
                if obj is None:
                    missing.append(f"{doc}: {cited}")
    assert missing == [], "the docs cite names the code does not have:\n" + '\n'.join(missing)
