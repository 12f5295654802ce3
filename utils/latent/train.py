"""Training the compressors of :mod:`.compressor` against the frozen reader, from cached features.

Data (training-side articles only): token labels per context (1 for words of any gold answer of the
paragraph, 0.5 for words of its questions, stopwords excluded), *recall* pseudo-questions built from
the unlabeled context text (cloze on entities and numbers, and random spans: "continue the text after
this cue"), and the real training questions with the teacher's cached top-k answer logits.

Phases, one global step counter (deterministic batches from ``(seed, kind, step)``, so a resumed run
draws the same batches): ``latent``: ``salience_steps`` label steps (BCE on the trunk's scores, no
reader pass), ``recall_steps`` LM steps on recall tasks (cross-entropy), ``qa_steps`` LM steps on
questions (cross-entropy + top-k distillation + the label BCE as an auxiliary loss);
``pool_adapter``: the same LM steps; ``classifier``: as many label steps as ``latent`` has steps in all.
Each LM step runs the reader only over the M slots, the question and the answer, after the cached
key/values of the fixed prompt prefix. Every ratio step draws r from ``cfg.ratios``.

Distributed (:class:`.distributed.Dist`): every process draws the same global batch and takes its share;
each loss term is a sum over the share divided by the global count (:class:`Norm`), so DDP's averaged
gradient is the gradient of the whole batch. The loss runs under bf16 autocast on a GPU (``cfg.amp``;
``"bf16"`` takes that path on the CPU too).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..device import autocast
from .cache import teacher_forced_logits
from .compressor import TrainConfig
from .distributed import Dist
from .prompts import embed_ids, pad_right
from .select import STOPWORDS, WORD, budget, token_offsets


def salience_labels(
    tokenizer, context: str, ctx_ids, answers: Sequence[str], questions: Sequence[str], question_weight: float = 0.5
):
    """(n,) float labels: 1 for tokens of words of any gold answer, ``question_weight`` for words of a question."""
    ans_words = {w.lower() for t in answers for w in WORD.findall(t)} - STOPWORDS
    q_words = {w.lower() for t in questions for w in WORD.findall(t)} - STOPWORDS
    lab = torch.zeros(ctx_ids.shape[0])
    spans = [(m.start(), m.end(), m.group().lower()) for m in WORD.finditer(context)]
    for i, (a, b) in enumerate(token_offsets(tokenizer, context, ctx_ids)):
        for s, e, w in spans:
            if s < b and a < e and (w in ans_words or w in q_words):
                lab[i] = max(float(lab[i]), 1.0 if w in ans_words else question_weight)
    return lab


def recall_tasks(context: str, n: int, rng: random.Random, cue_words: int = 4) -> list[tuple[str, str]]:
    """``n`` (question, answer) pairs from unlabeled text: half cloze on a capitalised word or number
    (with the following capitalised words / digits), half a random 1-3 word span; the question quotes
    the ``cue_words`` words before the target."""
    ws = list(WORD.finditer(context))
    out = []
    ent = [i for i, m in enumerate(ws) if i >= cue_words and (m.group()[0].isupper() or m.group()[0].isdigit())]
    for k in range(n):
        if k % 2 == 0 and ent:
            i = rng.choice(ent)
            j = i + 1
            while j < len(ws) and j < i + 3 and (ws[j].group()[0].isupper() or ws[j].group()[0].isdigit()):
                j += 1
        elif len(ws) > cue_words + 1:
            i = rng.randrange(cue_words, len(ws))
            j = min(len(ws), i + rng.randint(1, 3))
        else:
            continue
        cue = context[ws[i - cue_words].start() : ws[i].start()].strip()
        out.append((f'Which words follow "{cue}" in the context?', context[ws[i].start() : ws[j - 1].end()]))
    return out


@dataclass
class TrainSet:
    """Everything a training step reads, cached once per run (shared by seeds, compressors and processes)."""

    ctx_ids: list  # per context: 1-D ids
    hidden: list  # per context: (n, L, d) float16
    labels: list  # per context: (n,) float
    qa: list  # (context index, post ids, answer ids, (teacher values, indices))
    recall: list  # (context index, post ids, answer ids)
    stats: dict = field(default_factory=dict)
    targets: dict | None = None  # context index -> (M, d) optimised vectors at the amortisation ratio


@dataclass
class Norm:
    """The global counts of one batch: the denominators of its loss terms, the same on every process, so a
    process's share of the loss is a plain sum over its items divided by these."""

    answer_tokens: int = 1  # cross-entropy: per answer token
    kd_items: int = 1  # distillation: per question with teacher logits
    context_tokens: int = 1  # token labels: per context token
    target_slots: int = 1  # amortisation: per slot vector with a target

    @classmethod
    def of(cls, ts: TrainSet, items, ratio: float) -> "Norm":
        n = [ts.ctx_ids[it[0]].shape[0] for it in items]
        tg = ts.targets or {}
        return cls(
            max(sum(it[2].shape[0] for it in items), 1),
            max(sum(1 for it in items if len(it) > 3 and it[3] is not None), 1),
            max(sum(n), 1),
            max(sum(budget(k, ratio) for k, it in zip(n, items) if it[0] in tg), 1),
        )


