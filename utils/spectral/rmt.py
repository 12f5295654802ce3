"""Random-matrix diagnostics of one weight matrix: Marchenko-Pastur bulk, spikes, power-law tail.

Conventions. A weight ``W`` (m, n) is read as ``N x M`` with ``N = max(m, n)``, ``M = min(m, n)``;
its **empirical spectral density** (ESD) is the ``M`` eigenvalues ``lambda = sigma^2 / N`` of
``W^T W / N`` (of the short side's Gram), with aspect ratio ``c = M / N <= 1``.

* **Marchenko-Pastur** (:func:`mp_fit`): for i.i.d. entries of variance ``s2`` the ESD fills
  ``[s2 (1 - sqrt c)^2, s2 (1 + sqrt c)^2]`` with density :func:`mp_pdf`. The bulk variance comes from
  median matching, refined by the mean of the bulk (:func:`mp_fit`). The **edge** adds the finite-size
  margin of the largest noise eigenvalue: Johnstone (2001, Ann. Stat. 29:295) gives
  ``lambda_max(X^T X) ~ mu + s TW1`` for Gaussian ``X`` (N x M) with ``mu = (sqrt(N-1) + sqrt M)^2``,
  ``s = (sqrt(N-1) + sqrt M) (1/sqrt(N-1) + 1/sqrt M)^(1/3)``; the edge is ``s2 (mu + t s) / N``
  with ``t`` the 99.9 % quantile of Tracy-Widom (TW1), so a matrix of i.i.d. light-tailed (Gaussian-like)
  entries shows a spike with probability ~1e-3. That holds for light tails only: heavy-tailed entries
  (outlier weights, high kurtosis) put eigenvalues above the edge far more often, which is why every
  matrix is also compared with its own permuted null.
  **Spikes** are the eigenvalues above the edge; their **mass** is their share of ``sum
  lambda`` (= of ``||W||_F^2``).
* **Power-law tail** (:func:`powerlaw_fit`): Clauset, Shalizi & Newman (2009, SIAM Rev. 51:661). For
  every candidate cutoff ``xmin`` (each eigenvalue) the continuous MLE ``alpha = 1 + n / sum log(x /
  xmin)`` over the ``n`` eigenvalues ``>= xmin`` and the Kolmogorov-Smirnov distance of that tail to the
  fitted law are computed at once (vectorised over all cutoffs, :func:`scan_xmin`); the cutoff with the
  smallest distance wins. A bootstrap of the ESD (cutoff re-chosen in every replicate) gives the
  interval for alpha. ``policy="ww"`` reproduces WeightWatcher 0.7.7's choice (every eigenvalue but the
  largest is a candidate, distance against the lower empirical CDF ``k / n``); the default ``"csn"``
  uses the two-sided KS distance and tails of at least ``min_tail`` points.
* A fit is flagged **not credible** when its tail has fewer than ``MIN_CREDIBLE_TAIL`` points or alpha
  lies outside ``ALPHA_RANGE`` (the range over which heavy-tailed self-regularisation reads alpha; fits
  outside it are the "spuriously large alpha" of short or MP-like tails).
* **Weighted alpha** ``alpha_hat = alpha log10 lambda_max`` (WeightWatcher's ``alpha_weighted``) uses
  WeightWatcher's scale, ``lambda_max = sigma_max^2`` of ``W^T W`` (not divided by N), so it is comparable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

TW1_Q999 = 3.2724  # 99.9 % quantile of the Tracy-Widom law (beta = 1)
MIN_EVALS = 10  # fewer eigenvalues than this: no fit (flagged row)
MIN_CREDIBLE_TAIL = 20
ALPHA_RANGE = (1.5, 8.0)
POLICIES = ("csn", "ww")


def esd(S, shape: tuple[int, int]) -> np.ndarray:
    """The ESD ``sigma^2 / N`` of a matrix of ``shape`` from its singular values ``S``, ascending."""
    N = max(shape)
    return np.sort(np.asarray(S, dtype=np.float64) ** 2 / N)


# ----------------------------------------------------------------------------- Marchenko-Pastur
def mp_bounds(sigma2: float, ratio: float) -> tuple[float, float]:
    """``(lambda_-, lambda_+) = sigma2 (1 -/+ sqrt ratio)^2`` for ``ratio = M / N <= 1``."""
    r = np.sqrt(ratio)
    return sigma2 * (1 - r) ** 2, sigma2 * (1 + r) ** 2


def mp_pdf(x, sigma2: float, ratio: float) -> np.ndarray:
    """Marchenko-Pastur density of the eigenvalues of ``X^T X / N`` (X: N x M, variance sigma2, M/N=ratio)."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = mp_bounds(sigma2, ratio)
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.sqrt(np.clip((hi - x) * (x - lo), 0, None)) / (2 * np.pi * sigma2 * ratio * x)
    return np.where((x > lo) & (x < hi), f, 0.0)


