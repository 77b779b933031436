"""Tests for configurator.py (in-process, fast) and for how train.py reports config mistakes
(subprocess: message on stderr and exit status 2, before any file is written)."""

import os
import re
import subprocess
import sys
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from configurator import ConfigError, configure, format_help

HERE = os.path.dirname(os.path.abspath(__file__))

DEFAULTS = dict(
    out_dir='out', max_iters=100, learning_rate=3e-4, compile=False, dataset='pydocs',
    gradient_accumulation_steps=1, n_layer=None, attn=None, gamma_L=None, peak_flops=None,
    betas=(0.9, 0.95),
)
TYPES = dict(n_layer=int, attn=str, gamma_L=float)


def cfg(*argv, **kw):
    return configure(DEFAULTS, list(argv), types=TYPES, **kw)


# --------------------------------------------------------------------------------------------
# what works

def test_no_arguments_give_the_defaults():
    assert cfg() == DEFAULTS


def test_an_int_is_accepted_where_a_float_is_expected():
    # nanoGPT rejects --learning_rate=1 because type(1) != type(3e-4)
    c = cfg('--learning_rate=1')
    assert c['learning_rate'] == 1.0 and isinstance(c['learning_rate'], float)


def test_an_integral_float_is_an_int_and_inf_is_a_float():
    c = cfg('--max_iters=1e4', '--learning_rate=inf')
    assert c['max_iters'] == 10000 and isinstance(c['max_iters'], int)
    assert c['learning_rate'] == float('inf')


def test_strings_need_no_quotes_and_numbers_stay_text_for_string_keys():
    c = cfg('--dataset=wikitext103', "--out_dir='runs/a'", '--attn=spa')
    assert (c['dataset'], c['out_dir'], c['attn']) == ('wikitext103', 'runs/a', 'spa')
    assert cfg('--out_dir=1e3')['out_dir'] == '1e3'      # a folder name, not 1000.0
    assert cfg('--out_dir=out=2')['out_dir'] == 'out=2'  # only the first '=' splits


def test_a_key_defaulting_to_None_takes_its_named_type_or_any_literal():
    c = cfg('--n_layer=24', '--gamma_L=1', '--peak_flops=1e12')
    assert c['n_layer'] == 24 and c['gamma_L'] == 1.0 and c['peak_flops'] == 1e12
    assert cfg('--n_layer=None')['n_layer'] is None  # back to 'the preset decides'
    assert cfg('--peak_flops=hello')['peak_flops'] == 'hello'  # untyped: any literal or text


def test_a_bool_is_True_or_False_only():
    assert cfg('--compile=True')['compile'] is True
    for bad in ('1', 'true', 'yes', '0'):
        with pytest.raises(ConfigError, match="expects a bool.*True or False"):
            cfg(f'--compile={bad}')


def test_dashes_in_a_key_are_underscores_and_the_later_argument_wins():
    assert cfg('--max-iters=5')['max_iters'] == 5
    assert cfg('--max-iters=5', '--max_iters=7')['max_iters'] == 7
    assert cfg('--max_iters=7', '--max-iters=5')['max_iters'] == 5


def test_a_tuple_key_takes_a_tuple_literal_only():
    assert cfg('--betas=(0.9, 0.99)')['betas'] == (0.9, 0.99)
    with pytest.raises(ConfigError, match="expects a tuple"):
        cfg('--betas=0.9')


def test_a_config_file_sets_its_assignments_and_skips_helpers(tmp_path):
    f = tmp_path / 'c.py'
    f.write_text("import math\n# a comment\nmax_iters = 2000\nlearning_rate = 1\n"
                 "_private = 3\nn_layer = 2 * 12\nout_dir = 'out-' + str(n_layer)\n"
                 "def helper():\n    return 1\n")
    given = set()
    c = cfg(str(f), '--max_iters=10', given=given)
    assert c['max_iters'] == 10 and c['learning_rate'] == 1.0 and c['n_layer'] == 24
    assert c['out_dir'] == 'out-24'
    assert given == {'max_iters', 'learning_rate', 'n_layer', 'out_dir'}


def test_a_config_file_reads_the_values_before_it(tmp_path):
    f = tmp_path / 'c.py'
    f.write_text("max_iters = max_iters * 2\n")
    assert cfg('--max_iters=21', str(f))['max_iters'] == 42


