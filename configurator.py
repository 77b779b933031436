"""
Config overrides, nanoGPT style, but as a function you can test.

    python train.py config/quick.py --n_layer=36 --learning_rate=1e-3

Positional arguments are Python config files: plain assignments (`max_iters = 2000`) executed in a
fresh namespace that already holds the current values, so `lr_decay_iters = max_iters` works.
`--key=value` arguments are parsed with ast.literal_eval; what does not parse is taken as a string
(`--device=cuda:1`). Arguments are applied left to right, so a later one wins.

nanoGPT execs its configurator into the caller's globals and asserts `type(new) == type(old)`, so
`--lr=1` is rejected for a float and a typo ends in a bare AssertionError. Here every mistake raises
ConfigError with a message that says what was wrong, what was expected and what to do; the caller
turns it into exit status 2.

Type rules, by the default value of the key:
  float   int or float (`--learning_rate=1` is 1.0), or a string float() accepts (`inf`)
  int     int, or a float with an integral value (`--max_iters=1e4` is 10000)
  bool    True or False only (not 1/0, not "yes")
  str     any text; quotes are optional (`--dataset=pydocs` and `--dataset='pydocs'` are the same)
  None    any literal, unless `types` names a type for the key; None is then accepted as well
  other   (tuple, list, dict) a literal of the same type
"""

import ast
import difflib
import os
import re
import sys
import types as _types

__all__ = ['ConfigError', 'configure', 'format_help', 'key_comments', 'command_line',
           'did_you_mean']


class ConfigError(Exception):
    """A config file or command-line override that cannot be used; the message is for the user."""


_TYPE_EXAMPLES = {bool: 'True', int: '100', float: '3e-4', str: 'some_text',
                  tuple: '(0.9, 0.95)', list: '[1, 2]', dict: "{'a': 1}"}


def _type_name(t):
    return {bool: 'a bool', int: 'an int', float: 'a float', str: 'a string',
            tuple: 'a tuple', list: 'a list', dict: 'a dict'}.get(t, t.__name__)


def closest(word, choices):
    """Up to three of `choices` that look like `word`: close spellings, else initials ('lr' ->
    'learning_rate') or a shared part ('accum' -> 'gradient_accumulation_steps')."""
    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(str(word), choices, n=3, cutoff=0.6)
    if not close:
        initials = [k for k in choices if ''.join(p[:1] for p in k.split('_')) == word]
        parts = [k for k in choices
                 if len(word) >= 3 and (word in k or (len(k) >= 3 and k in word))]
        close = list(dict.fromkeys(initials + parts))[:3]
    return close


def did_you_mean(word, choices):
    """"did you mean 'a' or 'b'?" for the choices that look like `word`, else '': the one hint
    of every error about a name (config keys, presets, model settings, files)."""
    close = closest(word, choices)
    return ('did you mean ' + ' or '.join(f"'{c}'" for c in close) + '?') if close else ''


def _unknown_key_message(key, where, valid):
    hint = did_you_mean(key, valid) or 'no valid key looks like it.'
    return (f"unknown config key '{key}' ({where}): {hint} "
            f"Run with --help to list every key and its default.")


def _expected_type(key, default, types):
    """The type a key's values must have: the one `types` names, else its default's; None: any."""
    return (types or {}).get(key) or (None if default is None else type(default))


def _coerce(key, value, default, where, types=None):
    """Return `value` converted to the type the key expects, or raise ConfigError."""
    t = _expected_type(key, default, types)
    if t is None:
        return value  # free-form key: any literal goes
    if default is None and value is None:
        return None   # typed key that defaults to None ("let the preset decide") accepts None back

    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = None
    if t is bool:
        ok = value if isinstance(value, bool) else None
    elif t is int:
        if number and isinstance(value, int):
            ok = value
        elif number and value.is_integer():
            ok = int(value)
    elif t is float:
        try:   # float() also reads 'inf' and 'nan'; an int past 1e308 overflows
            ok = float(value) if number or isinstance(value, str) else None
        except (ValueError, OverflowError):
            ok = None
    elif isinstance(value, t):
        ok = value
    if ok is None:
        shown = repr(value)
        example = repr(default) if isinstance(default, t) else _TYPE_EXAMPLES.get(t, '...')
        if len(shown) > 60:
            shown = shown[:57] + '...'
        msg = (f"config key '{key}' ({where}) expects {_type_name(t)}, got {shown} "
               f"({type(value).__name__}); for example --{key}={example}")
        if t is bool:
            msg += " (write True or False with a capital letter)"
        raise ConfigError(msg)
    return ok


def _parse_value(text, str_typed):
    """literal_eval with a fallback to the raw text; for string keys the raw text always wins unless
    it is itself a quoted string literal, so `--out_dir=1e3` is the folder '1e3', not 1000.0."""
    try:
        value = ast.literal_eval(text)
    except Exception:  # SyntaxError, ValueError, MemoryError, RecursionError, ...: it is just text
        return text
    if str_typed and not isinstance(value, str):
        return text
    return value


def _assigned_lines(tree):
    """Map every name assigned anywhere in a config file to the first line that assigns it."""
    lines = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            lines.setdefault(node.id, node.lineno)
    return lines