def mp_edge(sigma2: float, N: int, M: int, t: float = TW1_Q999) -> float:
    """Finite-size bulk edge ``sigma2 (mu + t s) / N`` (Johnstone 2001; module docstring)."""
    a, b = np.sqrt(max(N - 1, 1)), np.sqrt(M)
    mu = (a + b) ** 2
    s = (a + b) * (1 / a + 1 / b) ** (1 / 3)
    return float(sigma2 * (mu + t * s) / N)


@dataclass
class MPFit:
    sigma2: float  # bulk variance of the entries
    ratio: float  # c = M / N
    lambda_minus: float
    lambda_plus: float  # asymptotic edge sigma2 (1 + sqrt c)^2
    edge: float  # finite-size edge (spikes lie above it)
    n_spikes: int
    spike_mass: float  # share of sum(lambda) in the spikes

    def as_dict(self, prefix: str = "mp_") -> dict:
        d = asdict(self)
        return {("" if k in ("n_spikes", "spike_mass") else prefix) + k: v for k, v in d.items()}


def mp_median(ratio: float, grid: int = 8001) -> float:
    """Median of the Marchenko-Pastur law with unit variance and aspect ratio ``ratio = M / N``.

    The CDF is integrated in ``lambda = a + (b - a) sin^2(theta)``, which removes the square-root
    singularities at both ends of the support ``[a, b]``: the density times ``d lambda`` is
    ``(b - a)^2 2 cos^2(theta) sin^2(theta) / (2 pi ratio lambda) d theta``, finite everywhere. At
    ``theta = 0`` the factor ``sin^2(theta) / lambda`` is 0 when ``a > 0`` and ``1 / b`` when ``a = 0``
    (a square matrix, ``ratio = 1``, whose density is ``1 / (pi sqrt lambda)``-like at 0, not zero).
    """
    a, b = mp_bounds(1.0, ratio)
    th = np.pi / 2 * np.linspace(0.0, 1.0, grid) ** 3  # dense near 0, where a square matrix's density peaks
    s2 = np.sin(th) ** 2
    lam = a + (b - a) * s2
    with np.errstate(invalid="ignore", divide="ignore"):
        s2_over_lam = np.where(s2 > 0, s2 / lam, 0.0 if a > 0 else 1.0 / (b - a))
    f = (b - a) ** 2 * 2 * np.cos(th) ** 2 * s2_over_lam / (2 * np.pi * ratio)
    cdf = np.concatenate([[0.0], np.cumsum((f[1:] + f[:-1]) / 2 * np.diff(th))])
    return float(np.interp(0.5, cdf / cdf[-1], lam))


def noise_edge(var, seed: int = 0, iters: int = 80, block: int = 4) -> float:
    """The largest singular value of a noise matrix whose entries have the variances ``var`` (a tensor of the
    matrix's shape): the edge above which a singular value of a quantised matrix stands out of its rounding
    noise. A Gaussian surrogate with exactly that variance profile (seeded) is drawn and its top singular
    value taken by block power iteration with Rayleigh-Ritz (``block`` vectors, ``iters`` steps): the edge
    of a non-uniform profile (rows and columns of different scales) has no closed form, and the i.i.d.
    Marchenko-Pastur edge ``sigma (sqrt N + sqrt M)`` of the mean variance underestimates it when the
    scales differ (the test measures both against the spectrum of a real rounding error).
    """
    import torch

    v = torch.as_tensor(var, dtype=torch.float32)
    g = torch.Generator().manual_seed(int(seed) % (2**63 - 1))
    G = torch.randn(v.shape, generator=g, dtype=torch.float32).mul_(v.sqrt())
    Q = torch.linalg.qr(torch.randn(G.shape[1], block, generator=g, dtype=torch.float32))[0]
    for _ in range(iters):
        Q = torch.linalg.qr(G.T @ (G @ Q))[0]
    top = torch.linalg.svdvals((G @ Q).double())[0]
    return float(top)