def test_help_lists_every_key_with_its_default_and_comment():
    lines = format_help(DEFAULTS, {'max_iters': 'how long'}).splitlines()
    for k, v in DEFAULTS.items():
        line = next(l for l in lines if l.strip().startswith(f'--{k} '))
        assert f'= {v!r}' in line
    assert any('--max_iters' in l and l.endswith('# how long') for l in lines)


# --------------------------------------------------------------------------------------------
# what fails, and how it says so

@pytest.mark.parametrize('argv, pattern', [
    (['--max_iter=5'], r"unknown config key 'max_iter'.*did you mean 'max_iters'"),
    (['--lr=1e-3'], r"unknown config key 'lr'.*did you mean 'learning_rate'"),
    (['--max_iters=1.5'], r"'max_iters'.*expects an int, got 1.5.*--max_iters=100"),
    (['--learning_rate=fast'], r"'learning_rate'.*expects a float, got 'fast'"),
    (['--n_layer=deep'], r"'n_layer'.*expects an int"),
    (['--max_iters'], r"'--max_iters' has no value; write it as --max_iters=VALUE"),
    (['-max_iters=3'], r"two dashes"),
    (['--=3'], r"unknown config key ''"),
    (['nope.py'], r"config file 'nope.py' does not exist"),
    (['--learning_rate=' + '1' * 400], r"'learning_rate'.*expects a float, got 1111"),
])
def test_each_mistake_is_a_config_error_that_says_what_to_do(argv, pattern):
    with pytest.raises(ConfigError, match=pattern):
        cfg(*argv)


def test_config_file_errors_name_the_file_and_the_line(tmp_path):
    f = tmp_path / 'bad.py'
    f.write_text("max_iters = 10\nlearning_rate = (\n")
    with pytest.raises(ConfigError, match=r"bad.py', line 2: syntax error"):
        cfg(str(f))
    f.write_text("max_iters = 10\n\nmax_iter = 5\n")
    with pytest.raises(ConfigError,
                       match=r"unknown config key 'max_iter' \(.*bad.py, line 3\).*'max_iters'"):
        cfg(str(f))
    f.write_text("max_iters = 10\ncompile = 1\n")
    with pytest.raises(ConfigError, match=r"'compile' \(.*bad.py, line 2\) expects a bool"):
        cfg(str(f))
    f.write_text("x = 1\n")  # unknown even though harmless: a typo must not pass silently
    with pytest.raises(ConfigError, match=r"unknown config key 'x'"):
        cfg(str(f))
    f.write_text("max_iters = 10\nmax_iters = undefined_name + 1\n")
    with pytest.raises(ConfigError, match=r"bad.py', line 2 raised NameError"):
        cfg(str(f))
    with pytest.raises(ConfigError, match="not a regular file"):
        cfg(str(tmp_path))
    f.write_bytes(b"\xff\xfe max_iters = 1\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        cfg(str(f))


def test_a_missing_config_file_suggests_the_close_names_in_its_folder(tmp_path):
    (tmp_path / 'quick.py').write_text("max_iters = 3\n")
    (tmp_path / 'paper.py').write_text("max_iters = 3\n")
    with pytest.raises(ConfigError, match=r"In .*/, did you mean 'quick.py'\? Pass") as e:
        cfg(str(tmp_path / 'quick2.py'))
    assert 'paper.py' not in str(e.value)


# --------------------------------------------------------------------------------------------
# fuzz: random argv lists either work or raise ConfigError, never anything else

KEYS = list(DEFAULTS) + ['max_iter', 'lr', 'x', '']
literal = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.booleans(),
                    st.none(), st.text(max_size=8), st.tuples(st.floats(0, 1), st.floats(0, 1)))
value_text = st.one_of(literal.map(repr), st.text(max_size=20),
                       st.sampled_from(['1e3', 'inf', '-inf', 'nan', '(', '[[[', '(' * 200,
                                        '1' * 400, '{', '"', "'", '0x10', '1_000', '--', '=',
                                        'None', 'True']))
override = st.builds(lambda dash, k, v: f"{dash}{k}={v}", st.sampled_from(['--', '-', '---']),
                     st.sampled_from(KEYS) | st.text(max_size=10), value_text)
