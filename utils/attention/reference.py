"""The dense d x d reference for the factored attention spectra (slow: O(d^3) per head).

:func:`dense_kernel_spectra` builds one kernel ``A = X Y`` as a dense matrix and decomposes it
directly, as the research seed did. The notebook uses it, on one head, to show what a dense float32
eigendecomposition reports next to the exact factored computation (:func:`dense_vs_exact`); the
tests use it in float64 as an independent check of :class:`~utils.spectral.FactoredKernels`.
"""

from __future__ import annotations

import numpy as np
import torch

from ..spectral import limited_threads
from ..spectral.factored import as_f64

SEED_COMPLEX_ATOL = 1e-6  # the research seed's absolute rule for "complex" eigenvalues


def dense_kernel_spectra(X_i, Y_i, dtype: torch.dtype = torch.float64) -> dict:
    """Decompose the dense kernel ``A = X_i @ Y_i`` (X_i (d, r), Y_i (r, d)) in ``dtype``.

    Returns numpy ``A``, ``sv`` (d,) descending, ``eig`` (d,) complex sorted by |lambda| descending
    (including the d - r rounding-noise eigenvalues), ``asymmetry`` = ||A - A^T||_F/||A||_F and
    ``symmetry`` = ||sym A||_F^2/||A||_F^2. ``dtype=torch.float32`` reproduces the research seed.
    """
    A = (as_f64(X_i) @ as_f64(Y_i)).to(dtype)
    with limited_threads(1):  # multi-threaded dense eig is pathological on a busy machine
        sv = torch.linalg.svdvals(A).double().numpy()
        lam = torch.linalg.eigvals(A).to(torch.complex128).numpy()
    lam = lam[np.argsort(-np.abs(lam), kind="stable")]
    A = A.double()
    fro = torch.linalg.matrix_norm(A).item()
    asym = torch.linalg.matrix_norm(A - A.T).item() / fro
    sym = torch.linalg.matrix_norm(0.5 * (A + A.T)).item() ** 2 / fro**2
    return {"A": A.numpy(), "sv": sv, "eig": lam, "asymmetry": asym, "symmetry": sym}


def match_eigenvalues(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Greedy multiset matching: for each ``a[j]`` (largest |a| first) the nearest unused ``b``.

    Returns ``b`` reordered to line up with ``a`` (len(b) >= len(a)). For comparing eigenvalue
    multisets whose order is ambiguous (conjugate pairs, equal magnitudes).
    """
    a, b = np.asarray(a), np.asarray(b)
    used = np.zeros(len(b), bool)
    out = np.empty(len(a), dtype=np.result_type(a, b))
    for j in np.argsort(-np.abs(a), kind="stable"):
        k = int(np.argmin(np.where(used, np.inf, np.abs(b - a[j]))))
        used[k] = True
        out[j] = b[k]
    return out


def dense_vs_exact(kernels, head: int, n_complex_exact: int) -> list[list[str]]:
    """Rows comparing the seed's dense float32 decomposition of one head with the exact one.

    ``kernels``: the layer's :class:`~utils.spectral.FactoredKernels`; ``n_complex_exact``: the
    exact count of complex eigenvalues among the d_head non-zero ones.
    """
    k = kernels[head]
    d, r = k.d, k.r
    dense = dense_kernel_spectra(k.X[0], k.Y[int(k.index[0])], dtype=torch.float32)
    mag = np.abs(dense["eig"])
    noise = f"{mag[r:].max() / mag[0]:.2e}" if d > r else "-"
    return [
        ["eigenvalues returned", f"{d}", f"{r}"],
        [
            "counted complex",
            f"{int((np.abs(dense['eig'].imag) > SEED_COMPLEX_ATOL).sum())} (|Im λ| > 1e-6, the seed's rule)",
            f"{n_complex_exact} (|Im λ| > 1e-10 · |λ|_max)",
        ],
        [f"energy share of the top {r}", f"{100 * (mag[:r] ** 2).sum() / (mag**2).sum():.6f}%", "100% (exact)"],
        [f"largest of the {d - r} 'zero' eigenvalues / |λ|_max", noise, "0 (exact)"],
    ]
