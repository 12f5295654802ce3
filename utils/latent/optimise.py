"""The question-agnostic ceiling: M vectors optimised directly for one context (no encoder).

For a context of T tokens and a ratio r, M = ceil(T / r) free vectors sit in the context slot of the scaffold
(after the cached prefix) and are optimised with Adam so that the frozen reader, reading them, regenerates the
context: teacher-forced cross-entropy of the T context tokens, the first predicted from the last vector
(Kuratov et al. 2025, "Cramming 1568 tokens into a single vector and back again"). No question is used.
They start from the mean-pooled token embeddings of the M segments (:func:`mean_pooled`; the same segments as
the compressors), whose regeneration accuracy is the reference printed beside the optimised one.

A context counts as *regenerated exactly* when the reader's argmax at every one of its T positions is the next
context token (teacher-forced); greedy decoding from the vectors then reproduces the context token for token
(tested). Optimisation is batched over contexts; each context leaves its batch as soon as it is exact (its
vectors are those that were exact), else after ``steps`` updates. Each (context, ratio) is stored in its own
file as it finishes (:class:`VectorStore`), keyed by the context text and ratio and checked against the reader
and the settings, so an interrupted run resumes and a finished one reads its vectors back.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..device import amp_enabled, autocast
from ..files import atomic_path
from .cache import teacher_forced_logits
from .prompts import embed_ids
from .select import budget, segment_bounds


@dataclass
class Optimised:
    """One context at one ratio."""

    vectors: torch.Tensor  # (M, d) float32, CPU
    steps: int  # Adam updates applied
    token_acc: float  # share of the T context tokens the reader predicts (teacher-forced argmax)
    exact: bool  # every token predicted: greedy decoding regenerates the context
    loss: float  # mean cross-entropy per context token (nats)
    init_acc: float  # token accuracy of the mean-pooled starting vectors (the reference)
    seconds: float  # wall time of its batch divided by the batch's contexts

    def stats(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "vectors"}


def mean_pooled(reader, ids: torch.Tensor, ratio: float) -> torch.Tensor:
    """(M, d) float32: the mean token embedding of each of the M = ceil(T / r) segments of the context."""
    with torch.no_grad():
        e = embed_ids(reader.model, ids).float()
    M = budget(ids.shape[0], ratio)
    return torch.stack([e[a:b].mean(0) for a, b in segment_bounds(ids.shape[0], M)])


def regeneration(reader, vectors: Sequence[torch.Tensor], ids: Sequence[torch.Tensor], amp: str = "off"):
    """Teacher-forced regeneration of each context from its vectors: ``(loss per row (B,), token accuracy
    (B,), exact (B,))``; the loss (mean cross-entropy per context token) keeps its graph to the vectors."""
    dev = reader.device
    with autocast(dev, amp):
        lg, tg, va = teacher_forced_logits(
            reader.model, reader.prefix.expand(len(ids)), [[v] for v in vectors], list(ids), reader.pad_id
        )
    nll = F.cross_entropy(lg.float().flatten(0, 1), tg.flatten(), reduction="none").view(tg.shape)
    n = va.sum(1).clamp(min=1)
    loss = (nll * va).sum(1) / n
    hit = ((lg.argmax(-1) == tg) & va).sum(1)
    return loss, (hit.float() / n).detach(), (hit == va.sum(1)).detach()


def optimise_batch(
    reader,
    ids: Sequence[torch.Tensor],
    ratio: float,
    steps: int,
    lr: float,
    amp: str = "off",
    progress: Callable | None = None,
    deadline: float | None = None,
) -> list[Optimised | None]:
    """Optimise the vectors of every context of ``ids`` at ``ratio`` together (module docstring). Past
    ``deadline`` (a ``time.monotonic()`` value) the batch stops between steps: a context not finished by then
    is ``None`` (not stored; a resumed run starts it again), so a time budget bounds the optimisation."""
    t0 = time.perf_counter()
    dev = reader.device
    xs = [mean_pooled(reader, c, ratio).to(dev).requires_grad_(True) for c in ids]
    # Kuratov et al.: Adam with beta2 = 0.9 (faster adaptation); every vector of a context is its own leaf
    opt = torch.optim.Adam(xs, lr=lr, betas=(0.9, 0.9))
    out: list[Optimised | None] = [None] * len(ids)
    active, init_acc = list(range(len(ids))), {}
    it = range(steps + 1)
    for step in progress(it) if progress else it:
        loss, acc, exact = regeneration(reader, [xs[i] for i in active], [ids[i] for i in active], amp)
        keep = []
        for b, i in enumerate(active):
            init_acc.setdefault(i, float(acc[b]))
            if bool(exact[b]) or step == steps:
                v = xs[i].detach().float().cpu().clone()
                out[i] = Optimised(v, step, float(acc[b]), bool(exact[b]), float(loss[b].detach()), init_acc[i], 0.0)
            else:
                keep.append(b)
        if not keep or (deadline is not None and time.monotonic() > deadline):
            break
        opt.zero_grad(set_to_none=True)
        loss[keep].sum().backward()  # a sum of per-context means: each context's gradient is its own
        opt.step()
        active = [active[b] for b in keep]
    per = (time.perf_counter() - t0) / max(len(ids), 1)
    for o in out:
        if o is not None:
            o.seconds = round(per, 3)
    return out


# ----------------------------------------------------------------------------- the per-context store
class VectorStore:
    """One file per (context, ratio) under ``folder``: ``<context hash>_r<ratio>.pt`` holding the vectors, their
    statistics and what they depend on (reader and its dtype, scaffold prefix, steps, learning rate, bfloat16
    autocast or not). A file made under other settings is not used (it is recomputed and replaced)."""

    def __init__(self, folder: str | Path, reader, steps: int, lr: float, amp: str = "off"):
        self.folder = Path(folder)
        bf16 = amp_enabled(reader.device, amp)
        self.settings = {**reader.settings(), "steps": int(steps), "lr": float(lr), "bf16": bf16}

    def file(self, ctx_hash: str, ratio: float) -> Path:
        return self.folder / f"{ctx_hash}_r{ratio:g}.pt"

    def get(self, ctx_hash: str, ratio: float) -> Optimised | None:
        f = self.file(ctx_hash, ratio)
        if not f.is_file():
            return None
        try:
            d = torch.load(f, map_location="cpu", weights_only=True)
        except Exception:  # a damaged file (cut by a kill): recompute it
            return None
        if d.get("settings") != self.settings:
            return None
        return Optimised(d["vectors"], **d["stats"])

    def put(self, ctx_hash: str, ratio: float, o: Optimised) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.file(ctx_hash, ratio)) as tmp:
            torch.save({"vectors": o.vectors, "stats": o.stats(), "settings": self.settings}, tmp)


def choose_contexts(hashes: Sequence[str], n: int, seed: int, store: VectorStore, ratios: Sequence[float]) -> list[int]:
    """The ``n`` contexts to optimise: those with vectors already in ``store`` (at any of ``ratios``) first, then
    the others, each group in a seeded order. Stored work is used before new work is started, so a run grown on
    resume (more evaluation contexts, another ``optimise_contexts``) keeps the contexts it has paid for."""
    order = list(range(len(hashes)))
    random.Random(seed).shuffle(order)  # a seeded order: a larger count keeps the smaller's contexts
    stored = {i for i in order if any(store.file(hashes[i], r).is_file() for r in ratios)}
    return ([i for i in order if i in stored] + [i for i in order if i not in stored])[: max(n, 0)]


def optimise_contexts(
    reader,
    ctx_ids: Sequence[torch.Tensor],
    hashes: Sequence[str],
    ratios: Sequence[float],
    store: VectorStore,
    batch: int,
    amp: str = "off",
    progress: Callable | None = None,
    deadline: float | None = None,
) -> tuple[dict, list]:
    """Optimised vectors of every context at every ratio, read from ``store`` or computed and stored as each
    batch finishes: the contexts in the order given, ``batch`` at a time, each batch at every ratio before the
    next batch (so a run stopped by ``deadline``, a ``time.monotonic()`` value after which no batch starts and
    a running batch stops between steps, has whole contexts, not the shortest ones). Returns ``({(context
    index, ratio): Optimised}, [(context index, ratio) left undone])``."""
    steps, lr = store.settings["steps"], store.settings["lr"]
    done, left = {}, []
    todo = {r: [] for r in ratios}
    for r in ratios:
        for i, h in enumerate(hashes):
            got = store.get(h, r)
            if got is not None:
                done[(i, r)] = got
            else:
                todo[r].append(i)
    order = [i for i in range(len(ctx_ids)) if any(i in todo[r] for r in ratios)]  # the seeded order, always
    for s in range(0, len(order), batch):
        chunk = order[s : s + batch]
        for r in ratios:
            part = [i for i in chunk if i in todo[r]]
            if not part:
                continue
            if deadline is not None and time.monotonic() > deadline:
                left += [(i, r) for i in part]
                continue
            desc = f"optimise r={r:g}, contexts {s + 1}-{s + len(chunk)} of {len(order)}"
            res = optimise_batch(
                reader,
                [ctx_ids[i] for i in part],
                r,
                steps,
                lr,
                amp,
                progress=(lambda it, d=desc: progress(it, d, steps + 1)) if progress else None,
                deadline=deadline,
            )
            for i, o in zip(part, res):
                if o is None:  # cut by the deadline
                    left.append((i, r))
                    continue
                store.put(hashes[i], r, o)
                done[(i, r)] = o
    return done, sorted(left)
