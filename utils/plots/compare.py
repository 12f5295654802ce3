"""Figures that compare several runs (the comparison notebook 06): one colour per model throughout."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .core import grid, use_style


def palette(models) -> dict:
    """One colour per model, the same in every figure (``random:`` twins in a lighter shade of their model)."""
    models = list(dict.fromkeys(models))
    base = [m for m in models if not m.startswith("random:")]
    colours = dict(zip(base, sns.color_palette("tab10", max(1, len(base)))))
    extra = iter(sns.color_palette("Set2", len(models)))
    for m in models:
        if m in colours:
            continue
        twin = m[len("random:") :].split("@")[0] if m.startswith("random:") else None
        colours[m] = tuple(0.55 + 0.45 * np.asarray(colours[twin])) if twin in colours else next(extra)
    return colours


def _styles(models) -> dict:
    return {m: (3, 2) if m.startswith("random:") else "" for m in models}


def rank_vs_depth(wr: pd.DataFrame, ncols: int = 4):
    """Effective rank against relative depth (layer / L), one panel per weight type, one line per model
    (dashed: ``random:`` twins); the dotted line is full rank where all models share it."""
    df = wr[wr.layer_idx >= 0]
    types = list(dict.fromkeys(df.weight_type))
    models = list(dict.fromkeys(df.model))
    pal, dashes = palette(models), _styles(models)
    fig, axes = grid(len(types), ncols=ncols, size=(4.2, 3.2))
    for ax, t in zip(axes, types):
        sub = df[df.weight_type == t]
        sns.lineplot(data=sub, x="rel_depth", y="eff_rank", hue="model", style="model", palette=pal, dashes=dashes,
                     marker="o", markersize=3, ax=ax, legend=ax is axes[0])  # fmt: skip
        full = sub.full_rank.unique()
        if len(full) == 1:
            ax.axhline(float(full[0]), color="gray", ls=":", lw=0.8)
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("relative depth (layer / L)")
        ax.set_ylabel("effective rank")
        ax.set_xlim(0, 1)
    if axes and axes[0].get_legend():
        sns.move_legend(axes[0], "lower left", fontsize=7, title=None)
    fig.tight_layout()
    return fig


def rank_fraction(wr: pd.DataFrame):
    """Mean fraction of full rank per weight type and model (bars; the whiskers are the spread over layers)."""
    use_style()
    df = wr[wr.layer_idx >= 0]
    models = list(dict.fromkeys(df.model))
    fig, ax = plt.subplots(figsize=(max(7, 1.0 * df.weight_type.nunique() * max(1, len(models)) / 1.6), 4))
    sns.barplot(data=df, x="weight_type", y="frac_full", hue="model", palette=palette(models), errorbar="sd", ax=ax)
    ax.set_ylim(0, 1)
    ax.set_xlabel("")
    ax.set_ylabel("effective rank / min(m, n)")
    ax.legend(fontsize=7, title=None, loc="lower right")
    fig.tight_layout()
    return fig


def kernel_distributions(heads: pd.DataFrame):
    """Distributions over heads, per model: QK (and OV) effective rank and symmetry score (violins
    with quartile lines; symmetry 0.5 is what unrelated random Q and K give)."""
    use_style()
    panels = [(c, t) for c, t in (("eff_rank", "QK effective rank"), ("symmetry", "QK symmetry score"),
                                  ("ov_eff_rank", "OV effective rank"), ("ov_symmetry", "OV symmetry score"))
              if c in heads]  # fmt: skip
    models = list(dict.fromkeys(heads.model))
    pal = palette(models)
    fig, axes = grid(len(panels), ncols=2, size=(max(4.5, 1.4 * len(models) + 2), 3.3))
    for ax, (col, title) in zip(axes, panels):
        sns.violinplot(data=heads, x="model", y=col, hue="model", palette=pal, inner="quart", cut=0, ax=ax,
                       legend=False, density_norm="width")  # fmt: skip
        if "symmetry" in col:
            ax.axhline(0.5, color="gray", ls=":", lw=0.8)
            ax.set_ylim(0, 1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("")
        ax.set_ylabel("")
        plt.setp(ax.get_xticklabels(), rotation=15)
    fig.tight_layout()
    return fig


def rescale_residuals(table: pd.DataFrame):
    """Mean scalar-rescale residual per model (rows) and anchor (columns), annotated, with the verdict
    thresholds 0.10 and 0.30 in the colour bar."""
    use_style()
    t = table.pivot_table(index="model", columns="anchor", values="mean residual", sort=False)
    fig, ax = plt.subplots(figsize=(1.6 * t.shape[1] + 3, 0.6 * t.shape[0] + 1.6))
    sns.heatmap(t, annot=True, fmt=".3f", cmap="magma_r", vmin=0, vmax=max(0.35, float(np.nanmax(t.values))),
                cbar_kws={"label": "mean |σ - Tσ_anchor| / |σ|"}, ax=ax)  # fmt: skip
    cbar = ax.collections[0].colorbar
    for v in (0.1, 0.3):
        cbar.ax.axhline(v, color="white", lw=1.2)
    ax.set_xlabel("anchor")
    ax.set_ylabel("")
    fig.tight_layout()
    return fig


def f1_vs_compression(points: pd.DataFrame):
    """F1 against the compression ratio r (log axis), one colour per mode, one marker per model, with
    the 95% context-bootstrap intervals; the modes that do not depend on r (no context, the full
    context) are horizontal lines in their colour."""
    use_style()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    modes = list(dict.fromkeys(points["mode"]))
    colours = dict(zip(modes, sns.color_palette("tab10", len(modes))))
    markers = dict(zip(dict.fromkeys(points.model), "osD^vP*X"))
    styles = dict(zip(dict.fromkeys(points.model), ["--", ":", "-.", (0, (1, 4))] * 2))
    for (mode, model), g in points.groupby(["mode", "model"], sort=False):
        if bool(g.reference.iloc[0]):
            ax.axhline(g.f1.mean(), color=colours[mode], ls=styles[model], lw=1, label=f"{mode} ({model})")
            continue
        g = g.sort_values("compression")
        ax.errorbar(g.compression, g.f1, yerr=[g.f1 - g.f1_lo, g.f1_hi - g.f1], color=colours[mode],
                    marker=markers[model], ms=5, capsize=3, lw=1, label=f"{mode} ({model})")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("compression ratio r (context tokens per slot)")
    ax.set_ylabel("F1")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def _short(name: str) -> str:
    m = re.search(r"h\.(\d+)\.(.*)\.weight$", name)
    return f"{m.group(1)}.{m.group(2)}" if m else name.replace(".weight", "").split(".")[-1]


def dynamics_curves(dyn: pd.DataFrame, max_weights: int = 12):
    """Effective rank against training step per weight (up to ``max_weights``), one line per run
    (mean over its training seeds, band: their range)."""
    names = list(dict.fromkeys(dyn.layer))
    if len(names) > max_weights:  # spread the choice over the stack
        names = [names[i] for i in np.unique(np.linspace(0, len(names) - 1, max_weights).round().astype(int))]
    runs = list(dict.fromkeys(dyn.model))
    pal = dict(zip(runs, sns.color_palette("tab10", len(runs))))
    fig, axes = grid(len(names), ncols=4, size=(3.2, 2.4))
    for ax, n in zip(axes, names):
        for r in runs:
            d = dyn[(dyn.layer == n) & (dyn.model == r)].sort_values("step")
            ax.plot(d.step, d.eff_rank, color=pal[r], lw=1.3, label=r)
            ax.fill_between(d.step, d.eff_rank_min, d.eff_rank_max, color=pal[r], alpha=0.15, lw=0)
        ax.set_title(_short(n), fontsize=8)
        ax.tick_params(labelsize=7)
    if axes:
        axes[0].legend(fontsize=7)
    fig.supxlabel("training step")
    fig.supylabel("effective rank")
    fig.tight_layout()
    return fig
