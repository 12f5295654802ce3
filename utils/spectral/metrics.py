"""Scalar summaries of a spectrum: effective rank, stable rank, energy counts, complex eigenvalues.

One definition of each, used by every notebook:

* **effective rank** (Roy & Vetterli, 2007): ``exp(H(p))``, ``p = sigma / sum(sigma)``;
* **stable rank**: ``sum sigma^2 / sigma_max^2``;
* **energy count** at level ``q``: the smallest ``k`` whose ``k`` largest values hold a share
  ``>= q`` of the total energy (``sigma^2`` for singular values, ``|lambda|^2`` for eigenvalues);
* **complex eigenvalue**: ``|Im lambda| > COMPLEX_RTOL * max |lambda|`` of its matrix. LAPACK
  returns the real eigenvalues of a real matrix with an imaginary part of exactly 0, so any small
  relative tolerance separates them; eigenvalues stored in complex64 keep that exact 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

ENERGY_LEVELS = (0.50, 0.75, 0.90, 0.95, 0.99)
COMPLEX_RTOL = 1e-10
_LEVEL_TOL = 1e-12  # exactly reaching a level counts (floating-point sums)


def effective_rank(S) -> float | np.ndarray:
    """Roy & Vetterli effective rank of ``S`` ``(k,)`` or ``(..., k)`` (non-negative values).

    Zeros contribute nothing; an all-zero spectrum has effective rank 0, otherwise it lies in [1, k].
    """
    S = np.asarray(S, dtype=np.float64)
    total = S.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(total > 0, S / np.where(total > 0, total, 1.0), 0.0)
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    er = np.where(total[..., 0] > 0, np.exp(-plogp.sum(axis=-1)), 0.0)
    return float(er) if np.ndim(er) == 0 else er


def stable_rank(S) -> float:
    """``||W||_F^2 / ||W||_2^2 = sum sigma^2 / sigma_max^2`` (0 for a zero matrix)."""
    S = np.asarray(S, dtype=np.float64)
    return float((S**2).sum() / S.max() ** 2) if S.size and S.max() > 0 else 0.0


def energy_count(energy, level: float) -> int | np.ndarray:
    """Smallest ``k`` whose ``k`` leading entries of ``energy`` (sorted descending along the last
    axis) hold a share ``>= level`` of the total. 0 for an all-zero row."""
    e = np.asarray(energy, dtype=np.float64)
    tot = e.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        cum = np.cumsum(e, axis=-1) / np.where(tot > 0, tot, 1.0)
    k = np.where(tot[..., 0] > 0, (cum < level - _LEVEL_TOL).sum(axis=-1) + 1, 0)
    return int(k) if np.ndim(k) == 0 else k


def energy_counts(S, levels=ENERGY_LEVELS) -> dict[float, int]:
    """``{level: energy_count(S**2, level)}`` for singular values ``S`` sorted descending."""
    e = np.asarray(S, dtype=np.float64) ** 2
    return {lv: energy_count(e, lv) for lv in levels}


def energy_share(energy) -> tuple[np.ndarray, np.ndarray]:
    """Per-component share of the total energy and its cumulative sum (both ``(k,)``)."""
    e = np.asarray(energy, dtype=np.float64)
    tot = e.sum()
    share = e / tot if tot > 0 else np.zeros_like(e)
    return share, np.cumsum(share)


def complex_mask(eig, rtol: float = COMPLEX_RTOL) -> np.ndarray:
    """``(..., n)`` bool: eigenvalue counts as complex (module docstring), per matrix (last axis)."""
    eig = np.asarray(eig)
    scale = np.abs(eig).max(axis=-1, keepdims=True) if eig.size else 0.0
    return np.abs(eig.imag) > rtol * scale


@dataclass
class SpectrumSummary:
    """All scalar summaries of one singular-value spectrum."""

    n_sv: int
    eff_rank: float
    stable_rank: float
    spectral_norm: float
    frobenius_norm: float
    sigma_min: float
    condition_number: float
    n50: int
    n75: int
    n90: int
    n95: int
    n99: int

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(S) -> SpectrumSummary:
    """Effective rank, stable rank, norms, condition number and energy counts of ``S``.

    The condition number is sigma_max / sigma_min over all min(m, n) singular values (``inf``
    when the matrix is rank deficient to working precision).
    """
    S = np.sort(np.asarray(S, dtype=np.float64))[::-1]
    smax = float(S[0]) if S.size else 0.0
    smin = float(S[-1]) if S.size else 0.0
    tiny = np.finfo(np.float64).eps * max(smax, 1e-300) * max(S.size, 1)
    cond = smax / smin if smin > tiny else float("inf")
    ec = energy_counts(S)
    return SpectrumSummary(
        n_sv=int(S.size),
        eff_rank=float(effective_rank(S)),
        stable_rank=stable_rank(S),
        spectral_norm=smax,
        frobenius_norm=float(np.sqrt((S**2).sum())),
        sigma_min=smin,
        condition_number=cond,
        n50=ec[0.50],
        n75=ec[0.75],
        n90=ec[0.90],
        n95=ec[0.95],
        n99=ec[0.99],
    )
