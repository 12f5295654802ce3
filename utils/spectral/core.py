"""Singular values of dense matrices: float64 Gram on the CPU, batched SVD on a GPU.

Shapes: a matrix is ``(m, n)``, a batch ``(B, m, n)``. Singular values come back sorted in
descending order, ``(min(m, n),)`` or ``(B, min(m, n))``, as float64 numpy arrays.

Precision (documented choice, tested in ``tests/test_spectral.py``):

* fp16 / bf16 weights are always upcast; nothing is decomposed in half precision.
* ``method="svd"`` runs LAPACK / cuSOLVER ``svdvals`` in ``dtype`` (float32 by default on the
  GPU, float64 on the CPU): relative error about ``eps(dtype) * sigma_max`` on every value.
* ``method="gram"`` (the CPU default) forms the Gram matrix of the short side (:func:`gram`) in
  **float64** and takes ``sqrt(eigvalsh)`` (:func:`gram_svdvals`). It is several times faster
  than an SVD for the tall, thin matrices of a transformer; each singular value carries an
  absolute error of about ``sqrt(eps64) * sigma_max ~ 1.5e-8 sigma_max``, far below what
  effective rank, stable rank or energy fractions can see, and the condition number stays
  accurate up to ~1e6. ``dtype=torch.float32`` is the fast path: about ``sqrt(eps32) * sigma_max
  ~ 3.5e-4 sigma_max`` per value, so condition numbers beyond ~1e3 are not resolved; its
  effective-rank error is measured by ``bench/bench_scale.py``.

Memory: :func:`gram` is the one Gram primitive of the project. It never converts the whole
matrix: the Gram of the short side is accumulated in ``dtype`` over blocks of the long side of at
most :data:`GRAM_BLOCK_BYTES`, so a 128k x 4096 bf16 embedding (1 GB) needs its own bytes, one
4096 x 4096 Gram (134 MB) and one 64 MB block, not a 4.2 GB float64 copy.
"""

from __future__ import annotations

import numpy as np
import torch

from ..device import default_device, uses_device_path

GRAM_BLOCK_BYTES = 64 << 20  # one block of the long side, in the compute dtype


