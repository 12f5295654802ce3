"""Is every layer a temperature-rescaled copy of one attention operator? (seed 003, vectorised)

Input: the per-head singular values of the attention metric ``W_Q_h^T W_K_h`` of every layer,
``sigma`` of shape ``(L, H, K)`` (heads of lower rank zero-padded at the end, see
:func:`utils.geometry.collect_spectra`), and the per-head mean attention entropy ``entropy``
of shape ``(L, H)`` in nats.

Definitions (those of the seed, reproduced number for number; ``EPS = 1e-20``):

* shape of a head: ``sigma / max(sigma)`` (the raw vector when ``max <= EPS``).
* ``cos(x, y) = <x, y> / (|x| |y|)``, and 0 when ``|x| < EPS`` or ``|y| < EPS``.
* (1) shape invariance of head ``h``: mean of ``cos(shape[L1, h], shape[L2, h])`` over all
  layer pairs ``L1 < L2`` (NaN with a single layer).
* anchor: ``"last"`` = ``L - 1``, ``"middle"`` = ``L // 2``, ``"best"`` = the layer ``Lc`` with the
  highest total ``sum_h sum_{L != Lc} cos(shape[Lc, h], shape[L, h])``; ties go to the lowest
  index (the seed's strict ``>`` scan from layer 0; scores within ``1e-12`` relative are treated as
  ties, so floating-point summation order cannot decide). A score must exceed -1 to be taken
  (the seed's starting value), otherwise the last layer is kept.
* (2) scalar rescale of ``x = sigma[L, h]`` onto ``y = sigma[anchor, h]``:
  ``T = <x, y> / |y|^2`` and ``resid = |x - T y| / |x|``; ``T = 0, resid = 1`` when
  ``|y|^2 < EPS``; ``resid = 0`` when ``|x| <= EPS``.
* (2b) Pearson correlation (``np.corrcoef``) of the flattened ``(L, H)`` maps T vs entropy and
  ``op_norm = max_k sigma`` vs entropy.
* (3) cross-head similarity of layer ``L``: mean ``cos(shape[L, h1], shape[L, h2])`` over
  ``h1 < h2`` (NaN with a single head).
* verdict on the overall mean residual: ``< 0.1`` supported, ``< 0.3`` partially supported,
  else rejected; shape stability on the mean of (1): ``> 0.98`` very stable, ``> 0.9``
  approximately stable, else not stable.

Beyond the seed: the rank-k correction (:func:`rank_k_correction`) and a bootstrap interval
over heads for the correlations (:func:`bootstrap_corr_over_heads`).

Everything is array code: ``(80, 64, 128)`` is analysed in well under a second.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..files import to_jsonable
from ..spectral import gram_svdvals

EPS = 1e-20
ANCHORS = ("last", "middle", "best")
RESID_THRESHOLDS = (0.10, 0.20)
VERDICT_SUPPORTED = (
    "HYPOTHESIS SUPPORTED — scalar temperature rescale of a shared operator "
    "reconstructs earlier layers to within 10% Frobenius residual."
)
VERDICT_PARTIAL = (
    "PARTIALLY SUPPORTED — scalar rescale captures most of the structure; "
    "a low-rank correction on top is likely enough."
)
VERDICT_REJECTED = (
    "HYPOTHESIS REJECTED for pure scalar rescale — spectra differ substantially "
    "in shape; need full layer-by-layer operators or rank-k delta."
)


# ----------------------------------------------------------------------------- primitives
def spectral_shapes(sigma: np.ndarray) -> np.ndarray:
    """``sigma / max(sigma)`` along the last axis; rows whose max is ``<= EPS`` are kept as they are."""
    sigma = np.asarray(sigma, dtype=np.float64)
    mx = sigma.max(axis=-1, keepdims=True)
    ok = mx > EPS
    return np.where(ok, sigma / np.where(ok, mx, 1.0), sigma)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``x / |x|`` along the last axis, and all zeros where ``|x| < EPS`` (so cosines with it are 0)."""
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    ok = n >= EPS
    return np.where(ok, x / np.where(ok, n, 1.0), 0.0)


