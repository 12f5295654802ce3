"""Figures shared by several notebooks: grids, heatmaps, spectra, curves and bars.

Statistical figures go through seaborn (heatmaps, bars, distributions); the style is seaborn's
``whitegrid`` theme, set once by :func:`use_style`. Each function returns the matplotlib figure
(to pass to :meth:`utils.running.Run.show`), never shows or saves it itself.

About 400 lines because it is the one home of every figure more than one notebook draws; the
figures of a single analysis live beside it (:mod:`.diagnostics`, :mod:`.compare`, :mod:`.latent`).
"""

from __future__ import annotations

import math
import re
from typing import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from . import panels

_STYLED = False


def use_style() -> None:
    """seaborn's whitegrid theme with compact fonts (called by every figure function)."""
    global _STYLED
    if not _STYLED:
        sns.set_theme(style="whitegrid", context="notebook", font_scale=0.85)
        _STYLED = True


def grid(n: int, ncols: int = 4, size: tuple[float, float] = (4.2, 3.2), **kw):
    """A figure with ``n`` axes in rows of ``ncols`` (unused axes hidden); returns ``(fig, axes list)``."""
    use_style()
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False, **kw)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def block_grid(names: Sequence[str], size: tuple[float, float] = (2.9, 2.2)):
    """One axis per weight name, a row per numbered block (weights outside blocks first); returns
    ``(fig, {name: ax})``."""
    use_style()
    groups: dict = {}
    for n in names:
        m = re.search(r"\.(\d+)\.", n)
        groups.setdefault(int(m.group(1)) if m else -1, []).append(n)
    rows = [groups[k] for k in sorted(groups)]
    ncols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(size[0] * ncols, size[1] * len(rows)), squeeze=False)
    where = {}
    for i, row in enumerate(rows):
        for j in range(ncols):
            if j < len(row):
                where[row[j]] = axes[i][j]
            else:
                axes[i][j].axis("off")
    return fig, where


def heatmap(
    values,
    title: str,
    cbar: str,
    xlabel: str = "head",
    ylabel: str = "layer",
    cmap: str = "viridis",
    vmin=None,
    vmax=None,
    mark_row: int | None = None,
    ax=None,
    xticklabels="auto",
    yticklabels="auto",
):
    """A seaborn heatmap of a 2-D array or DataFrame (rows top to bottom); ``mark_row`` draws a dashed
    red line through one row (an anchor layer)."""
    use_style()
    arr = values if isinstance(values, pd.DataFrame) else np.asarray(values)
    rows, cols = arr.shape
    if ax is None:
        fig, ax = plt.subplots(figsize=(min(14, 2.8 + 0.22 * cols), min(12, 2.0 + 0.18 * rows)))
    else:
        fig = ax.figure
    sns.heatmap(
        arr,
        ax=ax,
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        cbar_kws={"label": cbar},
        xticklabels=xticklabels,
        yticklabels=yticklabels,
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if mark_row is not None:
        ax.axhline(mark_row + 0.5, color="red", lw=1.0, ls="--")
    if fig.get_layout_engine() is None:  # a figure with its own layout engine (an explorer's) keeps it
        fig.tight_layout()
    return fig


def cumulative_energy(ax, cum: np.ndarray, level: float = 0.99, total: int | None = None, title: str = "") -> int:
    """Cumulative energy curve with the ``level`` line and the component where it is reached; returns that count."""
    n = int(np.searchsorted(cum, level - 1e-12) + 1)
    ax.plot(np.arange(1, len(cum) + 1), cum)
    ax.axhline(level, color="r", ls="--", label=f"{100 * level:.0f}%")
    ax.axvline(n, color="gray", ls=":", label=f"n = {n}")
    of = f"/{len(cum)}" + (f"; {total} in all" if total and total != len(cum) else "")
    ax.set_title(title or f"cumulative energy ({100 * level:.0f}% at {n}{of})")
    ax.set_xlabel("components")
    ax.legend(loc="lower right")
    return n


def variance_explained(per_component: np.ndarray, cumulative: np.ndarray, what: str):
    """Per-component share (log axis) and cumulative share with the 99 % line."""
    fig, (a1, a2) = grid(2, ncols=2, size=(6, 4))
    a1.plot(per_component)
    a1.set_yscale("log")
    a1.set_title(f"Variance explained per component ({what})")
    a1.set_xlabel("component")
    cumulative_energy(a2, cumulative, 0.99, title="")
    a2.set_title(f"Cumulative variance ({what})")
    fig.tight_layout()
    return fig


def by_layer(
    df: pd.DataFrame,
    metric: str,
    group: str = "weight_type",
    layer: str = "layer_idx",
    ceiling: str | None = None,
    ylabel: str | None = None,
    title: str = "",
    ncols: int = 4,
):
    """``metric`` against layer, one panel per ``group`` value (mean, std and range in the title);
    ``ceiling`` names a column drawn as a dotted line (e.g. full rank)."""
    groups = list(dict.fromkeys(df[group]))
    fig, axes = grid(len(groups), ncols=ncols, size=(4.5, 3.4))
    for ax, g in zip(axes, groups):
        sub = df[df[group] == g].sort_values(layer)
        y = sub[metric].to_numpy(dtype=float)
        sns.lineplot(x=sub[layer], y=y, marker="o", markersize=4, ax=ax)
        if ceiling:
            ax.axhline(float(sub[ceiling].iloc[0]), color="gray", ls=":", lw=0.8, label="full rank")
        extra = f" ({sub['shape'].iloc[0]})" if "shape" in sub else ""
        ax.set_title(f"{g}{extra}\nμ={y.mean():.1f}, σ={y.std():.1f}, range={np.ptp(y):.1f}", fontsize=9)
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel or metric)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def grouped_bars(df: pd.DataFrame, x: str, columns: Sequence[str], ylabel: str, title: str):
    """Bars of several columns side by side for each value of ``x`` (seaborn, long form)."""
    use_style()
    long = df.melt(id_vars=[x], value_vars=list(columns), var_name="group", value_name=ylabel)
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * df[x].nunique() + 2), 4))
    sns.barplot(data=long, x=x, y=ylabel, hue="group", ax=ax)
    ax.set_title(title)
    ax.set_xlabel("")
    fig.tight_layout()
    return fig


