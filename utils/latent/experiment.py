"""The notebook-04 experiment: cached features, per-seed training with checkpoints, and every mode at
every ratio over the evaluation questions, stored as it goes so a long run can resume.

About 450 lines: the one place where data, training and evaluation of notebook 04 meet; the
pieces (split, selection, caches, compressor, training, report) are modules of their own.

Modes (:data:`MODES`), all with the same scaffold, the same anchor and, at ratio r, the same
M = ceil(context tokens / r) per context:

==============  =====  ==========================================================================
mode            track  context slot
==============  =====  ==========================================================================
no_context      both   nothing (the floor)
anchor          both   the whole context (the reference; ratio-free)
lead            QA-free the first M tokens
random          QA-free M random tokens, in context order
oracle          QA-free M consecutive tokens around the gold answer (hard-selection ceiling)
classifier      QA-free a trained token classifier's top-M tokens, in order (LLMLingua-2 style)
selection_ids   QA-free ``latent``'s own selection (argmax of each pooling segment) as token ids
pool_adapter    QA-free segment means of token embeddings through a trained projector (control)
latent          QA-free the trained compressor's M vectors
bm25            QA     BM25-ranked sentences (against the question) cut to M tokens, in order
overlap         QA     the M-token window with the most question words
==============  =====  ==========================================================================
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..files import append_jsonl, read_jsonl
from .cache import KV, cache_hidden, teacher_topk
from .compressor import KINDS, build, check_resumable, load_bundle, read_meta, save_bundle
from .evaluate import generate_grouped
from .metric import score_predictions
from .prompts import Scaffold, encode, input_embedding
from .select import (
    bm25_positions,
    budget,
    char_span_to_tokens,
    lead_positions,
    oracle_window,
    overlap_window,
    random_positions,
    token_offsets,
    token_words,
)
from .split import context_hash
from .squad import QAExample
from .train import TrainSet, context_features, recall_tasks, salience_labels, train_module

MODES = (
    "no_context",
    "anchor",
    "lead",
    "random",
    "oracle",
    "classifier",
    "selection_ids",
    "pool_adapter",
    "latent",
    "bm25",
    "overlap",
)
RATIO_FREE = ("no_context", "anchor")
SEEDED = ("classifier", "selection_ids", "pool_adapter", "latent")
QUESTION_AWARE = ("bm25", "overlap")
PER_QUESTION = ("oracle", "bm25", "overlap")


@dataclass
class EvalData:
    """The evaluation questions and what every mode reads, per distinct context."""

    examples: list  # QAExample, canonical order (article title, then file order)
    ctx_ids: list  # per context
    contexts: list  # per context: text
    q_ctx: list  # per question: context index
    q_ids: list  # per question: question ids (post + anchor)
    ans_tok: list  # per question: answer token span (i, j) of the first gold answer
    offsets: list  # per context: token character spans
    hidden: list | None = None  # per context: (n, L, d) float16


def canonical(examples: Sequence[QAExample]) -> list[QAExample]:
    """Examples ordered by article title, then file order (the same order in any file holding them)."""
    return sorted(examples, key=lambda e: e.title)


def question_ids(scaffold: Scaffold, question: str, anchored: bool) -> torch.Tensor:
    post = scaffold.post_ids(question)
    return torch.cat([post, scaffold.anchor_ids]) if anchored and scaffold.anchor_ids.numel() else post


def prepare_eval(tok, scaffold: Scaffold, examples: Sequence[QAExample], anchored: bool) -> EvalData:
    ex = canonical(examples)
    contexts = list(dict.fromkeys(e.context for e in ex))
    index = {c: i for i, c in enumerate(contexts)}
    ctx_ids = [encode(tok, c) for c in contexts]
    offsets = [token_offsets(tok, c, ids) for c, ids in zip(contexts, ctx_ids)]
    ans = []
    for e in ex:
        i = index[e.context]
        s = e.answer_starts[0]
        ans.append(char_span_to_tokens(offsets[i], s, s + len(e.answers[0])))
    return EvalData(
        ex,
        ctx_ids,
        contexts,
        [index[e.context] for e in ex],
        [question_ids(scaffold, e.question, anchored) for e in ex],
        ans,
        offsets,
    )


def slots_for(mode: str, ratio: float, ed: EvalData, llm, modules: dict | None, seed: int = 0):
    """``(slots, slot index per question)`` of ``mode`` at ``ratio`` (see module docstring)."""
    n_ctx = len(ed.ctx_ids)
    per_ctx = list(range(n_ctx))
    if mode == "no_context":
        return [torch.zeros(0, dtype=torch.long)] * n_ctx, ed.q_ctx
    if mode == "anchor":
        return list(ed.ctx_ids), ed.q_ctx
    M = [budget(c.shape[0], ratio) for c in ed.ctx_ids]
    if mode == "lead":
        return [c[lead_positions(c.shape[0], m)] for c, m in zip(ed.ctx_ids, M)], ed.q_ctx
    if mode == "random":
        out = []
        for i, (c, m) in enumerate(zip(ed.ctx_ids, M)):
            g = torch.Generator().manual_seed(int(context_hash(ed.contexts[i]), 16) % 2**31 + int(ratio * 1000))
            out.append(c[random_positions(c.shape[0], m, g)])
        return out, ed.q_ctx
    if mode in PER_QUESTION:
        out = []
        for qi, e in enumerate(ed.examples):
            i = ed.q_ctx[qi]
            c, m = ed.ctx_ids[i], M[i]
            if mode == "oracle":
                pos = oracle_window(c.shape[0], m, *ed.ans_tok[qi])
            elif mode == "bm25":
                pos = bm25_positions(ed.offsets[i], ed.contexts[i], e.question, m)
            else:
                pos = overlap_window(token_words(ed.offsets[i], ed.contexts[i]), e.question, m)
            out.append(c[pos])
        return out, list(range(len(ed.examples)))
    if modules is None:
        raise ValueError(f"mode {mode!r} needs trained compressors")
    dev = input_embedding(llm).weight.device
    out = []
    for s in range(0, n_ctx, 16):
        idx = per_ctx[s : s + 16]
        H, E, mask = context_features(llm, ed.ctx_ids, ed.hidden, idx, dev)
        with torch.no_grad():
            if mode in ("latent", "pool_adapter"):
                out.extend(v.detach() for v in modules[mode](H, E, mask, ratio)[0])
            else:
                sel = modules["latent" if mode == "selection_ids" else "classifier"].select(H, mask, ratio)
                out.extend(ed.ctx_ids[i][p] for i, p in zip(idx, sel))
    return out, ed.q_ctx


class ResultStore:
    """Per (mode, ratio, seed): predictions and per-question EM / F1, appended to a JSONL file as each
    finishes, so a resumed run skips what is done."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows = (
            {self.key(r["mode"], r["ratio"], r["seed"]): r for r in read_jsonl(self.path, repair=True)}
            if self.path.is_file()
            else {}
        )

    @staticmethod
    def key(mode, ratio, seed):
        return (mode, float(ratio) if ratio is not None else None, seed)

    def has(self, mode, ratio, seed) -> bool:
        return self.key(mode, ratio, seed) in self.rows

    def get(self, mode, ratio, seed) -> dict:
        return self.rows[self.key(mode, ratio, seed)]

    def add(self, row: dict) -> None:
        self.rows[self.key(row["mode"], row["ratio"], row["seed"])] = row
        append_jsonl(self.path, row)


