"""Figures of the random-matrix diagnostics, null models, model-vs-model diffs and head circuits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns

from . import panels
from .core import grid, heatmap

NULL_PANELS = (("eff_rank", "effective rank"), ("stable_rank", "stable rank"), ("alpha", "power-law alpha"))


def _types(df) -> list[str]:
    """The weight types of a sweep's table in its own order: the per-layer types as the sweep wrote them
    (query, key, value, output, gate, up, down), then the model-level ones (embeddings, head) sorted."""
    per_layer = list(dict.fromkeys(df.loc[df.layer_idx >= 0, "weight_type"]))
    return per_layer + sorted(set(df.weight_type) - set(per_layer))


def esd_by_type(df: pd.DataFrame, spectra: dict, layer: int | None = None, null_spectra: dict | None = None):
    """One log-log panel per weight type (the matrix of ``layer``, default the middle one; model-level
    matrices as they are): the ESD of W^T W / N, its Marchenko-Pastur fit and finite-size edge, the power-law
    fit of the tail from xmin, and (grey) the ESD of the permuted null (:func:`.panels.esd`)."""
    types = _types(df)
    fig, axes = grid(len(types), ncols=4, size=(4.0, 3.1))
    L = int(df.layer_idx.max()) + 1
    for ax, wt in zip(axes, types):
        d = df[df.weight_type == wt]
        row = d[d.layer_idx == (L // 2 if layer is None else layer)] if (d.layer_idx >= 0).any() else d
        row = (row if len(row) else d).iloc[0]
        null = null_spectra.get(row["name"]) if null_spectra else None
        panels.esd(ax, row, spectra[row["name"]], null)
    fig.tight_layout()
    return fig


def null_vs_trained(df: pd.DataFrame):
    """Trained value against its permuted-null value for every matrix (one panel per metric, y = x dashed):
    points off the diagonal are where training left the null."""
    fig, axes = grid(len(NULL_PANELS), ncols=3, size=(4.2, 3.6))
    for ax, (m, label) in zip(axes, NULL_PANELS):
        d = df[np.isfinite(df[m]) & np.isfinite(df[f"null_{m}"])]
        sns.scatterplot(data=d, x=f"null_{m}", y=m, hue="weight_type", hue_order=_types(d), s=18, ax=ax)
        lo, hi = np.nanmin(d[[m, f"null_{m}"]].to_numpy()), np.nanmax(d[[m, f"null_{m}"]].to_numpy())
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set(xlabel=f"{label}, permuted null", ylabel=f"{label}, trained", title=label)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def heads_vs_null(trained: pd.DataFrame, null: pd.DataFrame, circuits=("qk", "ov")):
    """Per circuit: effective rank against symmetry score of every head, trained and permuted null."""
    fig, axes = grid(len(circuits), ncols=2, size=(4.8, 3.8))
    for ax, c in zip(axes, circuits):
        p = "" if c == "qk" else f"{c}_"
        both = pd.concat([trained.assign(model="trained"), null.assign(model="permuted null")])
        sns.scatterplot(data=both, x=f"{p}symmetry", y=f"{p}eff_rank", hue="model", style="model", s=22, ax=ax)
        ax.set(xlabel="symmetry score", ylabel="effective rank", title=f"{c.upper()}: trained heads vs null")
    fig.tight_layout()
    return fig


def composition_heatmaps(cs, max_heads: int = 256):
    """Q-, K-, V-composition: writer head (rows) x reader head (columns), or the per-layer-pair maximum when
    there are more than ``max_heads`` heads."""
    H = len(cs.layer)
    fig, axes = grid(len(cs.scores), ncols=3, size=(4.6, 4.0))
    for ax, c in zip(axes, cs.scores):
        if H <= max_heads:
            heatmap(
                cs.scores[c],
                f"{c.upper()}-composition",
                "score",
                xlabel="reader head (layer-major)",
                ylabel="writer head (layer-major)",
                ax=ax,
                xticklabels=False,
                yticklabels=False,
            )
        else:
            heatmap(
                cs.layer_matrix(c),
                f"{c.upper()}-composition (max per layer pair)",
                "score",
                xlabel="reader layer",
                ylabel="writer layer",
                ax=ax,
            )
    fig.tight_layout()
    return fig


def score_vs_null(cs):
    """Distribution of every pair's score beside the null's, per composition (seaborn histograms)."""
    fig, axes = grid(len(cs.scores), ncols=3, size=(4.2, 3.2))
    v = cs.valid()
    for ax, c in zip(axes, cs.scores):
        sns.histplot(cs.scores[c][v], color="C0", stat="density", label="trained", ax=ax, element="step")
        if c in cs.null:
            sns.histplot(cs.null[c][v], color="0.5", stat="density", label="null", ax=ax, element="step")
        ax.set(xlabel="composition score", title=f"{c.upper()}-composition")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def diff_by_layer(df: pd.DataFrame):
    """Layers x weight types of the relative change ||ΔW||/||W|| and of the numerical rank of ΔW (the experts
    of a mixture-of-experts block: the mean change and the largest rank)."""
    d = df[df.layer_idx >= 0]
    types = _types(d)
    fig, axes = grid(2, ncols=2, size=(5.5, 4.5))
    heatmap(
        d.pivot_table(index="layer_idx", columns="weight_type", values="rel_change", aggfunc="mean")[types],
        "‖ΔW‖_F / ‖W‖_F",
        "relative change",
        xlabel="weight type",
        ax=axes[0],
    )
    heatmap(
        d.pivot_table(index="layer_idx", columns="weight_type", values="rank", aggfunc="max")[types],
        "numerical rank of ΔW",
        "rank",
        xlabel="weight type",
        ax=axes[1],
        cmap="magma",
    )
    fig.tight_layout()
    return fig


def expert_spread(df: pd.DataFrame, metric: str = "eff_rank"):
    """How the experts of each mixture-of-experts block differ: ``metric`` of every expert by layer (one
    panel per expert weight type), beside the permuted null of each expert (grey)."""
    ex = df[df["expert"] >= 0]
    types = _types(ex)
    fig, axes = grid(len(types), ncols=3, size=(4.4, 3.3))
    kinds = {metric: "experts", f"null_{metric}": "permuted null"}
    for ax, wt in zip(axes, types):
        d = ex[ex.weight_type == wt]
        cols = [c for c in kinds if c in d]
        long = d.melt(id_vars=["layer_idx"], value_vars=cols, var_name="kind", value_name="value")
        long["kind"] = long["kind"].map(kinds)
        sns.stripplot(
            data=long,
            x="layer_idx",
            y="value",
            hue="kind",
            dodge=True,
            size=3,
            ax=ax,
            palette={"experts": "C0", "permuted null": "0.6"},
            hue_order=[kinds[c] for c in cols],
        )
        ax.legend(fontsize=6)
        ax.set(xlabel="layer", ylabel=metric.replace("_", " "), title=f"{wt}: {d.expert.nunique()} experts per block")
    fig.tight_layout()
    return fig


def quantisation_noise(df: pd.DataFrame, spectra: dict):
    """Which part of each spectrum is the model's and which the quantiser's: left, the share of singular
    values above the noise edge by layer (one line per weight type); right, the singular values of the
    matrix with the largest relative noise, with its noise edge."""
    q = df[df["quant_edge"].notna() & (df.layer_idx >= 0)].assign(
        share=lambda d: d.n_above_quant_edge / d[["rows", "cols"]].min(axis=1)
    )
    fig, (ax1, ax2) = grid(2, ncols=2, size=(5.0, 3.6))
    agg = q.groupby(["layer_idx", "weight_type"], as_index=False)["share"].mean()
    sns.lineplot(
        data=agg, x="layer_idx", y="share", hue="weight_type", hue_order=_types(agg), marker="o", markersize=3, ax=ax1
    )
    ax1.set(
        xlabel="layer",
        ylabel="share of σ above the noise edge",
        ylim=(0, 1.02),
        title="spectrum above the quantisation noise",
    )
    ax1.legend(fontsize=6)
    row = q.loc[q.quant_noise_rel.idxmax()] if len(q) else df.loc[df.quant_edge.notna()].iloc[0]
    S = np.sort(np.asarray(spectra[row["name"]]))[::-1]
    ax2.semilogy(np.arange(1, len(S) + 1), S, color="C0", lw=1.2, label="singular values")
    ax2.axhline(row.quant_edge, color="C3", ls="--", lw=1, label=f"{row.quant_type} noise edge")
    ax2.set(
        xlabel="index",
        ylabel="σ",
        title=f"{row.weight_type}, layer {row.layer_idx}: {int(row.n_above_quant_edge)} of {len(S)} above",
    )
    ax2.legend(fontsize=7)
    fig.tight_layout()
    return fig
