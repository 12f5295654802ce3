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
