"""Figures of notebook 04 (latent compression): training curves and F1 against the compression ratio."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .core import use_style


def training_curves(log: Sequence[dict], window: int = 20):
    """Loss per step of each compressor and phase (thin) with a rolling mean (thick), one panel per kind."""
    use_style()
    df = pd.DataFrame(list(log))
    kinds = list(dict.fromkeys(df["kind"])) if len(df) else []
    fig, axes = plt.subplots(1, max(len(kinds), 1), figsize=(4.6 * max(len(kinds), 1), 3.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        d = df[df["kind"] == kind]
        for (seed, phase), g in d.groupby(["seed", "phase"], sort=False):
            ax.plot(g["step"], g["loss"], lw=0.5, alpha=0.35)
            ax.plot(g["step"], g["loss"].rolling(window, min_periods=1).mean(), lw=1.6, label=f"seed {seed} {phase}")
        ax.set_title(f"{kind}: training loss")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def f1_by_ratio(rows: Sequence[dict], ratios: Sequence[float]):
    """F1 (95 % context-bootstrap interval) of every mode against the compression ratio r."""
    use_style()
    df = pd.DataFrame(list(rows))
    fig, ax = plt.subplots(figsize=(8.5, 4.6))
    modes = list(dict.fromkeys(df["mode"]))
    palette = dict(zip(modes, sns.color_palette("tab20", len(modes))))
    for mode in modes:
        g = df[df["mode"] == mode].sort_values("ratio")
        dash = "--" if mode in ("no_context", "anchor") else ("-." if g["track"].iloc[0] == "question-aware" else "-")
        ax.plot(
            g["ratio"], g["f1"], dash, marker="o", color=palette[mode], label=mode, lw=2.2 if mode == "latent" else 1.2
        )
        ax.fill_between(g["ratio"], g["f1_lo"], g["f1_hi"], color=palette[mode], alpha=0.12)
    ax.set_xticks(list(ratios))
    ax.set_xlabel("compression ratio r (M = ceil(T / r))")
    ax.set_ylabel("F1 (95% context-bootstrap CI)")
    ax.set_ylim(0, max(5.0, float(np.nanmax(df["f1_hi"])) + 5))
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    fig.tight_layout()
    return fig


def ceiling(rows: Sequence[dict]):
    """The per-context ceiling by ratio: left, F1 from the optimised vectors beside ``latent``, lead-M and the
    full context on the same questions (95 % context-bootstrap intervals); right, how much of each context the
    reader regenerates from them (token accuracy, the share regenerated exactly) beside the mean-pooled start."""
    use_style()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10.5, 4.0))
    modes = ("optimised", "latent", "lead", "anchor")
    names = {"optimised": "optimised (ceiling)", "latent": "latent", "lead": "lead-M", "anchor": "full context"}
    palette = dict(zip(modes, sns.color_palette("deep", len(modes))))
    ratios = [r["ratio"] for r in rows]
    x = np.arange(len(rows))
    for k, mode in enumerate(modes):
        ci = [r.get(mode) or (np.nan,) * 3 for r in rows]
        m = np.array([c[0] for c in ci])
        err = np.array([[c[0] - c[1] for c in ci], [c[2] - c[0] for c in ci]])
        ax.errorbar(x + (k - 1.5) * 0.15, m, yerr=err, fmt="o", capsize=3, color=palette[mode], label=names[mode])
    ax.set_xticks(x, [f"r={r:g}" for r in ratios])
    ax.set_ylim(bottom=0)
    ax.set_ylabel("F1 on the optimised contexts' questions")
    ax.set_title("QA from optimised vectors")
    ax.legend(fontsize=7)
    width = 0.27
    bx.bar(x - width, [100 * r["init_acc"] for r in rows], width, label="token acc., mean-pooled start", color="0.7")
    bx.bar(x, [100 * r["token_acc"] for r in rows], width, label="token acc., optimised", color=palette["optimised"])
    bx.bar(x + width, [100 * r["exact"] for r in rows], width, label="contexts regenerated exactly", color="0.3")
    bx.set_xticks(x, [f"r={r:g}\n({r_['contexts']} ctx)" for r, r_ in zip(ratios, rows)])
    bx.set_ylim(0, 105)
    bx.set_ylabel("%")
    bx.set_title("Regenerating the context from M vectors")
    bx.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig
