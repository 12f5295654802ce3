"""Single panels drawn into a given axis: the pieces the notebooks' figures and the explorers share.

Each function draws one panel into ``ax`` (clearing nothing: a caller that redraws clears first) and
returns ``ax``. The static figures of the notebooks (:mod:`.core`, :mod:`.diagnostics`) are built from
them, and :mod:`utils.explore` redraws the same panels when a control changes, so an explorer shows
exactly the figure the report holds, for another matrix or head.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import seaborn as sns

from ..spectral.rmt import esd as esd_of
from ..spectral.rmt import mp_pdf, powerlaw_pdf


def esd(ax, row, S: np.ndarray, S_null: np.ndarray | None = None, title: str | None = None):
    """One matrix's ESD (eigenvalues of WᵀW/N, log-log) with its Marchenko-Pastur fit and finite-size edge,
    the power-law fit of its tail, and (grey) the ESD of its permuted null. ``row``: its weight-sweep row."""
    shape = (int(row["rows"]), int(row["cols"]))
    lam = esd_of(S, shape)
    lam = lam[lam > 0]
    bins = np.geomspace(lam.min(), lam.max() * 1.01, 40)
    if S_null is not None:
        lam0 = esd_of(S_null, shape)
        sns.histplot(lam0[lam0 > 0], bins=bins, stat="density", color="0.7", ax=ax, label="permuted null")
    sns.histplot(lam, bins=bins, stat="density", color="C0", alpha=0.6, ax=ax, label="ESD")
    x = np.geomspace(lam.min(), lam.max(), 400)
    if np.isfinite(row.get("mp_sigma2", np.nan)):
        ax.plot(x, mp_pdf(x, row["mp_sigma2"], row["mp_ratio"]), color="C1", lw=1.5, label="Marchenko-Pastur")
        ax.axvline(row["mp_edge"], color="C1", ls=":", lw=1, label=f"edge ({int(row['n_spikes'])} spikes)")
    if np.isfinite(row.get("alpha", np.nan)):
        share = row["n_tail"] / len(lam)
        ok = "" if row["credible"] else " (not credible)"
        ax.plot(
            x,
            share * powerlaw_pdf(x, row["alpha"], row["xmin"]),
            color="C3",
            lw=1.5,
            label=f"power law α={row['alpha']:.2f}{ok}",
        )
    where = f"layer {int(row['layer_idx'])}" + (f", expert {int(row['expert'])}" if row.get("expert", -1) >= 0 else "")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="λ (eigenvalue of WᵀW/N)",
        ylabel="density",
        title=title or f"{row['weight_type']}, {where} ({row['shape']})",
    )
    ax.set_ylim(bottom=max(ax.get_ylim()[0], 1e-4 / max(lam.max(), 1e-12)))
    ax.legend(fontsize=6)
    return ax


def spectra(
    ax, curves: dict, title: str = "", ylabel: str = "σ", hline: tuple[float, str] | None = None, logy: bool = True
):
    """Several descending spectra on one axis (``curves``: label -> values; a label starting with ``null``
    is drawn grey), an optional horizontal reference line ``(value, label)``."""
    for i, (label, v) in enumerate(curves.items()):
        v = np.asarray(v, dtype=float)
        grey = label.lower().startswith(("null", "permuted"))
        ax.plot(np.arange(1, len(v) + 1), v, ".-", ms=3, lw=1, color="0.6" if grey else f"C{i}", label=label)
    if hline is not None:
        ax.axhline(hline[0], color="C3", ls="--", lw=1, label=hline[1])
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel="index", ylabel=ylabel, title=title)
    ax.legend(fontsize=7)
    return ax


def eigen_plane(ax, eig: np.ndarray, complex_mask: np.ndarray, title: str = ""):
    """One kernel's non-zero eigenvalues in the complex plane, real and complex ones told apart."""
    eig, cm = np.asarray(eig), np.asarray(complex_mask, bool)
    ax.scatter(eig.real[~cm], eig.imag[~cm], s=10, label=f"real ({int((~cm).sum())})")
    ax.scatter(eig.real[cm], eig.imag[cm], s=10, label=f"complex ({int(cm.sum())})")
    ax.axhline(0, color="gray", lw=0.5)
    ax.axvline(0, color="gray", lw=0.5)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set(xlabel="Re λ", ylabel="Im λ", title=title)
    ax.legend(loc="best", fontsize=8)
    return ax


def depth(ax, layers: Sequence[int], values, mark: int | None = None, ylabel: str = "", title: str = "", band=None):
    """A metric along depth, the chosen layer marked; ``band`` = (low, high) arrays drawn as a shaded range
    (e.g. the spread over a block's experts)."""
    layers = np.asarray(layers)
    ax.plot(layers, values, "o-", ms=3, lw=1)
    if band is not None:
        ax.fill_between(layers, band[0], band[1], alpha=0.25, lw=0)
    if mark is not None:
        ax.axvline(mark, color="C3", ls="--", lw=1)
    ax.set(xlabel="layer", ylabel=ylabel, title=title)
    return ax