def _mean_upper(C: np.ndarray) -> np.ndarray:
    """Mean of the strict upper triangle of each ``(n, n)`` matrix in ``C (..., n, n)``; NaN when n < 2."""
    n = C.shape[-1]
    iu = np.triu_indices(n, k=1)
    if len(iu[0]) == 0:
        return np.full(C.shape[:-2], np.nan)
    return C[..., iu[0], iu[1]].mean(axis=-1)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of the flattened arrays (``np.corrcoef``); NaN for a constant input."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.corrcoef(np.ravel(x), np.ravel(y))[0, 1])


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of the flattened ``x``, ties given their average rank."""
    x = np.ravel(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(xs[1:] != xs[:-1]) + 1]
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (Pearson of average ranks) of the flattened arrays; beyond the seed,
    a check that a correlation is not carried by a few extreme (layer, head) values."""
    return pearson(_average_ranks(x), _average_ranks(y))


# ----------------------------------------------------------------------------- experiments
def shape_invariance(shape: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Experiment (1). ``shape (L, H, K)`` -> (per-head mean pairwise cosine across layers ``(H,)``,
    the cosine matrices ``(H, L, L)``)."""
    u = unit_rows(shape)  # (L, H, K)
    C = np.einsum("lhk,mhk->hlm", u, u)  # (H, L, L); einsum: no BLAS thread contention
    return _mean_upper(C), C


def choose_anchor(anchor: str, shape: np.ndarray, layer_cos: np.ndarray | None = None) -> tuple[int, np.ndarray | None]:
    """The anchor layer index, and for ``"best"`` the per-layer total shape-cosine scores ``(L,)``.

    ``layer_cos``: the ``(H, L, L)`` cosine matrices of :func:`shape_invariance` (recomputed if None).
    """
    if anchor not in ANCHORS:
        raise ValueError(f"anchor must be one of {ANCHORS}, got {anchor!r}")
    L = shape.shape[0]
    if anchor == "last":
        return L - 1, None
    if anchor == "middle":
        return L // 2, None
    if layer_cos is None:
        layer_cos = shape_invariance(shape)[1]
    offdiag = ~np.eye(L, dtype=bool)
    scores = np.where(offdiag, layer_cos, 0.0).sum(axis=(0, 2))  # (L,) sum over heads and other layers
    best = scores.max()
    if not best > -1.0:  # the seed starts from -1 and keeps L-1
        return L - 1, scores
    tol = 1e-12 * max(1.0, abs(best))
    return int(np.flatnonzero(scores >= best - tol)[0]), scores


def rescale_fit(sigma: np.ndarray, anchor_layer: int) -> tuple[np.ndarray, np.ndarray]:
    """Experiment (2). Least-squares scalar ``T[L, h]`` with ``sigma[L, h] ~ T sigma[anchor, h]``
    and the relative residual ``|sigma[L, h] - T sigma[anchor, h]| / |sigma[L, h]|``; both ``(L, H)``."""
    x = np.asarray(sigma, dtype=np.float64)
    y = x[anchor_layer][None]  # (1, H, K)
    denom = (y * y).sum(axis=-1)  # (1, H)
    ok = denom >= EPS
    T = np.where(ok, (x * y).sum(axis=-1) / np.where(ok, denom, 1.0), 0.0)  # (L, H)
    rn = np.linalg.norm(x - T[..., None] * y, axis=-1)
    xn = np.linalg.norm(x, axis=-1)
    big = xn > EPS
    resid = np.where(big, rn / np.where(big, xn, 1.0), 0.0)
    resid = np.where(ok, resid, 1.0)
    T = np.broadcast_to(T, x.shape[:2]).copy()
    return T, np.broadcast_to(resid, x.shape[:2]).copy()


def cross_head_similarity(shape: np.ndarray) -> np.ndarray:
    """Experiment (3). Mean pairwise cosine of head shapes within each layer, ``(L,)``."""
    u = unit_rows(shape)  # (L, H, K)
    return _mean_upper(np.einsum("lhk,lgk->lhg", u, u))


def shape_stability_label(mean_cos: float) -> str:
    """The seed's wording for the mean of experiment (1)."""
    return "very stable" if mean_cos > 0.98 else "approximately stable" if mean_cos > 0.9 else "not stable"


def verdict(mean_resid: float) -> str:
    """The seed's three-way verdict on the overall mean scalar-rescale residual."""
    if mean_resid < 0.1:
        return VERDICT_SUPPORTED
    if mean_resid < 0.3:
        return VERDICT_PARTIAL
    return VERDICT_REJECTED


def verdict_key(mean_resid: float) -> str:
    return {VERDICT_SUPPORTED: "supported", VERDICT_PARTIAL: "partially_supported", VERDICT_REJECTED: "rejected"}[
        verdict(mean_resid)
    ]


NOT_DETERMINED = "NOT DETERMINED"


def basis_problems(sigma: np.ndarray, anchor_layer: int) -> list[str]:
    """Why the verdict would have no basis: fewer than two layers besides the anchor, all-zero
    spectra, or an anchor layer whose spectra are all zero (empty when the basis is sound)."""
    L = sigma.shape[0]
    out = []
    if L - 1 < 2:
        out.append(f"only {L - 1} layer(s) besides the anchor; the fit needs at least 2 to say anything")
    if not (sigma > EPS).any():
        out.append("every spectrum is zero")
    elif not (sigma[anchor_layer] > EPS).any():
        out.append(f"every head of the anchor layer {anchor_layer} has a zero spectrum")
    return out


def guarded_verdict(mean_resid: float, problems: list[str]) -> tuple[str, str]:
    """``(verdict text, key)``: the seed's verdict, or NOT DETERMINED with the reasons."""
    if problems or not np.isfinite(mean_resid):
        why = "; ".join(problems) or "the mean residual is undefined"
        return f"{NOT_DETERMINED} — {why}.", "not_determined"
    return verdict(mean_resid), verdict_key(mean_resid)


# ----------------------------------------------------------------------------- beyond the seed
def _tail_norms(s: np.ndarray, k_max: int) -> np.ndarray:
    """``sqrt(sum_{i >= k} s_i^2)`` for k = 0..k_max, from descending singular values ``s (..., r)``."""
    e = s**2
    tail = np.flip(np.cumsum(np.flip(e, -1), -1), -1)  # tail[..., k] = sum_{i>=k} e_i
    tail = np.concatenate([tail, np.zeros(e.shape[:-1] + (1,))], axis=-1)
    ks = np.minimum(np.arange(k_max + 1), e.shape[-1])
    return np.sqrt(tail[..., ks])


def rank_k_correction(sigma: np.ndarray, T: np.ndarray, anchor_layer: int, k_max: int = 4) -> dict[str, np.ndarray]:
    """What a rank-k correction on top of the scalar rescale leaves, per layer, k = 0..k_max.

    Per layer ``L`` stack the heads' scalar-rescale residual vectors into the ``(H, K)`` matrix
    ``R_L[h] = sigma[L, h] - T[L, h] sigma[anchor, h]``. A rank-k correction adds to every head a
    combination of the same k "delta shapes" (``k (H + K)`` numbers per layer); the best one
    (Eckart-Young) is the truncated SVD of ``R_L``, so what remains is

        ``resid_k[L] = sqrt(sum_{i > k} s_i(R_L)^2) / |Sigma_L|_F``,  ``Sigma_L[h] = sigma[L, h]``

    (0 when ``|Sigma_L|_F <= EPS``). ``k = 0`` is the layer's Frobenius-pooled scalar residual.
    It is trivially 0 once ``k >= min(H, K)`` (then there is one free delta shape per head).

    Also returned, for scale:

    * ``no_anchor``: ``sqrt(sum_{i > k} s_i(Sigma_L)^2) / |Sigma_L|_F``, the best rank-k fit of
      the layer's spectra with no anchor at all.
    * ``global_resid``: the same correction with k delta shapes shared by *all* layers (SVD of
      the ``(L*H, K)`` stack of residual vectors), relative to ``|sigma|_F``, ``(k_max + 1,)``.

    Returns arrays ``resid (L, k_max+1)``, ``no_anchor (L, k_max+1)``, ``global_resid (k_max+1,)``,
    ``trivial_from_k`` (int, ``min(H, K)``).
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    L, H, K = sigma.shape
    R = sigma - T[..., None] * sigma[anchor_layer][None]  # (L, H, K)
    norm = np.linalg.norm(sigma.reshape(L, -1), axis=-1)  # (L,)
    ok = norm > EPS
    safe = np.where(ok, norm, 1.0)[:, None]
    s_R = np.linalg.svd(R, compute_uv=False)  # (L, min(H, K))
    s_S = np.linalg.svd(sigma, compute_uv=False)
    resid = np.where(ok[:, None], _tail_norms(s_R, k_max) / safe, 0.0)
    no_anchor = np.where(ok[:, None], _tail_norms(s_S, k_max) / safe, 0.0)
    total = np.linalg.norm(sigma)
    # singular values of the tall (L*H, K) stack from its K x K Gram matrix (absolute error
    # ~1e-8 |R|_F on each tail norm, far below what is reported)
    s_G = gram_svdvals(R.reshape(L * H, K))
    glob = _tail_norms(s_G, k_max) / total if total > EPS else np.zeros(k_max + 1)
    return {"resid": resid, "no_anchor": no_anchor, "global_resid": glob, "trivial_from_k": int(min(H, K))}


def bootstrap_corr_over_heads(
    x: np.ndarray, y: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """Percentile bootstrap interval for the Pearson correlation of two ``(L, H)`` maps,
    resampling heads (whole columns, all layers together) with replacement.

    Returns ``{"lo", "hi", "level", "n_boot", "n_valid"}``; resamples whose correlation is
    undefined (a constant map) are dropped and counted out of ``n_valid``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    L, H = x.shape
    rng = np.random.default_rng(seed)
    # a resample of heads is a vector of multiplicities c (B, H) summing to H; the Pearson
    # correlation over (layers, resampled heads) follows from per-head sums, exactly
    counts = rng.multinomial(H, np.full(H, 1.0 / H), size=n_boot).astype(np.float64)
    xc = x - x.mean()
    yc = y - y.mean()
    stats = np.stack([xc.sum(0), yc.sum(0), (xc * xc).sum(0), (yc * yc).sum(0), (xc * yc).sum(0)], 1)
    Sx, Sy, Sxx, Syy, Sxy = (counts @ stats).T  # (B,) each
    n = L * H
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (n * Sxy - Sx * Sy) / np.sqrt((n * Sxx - Sx * Sx) * (n * Syy - Sy * Sy))
    r = r[np.isfinite(r)]
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(r, [a, 1 - a]) if r.size else (np.nan, np.nan)
    return {"lo": float(lo), "hi": float(hi), "level": level, "n_boot": int(n_boot), "n_valid": int(r.size)}


# ----------------------------------------------------------------------------- the whole analysis
@dataclass
class RescaleResult:
    """Everything the notebook reports. Arrays are numpy; :meth:`to_dict` makes it JSON-ready."""

    anchor: str
    anchor_layer: int
    anchor_scores: np.ndarray | None  # (L,) total shape cosine per layer (anchor="best" only)
    per_head_cos: np.ndarray  # (H,)  experiment (1)
    T: np.ndarray  # (L, H) experiment (2)
    resid: np.ndarray  # (L, H)
    layer_mean_resid: np.ndarray  # (L,)
    layer_max_resid: np.ndarray  # (L,)
    layer_mean_T: np.ndarray  # (L,)
    mean_resid: float
    max_resid: float
    frac_below: dict  # {0.1: f, 0.2: f}
    corr_T_entropy: float  # (2b)
    corr_opnorm_entropy: float
    spearman_T_entropy: float  # beyond the seed: rank correlations
    spearman_opnorm_entropy: float
    cross_head_cos: np.ndarray  # (L,)  experiment (3)
    shape_cos_mean: float
    shape_cos_std: float
    shape_cos_min: float
    shape_cos_max: float
    stability: str
    verdict: str
    verdict_key: str
    basis_problems: list = field(default_factory=list)
    rank_k: dict = field(default_factory=dict)
    bootstrap: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["frac_below"] = {f"{k:.2f}": v for k, v in self.frac_below.items()}
        return to_jsonable(d)


def analyze(
    sigma: np.ndarray,
    entropy: np.ndarray,
    anchor: str = "last",
    rank_k_max: int = 4,
    n_boot: int = 2000,
    boot_seed: int = 0,
    boot_level: float = 0.95,
) -> RescaleResult:
    """Run experiments (1), (2), (2b), (3), the summary, the rank-k follow-up and the bootstrap.

    sigma: ``(L, H, K)`` zero-padded singular values; entropy: ``(L, H)`` nats.
    ``n_boot = 0`` skips the bootstrap; ``rank_k_max = 0`` skips the rank-k follow-up.
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    entropy = np.asarray(entropy, dtype=np.float64)
    if sigma.ndim != 3:
        raise ValueError(f"sigma must be (layers, heads, k), got shape {sigma.shape}")
    if entropy.shape != sigma.shape[:2]:
        raise ValueError(f"entropy must be (layers, heads) = {sigma.shape[:2]}, got {entropy.shape}")
    for name, a in (("sigma", sigma), ("entropy", entropy)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} holds {int((~np.isfinite(a)).sum())} NaN/Inf values: the geometry is not usable")
    top = sigma.max()
    if top > 0:  # every reported quantity is scale-free: work at unit scale (no overflow at 1e308)
        sigma = sigma / top
    shape = spectral_shapes(sigma)
    per_head_cos, C = shape_invariance(shape)
    anchor_L, scores = choose_anchor(anchor, shape, C)
    T, resid = rescale_fit(sigma, anchor_L)
    op_norm = sigma.max(axis=-1)
    m = float(per_head_cos.mean())
    mean_resid = float(resid.mean())
    problems = basis_problems(sigma, anchor_L)
    verdict_text, key = guarded_verdict(mean_resid, problems)
    res = RescaleResult(
        anchor=anchor,
        anchor_layer=anchor_L,
        anchor_scores=scores,
        per_head_cos=per_head_cos,
        T=T,
        resid=resid,
        layer_mean_resid=resid.mean(1),
        layer_max_resid=resid.max(1),
        layer_mean_T=T.mean(1),
        mean_resid=mean_resid,
        max_resid=float(resid.max()),
        frac_below={t: float((resid < t).mean()) for t in RESID_THRESHOLDS},
        corr_T_entropy=pearson(T, entropy),
        corr_opnorm_entropy=pearson(op_norm, entropy),
        spearman_T_entropy=spearman(T, entropy),
        spearman_opnorm_entropy=spearman(op_norm, entropy),
        cross_head_cos=cross_head_similarity(shape),
        shape_cos_mean=m,
        shape_cos_std=float(per_head_cos.std()),
        shape_cos_min=float(per_head_cos.min()),
        shape_cos_max=float(per_head_cos.max()),
        stability=shape_stability_label(m) if np.isfinite(m) else "not determined (a single layer)",
        verdict=verdict_text,
        verdict_key=key,
        basis_problems=problems,
    )
    if rank_k_max > 0:
        res.rank_k = rank_k_correction(sigma, T, anchor_L, rank_k_max)
    if n_boot > 0:
        res.bootstrap = {
            "corr_T_entropy": bootstrap_corr_over_heads(T, entropy, n_boot, boot_seed, boot_level),
            "corr_opnorm_entropy": bootstrap_corr_over_heads(op_norm, entropy, n_boot, boot_seed, boot_level),
        }
    return res
