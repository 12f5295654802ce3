"""The notebook-04 experiment around the modes: data split, answer positions, training features,
the dev-set check during training, and the per-mode summary table.

Everything here was notebook code; keeping it in one tested place lets the notebook read as a
methods section and lets other entry points (sweeps, a saved compressor evaluated on another
file) run the same experiment.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..files import append_jsonl
from .evaluate import answer_logits, diversity_stats, token_nll
from .metric import bootstrap_ci, paired_bootstrap_ci
from .prompts import MODES, EncodedExample, encode
from .squad import (
    QAExample,
    load_hub_squad,
    load_squad_json,
    make_synthetic_squad,
    one_question_per_context,
    parse_squad,
)
from .train import cache_hidden_states, salience_labels

COMPRESSED = ("token_budget", "mean_pool", "adapter", "latent")
DEV_SIZE = 16


@dataclass
class Split:
    """Training, dev (a slice of the training side) and evaluation examples, and data statistics."""

    train: list[QAExample]
    dev: list[QAExample]
    eval: list[QAExample]
    stats: dict = field(default_factory=dict)


def split_examples(data: str, n_eval: int, n_train_paragraphs: int, max_train_questions: int, seed: int) -> Split:
    """The evaluation items (one question per context) and the training questions.

    ``data="synthetic"``: training and evaluation paragraphs from different generator seeds.
    A SQuAD file or ``hub:<name>``: ``n_eval`` random contexts are held out for evaluation and
    training uses the questions of the other contexts. The last ``DEV_SIZE`` shuffled training
    questions form the dev slice (dropped from training when there are more than 32).
    """
    if data == "synthetic":
        train, _ = parse_squad(make_synthetic_squad(n_train_paragraphs, seed=1000 + seed), "synthetic-train")
        pool, stats = parse_squad(make_synthetic_squad(n_eval, seed=2000 + seed), "synthetic-eval")
        ev = one_question_per_context(pool, seed=seed)[:n_eval]
    else:
        all_ex, stats = load_hub_squad(data[4:]) if data.startswith("hub:") else load_squad_json(data)
        contexts = list(dict.fromkeys(e.context for e in all_ex))
        random.Random(seed).shuffle(contexts)
        if len(contexts) < n_eval + 1:
            raise ValueError(f"{data} has {len(contexts)} contexts: too few for n_eval={n_eval} plus training")
        eval_ctx = set(contexts[:n_eval])
        ev = one_question_per_context([e for e in all_ex if e.context in eval_ctx], seed=seed)
        train = [e for e in all_ex if e.context not in eval_ctx]
    random.Random(seed).shuffle(train)
    train = train[:max_train_questions]
    dev = train[-DEV_SIZE:]
    train = train[:-DEV_SIZE] if len(train) > 2 * DEV_SIZE else train
    return Split(train, dev, ev, stats)


def answer_token_positions(tokenizer, examples: Sequence[QAExample]) -> np.ndarray:
    """Token index (in the context) at which each example's first gold answer starts."""
    out = []
    for e in examples:
        s = e.answer_starts[0] if e.answer_starts and e.answer_starts[0] >= 0 else e.context.find(e.answers[0])
        out.append(len(encode(tokenizer, e.context[: max(s, 0)])))
    return np.array(out)


def data_summary(
    source: str, split: Split, enc_eval: Sequence[EncodedExample], ans_pos: np.ndarray, M: int, target_rms: float
) -> dict:
    ctx_lens = np.array([e.context.shape[0] for e in enc_eval])
    return {
        "source": source,
        "eval_questions": len(split.eval),
        "train_questions": len(split.train),
        "dev_questions": len(split.dev),
        "stats": split.stats,
        "context_tokens_mean": float(ctx_lens.mean()),
        "context_tokens_max": int(ctx_lens.max()),
        "answer_start_token_mean": float(ans_pos.mean()),
        "answer_start_rel_mean": float(np.mean(ans_pos / np.maximum(ctx_lens, 1))),
        "answers_starting_within_first_M": float(np.mean(ans_pos < M)),
        "target_rms": target_rms,
    }


