"""Tables and sentences of the notebook-04 report, built from :func:`.experiment.mode_metrics` and the results."""

from __future__ import annotations

from typing import Callable, Sequence

from .metric import paired_bootstrap_ci
from .prompts import MODES, EncodedExample
from .squad import QAExample


def mode_table(metrics: dict):
    """The report's mode table (one row per mode) from :func:`mode_metrics`."""
    import pandas as pd

    return pd.DataFrame(mode_table_rows(metrics), columns=MODE_TABLE_HEADER)


def mode_table_rows(metrics: dict) -> list[list]:
    """Rows of the report's mode table (one per mode) from :func:`mode_metrics`."""
    rows = []
    for mode, m in metrics.items():
        d, da = m["delta_f1_vs_text"], m["delta_f1_vs_anchor"]
        rows.append(
            [
                mode + (" (+anchor)" if m["anchored"] and mode != "anchor" else ""),
                f"{m['context_slot_mean']:.1f}",
                f"{m['compression_ratio']:.2f}",
                f"{m['em']:.1f} [{m['em_ci'][0]:.1f}, {m['em_ci'][1]:.1f}]",
                f"{m['f1']:.1f} [{m['f1_ci'][0]:.1f}, {m['f1_ci'][1]:.1f}]",
                f"{d['diff']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}]",
                f"{da['diff']:+.1f} [{da['lo']:+.1f}, {da['hi']:+.1f}]",
                f"{m['first_token_top1']:.1f} / {m['first_token_top5']:.1f}",
                f"{m['gold_nll']:.2f}",
                f"{m['seconds']:.1f}",
                f"{m['examples_per_s']:.2f}",
                m["distinct_first_tokens"],
                "yes" if m["collapsed"] else "no",
            ]
        )
    return rows


MODE_TABLE_HEADER = [
    "mode",
    "slot",
    "compr.",
    "EM [95% CI]",
    "F1 [95% CI]",
    "ΔF1 vs text [paired CI]",
    "ΔF1 vs anchor [paired CI]",
    "first tok top1/top5 %",
    "gold NLL",
    "wall s",
    "ex/s",
    "distinct 1st tok",
    "collapse",
]


def paired_verdict(results: dict, a: str, b: str, n_boot: int, seed: int) -> tuple[dict, str]:
    """Paired bootstrap of F1(a) - F1(b) and a one-line verdict: beats / is worse than / not distinguishable."""
    h = paired_bootstrap_ci(results[a]["scores"]["f1_per"], results[b]["scores"]["f1_per"], n_boot=n_boot, seed=seed)
    word = "beats" if h["lo"] > 0 else ("is worse than" if h["hi"] < 0 else "is not distinguishable from")
    return h, (
        f"`{a}` {word} `{b}`: ΔF1 = {h['diff']:+.1f} [{h['lo']:+.1f}, {h['hi']:+.1f}] "
        f"(paired bootstrap 95% CI, one-sided p(Δ<=0) = {h['p_le_0']:.3f})"
    )


def prediction_rows(eval_ex: Sequence[QAExample], results: dict) -> list[dict]:
    """One record per (question, mode) for ``predictions.jsonl``."""
    rows = []
    for i, e in enumerate(eval_ex):
        for mode in MODES:
            r = results[mode]
            rows.append(
                {
                    "id": e.id,
                    "mode": mode,
                    "question": e.question,
                    "prediction": r["predictions"][i],
                    "golds": e.answers,
                    "em": r["scores"]["em_per"][i],
                    "f1": r["scores"]["f1_per"][i],
                    "first_top1": r["first_top1"][i],
                    "first_top5": r["first_top5"][i],
                    "gold_nll": r["gold_nll"][i],
                    "context_tokens": r["n_context_tokens"][i],
                    "context_slot": r["n_prompt_vectors"][i],
                }
            )
    return rows


