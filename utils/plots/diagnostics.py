"""Figures of the random-matrix diagnostics, null models, model-vs-model diffs and head circuits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns

from ..spectral.rmt import esd, mp_pdf, powerlaw_pdf
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
    fit of the tail from xmin, and (grey) the ESD of the permuted null."""
    types = _types(df)
    fig, axes = grid(len(types), ncols=4, size=(4.0, 3.1))
    L = int(df.layer_idx.max()) + 1
    for ax, wt in zip(axes, types):
        d = df[df.weight_type == wt]
        row = d[d.layer_idx == (L // 2 if layer is None else layer)] if (d.layer_idx >= 0).any() else d
        row = (row if len(row) else d).iloc[0]
        shape = (int(row.rows), int(row.cols))
        lam = esd(spectra[row["name"]], shape)
        lam = lam[lam > 0]
        bins = np.geomspace(lam.min(), lam.max() * 1.01, 40)
        if null_spectra and row["name"] in null_spectra:
            lam0 = esd(null_spectra[row["name"]], shape)
            sns.histplot(lam0[lam0 > 0], bins=bins, stat="density", color="0.7", ax=ax, label="permuted null")
        sns.histplot(lam, bins=bins, stat="density", color="C0", alpha=0.6, ax=ax, label="ESD")
        x = np.geomspace(lam.min(), lam.max(), 400)
        if np.isfinite(row.mp_sigma2):
            ax.plot(x, mp_pdf(x, row.mp_sigma2, row.mp_ratio), color="C1", lw=1.5, label="Marchenko-Pastur")
            ax.axvline(row.mp_edge, color="C1", ls=":", lw=1, label=f"edge ({int(row.n_spikes)} spikes)")
        if np.isfinite(row.alpha):
            share = row.n_tail / len(lam)
            ax.plot(
                x,
                share * powerlaw_pdf(x, row.alpha, row.xmin),
                color="C3",
                lw=1.5,
                label=f"power law α={row.alpha:.2f}" + ("" if row.credible else " (not credible)"),
            )
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="λ (eigenvalue of WᵀW/N)",
            ylabel="density",
            title=f"{wt}, layer {row.layer_idx} ({row['shape']})",
        )
        ax.set_ylim(bottom=max(ax.get_ylim()[0], 1e-4 / max(lam.max(), 1e-12)))
        ax.legend(fontsize=6)
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
    """Layers x weight types of the relative change ||ΔW||/||W|| and of the numerical rank of ΔW."""
    d = df[df.layer_idx >= 0]
    types = _types(d)
    fig, axes = grid(2, ncols=2, size=(5.5, 4.5))
    heatmap(
        d.pivot(index="layer_idx", columns="weight_type", values="rel_change")[types],
        "‖ΔW‖_F / ‖W‖_F",
        "relative change",
        xlabel="weight type",
        ax=axes[0],
    )
    heatmap(
        d.pivot(index="layer_idx", columns="weight_type", values="rank")[types],
        "numerical rank of ΔW",
        "rank",
        xlabel="weight type",
        ax=axes[1],
        cmap="magma",
    )
    fig.tight_layout()
    return fig