def eigen_panels(
    eig: np.ndarray, complex_mask: np.ndarray, cum_energy: np.ndarray, d: int, title: str, asymmetry: float
):
    """Three panels for one kernel's non-zero eigenvalues: |λ| (log axis), the complex plane, the
    cumulative Σ|λ|² with the 99 % line."""
    fig, (a0, a1, a2) = grid(3, ncols=3, size=(5.7, 4.6))
    mag = np.abs(eig)
    r = len(eig)
    a0.semilogy(np.arange(r), np.where(mag > 0, mag, np.nan), ".-", ms=3)
    a0.set_title(f"|λ| of the {r} non-zero eigenvalues")
    a0.set_xlabel("index (sorted by |λ|)")
    a0.set_ylabel("|λ|")
    cm = np.asarray(complex_mask, bool)
    panels.eigen_plane(a1, eig, cm, f"complex plane ({int(cm.sum())} complex, asymmetry {asymmetry:.3f})")
    n99 = int(np.searchsorted(cum_energy, 0.99 - 1e-12) + 1)
    cumulative_energy(a2, cum_energy, 0.99, title=f"cumulative Σ|λ|² (99% at {n99}/{r}; {d} in all)")
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    return fig


def scatter_by_layer(
    xs: Sequence[np.ndarray], y: np.ndarray, xlabels: Sequence[str], titles: Sequence[str], ylabel: str
):
    """Panels of ``y`` (L, H) against each ``x`` (L, H), coloured by layer (log x when it spans > 50x)."""
    fig, axes = grid(len(xs), ncols=len(xs), size=(5.5, 4.2))
    L = y.shape[0]
    sc = None
    for ax, x, lab, t in zip(axes, xs, xlabels, titles):
        sc = ax.scatter(np.ravel(x), np.ravel(y), c=np.repeat(np.arange(L), y.shape[1]), cmap="viridis", s=12)
        ax.set_xlabel(lab)
        ax.set_ylabel(ylabel)
        ax.set_title(t)
        if np.min(x) > 0 and np.max(x) / np.min(x) > 50:
            ax.set_xscale("log")
    fig.colorbar(sc, ax=axes, label="layer")
    return fig


def shapes_across_layers(shape: np.ndarray, heads: Sequence[int], anchor: int, head_scores: np.ndarray):
    """Per chosen head, ``σ / σ_max`` of every layer (colour = layer) with the anchor dashed red."""
    use_style()
    L = shape.shape[0]
    fig, axes = plt.subplots(
        1, len(heads), figsize=(4.2 * len(heads), 3.6), squeeze=False, sharey=True, layout="constrained"
    )
    cmap = plt.get_cmap("viridis")
    for ax, h in zip(axes[0], heads):
        for layer in range(L):
            ax.plot(shape[layer, h], color=cmap(layer / max(1, L - 1)), lw=0.9, alpha=0.8)
        ax.plot(shape[anchor, h], color="red", lw=1.6, ls="--", label=f"anchor L{anchor}")
        ax.set_title(f"head {h}: shape cos {head_scores[h]:.3f}", fontsize=10)
        ax.set_xlabel("singular value index")
        ax.legend(fontsize=8)
    axes[0, 0].set_ylabel("σ / σ_max")
    fig.colorbar(plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, L - 1)), ax=axes[0].tolist(), label="layer")
    return fig