bare = st.one_of(st.text(max_size=20).filter(lambda s: not os.path.exists(s)),
                 st.sampled_from(['--', '-', '--max_iters', '--compile', '.', '/', '--help']))


def assert_well_typed_or_refused(*argv):
    """cfg(*argv) either raises a ConfigError that says something, or keeps every key's type."""
    try:
        c = cfg(*argv)
    except ConfigError as e:
        assert str(e)
        return
    assert set(c) == set(DEFAULTS)
    for k, v in DEFAULTS.items():
        if v is not None:
            assert type(c[k]) is type(v), (k, c[k])
        elif k in TYPES and c[k] is not None:
            assert type(c[k]) is TYPES[k], (k, c[k])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(override, bare), max_size=6))
def test_any_argv_gives_well_typed_values_or_a_config_error(argv):
    assert_well_typed_or_refused(*argv)


file_line = st.one_of(
    st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(KEYS[:-1]), value_text),
    st.text(max_size=30).filter(lambda s: not any(w in s for w in ('while', 'import', 'open'))),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(file_line, max_size=5), st.lists(override, max_size=3))
def test_any_config_file_gives_well_typed_values_or_a_config_error(lines, argv):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, 'fuzz.py')
        with open(path, 'w', encoding='utf-8', errors='surrogatepass') as f:
            f.write('\n'.join(lines))
        assert_well_typed_or_refused(path, *argv)


# --------------------------------------------------------------------------------------------
# the same mistakes through `python train.py`: message on stderr, exit status 2, nothing written

def run_train(args, cwd):
    return subprocess.run([sys.executable, os.path.join(HERE, 'train.py'), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


TRAIN_ERRORS = [
    (['--max_iter=5'], r"unknown config key 'max_iter'.*did you mean 'max_iters'"),
    (['--lr=1e-3'], r"did you mean 'learning_rate'"),
    (['--compile=1'], r"'compile'.*expects a bool"),
    (['--batch_size=big'], r"'batch_size'.*expects an int"),
    (['missing_config.py'], r"config file 'missing_config.py' does not exist"),
    (['--learning_rate=-1'], r"learning_rate must be > 0"),
    (['--n_embd=100', '--n_head=3'], r"n_embd.*n_head"),
    (['--warmup_iters=50', '--max_iters=10'], r"warmup_iters.*max_iters"),
    (['--model=espaa'], r"espa"),
    (['--dataset=nosuchdata'], r"dataset 'nosuchdata'.*not prepared.*python prepare.py"),
    (['--init_from=resume'], r"no checkpoint.*ckpt.pt"),
    (['--init_from=continue'], r"init_from.*'scratch' or 'resume'"),
    (['--gradient_accumulation_steps=0'], r"gradient_accumulation_steps must be >= 1"),
    (['--device=tpu'], r"device"),
]


@pytest.mark.parametrize('args, pattern', TRAIN_ERRORS,
                         ids=[' '.join(a) for a, _ in TRAIN_ERRORS])
def test_train_py_exits_2_with_the_message_and_writes_nothing(tmp_path, args, pattern):
    out = tmp_path / 'out'
    r = run_train([f'--out_dir={out}', f'--data_dir={tmp_path / "data"}', *args], cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert re.search(pattern, r.stderr, re.S), r.stderr
    assert 'Traceback' not in r.stderr
    assert not out.exists()                 # nothing written before the config is known good
    assert not (tmp_path / 'data').exists()  # nor the default dataset prepared


def test_train_py_help_lists_the_keys_and_exits_0():
    r = run_train(['--help'], cwd=HERE)
    assert r.returncode == 0
    assert '--learning_rate' in r.stdout and '--model' in r.stdout


def test_train_py_help_says_what_is_built():
    """--help shows the preset's values and the TAT rule that model.tat_target applies."""
    r = run_train(['--help'], cwd=HERE)
    line = next(l for l in r.stdout.splitlines() if l.strip().startswith('--eta '))
    assert "espa: 0.5" in line and 'largest reachable target' in line
    assert any('--n_layer' in l and "espa: 24" in l for l in r.stdout.splitlines())
    for key in ('--optimizer', '--muon_lr', '--wandb_log', '--warmup_iters',
                '--gradient_accumulation_steps'):
        assert key in r.stdout, key