def mp_fit(lam, N: int, M: int | None = None, t: float = TW1_Q999) -> MPFit:
    """Marchenko-Pastur fit of an ESD ``lam`` (eigenvalues of ``W^T W / N``).

    Bulk variance in two steps, neither of which a heavy tail can drag: (1) median matching
    (Gavish & Donoho 2014, IEEE Trans. Inf. Theory 60:5040), ``s2 = median(lam) / median_MP(c)``;
    (2) the mean of the eigenvalues below the finite-size edge of (1), which for pure noise is the exact
    ``tr(W^T W) / (N M)``. Spikes are the eigenvalues above the finite-size edge of (2).
    """
    lam = np.sort(np.asarray(lam, dtype=np.float64))[::-1]
    M = len(lam) if M is None else M
    total = lam.sum()
    sigma2 = float(np.median(lam)) / mp_median(M / N)
    bulk = lam[lam <= mp_edge(sigma2, N, M, t)]
    if len(bulk):
        sigma2 = float(bulk.mean())
    edge = mp_edge(sigma2, N, M, t)
    k = int((lam > edge).sum())
    lo, hi = mp_bounds(sigma2, M / N)
    mass = float(lam[:k].sum() / total) if total > 0 else float("nan")
    return MPFit(sigma2, M / N, float(lo), float(hi), edge, k, mass)


# ----------------------------------------------------------------------------- power law
def alpha_mle(x, xmin: float) -> float:
    """Continuous power-law MLE ``1 + n / sum log(x / xmin)`` over ``x >= xmin``."""
    x = np.asarray(x, dtype=np.float64)
    t = x[x >= xmin]
    return float(1 + len(t) / np.log(t / xmin).sum())


