"""Exact spectra of low-rank matrices held as factors: :class:`FactoredKernels`.

A batch of ``B`` square matrices ``A_i = X_i Y_{g(i)}`` with thin ``X_i`` (d, r) and flat
``Y_g`` (r, d), several ``A_i`` possibly sharing one ``Y_g`` (grouped-query attention). In the
spirit of TransformerLens' ``FactoredMatrix``: a small exact object you can index (``K[3]``,
``K[[0, 5]]``, ``K[2:4]``), densify when you must (:meth:`FactoredKernels.dense`) and decompose
without ever forming a d x d matrix:

* singular values: thin QR ``X = Q1 R1`` and ``Y^T = Q2 R2`` give ``X Y = Q1 (R1 R2^T) Q2^T`` with
  orthonormal ``Q1, Q2``, so ``svd(X Y) = svd(R1 R2^T)`` (r x r), plus d - r exact zeros;
* eigenvalues: the non-zero eigenvalues of ``X Y`` (d x d) are those of ``Y X`` (r x r); the other
  d - r are exactly zero, and only the r are reported;
* ``||X Y||_F^2 = sum sigma^2`` and ``tr((X Y)^2) = tr((Y X)^2)`` give the asymmetry
  ``||A - A^T||_F / ||A||_F`` and the symmetry score ``||sym A||_F^2 / ||A||_F^2`` from traces.

Everything runs in float64 on the factors' device; on the CPU the batch is split over worker
threads that each run single-threaded LAPACK (:mod:`utils.spectral.threads`); on a GPU (or on the CPU
inside :func:`utils.device.device_path`) it is decomposed as one batch.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ..device import uses_device_path
from .metrics import COMPLEX_RTOL, complex_mask, effective_rank, energy_count
from .threads import cpu_workers, limited_threads


def as_f64(W, device=None) -> torch.Tensor:
    if isinstance(W, np.ndarray):
        W = torch.from_numpy(np.ascontiguousarray(W))
    W = W.detach()
    if device is not None:
        W = W.to(device)
    return W.to(torch.float64)


@dataclass
class KernelSpectra:
    """Exact spectra of a batch of low-rank kernels ``A = X Y`` (d x d, rank <= r).

    sv:    (..., r) float64 singular values, descending (the d - r others are exactly 0)
    eig:   (..., r) complex128 non-zero eigenvalues, sorted by |lambda| descending (None if skipped)
    fro2:  (...,) ||A||_F^2
    tr_sq: (...,) tr(A @ A) (None if eigenvalues were skipped)
    d:     the kernels' side length
    """

    sv: np.ndarray
    eig: np.ndarray | None
    fro2: np.ndarray
    tr_sq: np.ndarray | None
    d: int

    @property
    def r(self) -> int:
        return self.sv.shape[-1]

    @property
    def op_norm(self) -> np.ndarray:
        return self.sv[..., 0]

    @property
    def symmetry(self) -> np.ndarray:
        """||sym(A)||_F^2 / ||A||_F^2 = (1 + tr(A^2)/||A||_F^2)/2 in [0, 1]: 1 symmetric, 0 antisymmetric."""
        with np.errstate(invalid="ignore", divide="ignore"):
            s = 0.5 * (1.0 + self.tr_sq / self.fro2)
        return np.clip(np.where(self.fro2 > 0, s, np.nan), 0.0, 1.0)

    @property
    def asymmetry(self) -> np.ndarray:
        """||A - A^T||_F / ||A||_F = 2 sqrt(1 - symmetry), in [0, 2].

        From traces, so a kernel within ~1e-8 of symmetric reads as ~1e-8 (rounding in 1 - symmetry);
        anything above that is accurate to ~1e-15 relative.
        """
        return 2.0 * np.sqrt(1.0 - self.symmetry)

    def complex_mask(self, rtol: float = COMPLEX_RTOL) -> np.ndarray:
        """(..., r) bool: the project's complex-eigenvalue rule (:mod:`utils.spectral.metrics`)."""
        return complex_mask(self.eig, rtol)

    def metrics(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Per-kernel scalar summaries, each shaped like the batch (...); the eigenvalue-based ones
        only when eigenvalues were computed."""
        out = {
            "eff_rank": effective_rank(self.sv),
            "op_norm": self.op_norm,
            "fro_norm": np.sqrt(self.fro2),
        }
        if self.eig is not None:
            cm = self.complex_mask()
            mag = np.abs(self.eig)
            out.update(
                asymmetry=self.asymmetry,
                symmetry=self.symmetry,
                n_complex=cm.sum(axis=-1),
                complex_frac=cm.mean(axis=-1),
                spectral_radius=mag[..., 0],
                eig_eff_rank=effective_rank(mag),
            )
        out["n99_sv"] = energy_count(self.sv**2, 0.99)
        return {prefix + k: v for k, v in out.items()}


def _grouped_products(Y: torch.Tensor, X: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(B, r, r) ``Y[idx[i]] @ X[i]``, one GEMM per shared Y (a GQA group) instead of B small ones.

    For the kernels reading the same ``Y[g]``, ``[X_i ...]`` side by side is a (d, n_g * r) view of
    the weight matrix when they are contiguous (always, for GQA), so no copy of X is made.
    """
    B, d, r = X.shape
    M = torch.empty(B, r, r, dtype=X.dtype, device=X.device)
    idx_cpu = idx.cpu().numpy()
    for g in np.unique(idx_cpu):
        heads = np.flatnonzero(idx_cpu == g)
        contiguous = heads[-1] - heads[0] + 1 == len(heads)
        Xg = X[heads[0] : heads[-1] + 1] if contiguous else X[torch.as_tensor(heads, device=X.device)]
        P = Y[int(g)] @ Xg.permute(1, 0, 2).reshape(d, len(heads) * r)  # (r, n_g * r)
        M[torch.as_tensor(heads, device=X.device)] = P.reshape(r, len(heads), r).permute(1, 0, 2)
    return M


def _chunk(X, Y, R2, idx, eigenvalues: bool):
    """Singular values (and eigenvalues, tr(A^2)) of a contiguous chunk of the batch."""
    R1 = torch.linalg.qr(X, mode="r")[1]  # (b, k, r), k = min(d, r); mode "r" never forms Q
    S = torch.linalg.svdvals(R1 @ R2[idx].mT)  # svd(X Y) = svd(R1 R2^T)
    if not eigenvalues:
        return S, None, None
    M = _grouped_products(Y, X, idx)  # non-zero eig(X Y) = eig(Y X)
    return S, torch.linalg.eigvals(M), (M * M.mT).sum(dim=(-2, -1))


class FactoredKernels:
    """A batch of kernels ``A_i = X[i] @ Y[index[i]]`` kept as factors (module docstring).

    X: (B, d, r); Y: (G, r, d); index: (B,) ints into Y (default ``arange(B)``, needs G == B).
    """

    def __init__(self, X, Y, index=None):
        X, Y = as_f64(X), as_f64(Y)
        if X.ndim != 3 or Y.ndim != 3 or X.shape[-2] != Y.shape[-1] or X.shape[-1] != Y.shape[-2]:
            raise ValueError(f"need X (B, d, r) and Y (G, r, d); got {tuple(X.shape)} and {tuple(Y.shape)}")
        B = X.shape[0]
        idx = np.arange(B) if index is None else np.asarray(index, dtype=np.int64).reshape(-1)
        if idx.shape != (B,) or (B and (idx.max() >= Y.shape[0] or idx.min() < 0)):
            raise ValueError(f"index must be (B,)={B} indices into the {Y.shape[0]} Y factors")
        self.X, self.Y, self.index = X, Y, idx

    @property
    def d(self) -> int:
        return self.X.shape[-2]

    @property
    def r(self) -> int:
        return self.X.shape[-1]

    def __len__(self) -> int:
        return self.X.shape[0]

    def __getitem__(self, key) -> "FactoredKernels":
        """Select kernels: an int, a slice or a sequence of indices (Y factors are shared, not copied)."""
        sel = np.arange(len(self))[key]
        sel = np.atleast_1d(sel)
        return FactoredKernels(self.X[torch.as_tensor(sel)], self.Y, self.index[sel])

    def dense(self) -> torch.Tensor:
        """The (B, d, d) kernels as dense float64 matrices: O(B d^2) memory, for references only."""
        return self.X @ self.Y[torch.as_tensor(self.index, device=self.Y.device)]

    def summed(self) -> "FactoredKernels":
        """The sum of the batch as one kernel, exactly and still factored: ``sum_i X[i] Y[index[i]] =
        [X_1 ... X_B] [Y_index1; ...; Y_indexB]`` (d x B r times B r x d), e.g. a layer's whole QK matrix."""
        B, d, r = self.X.shape
        X = self.X.permute(1, 0, 2).reshape(d, B * r)
        Y = self.Y[torch.as_tensor(self.index, device=self.Y.device)].reshape(B * r, -1)
        return FactoredKernels(X[None], Y[None])

    def frobenius_sq(self) -> np.ndarray:
        """(B,) ||A_i||_F^2 = tr((X^T X)(Y Y^T)), from r x r matrices."""
        Yg = self.Y[torch.as_tensor(self.index, device=self.Y.device)]
        return ((self.X.mT @ self.X) * (Yg @ Yg.mT)).sum(dim=(-2, -1)).cpu().numpy()

    def spectra(self, eigenvalues: bool = True) -> KernelSpectra:
        """Exact singular values (and non-zero eigenvalues, symmetry) of every kernel, float64."""
        X, Y = self.X, self.Y
        B, d, r = X.shape
        idx = torch.as_tensor(self.index, device=X.device)
        host = not uses_device_path(X.device)  # the CPU: worker threads, one BLAS thread each
        n_work = cpu_workers(B) if host else 1
        bounds = np.linspace(0, B, n_work + 1).astype(int)
        with limited_threads(1) if host else _nothing():
            R2 = torch.linalg.qr(Y.mT, mode="r")[1]  # (G, k, r), once per shared factor
            jobs = [(X[a:b], Y, R2, idx[a:b], eigenvalues) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
            if len(jobs) == 1:
                parts = [_chunk(*jobs[0])]
            else:
                with ThreadPoolExecutor(len(jobs)) as ex:  # LAPACK releases the GIL
                    parts = list(ex.map(lambda j: _chunk(*j), jobs))
        S = torch.cat([p[0] for p in parts]).cpu().numpy()
        if S.shape[-1] < r:  # d < r: pad with the exact zeros
            S = np.concatenate([S, np.zeros(S.shape[:-1] + (r - S.shape[-1],))], axis=-1)
        if not np.isfinite(S).all():
            raise ValueError("the factors contain NaN or Inf: check the checkpoint")
        lam = tr_sq = None
        if eigenvalues:
            lam = torch.cat([p[1] for p in parts]).cpu().numpy()
            lam = np.take_along_axis(lam, np.argsort(-np.abs(lam), axis=-1, kind="stable"), axis=-1)
            tr_sq = torch.cat([p[2] for p in parts]).cpu().numpy()
        return KernelSpectra(sv=S, eig=lam, fro2=(S**2).sum(axis=-1), tr_sq=tr_sq, d=d)

    def singular_values(self) -> np.ndarray:
        """(B, r) singular values, descending (the d - r others are exactly zero)."""
        return self.spectra(eigenvalues=False).sv

    def __repr__(self) -> str:
        return f"<FactoredKernels B={len(self)} d={self.d} r={self.r} shared Y={self.Y.shape[0]}>"


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
