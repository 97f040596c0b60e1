"""Where and how the networks run: the device, mixed precision, and progress bars that a
log file can hold."""

from __future__ import annotations

import sys
from collections.abc import Iterable

import torch
from tqdm import tqdm

from wsss.core.settings import AMP_DTYPES, AmpParams


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> the visible CUDA device if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, amp: bool | str) -> torch.autocast:
    """Mixed precision on CUDA: ``amp`` False (off), True or "bfloat16", or "float16" (GPUs
    without bfloat16: V100, T4); a no-op on the CPU."""
    if isinstance(amp, str) and amp not in AMP_DTYPES:
        raise ValueError(f"amp_dtype must be one of {AMP_DTYPES}, not {amp!r}")
    dtype = torch.float16 if amp == "float16" else torch.bfloat16
    return torch.autocast(
        device_type=device.type, dtype=dtype, enabled=bool(amp) and device.type == "cuda"
    )


def amp_of(params: AmpParams) -> bool | str:
    """What :func:`autocast` takes from a stage's settings: False, or the autocast type."""
    return params.amp_dtype if params.amp else False


def progress(iterable: Iterable, desc: str, unit: str) -> tqdm:
    """A progress bar: live in a terminal, a line every 30 s in a log file."""
    interactive = sys.stderr.isatty()
    return tqdm(
        iterable,
        desc=desc,
        unit=unit,
        mininterval=0.5 if interactive else 30,
        dynamic_ncols=interactive,
        ascii=not interactive,
    )