def job_order(ratios: Sequence[float], seeds: Sequence[int], modes=MODES) -> list[tuple]:
    """``(mode, ratio, seed)`` jobs, most decisive first, so a run stopped by its time budget has the
    acceptance comparisons: the floor and the anchor; at the main ratio (the first given) lead-M,
    ``latent`` and its own ids for every seed; at the other ratios the same; then the other baselines
    and controls at every ratio."""
    seeds = list(seeds)
    jobs = [(m, None, None) for m in RATIO_FREE]
    for r in ratios:
        jobs += [("lead", r, None)] + [(m, r, s) for s in seeds for m in ("latent", "selection_ids")]
    for r in ratios:
        jobs += [(m, r, None) for m in ("random", "oracle", "bm25", "overlap")]
        jobs += [(m, r, s) for s in seeds for m in ("classifier", "pool_adapter")]
    return [j for j in jobs if j[0] in modes]


def evaluate_all(
    llm,
    tok,
    ed: EvalData,
    prefix: KV,
    store: ResultStore,
    ratios,
    seeds_modules: dict,
    max_new_tokens: int,
    anchor: str,
    progress: Callable | None = None,
    modes=MODES,
    deadline: float | None = None,
) -> list[tuple]:
    """Every job of :func:`job_order` into ``store``, skipping what it holds; no job starts after
    ``deadline`` (a ``time.monotonic()`` value). Returns the jobs left undone."""
    golds = [e.answers for e in ed.examples]
    left = []
    for mode, r, seed in job_order(ratios, sorted(seeds_modules), modes):
        if store.has(mode, r, seed):
            continue
        if deadline is not None and time.monotonic() > deadline:
            left.append((mode, r, seed))
            continue
        t0 = time.perf_counter()
        slots, q_slot = slots_for(mode, r or 1.0, ed, llm, seeds_modules.get(seed))
        qs = list(zip(q_slot, ed.q_ids))
        desc = f"{mode}" + (f" r={r:g}" if r else "") + (f" seed {seed}" if seed is not None else "")
        preds = generate_grouped(
            llm,
            tok,
            prefix,
            slots,
            qs,
            max_new_tokens,
            anchor=anchor,
            progress=(lambda it, d=desc: progress(it, d)) if progress else None,
        )
        sc = score_predictions(preds, golds)
        slot_len = [int(slots[q].shape[0]) for q in q_slot]
        store.add(
            {
                "mode": mode,
                "ratio": r,
                "seed": seed,
                "f1_per": sc["f1_per"].tolist(),
                "em_per": sc["em_per"].tolist(),
                "predictions": preds,
                "slot_len": slot_len,
                "seconds": round(time.perf_counter() - t0, 2),
            }
        )
    return left