def context_features(
    llm, ctx_ids, hidden, idx: Sequence[int], device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded cached hidden states (B, T, L, d), token embeddings (B, T, d) and mask for contexts ``idx``
    (``ctx_ids`` / ``hidden``: per context, its token ids and its cached reader states)."""
    ids, mask = pad_right([ctx_ids[i] for i in idx], 0)
    H = torch.zeros(len(idx), ids.shape[1], *hidden[idx[0]].shape[1:])
    for b, i in enumerate(idx):
        H[b, : hidden[i].shape[0]] = hidden[i].float()
    with torch.no_grad():
        E = embed_ids(llm, ids.to(device)).float()
    return H.to(device), E, mask.to(device)


def label_loss(
    scores: torch.Tensor, mask: torch.Tensor, labels: Sequence[torch.Tensor], denom: int | None = None
) -> torch.Tensor:
    """Binary cross-entropy of the token scores against the labels, summed over real tokens and divided by
    ``denom`` (default: their number, the mean)."""
    y = torch.zeros_like(scores)
    for b, lab in enumerate(labels):
        y[b, : lab.shape[0]] = lab.to(y.device)
    m = mask.bool()
    total = F.binary_cross_entropy_with_logits(scores[m].float(), y[m].float(), reduction="sum")
    return total / (int(m.sum()) if denom is None else denom)


def lm_loss(reader, comp, cfg: TrainConfig, ts: TrainSet, items, ratio: float, norm: Norm | None = None):
    """Loss of one LM batch (``items``: qa or recall tuples) and its parts (floats); ``norm``: the global
    counts when ``items`` is one process's share of a batch (default: ``items`` is the whole batch).

    The prompt is what evaluation reads: the slots, then the question ids, which already end with the
    anchor (:meth:`utils.latent.reader.Reader.question_ids`).
    """
    norm = norm or Norm.of(ts, items, ratio)
    dev = comp.target_rms.device
    H, E, mask = context_features(reader.model, ts.ctx_ids, ts.hidden, [it[0] for it in items], dev)
    vecs, s = comp(H, E, mask, ratio)
    prompts = [[v, it[1]] for v, it in zip(vecs, items)]
    answers = [it[2] for it in items]
    lg, tg, va = teacher_forced_logits(reader.model, reader.prefix.expand(len(items)), prompts, answers, reader.pad_id)
    logp = torch.log_softmax(lg.float(), -1)
    nll = -logp.gather(-1, tg.unsqueeze(-1)).squeeze(-1)
    zero = torch.zeros((), device=dev)
    parts = {"ce": (nll * va.float()).sum() / norm.answer_tokens}
    kd = [(b, it[3]) for b, it in enumerate(items) if len(it) > 3 and it[3] is not None]
    parts["kd"] = zero
    if kd and cfg.w_kd > 0:
        terms = []
        for b, (vals, ind) in kd:
            a = vals.shape[0]
            pt = torch.softmax(vals.float().to(dev) / cfg.kd_temperature, -1)
            ps = torch.log_softmax(lg[b, :a].float() / cfg.kd_temperature, -1).gather(-1, ind.long().to(dev))
            terms.append(-(pt * ps).sum(-1).mean())
        parts["kd"] = torch.stack(terms).sum() / norm.kd_items * cfg.kd_temperature**2
    parts["salience"] = zero
    if s is not None and cfg.w_salience > 0:
        parts["salience"] = label_loss(s, mask, [ts.labels[it[0]] for it in items], norm.context_tokens)
    parts["amortise"] = zero
    if ts.targets and cfg.w_amortise > 0:
        rms2 = float(comp.target_rms) ** 2
        sq = [(v.float() - ts.targets[it[0]].to(dev)).pow(2).sum() for v, it in zip(vecs, items) if it[0] in ts.targets]
        if sq:
            parts["amortise"] = torch.stack(sq).sum() / (norm.target_slots * vecs[0].shape[-1] * rms2)
    total = (
        cfg.w_ce * parts["ce"]
        + cfg.w_kd * parts["kd"]
        + cfg.w_salience * parts["salience"]
        + cfg.w_amortise * parts["amortise"]
    )
    return total, {k: float(v.detach()) for k, v in parts.items()}


def schedule(kind: str, cfg: TrainConfig) -> list[tuple[str, int]]:
    """The phases of ``kind`` as ``[(phase, steps)]`` (module docstring)."""
    if kind == "latent":
        return [("salience", cfg.salience_steps), ("recall", cfg.recall_steps), ("qa", cfg.qa_steps)]
    if kind == "pool_adapter":
        return [("recall", cfg.recall_steps), ("qa", cfg.qa_steps)]
    return [("salience", cfg.salience_steps + cfg.recall_steps + cfg.qa_steps)]


def phase_at(sched, step: int) -> str:
    for name, n in sched:
        if step < n:
            return name
        step -= n
    return sched[-1][0]


def make_optimizer(comp, cfg: TrainConfig, phase: str):
    if phase == "salience":
        return torch.optim.AdamW(comp.trunk.parameters(), lr=cfg.salience_lr)
    return torch.optim.AdamW([p for p in comp.parameters() if p.requires_grad], lr=cfg.lr)


class StepLoss(torch.nn.Module):
    """The part of a compressor a phase trains (the trunk in label steps, else the whole module), with the
    loss of one step as its forward (``forward(loss_fn)`` = ``loss_fn(module)``): what DDP wraps, so its
    gradient hooks see exactly the parameters the step uses."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, loss_fn):
        return loss_fn(self.module)


def train_module(
    reader,
    comp,
    cfg: TrainConfig,
    ts: TrainSet,
    start_step: int = 0,
    opt_state: dict | None = None,
    log: Callable | None = None,
    save: Callable | None = None,
    save_every: int = 50,
    progress: Callable | None = None,
    dist: Dist | None = None,
    phases: list[tuple[str, int]] | None = None,
    until: int | None = None,
) -> int:
    """Train ``comp`` (its ``kind``, or the given ``phases``) from ``start_step`` to the end, or only up to step
    ``until`` (a job with a wall-time limit; a resume continues); returns the step reached.

    ``log(record)`` gets one dict per step (the losses of the whole batch); ``save(step, optimizer)`` is called
    every ``save_every`` steps and at the end when any step ran. Under ``dist`` each process runs its share of
    every batch; only the main process logs and saves (the caller's ``log`` / ``save`` run there only).
    """
    dist = dist or Dist()
    for p in reader.model.parameters():
        p.requires_grad_(False)
    sched = phases or schedule(comp.kind, cfg)
    total = sum(n for _, n in sched)
    end = total if until is None else max(start_step, min(total, until))
    step_model = None
    dev = comp.target_rms.device
    B, share = cfg.train_batch_size, dist.share(cfg.train_batch_size)
    phase, opt = None, None
    it = range(start_step, end)
    t0 = time.perf_counter()
    keys = ("ce", "kd", "salience", "amortise")
    for step in progress(it, end - start_step) if progress and dist.main else it:
        ph = phase_at(sched, step)
        if ph != phase:
            del step_model  # its DDP hooks go with it before the next phase's wrapper registers its own
            step_model = dist.wrap(StepLoss(comp.trunk if ph == "salience" else comp))
            phase, opt = ph, make_optimizer(comp, cfg, ph)
            if opt_state is not None and opt_state.get("phase") == ph:
                opt.load_state_dict(opt_state["state"])
        rng = random.Random(f"{cfg.seed}-{comp.kind}-{step}")
        ratio = rng.choice(cfg.ratio_list)
        t1 = time.perf_counter()
        comp.train()
        opt.zero_grad(set_to_none=True)
        if ph == "salience":
            idx = [rng.randrange(len(ts.ctx_ids)) for _ in range(B)]
            denom = max(sum(ts.ctx_ids[i].shape[0] for i in idx), 1)

            def loss_fn(trunk, idx=idx[share], denom=denom):
                H, _, mask = context_features(reader.model, ts.ctx_ids, ts.hidden, idx, dev)
                loss = label_loss(trunk(H, mask)[1], mask, [ts.labels[i] for i in idx], denom)
                return loss, {"salience": float(loss.detach())}

        else:
            pool = ts.recall if ph == "recall" else ts.qa
            items = [pool[rng.randrange(len(pool))] for _ in range(B)]

            def loss_fn(c, items=items, ratio=ratio, norm=Norm.of(ts, items, ratio)):
                return lm_loss(reader, c, cfg, ts, items[share], ratio, norm)

        with autocast(dev, cfg.amp):
            loss, parts = step_model(loss_fn)
        (loss * dist.world).backward()  # DDP averages over processes: the sum of the shares is the batch loss
        params = [p for p in comp.parameters() if p.grad is not None]
        gn = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        opt.step()
        comp.eval()
        sums = dist.total(torch.tensor([float(loss.detach())] + [parts.get(k, 0.0) for k in keys], dtype=torch.float64))
        if log and dist.main:
            log(
                {
                    "kind": comp.kind,
                    "seed": cfg.seed,
                    "step": step,
                    "phase": ph,
                    "ratio": ratio,
                    "loss": float(sums[0]),
                    **{k: float(v) for k, v in zip(keys, sums[1:]) if k in parts},
                    "grad_norm": float(gn),
                    "step_s": round(time.perf_counter() - t1, 3),
                    "elapsed_s": round(time.perf_counter() - t0, 2),
                }
            )
        if save and dist.main and save_every and (step + 1) % save_every == 0 and step + 1 < total:
            save(step + 1, {"phase": ph, "state": opt.state_dict()})
    if save and dist.main and end < total and end > start_step:  # stopped early: keep the optimiser to go on
        save(end, {"phase": phase, "state": opt.state_dict()})
    elif (
        save and dist.main and end == total and (start_step < total or start_step == 0)
    ):  # a finished module is not written again
        save(total, None)
    dist.barrier()
    return end