def training_features(
    llm,
    tokenizer,
    train: Sequence[QAExample],
    enc_train: Sequence[EncodedExample],
    hidden_layer: int,
    progress: Callable | None = None,
):
    """Hidden states and salience labels once per distinct training context, repeated per question.

    Returns ``(hidden, labels, seconds)``: lists aligned with ``train``, and the caching time.
    """
    t0 = time.perf_counter()
    uniq = list(dict.fromkeys(x.context for x in train))
    first_enc = {}
    for x, e in zip(train, enc_train):
        first_enc.setdefault(x.context, e.context)
    hid = cache_hidden_states(llm, [first_enc[c] for c in uniq], hidden_layer, batch_size=16, progress=progress)
    hid_by_ctx = dict(zip(uniq, hid))
    seconds = time.perf_counter() - t0
    qs, ans = {}, {}
    for x in train:
        qs.setdefault(x.context, []).append(x.question)
        ans.setdefault(x.context, set()).update(x.paragraph_answers or x.answers)
    lab = {c: salience_labels(tokenizer, c, first_enc[c], sorted(ans[c]), qs[c]) for c in uniq}
    return [hid_by_ctx[x.context] for x in train], [lab[x.context] for x in train], seconds


def dev_checker(
    llm,
    pad_id: int,
    enc_dev: Sequence[EncodedExample],
    anchored: bool,
    history: list,
    history_path,
    t0: float,
    kind: str,
) -> Callable:
    """A training callback: teacher-forced first-token accuracy and NLL on the dev slice, appended
    to ``history`` and to the JSONL file ``history_path``."""

    def cb(step, comp):
        with torch.no_grad():
            vecs = comp.context_vectors(llm)([e.context for e in enc_dev])
            prompts = [[e.pre, v, e.post] + ([e.anchor] if anchored else []) for e, v in zip(enc_dev, vecs)]
            answers = [e.answer_anchored if anchored else e.answer for e in enc_dev]
            lg, tg, va = answer_logits(llm, prompts, answers, pad_id)
            nll = (token_nll(lg, tg) * va).sum() / va.sum()
            acc = float(((lg[:, 0].argmax(-1) == tg[:, 0]) & va[:, 0]).float().mean())
        rec = {
            "phase": "train",
            "kind": kind,
            "step": step,
            "dev_first_acc": acc,
            "dev_nll": float(nll),
            "elapsed_s": round(time.perf_counter() - t0, 2),
        }
        history.append(rec)
        append_jsonl(history_path, rec)

    return cb


def log_eval(history: list, history_path, mode: str, r: dict, t0: float) -> None:
    """Append the evaluation of one mode (F1, EM, first-token accuracy, NLL, time) to the history."""
    rec = {
        "phase": "eval",
        "mode": mode,
        "f1": r["scores"]["f1"],
        "em": r["scores"]["em"],
        "first_top1": float(np.mean(r["first_top1"])),
        "gold_nll": float(np.nanmean(r["gold_nll"])),
        "seconds": r["seconds"],
        "elapsed_s": round(time.perf_counter() - t0, 2),
    }
    history.append(rec)
    append_jsonl(history_path, rec)


def mode_metrics(results: dict, tokenizer, n_boot: int, seed: int) -> dict:
    """Per-mode EM / F1 with bootstrap intervals, paired differences against ``text`` and ``anchor``,
    first-token accuracy, gold NLL, compression, timing and diversity (one dict per mode)."""
    text = results["text"]["scores"]
    anchor = results["anchor"]["scores"]
    out = {}
    for mode in MODES:
        r = results[mode]
        sc = r["scores"]
        f1m, f1lo, f1hi = bootstrap_ci(sc["f1_per"], n_boot=n_boot, seed=seed)
        emm, emlo, emhi = bootstrap_ci(sc["em_per"], n_boot=n_boot, seed=seed)
        first_ids = [g[0] if g else -1 for g in r["generated_ids"]]
        nvec = np.array(r["n_prompt_vectors"])
        ctx = np.array(r["n_context_tokens"])
        out[mode] = {
            "em": emm,
            "em_ci": [emlo, emhi],
            "f1": f1m,
            "f1_ci": [f1lo, f1hi],
            "delta_f1_vs_text": paired_bootstrap_ci(sc["f1_per"], text["f1_per"], n_boot=n_boot, seed=seed),
            "delta_em_vs_text": paired_bootstrap_ci(sc["em_per"], text["em_per"], n_boot=n_boot, seed=seed),
            "delta_f1_vs_anchor": paired_bootstrap_ci(sc["f1_per"], anchor["f1_per"], n_boot=n_boot, seed=seed),
            "anchored": bool(r["anchored"]),
            "first_token_top1": 100 * float(np.mean(r["first_top1"])),
            "first_token_top5": 100 * float(np.mean(r["first_top5"])),
            "gold_nll": float(np.nanmean(r["gold_nll"])),
            "context_slot_mean": float(nvec.mean()),
            "compression_ratio": float(np.mean(ctx / np.maximum(nvec, 1))),
            "seconds": r["seconds"],
            "examples_per_s": r["examples_per_s"],
            **diversity_stats(first_ids, r["predictions"], tokenizer),
        }
    return out