def last_step_table(last: dict):
    """The last latent LM training step's losses and first-token diagnostics (one row)."""
    import pandas as pd

    return pd.DataFrame(
        [
            [
                last["step"],
                last["loss"],
                last["tf"],
                last["first"],
                last["kce"],
                last["kd"],
                last["entropy"],
                last["salience"],
                last["grad_norm"],
                last["first_acc"],
                last["first_acc_top5"],
                f"{last['distinct_first_preds']}/{last['batch']}",
                str(last["dominant_first_preds"]),
            ]
        ],
        columns=[
            "last latent step",
            "loss",
            "tf",
            "first",
            "kce",
            "kd",
            "entropy",
            "salience",
            "grad norm",
            "first acc",
            "top5",
            "distinct",
            "dominant",
        ],
    )


def kept_tokens_table(
    comp, llm, tokenizer, eval_ex: Sequence[QAExample], enc_eval: Sequence[EncodedExample], n: int = 6
):
    """For the first ``n`` evaluation questions: the context tokens that seed the latent slots, in order."""
    import pandas as pd

    sel = comp.selected_positions(llm, [e.context for e in enc_eval[:n]])
    return pd.DataFrame(
        [
            [
                eval_ex[i].question,
                eval_ex[i].answers[0],
                " · ".join(tokenizer.decode([int(enc_eval[i].context[j])]).strip() for j in sel[i]),
            ]
            for i in range(len(sel))
        ],
        columns=["question", "gold", "kept tokens (in order)"],
    )


def dominant_table(mode_metrics_: dict):
    """Distinct and dominant predictions per mode."""
    import pandas as pd

    return pd.DataFrame(
        [
            [m, v["distinct_predictions"], "; ".join(f"{p!r}: {c}" for p, c in v["dominant_predictions"][:3])]
            for m, v in mode_metrics_.items()
        ],
        columns=["mode", "distinct predictions", "dominant predictions (count)"],
    )


def examples_table(
    eval_ex: Sequence[QAExample], results: dict, n: int = 8, modes=("text", "token_budget", "mean_pool", "latent")
):
    """The first ``n`` questions with their gold answer and the predictions of a few modes."""
    import pandas as pd

    return pd.DataFrame(
        [
            [eval_ex[i].question, eval_ex[i].answers[0]] + [results[m]["predictions"][i] for m in modes]
            for i in range(min(n, len(eval_ex)))
        ],
        columns=["question", "gold", *modes],
    )


def data_sentence(summary: dict, M: int) -> str:
    return (
        f"{summary['eval_questions']} evaluation questions (one per context), M = {M}; contexts average "
        f"{summary['context_tokens_mean']:.1f} tokens (max {summary['context_tokens_max']}). The answer starts "
        f"within the first M context tokens for {100 * summary['answers_starting_within_first_M']:.0f}% of the "
        f"questions (mean relative answer position {summary['answer_start_rel_mean']:.2f})."
    )


def training_sentence(s: dict, batch: int, latent_budget: float, adapter_budget: float) -> str:
    return (
        f"latent: {s['latent_salience_steps']} salience pre-training steps and {s['latent_lm_steps']} LM steps "
        f"(batch {batch}) in a {latent_budget:.0f} s budget (hidden-state cache {s['hidden_cache_s']} s included); "
        f"adapter: {s['adapter_lm_steps']} LM steps in {adapter_budget:.0f} s. Every step is in "
        "`train_diagnostics.jsonl`."
    )


def agreement(results: dict, eval_ex: Sequence[QAExample], rate: Callable) -> dict:
    """How often ``text_embed`` reproduces ``text`` (rate, count and the first differing predictions)."""
    a, b = results["text"]["predictions"], results["text_embed"]["predictions"]
    diffs = [(e.id, x, y) for e, x, y in zip(eval_ex, a, b) if x != y]
    return {"rate": rate(a, b), "n_diff": len(diffs), "diffs": diffs[:20]}


def headline(verdicts: dict, metrics: dict) -> str:
    collapsed = [m for m, v in metrics["modes"].items() if v["collapsed"]]
    ag = metrics["text_embed_agreement"]
    return "\n".join(
        [f"- {v[1]}" for v in verdicts.values()]
        + [
            f"- `text_embed` reproduces `text` on {100 * ag['rate']:.1f}% of the questions ({ag['n_diff']} differ).",
            f"- Mode collapse flagged for: {', '.join(collapsed) or 'none'}.",
        ]
    )
