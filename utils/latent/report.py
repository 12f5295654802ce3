"""Tables and sentences of the notebook-04 report, from the :class:`.experiment.ResultStore`.

Every interval resamples whole evaluation contexts (all questions of a context together). A seeded
mode is summarised by the per-question mean over its seeds (seed-level figures are in the
acceptance table). Teacher-normalised F1 = (F1 - F1[no_context]) / (F1[anchor] - F1[no_context]).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .metric import context_bootstrap_ci, paired_context_bootstrap
from .modes import MODES, QUESTION_AWARE, RATIO_FREE, SEEDED

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
    "optimised": "optimised vectors per context (ceiling)",
    "bm25": "BM25 sentences cut to M",
    "overlap": "question-overlap window",
}


def per_question(store, mode: str, ratio, seeds: Sequence[int], key: str = "f1_per", qids=None):
    """``(question ids, per-question scores)`` of ``mode`` (the mean over ``seeds`` for a seeded mode), on
    ``qids`` when given (a subset of the questions it answered), or None when it did not run."""
    r = None if mode in RATIO_FREE else ratio
    rows = [store.get(mode, r, s) for s in (seeds if mode in SEEDED else [None]) if store.has(mode, r, s)]
    if not rows:
        return None
    ids = list(rows[0]["qids"]) if qids is None else list(qids)
    vals = []
    for row in rows:
        at = dict(zip(row["qids"], row[key]))
        if any(q not in at for q in ids):
            return None
        vals.append([at[q] for q in ids])
    return ids, np.mean(np.asarray(vals, float), 0)


def normalised(f1: float, floor: float, anchor: float) -> float:
    return (f1 - floor) / (anchor - floor) if anchor != floor else float("nan")


def summary(store, ctx_of: dict, ratios, seeds, n_boot: int, seed: int = 0) -> list[dict]:
    """One record per (mode, ratio): F1 and EM with context-bootstrap intervals, normalised F1 (against the
    floor and the anchor on the same questions), slot size, and how many questions and contexts it covers.
    ``ctx_of``: question id -> context (the bootstrap's unit)."""
    out = []
    for mode in MODES:
        for r in ratios:
            got = per_question(store, mode, r, seeds)
            if got is None:
                continue
            qids, f1 = got
            em = per_question(store, mode, r, seeds, "em_per", qids)[1]
            clusters = [ctx_of[q] for q in qids]
            m, lo, hi = context_bootstrap_ci(f1, clusters, n_boot=n_boot, seed=seed)
            e, elo, ehi = context_bootstrap_ci(em, clusters, n_boot=n_boot, seed=seed)
            ref = [per_question(store, k, None, seeds, qids=qids) for k in ("no_context", "anchor")]
            fl, an = (100 * x[1].mean() if x else float("nan") for x in ref)
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
                    "questions": len(qids),
                    "contexts": len(set(clusters)),
                }
            )
    return out


def first_table(rows: list[dict], ratios):
    """Every mode at every ratio: F1 [95 % context-bootstrap CI] and teacher-normalised F1; a mode run on fewer
    contexts than the others (``optimised``) says on how many."""
    import pandas as pd

    by = {(r["mode"], r["ratio"]): r for r in rows}
    ratios = sorted(ratios)
    n_all = max((r["contexts"] for r in rows), default=0)
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
            sub = f" ({x['contexts']} of {n_all} contexts)" if x and x["contexts"] < n_all else ""
            line += (
                [f"{x['f1']:.1f} [{x['f1_lo']:.1f}, {x['f1_hi']:.1f}]{sub}", f"{x['norm_f1']:.2f}"]
                if x
                else ["not run", ""]
            )
        out.append(line)
    cols = ["mode", "track", "seeds"] + [c for r in ratios for c in (f"F1 r={r:g} [95% CI]", f"norm. r={r:g}")]
    return pd.DataFrame(out, columns=cols)


