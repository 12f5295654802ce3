"""What fills the context slot in each mode of notebook 04, the evaluation jobs, and the result store.

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
optimised       QA-free M vectors optimised for that context alone (:mod:`.optimise`; the ceiling of any
                       question-agnostic encoder of this reader; evaluated on a subset of contexts)
bm25            QA     BM25-ranked sentences (against the question) cut to M tokens, in order
overlap         QA     the M-token window with the most question words
==============  =====  ==========================================================================

Every stored result row carries the SQuAD ids of its questions (``qids``) beside their predictions, and
:func:`write_prediction_files` writes each (mode, ratio, seed) as the official prediction file
``{"<question id>": "<answer>"}`` with the evaluated questions as an official SQuAD v1.1 file, so the
official ``evaluate-v1.1.py`` re-scores any row.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..files import append_jsonl, atomic_write_json, read_jsonl
from .metric import score_predictions
from .prompts import encode
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
from .squad import QAExample, squad_layout
from .train import context_features

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
    "optimised",
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
    q_ids: list  # per question: question token ids (post + anchor)
    ans_tok: list  # per question: answer token span (i, j) of the first gold answer
    offsets: list  # per context: token character spans
    hidden: list | None = None  # per context: (n, L, d) float16

    @property
    def qids(self) -> list[str]:
        """Per question: its SQuAD id."""
        return [e.id for e in self.examples]

    @property
    def hashes(self) -> list[str]:
        """Per context: the hash of its text (what caches and checkpoints key on)."""
        return [context_hash(c) for c in self.contexts]


def canonical(examples: Sequence[QAExample]) -> list[QAExample]:
    """Examples ordered by article title, then file order (the same order in any file holding them)."""
    return sorted(examples, key=lambda e: e.title)


def prepare_eval(reader, examples: Sequence[QAExample], anchored: bool = True) -> EvalData:
    tok = reader.tokenizer
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
        [reader.question_ids(e.question, anchored) for e in ex],
        ans,
        offsets,
    )


def slots_for(mode: str, ratio: float, ed: EvalData, reader, modules: dict | None = None, optimised=None):
    """``(slots, rows)`` of ``mode`` at ``ratio`` (module docstring): ``rows`` = ``[(question index, slot
    index)]`` of the questions this mode answers (all of them, except ``optimised``: those of the contexts
    in ``optimised``, a ``{(context index, ratio): Optimised}`` dict)."""
    n_ctx = len(ed.ctx_ids)
    per_ctx = [(qi, c) for qi, c in enumerate(ed.q_ctx)]
    if mode == "no_context":
        return [torch.zeros(0, dtype=torch.long)] * n_ctx, per_ctx
    if mode == "anchor":
        return list(ed.ctx_ids), per_ctx
    M = [budget(c.shape[0], ratio) for c in ed.ctx_ids]
    if mode == "lead":
        return [c[lead_positions(c.shape[0], m)] for c, m in zip(ed.ctx_ids, M)], per_ctx
    if mode == "random":
        out = []
        for i, (c, m) in enumerate(zip(ed.ctx_ids, M)):
            g = torch.Generator().manual_seed(int(context_hash(ed.contexts[i]), 16) % 2**31 + int(ratio * 1000))
            out.append(c[random_positions(c.shape[0], m, g)])
        return out, per_ctx
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
        return out, [(qi, qi) for qi in range(len(ed.examples))]
    if mode == "optimised":
        have = sorted(i for (i, r) in (optimised or {}) if r == ratio)
        slot = {i: k for k, i in enumerate(have)}
        return [optimised[(i, ratio)].vectors for i in have], [(qi, slot[c]) for qi, c in per_ctx if c in slot]
    if modules is None:
        raise ValueError(f"mode {mode!r} needs trained compressors")
    out = []
    for s in range(0, n_ctx, 16):
        idx = list(range(s, min(s + 16, n_ctx)))
        H, E, mask = context_features(reader.model, ed.ctx_ids, ed.hidden, idx, reader.device)
        with torch.no_grad():
            if mode in ("latent", "pool_adapter"):
                out.extend(v.detach() for v in modules[mode](H, E, mask, ratio)[0])
            else:
                sel = modules["latent" if mode == "selection_ids" else "classifier"].select(H, mask, ratio)
                out.extend(ed.ctx_ids[i][p] for i, p in zip(idx, sel))
    return out, per_ctx


class ResultStore:
    """Per (mode, ratio, seed): question ids, predictions and per-question EM / F1, appended to a JSONL file
    as each finishes, so a resumed run skips what is done. Every row records the settings it was made under
    (``settings``: the reader, its prompt prefix and dtype, ``max_new_tokens``; per seed, a fingerprint of the
    compressor's weights, ``seed_settings``; per mode, e.g. the optimised vectors' settings, ``mode_settings``):
    a row made under other settings is not done (it is evaluated again and replaced). ``qids``: the evaluation
    questions in order; a row of an older run written before rows carried their ids is taken to cover them
    only when it has as many scores."""

    def __init__(self, path: str | Path, qids: Sequence[str] = (), settings: dict | None = None):
        self.path = Path(path)
        self.settings = dict(settings or {})
        self.seed_settings: dict = {}
        self.mode_settings: dict = {}
        self.rows = {}
        for r in read_jsonl(self.path, repair=True) if self.path.is_file() else []:
            if "qids" not in r:
                if len(r.get("f1_per", ())) != len(qids):
                    continue  # whose questions these scores are is unknown: evaluated again
                r["qids"] = list(qids)
            self.rows[self.key(r["mode"], r["ratio"], r["seed"])] = r

    @staticmethod
    def key(mode, ratio, seed):
        return (mode, float(ratio) if ratio is not None else None, seed)

    def settings_for(self, mode, seed) -> dict:
        """The settings a row of ``mode`` (and ``seed``) is made under."""
        out = dict(self.settings)
        if seed is not None and seed in self.seed_settings:
            out["compressor"] = self.seed_settings[seed]
        if mode in self.mode_settings:
            out[mode] = self.mode_settings[mode]
        return out

    def has(self, mode, ratio, seed, qids: Sequence[str] | None = None) -> bool:
        """Whether the job is stored under the current settings (and, given ``qids``, covers exactly those
        questions)."""
        row = self.rows.get(self.key(mode, ratio, seed))
        return row is not None and self._made_now(row) and (qids is None or row["qids"] == list(qids))

    def _made_now(self, row: dict) -> bool:
        """Whether ``row`` was made under the current settings of its mode and seed."""
        return row.get("settings", {}) == self.settings_for(row["mode"], row["seed"])

    def get(self, mode, ratio, seed) -> dict:
        return self.rows[self.key(mode, ratio, seed)]

    def current(self) -> list[dict]:
        """The stored rows made under the current settings."""
        return [r for r in self.rows.values() if self._made_now(r)]

    def add(self, row: dict) -> None:
        row = {**row, "settings": self.settings_for(row["mode"], row["seed"])}
        self.rows[self.key(row["mode"], row["ratio"], row["seed"])] = row
        append_jsonl(self.path, row)


def module_fingerprint(module_or_modules) -> str:
    """A hash of the weights of a compressor (a module or a dict of modules): which one a result was made by."""
    h = hashlib.sha1()
    mods = module_or_modules if isinstance(module_or_modules, dict) else {"": module_or_modules}
    for name in sorted(mods):
        for k, v in sorted(mods[name].state_dict().items()):
            h.update(f"{name}.{k}".encode())
            h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def job_order(ratios: Sequence[float], seeds: Sequence[int], modes=MODES) -> list[tuple]:
    """``(mode, ratio, seed)`` jobs, most decisive first, so a run stopped by its time budget has the
    acceptance comparisons: the floor and the anchor; at the main ratio (the first given) lead-M,
    ``latent`` and its own ids for every seed; at the other ratios the same; then the other baselines
    and controls at every ratio (``optimised`` runs in its own phase, after its vectors)."""
    seeds = list(seeds)
    jobs = [(m, None, None) for m in RATIO_FREE]
    for r in ratios:
        jobs += [("lead", r, None)] + [(m, r, s) for s in seeds for m in ("latent", "selection_ids")]
    for r in ratios:
        jobs += [(m, r, None) for m in ("random", "oracle", "bm25", "overlap")]
        jobs += [(m, r, s) for s in seeds for m in ("classifier", "pool_adapter")]
    jobs += [("optimised", r, None) for r in ratios]
    return [j for j in jobs if j[0] in modes]


def evaluate_all(
    reader,
    ed: EvalData,
    store: ResultStore,
    ratios,
    seeds_modules: dict,
    max_new_tokens: int,
    progress: Callable | None = None,
    modes=MODES,
    deadline: float | None = None,
    optimised: dict | None = None,
) -> list[tuple]:
    """Every job of :func:`job_order` into ``store``, skipping what it holds; no job starts after
    ``deadline`` (a ``time.monotonic()`` value). Returns the jobs left undone."""
    left = []
    for seed, modules in seeds_modules.items():
        store.seed_settings[seed] = module_fingerprint(modules)
    for mode, r, seed in job_order(ratios, sorted(seeds_modules), modes):
        if mode == "optimised":
            slots, rows = slots_for(mode, r, ed, reader, optimised=optimised)
            if not rows or store.has(mode, r, seed, [ed.qids[qi] for qi, _ in rows]):
                continue
        elif store.has(mode, r, seed, ed.qids):  # a row of other questions (a grown run) is done again
            continue
        if deadline is not None and time.monotonic() > deadline:
            left.append((mode, r, seed))
            continue
        t0 = time.perf_counter()
        if mode != "optimised":
            slots, rows = slots_for(mode, r or 1.0, ed, reader, seeds_modules.get(seed))
        desc = f"{mode}" + (f" r={r:g}" if r else "") + (f" seed {seed}" if seed is not None else "")
        preds = reader.generate(
            slots,
            [(k, ed.q_ids[qi]) for qi, k in rows],
            max_new_tokens,
            progress=(lambda it, d=desc: progress(it, d)) if progress else None,
        )
        sc = score_predictions(preds, [ed.examples[qi].answers for qi, _ in rows])
        store.add(
            {
                "mode": mode,
                "ratio": r,
                "seed": seed,
                "qids": [ed.qids[qi] for qi, _ in rows],
                "f1_per": sc["f1_per"].tolist(),
                "em_per": sc["em_per"].tolist(),
                "predictions": preds,
                "slot_len": [int(slots[k].shape[0]) for _, k in rows],
                "seconds": round(time.perf_counter() - t0, 2),
            }
        )
    return left


# ----------------------------------------------------------------------------- files anyone can re-score
def prediction_file_name(mode: str, ratio, seed) -> str:
    return f"{mode}" + (f"_r{ratio:g}" if ratio is not None else "") + (f"_seed{seed}" if seed is not None else "")


def write_prediction_files(store: ResultStore, examples: Sequence[QAExample], folder: str | Path) -> list[Path]:
    """``folder/<mode>[_r<r>][_seed<s>].json`` = ``{"<question id>": "<answer>"}`` for every stored row, and
    ``folder/eval_squad.json``, the evaluated questions in the official SQuAD v1.1 layout: ``python
    evaluate-v1.1.py eval_squad.json <file>`` re-scores a row over every evaluated question (a row over a
    subset, ``optimised``, gets its own ``<name>.squad.json`` with just its questions). Written atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    every = [e.id for e in examples]
    out = [atomic_write_json(folder / "eval_squad.json", squad_layout(examples))]
    for row in store.current():
        name = prediction_file_name(row["mode"], row["ratio"], row["seed"])
        out.append(atomic_write_json(folder / f"{name}.json", dict(zip(row["qids"], row["predictions"]))))
        if row["qids"] != every:
            keep = set(row["qids"])
            out.append(
                atomic_write_json(folder / f"{name}.squad.json", squad_layout(e for e in examples if e.id in keep))
            )
    return out