def lines(x, ys: dict, xlabel: str, ylabel: str, title: str, mark_x: float | None = None, yscale: str | None = None):
    """Several named curves on one axis (``ys``: label -> values), an optional dashed red marker."""
    use_style()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, y in ys.items():
        ax.plot(x, y, marker=".", label=label)
    if mark_x is not None:
        ax.axvline(mark_x, color="red", ls="--", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if yscale == "symlog":
        ax.set_yscale("symlog", linthresh=1e-3)
    elif yscale:
        ax.set_yscale(yscale)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def per_weight_curves(
    names: Sequence[str],
    draw: Callable,
    xlabel: str,
    ylabel: str,
    title: str = "",
    flat_cols: int | None = None,
    label: Callable[[str], str] = str,
):
    """Small multiples, one axis per weight (a row per block, or ``flat_cols`` per row); ``draw(name, ax)``
    draws each. The first axis gets the legend."""
    if flat_cols:
        fig, axes = grid(len(names), ncols=flat_cols, size=(2.9, 2.2))
        where = dict(zip(names, axes))
    else:
        fig, where = block_grid(names)
    for name, ax in where.items():
        draw(name, ax)
        ax.set_title(label(name), fontsize=8)
        ax.tick_params(which="both", labelsize=7)
    first = next(iter(where.values()))
    if first.get_legend_handles_labels()[0]:
        first.legend(fontsize=7)
    fig.supxlabel(xlabel)
    fig.supylabel(ylabel)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def bars_with_intervals(labels: Sequence[str], values, lo, hi, ylabel: str, title: str, colors=None):
    """Bars with asymmetric error bars ``[lo, hi]`` (e.g. bootstrap intervals)."""
    use_style()
    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(labels) + 2), 4))
    v = np.asarray(values, float)
    err = np.array([v - np.asarray(lo, float), np.asarray(hi, float) - v])
    ax.bar(list(labels), v, yerr=err, capsize=4, color=colors)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    plt.setp(ax.get_xticklabels(), rotation=20)
    fig.tight_layout()
    return fig


def loss_curves(losses: dict, ylabel: str = "training loss"):
    """Loss per run: every logged value thin, a rolling mean thick (``losses``: run -> (steps, values))."""
    use_style()
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, (r, (st, lv)) in enumerate(sorted(losses.items())):
        c = plt.cm.tab10(k % 10)
        ax.plot(st, lv, color=c, alpha=0.25, lw=0.8)
        w = max(1, min(20, len(lv) // 15))
        ax.plot(
            st,
            pd.Series(lv).rolling(w, min_periods=1).mean().to_numpy(),
            color=c,
            lw=1.8,
            label=f"run {r}" if r else "all runs",
        )
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title("Loss per run (thin: every logged value; thick: rolling mean)")
    ax.legend()
    fig.tight_layout()
    return fig


def metric_vs_step(
    df: pd.DataFrame, layers: Sequence[str], metric: str, ylabel: str, label: Callable[[str], str] = str
):
    """``metric`` against step, one axis per weight (a row per block), one line per run."""
    runs = sorted(df.run.unique())

    def draw(name, ax):
        sub = df[df.layer == name]
        for k, r in enumerate(runs):
            d = sub[sub.run == r].sort_values("step")
            ax.plot(d.step, d[metric], color=plt.cm.tab10(k % 10), lw=1.3, marker=".", ms=3, label=f"run {r}")

    return per_weight_curves(layers, draw, "step", ylabel, label=label)


def top_values_vs_step(
    df: pd.DataFrame, layers: Sequence[str], columns: Sequence[str], label: Callable[[str], str] = str
):
    """The top singular values against step: the mean over runs (line) and their range (band)."""
    n_runs = df.run.nunique()

    def draw(name, ax):
        g = df[df.layer == name].groupby("step")[list(columns)]
        mean, lo, hi = g.mean(), g.min(), g.max()
        for k, c in enumerate(columns):
            col = plt.cm.viridis(k / max(1, len(columns) - 1))
            ax.plot(mean.index, mean[c], color=col, lw=1.3, label=c.replace("sigma_", "σ"))
            if n_runs > 1:
                ax.fill_between(mean.index, lo[c], hi[c], color=col, alpha=0.2, lw=0)

    return per_weight_curves(layers, draw, "step", "singular value", label=label)


def spectra_first_last(
    get: Callable[[str, int, int], np.ndarray],
    layers: Sequence[str],
    checkpoints: dict,
    ylabel: str,
    title: str,
    label: Callable[[str], str] = str,
    flat_cols: int | None = None,
):
    """Sorted values (log axis) of each weight at each run's first (dashed) and last (solid) checkpoint;
    ``get(name, run, i)`` returns the values, ``checkpoints``: run -> (first index, last index)."""

    def draw(name, ax):
        for k, (r, (i0, i1)) in enumerate(sorted(checkpoints.items())):
            for i, ls in ((i0, "--"), (i1, "-")):
                v = get(name, r, i)
                if v is None:
                    continue
                v = np.sort(np.abs(v))[::-1]
                ax.semilogy(np.arange(1, v.size + 1), np.maximum(v, 1e-12), ls, color=plt.cm.tab10(k % 10), lw=1)

    return per_weight_curves(layers, draw, "index (descending)", ylabel, title=title, label=label, flat_cols=flat_cols)