def paired(store, a: tuple, b: tuple, ctx_of: dict, n_boot: int, seed: int = 0) -> dict | None:
    """F1 of ``a`` minus F1 of ``b`` (each ``(mode, ratio, seeds)``; seeded modes averaged over their seeds) on
    the questions of ``a``, with a paired context-bootstrap interval; None when either did not run there."""
    got = per_question(store, *a)
    other = got and per_question(store, *b, qids=got[0])
    if not got or not other:
        return None
    return paired_context_bootstrap(got[1], other[1], [ctx_of[q] for q in got[0]], n_boot=n_boot, seed=seed)


def acceptance(
    store, ctx_of: dict, seeds, n_boot: int, r_main: float = 4.0, r_far: float = 10.0, seed: int = 0
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
            d = paired(store, ("latent", r, [s]), (mode_b, r, [s]), ctx_of, n_boot, seed)
            if d:
                rec[name] = d
        out.append(rec)
    return out


def ceiling_rows(store, optimised: dict, ctx_of: dict, ratios, seeds, n_boot: int, seed: int = 0) -> list[dict]:
    """Per ratio, on the contexts whose vectors were optimised: how well the reader regenerates them (share
    exact, token accuracy beside the mean-pooled start), the cost, the QA F1 from the optimised vectors beside
    ``latent``, lead-M and the full context on the same questions, and the amortisation gap ``optimised -
    latent`` (paired context bootstrap). ``optimised``: ``{(context index, ratio): Optimised}``."""
    out = []
    for r in ratios:
        got = [o for (i, rr), o in optimised.items() if rr == r]
        if not got:
            continue
        rec = {
            "ratio": r,
            "contexts": len(got),
            "exact": float(np.mean([o.exact for o in got])),
            "token_acc": float(np.mean([o.token_acc for o in got])),
            "init_acc": float(np.mean([o.init_acc for o in got])),
            "steps": float(np.mean([o.steps for o in got])),
            "seconds": float(np.mean([o.seconds for o in got])),
        }
        opt = per_question(store, "optimised", r, seeds)
        if opt:
            rec["questions"] = len(opt[0])
            cl = [ctx_of[q] for q in opt[0]]
            for mode in ("optimised", "latent", "lead", "anchor"):
                x = per_question(store, mode, r, seeds, qids=opt[0])
                if x:
                    rec[mode] = context_bootstrap_ci(x[1], cl, n_boot=n_boot, seed=seed)
            rec["gap"] = paired(store, ("optimised", r, seeds), ("latent", r, seeds), ctx_of, n_boot, seed)
        out.append(rec)
    return out


def ceiling_table(rows: list[dict]):
    """:func:`ceiling_rows` as a table."""
    import pandas as pd

    def ci(x):
        return f"{x[0]:.1f} [{x[1]:.1f}, {x[2]:.1f}]" if x else "not run"

    def diff(d):
        return f"{d['diff']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}]" if d else "not run"

    out = [
        [
            f"{r['ratio']:g}",
            f"{r['contexts']} / {r.get('questions', 0)}",
            f"{100 * r['exact']:.0f} %",
            f"{100 * r['token_acc']:.1f} % (start {100 * r['init_acc']:.1f} %)",
            f"{r['steps']:.0f}",
            f"{r['seconds']:.0f}",
            ci(r.get("optimised")),
            ci(r.get("latent")),
            ci(r.get("lead")),
            ci(r.get("anchor")),
            diff(r.get("gap")),
        ]
        for r in rows
    ]
    cols = [
        "r",
        "contexts / questions",
        "regenerated exactly",
        "token accuracy (mean-pooled start)",
        "steps (mean)",
        "s per context",
        "F1 optimised",
        "F1 latent",
        "F1 lead-M",
        "F1 full context",
        "gap optimised - latent",
    ]
    return pd.DataFrame(out, columns=cols)


AMORTISE_ROWS = (
    ("no context", "no_context", None),
    ("lead-M", "lead", None),
    ("latent as trained", "latent", "start"),
    ("latent, continued (same steps, no regression)", "latent", "continued"),
    ("latent, continued + regression onto optimised vectors", "latent", "regression"),
    ("optimised vectors per context (ceiling)", "optimised", None),
    ("full context", "anchor", None),
)


def amortise_rows(store, ctx_of: dict, ratio: float, n_boot: int, seed: int = 0) -> dict:
    """The amortisation run on the dev article (:mod:`.amortise`): F1 [CI] of every variant, the two arms'
    paired difference on every dev question, and the gap to the ceiling of each on the optimised contexts."""
    rows = []
    for label, mode, arm in AMORTISE_ROWS:
        got = per_question(store, mode, ratio, [arm])
        if got:
            ci = context_bootstrap_ci(got[1], [ctx_of[q] for q in got[0]], n_boot=n_boot, seed=seed)
            rows.append({"variant": label, "questions": len(got[0]), "f1": ci})
    lat = {arm: ("latent", ratio, [arm]) for arm in ("start", "continued", "regression")}
    opt = ("optimised", ratio, [None])
    return {
        "ratio": ratio,
        "rows": rows,
        "regression_minus_continued": paired(store, lat["regression"], lat["continued"], ctx_of, n_boot, seed),
        "gap": {arm: paired(store, opt, lat[arm], ctx_of, n_boot, seed) for arm in lat},
    }


def amortise_table(res: dict):
    import pandas as pd

    out = [
        [r["variant"], r["questions"], f"{r['f1'][0]:.1f} [{r['f1'][1]:.1f}, {r['f1'][2]:.1f}]"] for r in res["rows"]
    ]
    return pd.DataFrame(out, columns=["variant", "dev questions", f"F1 r={res['ratio']:g} [95% CI]"])


def amortise_sentence(res: dict) -> str:
    """Whether the regression narrows the amortisation gap, with the measured numbers."""

    def d(x):
        return f"{x['diff']:+.1f} [{x['lo']:+.1f}, {x['hi']:+.1f}]" if x else "not run"

    rc, g = res["regression_minus_continued"], res["gap"]
    if not rc:
        return "The amortisation run did not finish."
    word = "narrows" if rc["lo"] > 0 else ("widens" if rc["hi"] < 0 else "does not measurably change")
    return (
        f"Regression onto the optimised vectors {word} the gap: continued + regression minus continued = "
        f"{d(rc)} F1 on every dev question (paired context bootstrap). Gap optimised - latent on the optimised dev "
        f"contexts: as trained {d(g['start'])}, continued {d(g['continued'])}, continued + regression "
        f"{d(g['regression'])}."
    )


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


def examples_table(
    ed,
    store,
    ratio,
    seed,
    n: int = 8,
    modes=("anchor", "lead", "selection_ids", "latent", "optimised", "oracle"),
    first_context: int = 0,
):
    """``n`` questions from context ``first_context`` on, with the gold answer and each mode's answer (blank
    where it did not run)."""
    import pandas as pd

    rows = []
    start = ed.q_ctx.index(first_context) if first_context in ed.q_ctx else 0
    for e in ed.examples[start : start + n]:
        line = [e.question, e.answers[0]]
        for m in modes:
            rr = None if m in RATIO_FREE else ratio
            ss = seed if m in SEEDED else None
            row = store.get(m, rr, ss) if store.has(m, rr, ss) else {"qids": [], "predictions": []}
            line.append(dict(zip(row["qids"], row["predictions"])).get(e.id, ""))
        rows.append(line)
    return pd.DataFrame(rows, columns=["question", "gold", *modes])


def kept_tokens_table(reader, ed, modules, ratio: float, n: int = 4):
    """What ``latent``'s own selection and the classifier keep from the first contexts (as text)."""
    import pandas as pd

    from .train import context_features

    idx = list(range(min(n, len(ed.ctx_ids))))
    H, _, mask = context_features(reader.model, ed.ctx_ids, ed.hidden, idx, reader.device)
    rows = []
    for k in ("latent", "classifier"):
        if k in modules:
            for i, pos in zip(idx, modules[k].select(H, mask, ratio)):
                rows.append([k, i, reader.tokenizer.decode(ed.ctx_ids[i][pos].tolist())[:300]])
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
