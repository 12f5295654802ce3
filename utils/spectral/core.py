"""Singular values of dense matrices: exact float64 Gram on the CPU, batched SVD on a GPU.

Shapes: a matrix is ``(m, n)``, a batch ``(B, m, n)``. Singular values come back sorted in
descending order, ``(min(m, n),)`` or ``(B, min(m, n))``, as float64 numpy arrays.

Precision (documented choice, tested in ``tests/test_spectral.py``):

* fp16 / bf16 weights are always upcast; nothing is decomposed in half precision.
* ``method="svd"`` runs LAPACK / cuSOLVER ``svdvals`` in ``dtype`` (float32 by default on the
  GPU, float64 on the CPU): relative error about ``eps(dtype) * sigma_max`` on every value.
* ``method="gram"`` (the CPU default) forms the Gram matrix of the short side in **float64** and
  takes ``sqrt(eigvalsh)`` (:func:`gram_svdvals`). It is several times faster than an SVD for the
  tall, thin matrices of a transformer; each singular value carries an absolute error of about
  ``sqrt(eps64) * sigma_max ~ 1.5e-8 sigma_max``, far below what effective rank, stable rank or
  energy fractions can see, and the condition number stays accurate up to ~1e6.
"""

from __future__ import annotations

import numpy as np
import torch

from ..device import default_device


def as_tensor(W) -> torch.Tensor:
    """A torch view of ``W`` (numpy arrays are wrapped without a copy when contiguous)."""
    if isinstance(W, np.ndarray):
        W = torch.from_numpy(np.ascontiguousarray(W))
    if not isinstance(W, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor or numpy array, got {type(W).__name__}")
    return W


def check_finite(W: torch.Tensor, what: str = "matrix") -> None:
    """``ValueError`` naming ``what`` and the count when ``W`` holds NaN or Inf."""
    bad = int((~torch.isfinite(W)).sum())
    if bad:
        raise ValueError(
            f"{what} holds {bad} NaN/Inf values: the checkpoint is corrupted or overflowed in a low "
            "precision; re-download or re-export it (singular values are undefined)"
        )


def svdvals(W, device=None, method: str = "auto", dtype: torch.dtype | None = None) -> np.ndarray:
    """Singular values of one matrix ``(m, n)`` or a batch ``(B, m, n)``, descending, float64.

    device: ``None`` picks the GPU when present, else the CPU.
    method: ``"auto"`` (SVD on the GPU, float64 Gram on the CPU), ``"svd"`` or ``"gram"``.
    dtype: compute precision for ``"svd"`` (default float32 on the GPU, float64 on the CPU).
    """
    W = as_tensor(W)
    if W.ndim not in (2, 3):
        raise ValueError(f"svdvals expects a matrix (m, n) or a batch (B, m, n); got shape {tuple(W.shape)}")
    check_finite(W)
    dev = torch.device(device) if device is not None else default_device()
    if method == "auto":
        method = "svd" if dev.type == "cuda" else "gram"
    if method == "gram":
        return gram_svdvals(W, dev)
    if method != "svd":
        raise ValueError(f"method must be 'auto', 'svd' or 'gram', got {method!r}")
    if dtype is None:
        dtype = torch.float32 if dev.type == "cuda" else torch.float64
    return torch.linalg.svdvals(W.to(device=dev, dtype=dtype)).double().cpu().numpy()


def gram_svdvals(W, device=None) -> np.ndarray:
    """Singular values from the float64 Gram matrix of the short side (no finite check).

    On the CPU the Gram is a numpy ``A.T @ A`` on one buffer, a BLAS syrk (half the flops of a
    general product); elsewhere a torch product on ``device``.
    """
    W = as_tensor(W)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    m, n = W.shape[-2:]
    if dev.type == "cpu":
        A = W.detach().cpu().to(torch.float64).numpy()
        A = np.ascontiguousarray(A if m >= n else np.swapaxes(A, -1, -2))
        lam = np.linalg.eigvalsh(np.swapaxes(A, -1, -2) @ A)  # ascending
        return np.sqrt(np.clip(lam, 0, None))[..., ::-1].copy()
    W = W.to(device=dev, dtype=torch.float64)
    lam = torch.linalg.eigvalsh(W.mT @ W if m >= n else W @ W.mT)
    return lam.clamp_min(0).sqrt().flip(-1).cpu().numpy()
