"""Tables and sentences of the notebook-04 report, from the :class:`.experiment.ResultStore`.

Every interval resamples whole evaluation contexts (all questions of a context together). A seeded
mode is summarised by the per-question mean over its seeds (seed-level figures are in the
acceptance table). Teacher-normalised F1 = (F1 - F1[no_context]) / (F1[anchor] - F1[no_context]).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .experiment import MODES, QUESTION_AWARE, RATIO_FREE, SEEDED
from .metric import context_bootstrap_ci, paired_context_bootstrap

LABELS = {
    "no_context": "no context (floor)",
    "anchor": "full context (anchor)",
    "lead": "lead-M",
    "random": "random-M in order",
    "oracle": "oracle window (ceiling of hard selection)",
    "classifier": "token classifier top-M (LLMLingua-2 style)",
    "selection_ids": "latent's own selection as ids",
    "pool_adapter": "trained pool + projector (control)",
    "latent": "latent",
    "bm25": "BM25 sentences cut to M",
    "overlap": "question-overlap window",
}


def per_question(store, mode: str, ratio, seeds: Sequence[int], key: str = "f1_per") -> np.ndarray | None:
    """Per-question scores of ``mode`` (mean over ``seeds`` for a seeded mode), or None if not run."""
    r = None if mode in RATIO_FREE else ratio
    ss = seeds if mode in SEEDED else [None]
    rows = [store.get(mode, r, s)[key] for s in ss if store.has(mode, r, s)]
    return np.mean(np.asarray(rows, float), 0) if rows else None


def normalised(f1: float, floor: float, anchor: float) -> float:
    return (f1 - floor) / (anchor - floor) if anchor != floor else float("nan")


def summary(store, clusters, ratios, seeds, n_boot: int, seed: int = 0) -> list[dict]:
    """One record per (mode, ratio): F1 and EM with context-bootstrap intervals, normalised F1, slot size."""
    floor, anchor = per_question(store, "no_context", None, seeds), per_question(store, "anchor", None, seeds)
    fl = 100 * floor.mean() if floor is not None else float("nan")
    an = 100 * anchor.mean() if anchor is not None else float("nan")
    out = []
    for mode in MODES:
        for r in ratios:
            f1 = per_question(store, mode, r, seeds)
            if f1 is None:
                continue
            em = per_question(store, mode, r, seeds, "em_per")
            m, lo, hi = context_bootstrap_ci(f1, clusters, n_boot=n_boot, seed=seed)
            e, elo, ehi = context_bootstrap_ci(em, clusters, n_boot=n_boot, seed=seed)
            rr = None if mode in RATIO_FREE else r
            ss = seeds if mode in SEEDED else [None]
            done = [s for s in ss if store.has(mode, rr, s)]
            slot = np.mean(store.get(mode, rr, done[0])["slot_len"])
            out.append(
                {
                    "mode": mode,
                    "ratio": r,
                    "track": "question-aware" if mode in QUESTION_AWARE else "question-agnostic",
                    "seeds": len(done) if mode in SEEDED else 0,
                    "f1": m,
                    "f1_lo": lo,
                    "f1_hi": hi,
                    "em": e,
                    "em_lo": elo,
                    "em_hi": ehi,
                    "norm_f1": normalised(m, fl, an),
                    "slot_mean": float(slot),
                }
            )
    return out


def first_table(rows: list[dict], ratios):
    """Every mode at every ratio: F1 [95 % context-bootstrap CI] and teacher-normalised F1."""
    import pandas as pd

    by = {(r["mode"], r["ratio"]): r for r in rows}
    ratios = sorted(ratios)
    out = []
    for mode in MODES:  # every mode, run or not
        done = [by[(mode, r)] for r in ratios if (mode, r) in by]
        line = [
            LABELS[mode],
            "QA-aware" if mode in QUESTION_AWARE else ("both" if mode in RATIO_FREE else "QA-free"),
            (f"{done[0]['seeds']}" if done else "0") if mode in SEEDED else "-",
        ]
        for r in ratios:
            x = by.get((mode, r))
            line += (
                [f"{x['f1']:.1f} [{x['f1_lo']:.1f}, {x['f1_hi']:.1f}]", f"{x['norm_f1']:.2f}"] if x else ["not run", ""]
            )
        out.append(line)
    cols = ["mode", "track", "seeds"] + [c for r in ratios for c in (f"F1 r={r:g} [95% CI]", f"norm. r={r:g}")]
    return pd.DataFrame(out, columns=cols)


def acceptance(
    store, clusters, seeds, n_boot: int, r_main: float = 4.0, r_far: float = 10.0, seed: int = 0
) -> list[dict]:
    """Per seed: latent - lead-M and latent - selection_ids at ``r_main``, latent - lead-M at ``r_far``."""
    out = []
    for s in seeds:
        rec = {"seed": s}
        for name, mode_b, r in (
            ("vs_lead", "lead", r_main),
            ("vs_ids", "selection_ids", r_main),
            ("vs_lead_far", "lead", r_far),
        ):
            sb = s if mode_b in SEEDED else None
            if store.has("latent", r, s) and store.has(mode_b, r, sb):
                rec[name] = paired_context_bootstrap(
                    store.get("latent", r, s)["f1_per"],
                    store.get(mode_b, r, sb)["f1_per"],
                    clusters,
                    n_boot=n_boot,
                    seed=seed,
                )
        out.append(rec)
    return out


# The issue's three targets, one test each on a paired difference {diff, lo, hi} (F1 points); written once,
# read by the per-seed table and by the verdict.
TARGETS = {
    "vs_lead": ("≥ +5 and CI > 0", lambda d: d["diff"] >= 5 and d["lo"] > 0),
    "vs_ids": ("≥ +3", lambda d: d["diff"] >= 3),
    "vs_lead_far": ("≥ -2", lambda d: d["diff"] >= -2),
}


def met(key: str, d: dict | None) -> bool | None:
    """Whether the paired difference ``d`` meets target ``key`` (None when that comparison did not run)."""
    return None if not d else bool(TARGETS[key][1](d))


def acceptance_table(acc: list[dict], r_main: float = 4.0, r_far: float = 10.0):
    import pandas as pd

    def cell(d):
        return f"{d['diff']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}]" if d else "not run"

    heads = {"vs_lead": f"latent - lead-M, r={r_main:g}", "vs_ids": f"latent - own ids, r={r_main:g}"}
    heads["vs_lead_far"] = f"latent - lead-M, r={r_far:g}"
    rows = [[a["seed"]] + [x for k in TARGETS for x in (cell(a.get(k)), _yes(met(k, a.get(k))))] for a in acc]
    columns = ["seed"] + [x for k in TARGETS for x in (heads[k], TARGETS[k][0])]
    return pd.DataFrame(rows, columns=columns)


def _yes(x) -> str:
    return "n/a" if x is None else ("yes" if x else "no")


def verdict(acc: list[dict], n_seeds_required: int = 3) -> str:
    """One sentence: whether the three acceptance targets hold in every seed (with the measured numbers).

    A target must hold in each of ``n_seeds_required`` seeds: one seed that misses it decides "not met"
    however many seeds ran; "met" needs every required seed run and passing."""

    done = [a for a in acc if "vs_lead" in a]

    def status(k):
        if any(k in a and not met(k, a[k]) for a in done):
            return False
        return True if len(done) >= n_seeds_required and all(k in a for a in done) else None

    t1, t2, t3 = status("vs_lead"), status("vs_ids"), status("vs_lead_far")
    if len(done) < n_seeds_required and t1 is not False and t3 is not False:
        return f"Verdict: not determined: the r=4 comparison ran for {len(done)} of {n_seeds_required} seeds."

    def word(k, t):
        if t is not None:
            return "met" if t else "not met"
        ran = sum(k in a for a in done)
        return f"not determined (met in the {ran} seed(s) run)" if ran else "not determined (not run)"

    d1 = ", ".join(f"{a['vs_lead']['diff']:+.1f}" for a in done)
    d2 = ", ".join(f"{a['vs_ids']['diff']:+.1f}" for a in done if "vs_ids" in a) or "not run"
    d3 = ", ".join(f"{a['vs_lead_far']['diff']:+.1f}" for a in done if "vs_lead_far" in a) or "not run"
    if t1 is False or t3 is False:
        head = "Verdict: the target is NOT reached"
    elif t1 and t3:
        head = "Verdict: latent compression beats lead-M as required"
    else:
        head = "Verdict: not determined"
    cont = {
        True: "its continuous part adds at least 3 F1 over its own selection as ids",
        False: "its continuous part does not add 3 F1 over its own selection as ids (it adds nothing measurable)",
        None: "whether its continuous part adds 3 F1 over its own selection as ids is not determined",
    }[t2]
    return (
        f"{head} (latent - lead-M at r=4: {d1} F1 per seed, target >= +5 with CI > 0: {word('vs_lead', t1)}; "
        f"at r=10: {d3}, target >= -2: {word('vs_lead_far', t3)}), and {cont} ({d2} F1 per seed)."
        + (f" {len(done)} of the {n_seeds_required} seeds ran." if len(done) < n_seeds_required else "")
    )


def per_seed_table(store, ratios, seeds):
    """F1 of each seeded mode per seed and ratio (plain means over questions)."""
    import pandas as pd

    rows, ratios = [], sorted(ratios)
    for mode in SEEDED:
        for s in seeds:
            line = [LABELS[mode], s] + [
                f"{100 * np.mean(store.get(mode, r, s)['f1_per']):.1f}" if store.has(mode, r, s) else "not run"
                for r in ratios
            ]
            rows.append(line)
    return pd.DataFrame(rows, columns=["mode", "seed"] + [f"F1 r={r:g}" for r in ratios])


def examples_table(ed, store, ratio, seed, n: int = 8, modes=("anchor", "lead", "selection_ids", "latent", "oracle")):
    import pandas as pd

    rows = []
    for i in range(min(n, len(ed.examples))):
        e = ed.examples[i]
        line = [e.question, e.answers[0]]
        for m in modes:
            rr = None if m in RATIO_FREE else ratio
            ss = seed if m in SEEDED else None
            line.append(store.get(m, rr, ss)["predictions"][i] if store.has(m, rr, ss) else "")
        rows.append(line)
    return pd.DataFrame(rows, columns=["question", "gold", *modes])


def kept_tokens_table(tok, ed, store_modules, llm, ratio: float, n: int = 4):
    """What ``latent``'s own selection and the classifier keep from the first contexts (as text)."""
    import pandas as pd

    from .prompts import input_embedding
    from .train import context_features

    idx = list(range(min(n, len(ed.ctx_ids))))
    H, _, mask = context_features(llm, ed.ctx_ids, ed.hidden, idx, input_embedding(llm).weight.device)
    rows = []
    for k in ("latent", "classifier"):
        if k in store_modules:
            for i, pos in zip(idx, store_modules[k].select(H, mask, ratio)):
                rows.append([k, i, tok.decode(ed.ctx_ids[i][pos].tolist())[:300]])
    return pd.DataFrame(rows, columns=["selector", "context", f"kept tokens at r={ratio:g} (in order)"])


def data_sentence(ed, split_stats: dict, disjoint: dict, source: str) -> str:
    n_tok = np.array([c.shape[0] for c in ed.ctx_ids])
    ev, dv = split_stats.get("eval_articles", []), split_stats.get("dev_articles", [])
    d = disjoint
    return (
        f"Data: {source}. Evaluation: {d['eval_questions']} questions on {d['eval_contexts']} contexts of "
        f"{len(ev)} articles ({', '.join(ev[:8])}); training side: {d['train_questions']} questions on "
        f"{d['train_contexts']} contexts, dev: {d['dev_questions']} questions ({', '.join(dv)}); no evaluation "
        f"article, context or question is on the training side ({d['answer_strings_elsewhere']} evaluation "
        f"questions have an answer string that also occurs as a training-side answer). Contexts: "
        f"{n_tok.mean():.0f} tokens on average (min {n_tok.min()}, max {n_tok.max()})."
    )