def as_tensor(W) -> torch.Tensor:
    """A torch view of ``W`` (numpy arrays are wrapped without a copy when contiguous)."""
    if isinstance(W, np.ndarray):
        W = torch.from_numpy(np.ascontiguousarray(W))
    if not isinstance(W, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor or numpy array, got {type(W).__name__}")
    return W


def count_nonfinite(W: torch.Tensor, block_elems: int = 1 << 24) -> int:
    """Number of NaN / Inf values of ``W``, counted over row blocks (no full-size mask)."""
    W = as_tensor(W)
    if not W.is_floating_point() or W.numel() == 0:
        return 0
    flat = W.reshape(-1, W.shape[-1]) if W.ndim else W.reshape(1, 1)
    rows = max(1, block_elems // max(1, flat.shape[1]))
    return sum(int((~torch.isfinite(flat[i : i + rows])).sum()) for i in range(0, flat.shape[0], rows))


def check_finite(W: torch.Tensor, what: str = "matrix") -> None:
    """``ValueError`` naming ``what`` and the count when ``W`` holds NaN or Inf."""
    bad = count_nonfinite(W)
    if bad:
        raise ValueError(
            f"{what} holds {bad} NaN/Inf values: the checkpoint is corrupted or overflowed in a low "
            "precision; re-download or re-export it (singular values are undefined)"
        )


def svdvals(W, device=None, method: str = "auto", dtype: torch.dtype | None = None) -> np.ndarray:
    """Singular values of one matrix ``(m, n)`` or a batch ``(B, m, n)``, descending, float64.

    device: ``None`` picks the GPU when present, else the CPU.
    method: ``"auto"`` (SVD on the GPU, float64 Gram on the CPU), ``"svd"`` or ``"gram"``.
    dtype: compute precision (``"svd"``: default float32 on the GPU, float64 on the CPU;
    ``"gram"``: default float64).
    """
    W = as_tensor(W)
    if W.ndim not in (2, 3):
        raise ValueError(f"svdvals expects a matrix (m, n) or a batch (B, m, n); got shape {tuple(W.shape)}")
    dev = torch.device(device) if device is not None else default_device()
    if method == "auto":
        method = "svd" if uses_device_path(dev) else "gram"
    if method == "gram":
        return gram_svdvals(W, dev, dtype or torch.float64)  # checks finiteness on the Gram
    if method != "svd":
        raise ValueError(f"method must be 'auto', 'svd' or 'gram', got {method!r}")
    check_finite(W)
    if dtype is None:
        dtype = torch.float32 if uses_device_path(dev) else torch.float64
    return torch.linalg.svdvals(W.to(device=dev, dtype=dtype)).double().cpu().numpy()


def gram(W, dtype: torch.dtype = torch.float64, device=None, block_bytes: int = GRAM_BLOCK_BYTES):
    """The Gram matrix of the short side of ``W`` (m, n): ``W^T W`` (n x n) when m >= n, else ``W W^T``.

    Accumulated in ``dtype`` over blocks of the long side of at most ``block_bytes`` each (module
    docstring), so memory is one block plus the Gram whatever ``W``'s size and storage dtype. On the
    CPU each block's product is a numpy ``B.T @ B`` on one buffer (a BLAS syrk, half the flops of a
    general product) and the result a numpy array; on another ``device`` (or on the CPU inside
    :func:`utils.device.device_path`) a torch product and a torch tensor there.
    """
    W = as_tensor(W)
    if W.ndim != 2:
        raise ValueError(f"gram expects a matrix (m, n); got shape {tuple(W.shape)}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    A = W.detach() if W.shape[0] >= W.shape[1] else W.detach().T  # tall view: blocks are rows of A
    k = A.shape[1]
    rows = max(1, block_bytes // max(1, k * torch.finfo(dtype).bits // 8))
    G = None
    on_host = not uses_device_path(dev)
    for i in range(0, A.shape[0], rows):
        if on_host:
            B = A[i : i + rows].to(dtype).contiguous().numpy()
            P = B.T @ B
        else:
            B = A[i : i + rows].to(device=dev, dtype=dtype)
            P = B.mT @ B
        if G is None:
            G = P
        else:
            G += P
    if G is None:  # no rows
        G = np.zeros((k, k), dtype=torch.empty(0, dtype=dtype).numpy().dtype)
        G = G if on_host else torch.from_numpy(G).to(dev)
    return G


def checked_gram(W, device=None, dtype: torch.dtype = torch.float64, what: str = "matrix") -> torch.Tensor:
    """:func:`gram` as a tensor, refused with a ``ValueError`` naming ``what`` when it holds NaN / Inf
    (``W`` itself is scanned only then, to say whether ``W`` or the Gram's ``dtype`` is at fault)."""
    G = gram(W, dtype, device)
    G = torch.from_numpy(G) if isinstance(G, np.ndarray) else G
    if not bool(torch.isfinite(G).all()):
        check_finite(W, what)
        raise ValueError(
            f"{what}: its Gram matrix overflowed in {dtype} (values up to {float(W.abs().max()):.3g}); "
            "use float64 precision"
        )
    return G


def gram_svdvals(W, device=None, dtype: torch.dtype = torch.float64, what: str = "matrix") -> np.ndarray:
    """Singular values from the Gram matrix of the short side (:func:`gram`), descending, float64.

    ``W``: a matrix or a batch (each decomposed on its own). The eigenvalues come from
    ``torch.linalg.eigvalsh`` in ``dtype`` (LAPACK / MKL on the CPU, cuSOLVER on a GPU). NaN / Inf
    in ``W`` show up in the Gram; only then is ``W`` scanned, for a ``ValueError`` naming ``what``.
    """
    W = as_tensor(W)
    if W.ndim == 3:
        return (
            np.stack([gram_svdvals(w, device, dtype, what) for w in W]) if len(W) else np.zeros((0, min(W.shape[1:])))
        )
    lam = torch.linalg.eigvalsh(checked_gram(W, device, dtype, what))  # ascending
    return lam.double().clamp_min(0).sqrt().flip(-1).cpu().numpy()


def gram_svd(W, k: int, device=None, dtype: torch.dtype = torch.float64, what: str = "matrix"):
    """``(S, V)``: all singular values (descending, float64 numpy) and the top-``k`` singular vectors of the
    short side (``(n_short, k)`` tensor, columns in the order of ``S``), from one Gram and one ``eigh``."""
    lam, vecs = torch.linalg.eigh(checked_gram(as_tensor(W), device, dtype, what))  # ascending
    S = lam.double().clamp_min(0).sqrt().flip(-1).cpu().numpy()
    return S, vecs.flip(-1)[:, :k]
