"""Random-matrix diagnostics and the permuted null of every 2-D weight, inside the one weight sweep.

:class:`RMTColumns` is a ``per_matrix`` hook for :func:`~utils.weight_ranks.weight_sweep`: while a
matrix is loaded it adds the Marchenko-Pastur fit, the spike count and mass, the power-law tail fit
(alpha, cutoff, KS distance, bootstrap interval, credibility flag), the weighted alpha, and, with
``null=True``, the same metrics of the matrix with its entries permuted (one more float64 Gram
spectrum, seeded by the matrix) and the trained / null ratios. :func:`rmt_sweep` runs the sweep with it.

Column glossary (one row per matrix):

* ``mp_sigma2, mp_ratio, mp_lambda_minus, mp_lambda_plus, mp_edge``: MP fit of the ESD of W^T W / N;
  ``n_spikes, spike_mass``: eigenvalues above the finite-size edge and their share of sum lambda;
* ``alpha, xmin, n_tail, ks_D, alpha_lo, alpha_hi, alpha_se, credible, flag``: power-law tail fit;
  ``alpha_weighted`` = alpha log10(sigma_max^2), ``lambda_max`` = sigma_max^2 / N;
* ``null_eff_rank, null_stable_rank, null_alpha, null_n_spikes, null_spike_mass``: the permuted null;
  ``eff_rank_ratio, stable_rank_ratio, alpha_ratio``: trained / null;
* for a block-quantised matrix (a quantised GGUF file), the noise its format implies: ``quant_type``,
  ``quant_noise_rms`` (the root-mean-square rounding error, each block's scale giving its values' variance
  ``step² / 12``), ``quant_noise_rel`` (the noise's share of ``||W||_F``), ``quant_edge`` (the largest
  singular value of noise with that variance profile, :func:`~utils.spectral.rmt.noise_edge`) and
  ``n_above_quant_edge`` (the singular values of the matrix above it: the part of the spectrum that is the
  model's, not the quantiser's).

A matrix with fewer than :data:`~utils.spectral.rmt.MIN_EVALS` eigenvalues gets NaN fits and a flag,
never an exception, so a sweep never stops halfway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from ..spectral import effective_rank, gram_svdvals, stable_rank
from ..spectral.null import ENTRIES_DRAW, derived_seed, matrix_key, permute_entries, ratio
from ..spectral.rmt import MIN_EVALS, esd, mp_fit, noise_edge, powerlaw_fit, weighted_alpha
from .sweep import weight_sweep
from .tables import per_layer, weight_types

NULL_METRICS = ("eff_rank", "stable_rank", "alpha")
NULL_SV = "_null_sv"  # the row key that carries a null spectrum from the hook to rmt_sweep
QUALITY_COLUMNS = [
    "layer_idx",
    "weight_type",
    "shape",
    "alpha",
    "alpha_lo",
    "alpha_hi",
    "null_alpha",
    "alpha_weighted",
    "n_tail",
    "ks_D",
    "n_spikes",
    "null_n_spikes",
    "spike_mass",
    "credible",
    "flag",
]


def spectrum_columns(S, shape, policy: str = "csn", n_boot: int = 0, seed: int = 0) -> dict:
    """MP fit, spikes and power-law fit of one spectrum ``S`` of a matrix of ``shape`` (a row's columns)."""
    S = np.asarray(S, dtype=np.float64)
    N, M = max(shape), min(shape)
    lam = esd(S, shape)
    pl = powerlaw_fit(lam, policy=policy, n_boot=n_boot, seed=seed)
    out = {"lambda_max": float(lam[-1]) if len(lam) else float("nan")}
    if M < MIN_EVALS:
        nan = float("nan")
        out.update(mp_sigma2=nan, mp_ratio=M / N, mp_lambda_minus=nan, mp_lambda_plus=nan, mp_edge=nan)
        out.update(n_spikes=np.nan, spike_mass=nan)
    else:
        out.update(mp_fit(lam, N, M).as_dict())
    out.update(pl.as_dict())
    out["alpha_weighted"] = weighted_alpha(pl.alpha, float(S.max())) if S.size else float("nan")
    return out


@dataclass
class RMTColumns:
    """``per_matrix`` hook (module docstring). ``keep_null_spectra`` adds each null spectrum to its row as
    :data:`NULL_SV` (a list, so that a resumable sweep's cache keeps it too); :func:`rmt_sweep` takes it out."""

    null: bool = True
    seed: int = 0
    n_boot: int = 0
    policy: str = "csn"
    keep_null_spectra: bool = False
    noise: Callable | None = None  # ref -> (quantisation type, rounding variance) or None (a source's rounding_noise)

    def cache_key(self) -> str:
        """What a resumable sweep's cache must match: the hook and every setting that changes its columns."""
        settings = f"{self.null}, {self.seed}, {self.n_boot}, {self.policy!r}, {self.keep_null_spectra}, {ENTRIES_DRAW}"
        if self.noise is not None:
            settings += ", quantisation noise/1"
        return f"{type(self).__module__}.{type(self).__qualname__}({settings})"

    def __call__(self, W, ref, S) -> dict:
        s = derived_seed(self.seed, matrix_key(ref))
        out = spectrum_columns(S, ref.shape, self.policy, self.n_boot, s)
        if self.noise is not None:
            out.update(quantisation_columns(self.noise(ref), S, s))
        if not self.null:
            return out
        Wp = permute_entries(W, s)
        S0 = gram_svdvals(Wp)  # converted block by block, as the sweep's own spectrum
        null = spectrum_columns(S0, ref.shape, self.policy, 0, s)
        out.update(
            null_eff_rank=float(effective_rank(S0)),
            null_stable_rank=stable_rank(S0),
            null_alpha=null["alpha"],
            null_n_spikes=null["n_spikes"],
            null_spike_mass=null["spike_mass"],
        )
        if self.keep_null_spectra:
            out[NULL_SV] = np.asarray(S0, dtype=np.float64).tolist()
        return out


def quantisation_columns(noise, S, seed: int) -> dict:
    """The quantisation-noise columns of one matrix (module docstring) from ``(type, variance)``, or {} when the
    matrix is not block-quantised."""
    if noise is None:
        return {}
    qtype, var = noise
    S = np.asarray(S, dtype=np.float64)
    edge = noise_edge(var, seed)
    fro2 = float((S**2).sum())
    return {
        "quant_type": qtype,
        "quant_noise_rms": var.double().mean().sqrt().item(),
        "quant_noise_rel": (var.double().sum() / fro2).sqrt().item() if fro2 > 0 else float("nan"),
        "quant_edge": edge,
        "n_above_quant_edge": int((S > edge).sum()),
    }


def rmt_sweep(src, null: bool = True, seed: int = 0, n_boot: int = 0, policy: str = "csn", **sweep_kw):
    """:func:`weight_sweep` with :class:`RMTColumns`; returns ``(df, spectra, null_spectra)``.

    ``df`` has the sweep's columns, the RMT columns and (with ``null``) the null columns and ratios;
    ``spectra`` / ``null_spectra`` map each matrix name to its singular values (trained / permuted).
    """
    if hasattr(src, "check_complete"):
        src.check_complete()  # a missing layer: one clear message before the sweep, not a crash halfway
    noise = getattr(src, "rounding_noise", None)  # quantised GGUF files only
    hook = RMTColumns(null=null, seed=seed, n_boot=n_boot, policy=policy, keep_null_spectra=null, noise=noise)
    df, spectra = weight_sweep(src, per_matrix=hook, keep_spectra=True, **sweep_kw)
    null_spectra = {}
    if NULL_SV in df:
        null_spectra = {n: np.asarray(v, dtype=np.float64) for n, v in zip(df["name"], df[NULL_SV])}
        df = df.drop(columns=[NULL_SV])
    return with_null_ratios(df), spectra, null_spectra


def with_null_ratios(df: pd.DataFrame) -> pd.DataFrame:
    """Adds ``<metric>_ratio`` = trained / null for effective rank, stable rank and alpha (when present)."""
    df = df.copy()
    for m in NULL_METRICS:
        if f"null_{m}" in df:
            df[f"{m}_ratio"] = ratio(df[m], df[f"null_{m}"])
    return df


def quality_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per matrix: the power-law and MP columns beside their null (layer-quality table)."""
    return df[[c for c in QUALITY_COLUMNS if c in df]].reset_index(drop=True)


def quality_by_type(df: pd.DataFrame) -> pd.DataFrame:
    """Per weight type: median alpha (credible fits) beside the null, share credible, spikes and their mass."""
    rows = []
    for wt in weight_types(df):
        d = df[df.weight_type == wt]
        ok = d[d.credible.astype(bool)]
        r = {
            "weight_type": wt,
            "matrices": len(d),
            "credible": f"{len(ok)}/{len(d)}",
            "median alpha": ok.alpha.median(),
            "median alpha_weighted": ok.alpha_weighted.median(),
            "mean spikes": d.n_spikes.mean(),
            "mean spike mass": d.spike_mass.mean(),
        }
        if "null_alpha" in d:
            r["median null alpha"] = d.null_alpha.median()
            r["mean null spikes"] = d.null_n_spikes.mean()
        rows.append(r)
    return pd.DataFrame(rows)


def layer_quality(df: pd.DataFrame) -> pd.DataFrame:
    """Layers x weight types of alpha, with ``*`` marking fits that are not credible (WeightWatcher reads
    2 <= alpha <= 6 as well trained, above 6 as under-trained, below 2 as over-fit)."""
    d = per_layer(df)
    cell = [f"{a:.2f}" + ("" if c else "*") if np.isfinite(a) else "-" for a, c in zip(d.alpha, d.credible)]
    return d.assign(cell=cell).pivot(index="layer_idx", columns="weight_type", values="cell")[weight_types(d)]


def null_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per weight type and metric: mean trained value, mean permuted-null value, mean and range of the
    ratio (the spike count, whose null is usually 0, has no ratio)."""
    rows = []
    for wt in weight_types(df):
        d = df[df.weight_type == wt]
        for m in NULL_METRICS + ("n_spikes",):
            r = d[f"{m}_ratio"] if f"{m}_ratio" in d else pd.Series(np.nan, index=d.index)
            rows.append(
                {
                    "weight_type": wt,
                    "metric": m,
                    "trained (mean)": d[m].mean(),
                    "null (mean)": d[f"null_{m}"].mean(),
                    "ratio (mean)": r.mean(),
                    "ratio min": r.min(),
                    "ratio max": r.max(),
                }
            )
    return pd.DataFrame(rows)
