"""Singular values and the spectral summaries built on them.

Shapes: a matrix is ``(m, n)``; a batch is ``(B, m, n)``. Singular values come back sorted
in descending order, shape ``(min(m, n),)`` or ``(B, min(m, n))``, as float64 numpy arrays.

Precision (documented choice, tested in ``tests/test_spectral.py``):

* fp16 / bf16 weights are always upcast; nothing is ever decomposed in half precision.
* ``method="svd"`` runs LAPACK / cuSOLVER ``svdvals`` in ``dtype`` (float32 by default on
  the GPU, float64 on the CPU). Relative error about ``eps(dtype) * sigma_max`` on every
  singular value.
* ``method="gram"`` (the CPU default, and what ``method="auto"`` picks there) forms the
  Gram matrix of the short side in **float64** and takes ``sqrt(eigvalsh)``. It is several
  times faster than an SVD for the tall, thin matrices of a transformer. Each singular value
  carries an absolute error of about ``sqrt(eps64) * sigma_max ~ 1.5e-8 sigma_max``; that is
  far below anything effective rank, stable rank or energy fractions can see, and keeps the
  condition number accurate up to ~1e6. Matrices that need more go through ``method="svd"``.
"""
from __future__ import annotations

from dataclasses import dataclass, asdict

import numpy as np
import torch

ENERGY_LEVELS = (0.50, 0.75, 0.90, 0.95, 0.99)


def default_device() -> torch.device:
    """The GPU when one is visible, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _as_tensor(W) -> torch.Tensor:
    if isinstance(W, np.ndarray):
        W = torch.from_numpy(np.ascontiguousarray(W))
    if not isinstance(W, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor or numpy array, got {type(W).__name__}")
    return W


def svdvals(W, device: str | torch.device | None = None, method: str = "auto",
            dtype: torch.dtype | None = None) -> np.ndarray:
    """Singular values of one matrix ``(m, n)`` or a batch ``(B, m, n)``, descending, float64.

    device: ``None`` picks the GPU when present, else the CPU.
    method: ``"auto"`` (SVD on the GPU, float64 Gram on the CPU), ``"svd"`` or ``"gram"``.
    dtype: compute precision for ``"svd"`` (default float32 on the GPU, float64 on the CPU).
    """
    W = _as_tensor(W)
    if W.ndim not in (2, 3):
        raise ValueError(f"svdvals expects a matrix (m, n) or a batch (B, m, n); got shape {tuple(W.shape)}")
    if not torch.isfinite(W).all():
        raise ValueError("matrix contains NaN or Inf: check the checkpoint (a corrupted or "
                         "overflowed weight); singular values are undefined")
    dev = torch.device(device) if device is not None else default_device()
    if method == "auto":
        method = "svd" if dev.type == "cuda" else "gram"
    if method == "gram":
        return _svdvals_gram(W, dev)
    if method != "svd":
        raise ValueError(f"method must be 'auto', 'svd' or 'gram', got {method!r}")
    if dtype is None:
        dtype = torch.float32 if dev.type == "cuda" else torch.float64
    S = torch.linalg.svdvals(W.to(device=dev, dtype=dtype))
    return S.double().cpu().numpy()


def _svdvals_gram(W: torch.Tensor, dev: torch.device) -> np.ndarray:
    m, n = W.shape[-2:]
    if dev.type == "cpu":
        # numpy: ``A.T @ A`` on one buffer is a BLAS syrk (half the flops of a general product)
        A = W.detach().cpu().to(torch.float64).numpy()
        A = np.ascontiguousarray(A if m >= n else np.swapaxes(A, -1, -2))
        G = np.swapaxes(A, -1, -2) @ A
        lam = np.linalg.eigvalsh(G)  # ascending
        return np.sqrt(np.clip(lam, 0, None))[..., ::-1].copy()
    W = W.to(device=dev, dtype=torch.float64)
    G = W.mT @ W if m >= n else W @ W.mT
    lam = torch.linalg.eigvalsh(G)  # ascending
    return lam.clamp_min(0).sqrt().flip(-1).cpu().numpy()


def effective_rank(S: np.ndarray) -> float | np.ndarray:
    """Roy & Vetterli effective rank: exp of the Shannon entropy of p = sigma / sum(sigma).

    S: singular values ``(k,)`` or ``(..., k)``; zeros contribute nothing. An all-zero
    spectrum has effective rank 0. Range [1, k] otherwise.
    """
    S = np.asarray(S, dtype=np.float64)
    total = S.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(total > 0, S / np.where(total > 0, total, 1.0), 0.0)
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    H = -plogp.sum(axis=-1)
    er = np.where(total[..., 0] > 0, np.exp(H), 0.0)
    return float(er) if np.ndim(er) == 0 else er


def stable_rank(S: np.ndarray) -> float:
    """||W||_F^2 / ||W||_2^2 = sum sigma^2 / sigma_max^2 (0 for a zero matrix)."""
    S = np.asarray(S, dtype=np.float64)
    return float((S ** 2).sum() / S.max() ** 2) if S.size and S.max() > 0 else 0.0


def energy_counts(S: np.ndarray, levels=ENERGY_LEVELS) -> dict[float, int]:
    """Smallest k with sum_{i<k} sigma_i^2 >= level * sum sigma^2, for each level.

    ``S`` must be sorted descending. Returns ``{level: k}``.
    """
    S = np.asarray(S, dtype=np.float64)
    e = S ** 2
    tot = e.sum()
    if tot == 0:
        return {lv: 0 for lv in levels}
    cum = np.cumsum(e) / tot
    # a tiny tolerance so that exactly reaching a level counts (floating-point sums)
    return {lv: int(np.searchsorted(cum, lv - 1e-12) + 1) for lv in levels}


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


def summarize(S: np.ndarray) -> SpectrumSummary:
    """Effective rank, stable rank, spectral norm, condition number and energy counts of ``S``.

    Condition number is sigma_max / sigma_min over all min(m, n) singular values
    (``inf`` when the matrix is rank deficient to working precision).
    """
    S = np.sort(np.asarray(S, dtype=np.float64))[::-1]
    smax = float(S[0]) if S.size else 0.0
    smin = float(S[-1]) if S.size else 0.0
    tiny = np.finfo(np.float64).eps * max(smax, 1e-300) * max(S.size, 1)
    cond = smax / smin if smin > tiny else float("inf")
    ec = energy_counts(S)
    return SpectrumSummary(
        n_sv=int(S.size), eff_rank=float(effective_rank(S)), stable_rank=stable_rank(S),
        spectral_norm=smax, frobenius_norm=float(np.sqrt((S ** 2).sum())), sigma_min=smin,
        condition_number=cond, n50=ec[0.50], n75=ec[0.75], n90=ec[0.90], n95=ec[0.95],
        n99=ec[0.99],
    )
