"""Test-only helpers shared by several test modules."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import torch


class RandomAttentionWeights:
    """A stand-in WeightSource with random Gaussian attention weights.

    ``dims`` has L, d, h, n_kv, d_head (plus d_ff, V = 0); ``layer_weight(layer, role, dtype)`` returns
    roles q, k, v, o in nn.Linear convention, std ``1/sqrt(d)``. ``distinct_layers`` layers are drawn
    once and reused cyclically, so a deep model needs the memory of a few layers only.
    """

    family = "llama"

    def __init__(
        self,
        L: int,
        d: int,
        h: int,
        n_kv: int,
        d_head: int,
        seed: int = 0,
        distinct_layers: int | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        self.dims = SimpleNamespace(L=L, d=d, d_ff=0, h=h, n_kv=n_kv, d_head=d_head, V=0)
        self.name = f"random(L={L}, d={d}, h={h}, n_kv={n_kv}, d_head={d_head})"
        g = torch.Generator().manual_seed(seed)
        shapes = {"q": (h * d_head, d), "k": (n_kv * d_head, d), "v": (n_kv * d_head, d), "o": (d, h * d_head)}
        n = L if distinct_layers is None else max(1, min(L, distinct_layers))
        self._layers = [
            {r: torch.randn(s, generator=g, dtype=dtype) / d**0.5 for r, s in shapes.items()} for _ in range(n)
        ]

    def layer_weight(self, layer: int, role: str, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        L = self.dims.L
        if not -L <= layer < L:
            raise IndexError(f"layer index {layer} is out of range: {self.name} has L={L} layers")
        W = self._layers[(layer % L) % len(self._layers)][role]
        return W if dtype is None else W.to(dtype)


def slow_frobenius(W, ref, S) -> dict:
    """A ``per_matrix`` hook for the resume tests: ``||W||_F`` from the loaded matrix, after a pause of
    ``$TSPECTRA_TEST_HOOK_SLEEP`` seconds (0 by default) so that a sweep can be killed midway."""
    import os
    import time

    import numpy as np

    time.sleep(float(os.environ.get("TSPECTRA_TEST_HOOK_SLEEP", "0")))
    return {"frob_direct": float(np.linalg.norm(W.double().numpy())), "inf_col": float("inf")}


def default_sigint():
    """``preexec_fn`` for a child that must die of SIGINT as a terminal's child would (a test runner may
    ignore SIGINT, and the child would inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def hidden_files(root: Path) -> list[str]:
    """Staging folders, lock files and temp files anywhere under ``root``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*"))


def wait_for(cond, timeout: float = 180.0, what: str = "the condition", proc: subprocess.Popen | None = None):
    """Poll ``cond`` until it returns something true (returned); fail when ``proc`` ends first, or on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (code {proc.returncode}) before {what}: {proc.communicate()}")
        got = cond()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