def train_compressors(
    llm,
    tokenizer,
    split: Split,
    enc_train,
    enc_dev,
    budgets: dict,
    common: dict,
    run,
    resume: bool,
    history: list,
    t0: float,
    history_every: int,
) -> tuple[dict, dict, dict]:
    """Train the ``latent`` and ``adapter`` compressors, each within its wall-clock budget.

    ``budgets``: kind -> seconds; ``common``: the :class:`TrainConfig` fields both share. The latent
    budget includes caching its hidden states and salience labels. Per-step records go to
    ``train_diagnostics_<kind>.jsonl``, checkpoints to ``ckpt_<kind>/`` (carried over from an earlier
    attempt of the run when ``resume``), dev checks to ``metrics_history.jsonl``. Returns
    ``(compressors, records, summary)``.
    """
    from ..progress import progress_bar
    from .compressor import Compressor, TrainConfig
    from .prompts import input_embedding, token_embedding_rms
    from .train import train_compressor

    d_model = input_embedding(llm).weight.shape[1]
    comps, records, cache_s = {}, {}, 0.0
    for kind, budget in budgets.items():
        with run.timer(f"train_{kind}"):
            t_kind = time.perf_counter()
            cfg = TrainConfig(kind=kind, time_budget_s=budget, **common)
            comps[kind] = Compressor(d_model, cfg, token_embedding_rms(llm)).to(cfg.device)
            hidden = labels = None
            if kind == "latent":
                hidden, labels, cache_s = training_features(
                    llm,
                    tokenizer,
                    split.train,
                    enc_train,
                    cfg.hidden_layer,
                    progress=lambda it: progress_bar(it, desc="caching"),
                )
            cfg.time_budget_s = max(0.0, budget - (time.perf_counter() - t_kind))
            ckpt = run.carry_over(f"ckpt_{kind}") if resume else None
            if ckpt is not None:
                run.carry_over(f"train_diagnostics_{kind}.jsonl")
            records[kind] = train_compressor(
                llm,
                tokenizer,
                comps[kind],
                cfg,
                enc_train,
                hidden,
                labels,
                diagnostics_path=run.path(f"train_diagnostics_{kind}.jsonl"),
                checkpoint_dir=run.path(f"ckpt_{kind}"),
                checkpoint_every=50,
                resume=ckpt is not None,
                progress=lambda it, desc: progress_bar(it, desc=desc),
                callback=dev_checker(
                    llm,
                    tokenizer.pad_token_id,
                    enc_dev,
                    cfg.anchored,
                    history,
                    run.path("metrics_history.jsonl"),
                    t0,
                    kind,
                ),
                callback_every=history_every,
            )
    lm = {k: [r for r in v if r["phase"] == "lm"] for k, v in records.items()}
    summary = {
        "latent_lm_steps": len(lm["latent"]),
        "latent_salience_steps": len(records["latent"]) - len(lm["latent"]),
        "adapter_lm_steps": len(lm["adapter"]),
        "hidden_cache_s": round(cache_s, 1),
        "train_s_total": round(run.timings["train_latent"] + run.timings["train_adapter"], 1),
    }
    return comps, records, summary


def max_context(encoded: Sequence[EncodedExample]) -> int:
    """Positional-table size for the encoder: the longest context plus one, at least 1024."""
    return max(1024, max(x.context.shape[0] for x in encoded) + 1)
