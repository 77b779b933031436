"""
Generate text from a trained checkpoint.

    python sample.py                                  # out/ckpt.pt
    python sample.py --out_dir=out-preln --start="def " --num_samples=2 --max_new_tokens=500
    python sample.py --ckpt=out/ckpt_best.pt --start=FILE:prompt.txt --temperature=0.7 --top_k=40

The model is rebuilt from the checkpoint's model_args and the text codec from the dataset
metadata the checkpoint carries, so the data folder is not needed. Exit status 2 on bad input.
"""
import os
import sys

import torch

import checkpoint
import data
from checkpoint import CheckpointError
from configurator import ConfigError, command_line, configure, format_help
from hardware import device_and_dtype, tune_cpu

DEFAULTS = dict(
    out_dir='out',        # reads out_dir/ckpt.pt ...
    ckpt='',              # ... or this checkpoint file
    start='\n',           # the prompt; FILE:path reads it from a file
    num_samples=3,
    max_new_tokens=300,
    temperature=0.8,      # < 1 sharper, > 1 more random
    top_k=200,            # sample among the k likeliest tokens only (None: all)
    seed=1337,
    device='auto',        # auto | cpu | cuda | cuda:N | mps
    dtype='auto',         # auto (bfloat16 on a GPU that has it) | float32 | bfloat16
)


def main(argv):
    help_text = format_help(DEFAULTS, usage='python sample.py [--key=value ...]')
    return command_line(sample, argv, help_text, (CheckpointError, data.DataError))


def sample(argv):
    c = configure(DEFAULTS, argv, types={'top_k': int})
    if c['num_samples'] < 1 or c['max_new_tokens'] < 0:
        raise ConfigError("num_samples must be >= 1 and max_new_tokens >= 0")
    if not c['temperature'] > 0:
        raise ConfigError(f"temperature must be > 0 (got {c['temperature']}); small values like "
                          f"0.1 are nearly greedy")
    if c['top_k'] is not None and c['top_k'] < 1:
        raise ConfigError(f"top_k must be >= 1 or None (got {c['top_k']})")
    if c['dtype'] == 'float16':
        raise ConfigError("dtype must be auto, float32 or bfloat16 (got 'float16'): sampling needs "
                          "no loss scaler")
    try:
        device, dtype, ctx = device_and_dtype(c['device'], c['dtype'])
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if device == 'cpu':
        tune_cpu()   # as train.py: E-SPA's denormals, glibc's page faults

    path = c['ckpt'] or os.path.join(c['out_dir'], 'ckpt.pt')
    ckpt = checkpoint.load(path, hint='Train one first (python train.py) or pass --out_dir / '
                                      '--ckpt.')
    meta = ckpt.get('meta')
    if not meta:  # a checkpoint without the codec: the dataset folder it was trained on has it
        meta = data.load_meta(ckpt['config'].get('data_dir', 'data'),
                              ckpt['config'].get('dataset', 'pydocs'))
    encode, decode = data.encoder(meta)
    model = checkpoint.model_from(ckpt, path).to(device).eval()

    start = c['start']
    if start.startswith('FILE:'):
        try:
            with open(start[5:], encoding='utf-8') as f:
                start = f.read()
        except OSError as e:
            raise ConfigError(f"cannot read the prompt file {start[5:]}: {e}") from None
    try:
        ids = encode(start)
    except Exception as e:
        raise ConfigError(f"the prompt cannot be encoded with the {meta['tokenizer']} tokenizer: "
                          f"{e}") from None
    if not ids:
        raise ConfigError("the prompt is empty; give at least one character, e.g. --start='\\n'")

    torch.manual_seed(c['seed'])
    x = torch.tensor([ids], dtype=torch.long, device=device)
    print(f"# {path}: step {ckpt['run']['iter_num']}, {ckpt['config'].get('model', '?')}, "
          f"{ckpt['model_args']['n_layer']} layers", file=sys.stderr)
    with torch.no_grad(), ctx:
        for _ in range(c['num_samples']):
            y = model.generate(x, c['max_new_tokens'], temperature=c['temperature'],
                               top_k=c['top_k'])
            print(decode(y[0].tolist()))
            print('---------------')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
