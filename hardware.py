"""
Where a model runs: the device, the dtype and its autocast, the settings a CPU run needs, and the
device's peak FLOP/s for MFU. One rule for train.py, sample.py and bench.py.

    device, dtype, autocast = device_and_dtype('auto', 'auto')   # ('cuda', 'bfloat16', ...) on a GPU
"""
import ctypes
import platform
import re
from contextlib import nullcontext

import torch


def device_and_dtype(device='auto', dtype='auto'):
    """(device, dtype name, autocast context). 'auto' is cuda when torch sees a GPU, else cpu;
    bfloat16 on a GPU that has it, else float32. ValueError with what to do when the asked-for
    one is missing."""
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if not re.fullmatch(r'cpu|mps|cuda(:\d+)?', device):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps (got {device!r})")
    if device.startswith('cuda'):
        if not torch.cuda.is_available():
            raise ValueError(f"device={device} was asked for, but torch {torch.__version__} sees "
                             f"no CUDA GPU; use --device=cpu or --device=auto")
        if ':' in device and int(device.split(':')[1]) >= torch.cuda.device_count():
            raise ValueError(f"device={device}, but there are {torch.cuda.device_count()} "
                             f"CUDA devices")
    if device == 'mps' and not torch.backends.mps.is_available():
        raise ValueError("device=mps was asked for, but MPS is not available; use --device=cpu")
    kind = device.split(':')[0]
    if dtype == 'auto':
        dtype = 'bfloat16' if kind == 'cuda' and torch.cuda.is_bf16_supported() else 'float32'
    if dtype not in ('float32', 'bfloat16', 'float16'):
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16 (got {dtype!r})")
    if dtype == 'float16' and kind != 'cuda':
        raise ValueError("dtype=float16 needs a CUDA GPU (it trains with a loss scaler); "
                         "use bfloat16 or float32")
    ptdtype = dict(float32=torch.float32, bfloat16=torch.bfloat16, float16=torch.float16)[dtype]
    return device, dtype, nullcontext() if dtype == 'float32' else torch.autocast(kind, dtype=ptdtype)


def tune_cpu():
    """Two process-wide settings for a run on a CPU; neither changes a number. Returns the names of
    those that took, for the opening line. Call it before any torch work: only threads started
    afterwards inherit the first.
      denormals flushed  E-SPA's bias drives attention weights below float32's smallest normal
                         number (1.2e-38), which some CPUs compute many times slower; as 0 they
                         change nothing next to a softmax row's largest weight (>= 1/T)
      freed memory kept  glibc's malloc hands large freed blocks back to the kernel (above a
                         threshold that starts at 128 KiB and moves with what is freed), so the
                         next activation of that size arrives as fresh pages, faulted in and zeroed
                         one by one: thousands of page faults a step, more for some models than
                         others. Served from the heap up to 32 MiB, with up to 256 MiB of free heap
                         kept, a step reuses the last step's pages"""
    done = ['denormals flushed'] if torch.set_flush_denormal(True) else []
    if platform.system() == 'Linux' and platform.libc_ver()[0] == 'glibc':
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # <malloc.h>
        mallopt = ctypes.CDLL(None).mallopt   # 1 where it took
        if mallopt(M_MMAP_THRESHOLD, 32 << 20) and mallopt(M_TRIM_THRESHOLD, 256 << 20):
            done.append('freed memory kept')
    return done


PEAK_BF16_FLOPS = {  # dense tensor-core peaks (no sparsity); the first name in the device name wins
    'H200': 989e12, 'H100': 989e12, 'GH200': 989e12, 'B200': 2250e12, 'A100': 312e12,
    'A800': 312e12, 'L40S': 362e12, 'L40': 181e12, 'A6000': 155e12, 'L4': 121e12, 'A10': 125e12,
    '4090': 165e12, '3090': 71e12, 'V100': 125e12, 'T4': 65e12,
}


def peak_flops(device):
    """bf16 dense peak of a CUDA device from PEAK_BF16_FLOPS, or None (CPU, unknown GPU)."""
    if torch.device(device).type != 'cuda' or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