def _load_config_file(path, config, defaults, types):
    if not os.path.exists(path):
        folder = os.path.dirname(path) or '.'
        names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        hint = did_you_mean(os.path.basename(path), [n for n in names if n.endswith('.py')])
        raise ConfigError(f"config file '{path}' does not exist (looked from {os.getcwd()})."
                          + (f" In {folder}/, {hint}" if hint else '')
                          + " Pass the path of a Python file of assignments such as "
                          "config/quick.py, or overrides as --key=value.")
    if not os.path.isfile(path):
        raise ConfigError(f"config file '{path}' is not a regular file; pass a Python file of "
                          f"assignments such as config/quick.py.")
    try:
        with open(path, encoding='utf-8') as f:
            source = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file '{path}': {e}. It should be a UTF-8 Python "
                          f"file of assignments such as `max_iters = 2000`.") from None
    try:
        tree = ast.parse(source, filename=path)
        code = compile(tree, path, 'exec')
    except SyntaxError as e:
        text = (e.text or '').strip()
        raise ConfigError(f"config file '{path}', line {e.lineno}: syntax error ({e.msg})"
                          + (f" in `{text}`" if text else '') + ". A config file holds Python "
                          f"assignments such as `learning_rate = 3e-4`.") from None
    except (ValueError, RecursionError, MemoryError) as e:  # e.g. NUL bytes in the source
        raise ConfigError(f"config file '{path}' is not valid Python: {e}.") from None

    # A fresh namespace seeded with the current values, so a file may read them (`a = b * 2`).
    namespace = dict(config)
    namespace['__builtins__'] = __builtins__
    namespace['__file__'] = os.path.abspath(path)
    namespace['__name__'] = '__config__'
    seeded = dict(namespace)
    try:
        exec(code, namespace)
    except Exception as e:
        line = None
        tb = e.__traceback__
        while tb is not None:  # the innermost frame that belongs to the config file
            if tb.tb_frame.f_code.co_filename == path:
                line = tb.tb_lineno
            tb = tb.tb_next
        where = f", line {line}" if line else ''
        raise ConfigError(f"config file '{path}'{where} raised {type(e).__name__}: {e}. "
                          f"Fix that line; a config file holds plain assignments.") from None

    lines = _assigned_lines(tree)
    updates = {}
    for name, value in namespace.items():
        if name.startswith('_') or isinstance(value, (_types.ModuleType, _types.FunctionType,
                                                      _types.BuiltinFunctionType, type)):
            continue  # helpers, imports and private names are not config
        if name in seeded and value is seeded[name] and name not in lines:
            continue  # read, not assigned
        where = f"{path}, line {lines[name]}" if name in lines else path
        if name not in config:
            raise ConfigError(_unknown_key_message(name, where, config))
        updates[name] = _coerce(name, value, defaults[name], where, types)
    return updates


def configure(defaults, argv, types=None, given=None):
    """Apply config files and --key=value overrides in `argv` to a copy of `defaults`.

    defaults: dict key -> default value; the set of keys is the set of valid keys.
    argv:     list of strings, e.g. sys.argv[1:].
    types:    optional dict key -> type for keys whose default is None but whose type is known
              (e.g. n_layer: int, 'let the model preset decide' by default).
    given:    optional set; filled with the keys the user set explicitly (needed to tell
              'left at its default' from 'asked for the default value', e.g. on resume).
    Returns the new dict; raises ConfigError on any mistake.
    """
    config = dict(defaults)
    for arg in argv:
        if not isinstance(arg, str):
            raise ConfigError(f"argument {arg!r} is not a string")
        if arg.startswith('--'):
            body = arg[2:]
            if '=' not in body:
                key = body.replace('-', '_')
                if key in config:
                    raise ConfigError(f"'{arg}' has no value; write it as --{key}=VALUE, "
                                      f"e.g. --{key}={config[key]!r}.")
                raise ConfigError(f"'{arg}' is not of the form --key=value. "
                                  + _unknown_key_message(key, arg, config))
            key, text = body.split('=', 1)
            key = key.replace('-', '_')  # --n-layer is --n_layer
            if key not in config:
                raise ConfigError(_unknown_key_message(key, arg, config))
            value = _parse_value(text, _expected_type(key, defaults[key], types) is str)
            config[key] = _coerce(key, value, defaults[key], arg, types)
            if given is not None:
                given.add(key)
        elif arg.startswith('-') and arg not in ('-',):
            raise ConfigError(f"'{arg}' is not understood: overrides are written --key=value "
                              f"(two dashes), e.g. --max_iters=500; config files are given as "
                              f"a path.")
        else:
            updates = _load_config_file(arg, config, defaults, types)
            config.update(updates)
            if given is not None:
                given.update(updates)
    return config


def format_help(defaults, comments=None, usage='python train.py [config.py ...] [--key=value ...]'):
    """A --help text: every key, its default and (if given) a one-line comment."""
    out = [f"usage: {usage}", '', 'keys (default):']
    width = max((len(k) for k in defaults), default=0)
    for k, v in defaults.items():
        note = (comments or {}).get(k, '')
        out.append((f"  --{k.ljust(width)} = {v!r:<9}" + (f"  # {note}" if note else '')).rstrip())
    return '\n'.join(out)


def key_comments(path):
    """{key: comment} from the `DEFAULTS = dict(` block of a Python file: the comment at the end of
    each `key=value,  # comment` line, so that --help says what the source says."""
    with open(path, encoding='utf-8') as f:
        block = f.read().split('DEFAULTS = dict(')[1].split('\n)\n')[0]
    return {m[1]: m[2] for m in re.finditer(r'^\s*(\w+)=.*?#\s*(.*)$', block, re.M)}


def command_line(run, argv, help_text, errors=()):
    """The shell of train.py and sample.py: -h/--help prints help_text (a string or a function
    returning one); ConfigError and the other `errors` a user can fix print one paragraph and
    give exit status 2; a second Ctrl-C gives 130. Otherwise run(argv)'s own status."""
    if '-h' in argv or '--help' in argv:
        print(help_text() if callable(help_text) else help_text)
        return 0
    try:
        return run(argv)
    except (ConfigError, *errors) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C: no save; every file already saved is complete
        print("aborted; the files already saved are intact", file=sys.stderr)
        return 130