# ----------------------------------------------------------------------------- training side
def prepare_train(
    llm,
    tok,
    scaffold: Scaffold,
    train: Sequence[QAExample],
    cfg,
    prefix: KV,
    topk: int,
    recall_per_context: int,
    progress: Callable | None = None,
) -> TrainSet:
    """Cached hidden states and labels per training context, recall tasks and teacher top-k per question."""
    contexts = list(dict.fromkeys(e.context for e in train))
    index = {c: i for i, c in enumerate(contexts)}
    ctx_ids = [encode(tok, c) for c in contexts]
    t0 = time.perf_counter()
    hidden = cache_hidden(
        llm, ctx_ids, cfg.layers, cfg.echo, progress=(lambda it: progress(it, "hidden states")) if progress else None
    )
    t_hidden = time.perf_counter() - t0
    qs, ans = {}, {}
    for e in train:
        qs.setdefault(e.context, []).append(e.question)
        ans.setdefault(e.context, set()).update(e.paragraph_answers or e.answers)
    labels = [salience_labels(tok, c, ids, sorted(ans[c]), qs[c]) for c, ids in zip(contexts, ctx_ids)]
    anchored = cfg.anchored
    qa_items = [
        (index[e.context], question_ids(scaffold, e.question, anchored), scaffold.answer_ids(e.answers[0], anchored))
        for e in train
    ]
    t0 = time.perf_counter()
    tk = teacher_topk(
        llm,
        prefix,
        ctx_ids,
        qa_items,
        tok.pad_token_id or 0,
        k=topk,
        K=cfg.K,
        progress=(lambda it: progress(it, "teacher top-k")) if progress else None,
    )
    t_teacher = time.perf_counter() - t0
    import random as _random

    rng = _random.Random(0)
    recall = []
    for c in contexts:
        for q, a in recall_tasks(c, recall_per_context, rng):
            recall.append((index[c], question_ids(scaffold, q, anchored), scaffold.answer_ids(a, anchored)))
    return TrainSet(
        ctx_ids,
        hidden,
        labels,
        [(*it, t) for it, t in zip(qa_items, tk)],
        recall,
        {
            "contexts": len(contexts),
            "questions": len(qa_items),
            "recall_tasks": len(recall),
            "hidden_cache_s": round(t_hidden, 1),
            "teacher_cache_s": round(t_teacher, 1),
        },
    )


