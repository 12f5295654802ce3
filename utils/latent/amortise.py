"""Amortised toward the ceiling: one tried method, judged on the dev article only.

The encoder (``latent``) is trained on, from where its training ended, in two arms that differ in one term:
*continued* (the usual QA steps: cross-entropy, distillation and the label loss) and *continued + regression*
(the same steps, the same batches, plus ``w_amortise`` times the squared distance between its M slots and the
vectors optimised for that training context alone, :mod:`.optimise`, both at the RMS of real token
embeddings, divided by that RMS squared: a distillation target in input space). Only training contexts with
optimised vectors are drawn, at the main ratio. Both arms are scored on the dev article's questions; the gap
to the per-context ceiling is measured on the dev contexts whose vectors were optimised too.
"""

from __future__ import annotations

import copy
import random
from dataclasses import replace
from typing import Callable, Sequence

from .compressor import TrainConfig
from .prompts import scale_to_rms
from .train import TrainSet, train_module

ARMS = ("continued", "regression")  # result-store labels (in the seed column) of the two arms


def pick_contexts(examples: Sequence, n: int, seed: int = 0) -> list[str]:
    """``n`` distinct contexts of ``examples``, seeded, in first-seen order (all when ``n`` covers them)."""
    ctxs = list(dict.fromkeys(e.context for e in examples))
    keep = set(random.Random(seed).sample(ctxs, min(n, len(ctxs))))
    return [c for c in ctxs if c in keep]


def with_targets(ts: TrainSet, vectors: dict, target_rms: float) -> TrainSet:
    """``ts`` with its regression targets: per context index, its optimised vectors at the RMS of real token
    embeddings (the scale of the encoder's own slots)."""
    return replace(ts, targets={i: scale_to_rms(v.float(), target_rms) for i, v in vectors.items()})


def train_arms(
    reader,
    latent,
    cfg: TrainConfig,
    ts: TrainSet,
    ratio: float,
    steps: int,
    w_amortise: float,
    log: Callable | None = None,
    progress: Callable | None = None,
) -> dict:
    """The two arms (module docstring) from copies of the trained ``latent`` module: ``{arm: module}``."""
    out = {}
    for arm, w in zip(ARMS, (0.0, w_amortise)):
        comp = copy.deepcopy(latent)
        c = replace(cfg, ratios=f"{ratio:g}", w_amortise=w)
        train_module(
            reader,
            comp,
            c,
            ts,
            log=(lambda rec, a=arm: log({**rec, "arm": a})) if log else None,
            progress=(lambda it, n, a=arm: progress(it, f"amortise: {a}", n)) if progress else None,
            phases=[("qa", steps)],
        )
        out[arm] = comp.eval()
    return out