def scan_xmin(x, min_tail: int = 2, policy: str = "csn", chunk: int = 256, max_tail: int | None = None):
    """Alpha and KS distance for every candidate cutoff of ``x`` (sorted ascending, positive).

    Returns ``(idx, alpha, D)``: candidate indices ``i`` (cutoff ``x[i]``, tail ``x[i:]``), the MLE of
    each tail and its KS distance. Candidates are the first index of each distinct value with a tail
    of at least ``min_tail`` (and at most ``max_tail``) points.
    ``policy="csn"``: ``D = max_k max(F_k - k/n, (k+1)/n - F_k)``;
    ``"ww"``: ``max_k |F_k - k/n|`` (WeightWatcher / powerlaw's lower empirical CDF). Work is
    ``O(n^2)`` in chunks of ``chunk`` candidates (memory ``chunk * n``).
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    L = np.log(x)
    tail_sum = np.cumsum(L[::-1])[::-1]  # sum_{j >= i} log x_j
    first = np.ones(n, bool)
    first[1:] = x[1:] != x[:-1]
    idx = np.flatnonzero(first[: max(n - min_tail + 1, 0)])
    if max_tail is not None:
        idx = idx[idx >= n - max_tail]
    m = (n - idx).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = 1 + m / (tail_sum[idx] - m * L[idx])
    D = np.full(len(idx), np.inf)
    j = np.arange(n)
    for a in range(0, len(idx), chunk):
        ii, al, mm = idx[a : a + chunk], alpha[a : a + chunk], m[a : a + chunk]
        j0 = ii[0]
        k = j[None, j0:] - ii[:, None]  # rank inside the tail; < 0 outside it
        with np.errstate(over="ignore", invalid="ignore"):
            F = -np.expm1((1 - al[:, None]) * (L[None, j0:] - L[ii, None]))
        if policy == "csn":
            d = np.maximum(F - k / mm[:, None], (k + 1) / mm[:, None] - F)
        else:
            d = np.abs(F - k / mm[:, None])
        d = np.where(k >= 0, d, -np.inf).max(axis=1)
        D[a : a + chunk] = np.where(np.isfinite(al) & (al > 1), d, np.inf)
    return idx, alpha, D


@dataclass
class PowerLawFit:
    alpha: float
    xmin: float
    n_tail: int
    ks_D: float
    alpha_lo: float  # bootstrap percentile interval (nan without bootstrap)
    alpha_hi: float
    alpha_se: float  # asymptotic standard error (alpha - 1) / sqrt(n_tail)
    credible: bool
    flag: str  # why the fit is not credible ("" when it is)

    def as_dict(self, prefix: str = "") -> dict:
        return {prefix + k: v for k, v in asdict(self).items()}


def _best(x, min_tail, policy, max_tail=None):
    idx, alpha, D = scan_xmin(x, min_tail, policy, max_tail=max_tail)
    if not len(idx) or not np.isfinite(D).any():
        return None
    b = int(np.argmin(D))
    return int(idx[b]), float(alpha[b]), float(D[b])


def fit_flag(alpha: float, n_tail: int, min_credible_tail: int = MIN_CREDIBLE_TAIL, alpha_range=ALPHA_RANGE) -> str:
    """Why a power-law fit is not credible ("" when it is)."""
    why = []
    if n_tail < min_credible_tail:
        why.append(f"tail of {n_tail} < {min_credible_tail} points")
    if not (alpha_range[0] <= alpha <= alpha_range[1]):
        why.append(f"alpha {alpha:.2f} outside {alpha_range[0]}-{alpha_range[1]}")
    return "; ".join(why)


def powerlaw_fit(
    lam,
    policy: str = "csn",
    min_tail: int = MIN_EVALS,
    n_boot: int = 0,
    seed: int = 0,
    level: float = 0.95,
    boot_window: float = 3.0,
    min_credible_tail: int = MIN_CREDIBLE_TAIL,
    alpha_range=ALPHA_RANGE,
) -> PowerLawFit:
    """Power-law fit of the tail of ``lam`` with the KS-chosen cutoff (module docstring).

    ``policy="ww"`` uses WeightWatcher 0.7.7's candidates (tails down to 2 points) and distance;
    ``min_tail`` applies to ``"csn"``. ``n_boot`` bootstrap replicates (ESD resampled with replacement,
    cutoff re-chosen each time among tails of at most ``boot_window`` times the chosen tail, which keeps
    a replicate ``O(n n_tail)`` instead of ``O(n^2)``) give the ``level`` percentile interval.
    Fewer than :data:`MIN_EVALS` positive eigenvalues: a row of NaN flagged "too few eigenvalues".
    """
    x = np.sort(np.asarray(lam, dtype=np.float64))
    x = x[x > 0]
    mt = 2 if policy == "ww" else max(2, min_tail)
    best = _best(x, mt, policy) if len(x) >= MIN_EVALS else None
    if best is None:
        why = f"too few eigenvalues for a fit ({len(x)} < {MIN_EVALS})" if len(x) < MIN_EVALS else "no valid cutoff"
        nan = float("nan")
        return PowerLawFit(nan, nan, 0, nan, nan, nan, nan, False, why)
    i, alpha, D = best
    n_tail = len(x) - i
    lo = hi = float("nan")
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        reps = []
        for _ in range(n_boot):
            xb = np.sort(rng.choice(x, size=len(x), replace=True))
            b = _best(xb, mt, policy, max_tail=int(np.ceil(boot_window * n_tail)))
            if b is not None:
                reps.append(b[1])
        if reps:
            lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    flag = fit_flag(alpha, n_tail, min_credible_tail, alpha_range)
    se = (alpha - 1) / np.sqrt(n_tail)
    return PowerLawFit(alpha, float(x[i]), n_tail, D, float(lo), float(hi), float(se), not flag, flag)


def powerlaw_pdf(x, alpha: float, xmin: float) -> np.ndarray:
    """Density ``(alpha - 1) / xmin (x / xmin)^-alpha`` for ``x >= xmin`` (0 below)."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x >= xmin, (alpha - 1) / xmin * (x / xmin) ** (-alpha), 0.0)


def weighted_alpha(alpha: float, sigma_max: float) -> float:
    """WeightWatcher's ``alpha_weighted = alpha log10(lambda_max)``, ``lambda_max = sigma_max^2``."""
    return float(alpha * np.log10(sigma_max**2)) if sigma_max > 0 else float("nan")
