"""One BLAS / torch thread per worker while workers run in parallel.

Multi-threaded BLAS inside several worker threads oversubscribes a small machine (on the 2-core
development machine batched 128 x 128 eigenproblems ran 5-100x slower), so every parallel sweep
in the project runs its workers under :func:`limited_threads`: torch's intra-op pool and every
BLAS / OpenMP pool that threadpoolctl can see are set to ``n`` threads, and restored afterwards.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def limited_threads(n: int = 1) -> Iterator[None]:
    """Limit torch and BLAS to ``n`` threads inside the block (previous settings restored)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        from threadpoolctl import threadpool_limits

        ctx = threadpool_limits(max(1, n))
    except ImportError:  # pragma: no cover
        ctx = contextlib.nullcontext()
    try:
        with ctx:
            yield
    finally:
        torch.set_num_threads(before)


def cpu_workers(n_items: int) -> int:
    """Worker threads for ``n_items`` independent CPU jobs: one per torch intra-op thread."""
    return max(1, min(n_items, torch.get_num_threads()))
