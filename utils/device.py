"""Where computation runs: one rule for the ``device`` parameter everywhere.

``"auto"`` (or empty) is the GPU when one is visible, else the CPU; ``"cpu"``; ``"cuda"`` or
``"cuda:N"`` for a visible GPU. Anything else, or a GPU asked for on a machine without one, is a
``ValueError`` that names the fix.
"""

from __future__ import annotations

import re

import torch

DEVICE_CHOICES = "'auto', 'cpu', 'cuda' or 'cuda:N'"


def default_device() -> torch.device:
    """The GPU when one is visible, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


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
    if not torch.cuda.is_available():
        raise ValueError(f"{name}={spec!r} but no CUDA GPU is visible on this machine: use {name}='cpu' or 'auto'")
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        raise ValueError(
            f"{name}={spec!r}: only {torch.cuda.device_count()} GPU(s) visible (cuda:0 .. "
            f"cuda:{torch.cuda.device_count() - 1})"
        )
    return torch.device(s)


def autocast(device: str | torch.device, mode: str = "auto"):
    """A bfloat16 autocast context for code running on ``device``: ``mode="auto"`` turns it on on a GPU only,
    ``"bf16"`` on any device (on the CPU it runs the very code path a GPU takes), ``"off"`` never."""
    dev = torch.device(device)
    on = mode == "bf16" or (mode == "auto" and dev.type == "cuda")
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=on)


def local_device(spec: str | torch.device, local_rank: int) -> torch.device:
    """The device of process ``local_rank`` of a distributed run: its own GPU (made the current one) when
    ``spec`` names a GPU, else the CPU."""
    dev = resolve_device(spec)
    if dev.type != "cuda":
        return dev
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)