def bundle_meta(cfg, d_model: int, target_rms: float, model: str, split, scaffold_info: dict) -> dict:
    """What a checkpoint records besides weights: config, reader, prompt, and the data it saw."""
    side = split.train + split.dev
    return {
        "config": asdict(cfg),
        "d_model": d_model,
        "target_rms": target_rms,
        "model": model,
        "scaffold": scaffold_info,
        "seen_titles": sorted({e.title for e in side}),
        "seen_contexts": sorted({context_hash(e.context) for e in side}),
        "progress": {k: 0 for k in KINDS},
    }


def train_seed(
    llm,
    ts: TrainSet,
    cfg,
    seed: int,
    prefix: KV,
    pad_id: int,
    ckpt_dir: Path,
    meta: dict,
    resume: bool,
    log: Callable | None = None,
    progress: Callable | None = None,
    save_every: int = 50,
) -> dict:
    """Train the three compressors of one seed, resuming from ``ckpt_dir`` when asked (same config only)."""
    cfg = replace(cfg, seed=seed)
    d_model = input_embedding(llm).weight.shape[1]
    torch.manual_seed(seed)
    mods = {k: build(k, d_model, cfg, meta["target_rms"]).to(cfg.device) for k in KINDS}
    meta = {**meta, "config": asdict(cfg), "progress": {k: 0 for k in KINDS}}
    opts: dict = {}
    if resume and (ckpt_dir / "config.json").is_file():
        check_resumable(read_meta(ckpt_dir), cfg, d_model)
        loaded, opts, saved = load_bundle(ckpt_dir, device=cfg.device)
        for k, m in loaded.items():
            mods[k].load_state_dict(m.state_dict())
        meta["progress"] = saved.get("progress", meta["progress"])
    for kind in KINDS:

        def save(step, opt, kind=kind):  # only the module in training changed since the last save
            meta["progress"][kind] = step
            opts[kind] = opt
            save_bundle(ckpt_dir, {kind: mods[kind]}, meta, {kind: opt})

        train_module(
            llm,
            mods[kind],
            cfg,
            ts,
            prefix,
            pad_id,
            start_step=meta["progress"][kind],
            opt_state=opts.get(kind),
            log=log,
            save=save,
            save_every=save_every,
            progress=(lambda it, n, k=kind: progress(it, f"seed {seed} {k}", n)) if progress else None,
        )
    return mods


def load_training_log(path) -> list[dict]:
    return read_jsonl(path, repair=True) if Path(path).is_file() else []


SHIPPED = Path(__file__).resolve().parents[2] / "models" / "latent-smollm2"


def resolve_checkpoint(checkpoint: str, model: str) -> str:
    """``auto`` -> the shipped compressor when the reader is the bundled SmolLM2 and it is present (else
    train here: ``""``); any other value unchanged."""
    if checkpoint == "auto":
        return str(SHIPPED) if model == "smollm2" and (SHIPPED / "config.json").is_file() else ""
    return checkpoint


def budget_warning(ctx_lens: Sequence[int], ratios: Sequence[float]) -> str | None:
    """A warning when M = ceil(T / r) is not smaller than a context (nothing is compressed there)."""
    bad = {r: sum(1 for n in ctx_lens if budget(n, r) >= n) for r in ratios}
    bad = {r: k for r, k in bad.items() if k}
    if not bad:
        return None
    return (
        "Warning: M is not smaller than the context for "
        + ", ".join(f"{k} context(s) at r={r:g}" for r, k in bad.items())
        + " (those contexts are passed whole: M = ceil(T / r) >= T); use ratios above 1 and contexts of several tokens."
    )


def finished_bundle(ckpt_dir: Path, cfg, seed: int, d_model: int) -> dict | None:
    """The modules of a seed whose training is complete in ``ckpt_dir`` with this configuration, else None
    (so a resumed run skips the training caches when every seed is done)."""
    from .train import schedule

    if not (Path(ckpt_dir) / "config.json").is_file():
        return None
    cfg = replace(cfg, seed=seed)
    meta = read_meta(ckpt_dir)
    check_resumable(meta, cfg, d_model)
    done = all(meta.get("progress", {}).get(k, 0) >= sum(n for _, n in schedule(k, cfg)) for k in KINDS)
    return load_bundle(ckpt_dir, device=cfg.device)[0] if done else None
