"""Where computation runs: one rule for the ``device`` parameter everywhere, and the only module that
asks ``torch.cuda`` anything.

``"auto"`` (or empty) is the GPU when one is visible, else the CPU; ``"cpu"``; ``"cuda"`` or
``"cuda:N"`` for a visible GPU. Anything else, or a GPU asked for on a machine without one, is a
``ValueError`` that names the fix.

**The accelerator's code path.** Code that computes differently on a GPU (batched float32 SVD in the
weight sweep, the Gram accumulated in torch on the device, the factored kernels in one batch without
CPU worker threads) asks :func:`uses_device_path` instead of testing the device type, and
:func:`device_path` forces that path on the CPU, so the test suite runs every GPU branch on a machine
without one (the same code, not a copy).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

import torch

DEVICE_CHOICES = "'auto', 'cpu', 'cuda' or 'cuda:N'"


_FORCED = False  # device_path(): the accelerator's code path on the CPU (a process-wide switch, threads see it)


def cuda_available() -> bool:
    return bool(torch.cuda.is_available())


def gpu_count() -> int:
    return int(torch.cuda.device_count()) if cuda_available() else 0


def gpu_name(index: int = 0) -> str:
    return torch.cuda.get_device_name(index) if cuda_available() else ""


def default_device() -> torch.device:
    """The GPU when one is visible, else the CPU."""
    return torch.device("cuda") if cuda_available() else torch.device("cpu")


def uses_device_path(device) -> bool:
    """Whether computation on ``device`` takes the accelerator's code path (module docstring): on a GPU,
    and on the CPU inside :func:`device_path`."""
    return torch.device(device).type != "cpu" or _FORCED


@contextmanager
def device_path(on: bool = True) -> Iterator[None]:
    """Within this block the CPU takes the accelerator's code path (tests of the GPU branches)."""
    global _FORCED
    old, _FORCED = _FORCED, bool(on)
    try:
        yield
    finally:
        _FORCED = old


def resolve_device(spec: str | torch.device | None = "auto", name: str = "device") -> torch.device:
    """A ``torch.device`` for ``spec`` (see module docstring)."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    s = "auto" if spec is None else str(spec).strip().lower()
    if s in ("auto", ""):
        return default_device()
    if s == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", s)
    if not m:
        raise ValueError(f"{name}={spec!r} is not a device: use {DEVICE_CHOICES}")
    if not cuda_available():
        raise ValueError(f"{name}={spec!r} but no CUDA GPU is visible on this machine: use {name}='cpu' or 'auto'")
    if m.group(1) is not None and int(m.group(1)) >= gpu_count():
        raise ValueError(f"{name}={spec!r}: only {gpu_count()} GPU(s) visible (cuda:0 .. cuda:{gpu_count() - 1})")
    return torch.device(s)


def amp_enabled(device: str | torch.device, mode: str = "auto") -> bool:
    """Whether :func:`autocast` turns bfloat16 on for ``device`` under ``mode`` (what a cached result records)."""
    return mode == "bf16" or (mode == "auto" and torch.device(device).type == "cuda")


def autocast(device: str | torch.device, mode: str = "auto"):
    """A bfloat16 autocast context for code running on ``device``: ``mode="auto"`` turns it on on a GPU only,
    ``"bf16"`` on any device (on the CPU it runs the very code path a GPU takes), ``"off"`` never."""
    dev = torch.device(device)
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp_enabled(dev, mode))


def local_device(spec: str | torch.device, local_rank: int) -> torch.device:
    """The device of process ``local_rank`` of a distributed run: its own GPU (made the current one) when
    ``spec`` names a GPU, else the CPU."""
    dev = resolve_device(spec)
    if dev.type != "cuda":
        return dev
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)
