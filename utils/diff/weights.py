"""Per-weight diff of two models, streamed: memory for two pairs of matrices (and their differences) at a
time, one per worker thread.

For each matched pair ``W_a``, ``W_b`` (float64), ``dW = W_b - W_a``:

* ``rel_change = ||dW||_F / ||W_a||_F``; ``spectral_change = ||dW||_2 / ||W_a||_2``;
* the spectrum of ``dW`` (its top singular values are kept), its effective rank (Roy-Vetterli), stable
  rank and numerical ``rank`` (singular values above ``rank_rtol * sigma_max(dW)``; 0 for no change);
* principal angles between the top-``k`` singular subspaces of ``W_a`` and ``W_b`` on the short side (from
  the eigenvectors of its Gram): the input-side (right) singular vectors of a square or tall matrix
  (out >= in), the output-side (left) ones of a wide matrix: ``angle_max`` (degrees) and ``overlap`` =
  mean cos^2 (1: same subspace) beside ``overlap_null`` = k / n, its expectation for unrelated random
  subspaces. Identical matrices give exactly 0 and 1.

:func:`changed_layers` ranks the layers by ``||dW||_F^2 / ||W_a||_F^2`` summed over their matrices.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import torch

from ..progress import progress_bar
from ..spectral import effective_rank, gram_svd, gram_svdvals, limited_threads, stable_rank
from .match import match_models

RANK_RTOL = 1e-3


def _angles(Va: torch.Tensor, Vb: torch.Tensor) -> np.ndarray:
    c = torch.linalg.svdvals(Va.mT @ Vb).clamp(0, 1).cpu().numpy()
    return np.sort(np.arccos(c))


def principal_angles(Wa, Wb, k: int) -> np.ndarray:
    """Principal angles (radians, ascending) between the top-k singular subspaces of two same-shape matrices."""
    return _angles(gram_svd(Wa, k)[1], gram_svd(Wb, k)[1])  # the Gram converts to float64 block by block


#: the per-matrix arrays of a diff row (``keep`` values each), kept out of the CSV and saved for the explorer
ARRAY_COLUMNS = ("sv_diff", "sv_a", "sv_b", "angles")


def weight_diff(Wa, Wb, top_k: int = 16, keep: int = 32, rank_rtol: float = RANK_RTOL) -> dict:
    """The diff columns of one pair (module docstring) plus the arrays :data:`ARRAY_COLUMNS`: the ``keep``
    largest singular values of dW, of W_a and of W_b, and the principal angles (degrees, ascending).

    Each of ``Wa``, ``Wb`` and ``dW`` is reduced to its Gram once: one ``eigh`` gives a matrix's spectrum
    and its top-k singular subspace together.
    """
    Wa, Wb = torch.as_tensor(Wa).to(torch.float64), torch.as_tensor(Wb).to(torch.float64)
    dW = Wb - Wa
    same = not bool(dW.any())
    k = max(1, min(top_k, min(Wa.shape)))
    Sa, Va = gram_svd(Wa, k)
    S = np.zeros_like(Sa) if same else gram_svdvals(dW)
    Sb, Vb = (Sa, Va) if same else gram_svd(Wb, k)
    ang = np.zeros(k) if same else _angles(Va, Vb)
    fa = float(np.sqrt((Sa**2).sum()))
    return {
        "rel_change": float(np.sqrt((S**2).sum()) / fa) if fa > 0 else float("nan"),
        "spectral_change": float(S[0] / Sa[0]) if Sa[0] > 0 else float("nan"),
        "diff_eff_rank": float(effective_rank(S)),
        "diff_stable_rank": stable_rank(S),
        "rank": int((S > rank_rtol * S[0]).sum()) if S[0] > 0 else 0,
        "eff_rank_a": float(effective_rank(Sa)),
        "eff_rank_b": float(effective_rank(Sb)),
        "angle_max": float(np.degrees(ang.max())),
        "overlap": float(np.mean(np.cos(ang) ** 2)),
        "overlap_null": k / min(Wa.shape),
        "sv_diff": S[:keep],
        "sv_a": Sa[:keep],
        "sv_b": Sb[:keep],
        "angles": np.degrees(ang),
    }


def diff_sweep(a, b, top_k: int = 16, rank_rtol: float = RANK_RTOL, progress: bool = True) -> pd.DataFrame:
    """One row per matched matrix of two WeightSources (refuses mismatched or incomplete models first)."""
    pairs = match_models(a, b)

    def work(pair):
        ra, rb = pair
        d = weight_diff(a.load(ra, dtype=None), b.load(rb, dtype=None), top_k, rank_rtol=rank_rtol)
        return {
            "layer_idx": ra.layer,
            "weight_type": ra.weight_type,
            "expert": ra.expert,
            "shape": f"{ra.shape[0]}x{ra.shape[1]}",
            **d,
        }

    bar = progress_bar(total=len(pairs), desc="weight diff", unit="matrix", disable=not progress)
    rows = []
    with limited_threads(1), ThreadPoolExecutor(2) as ex:  # two pairs at a time, one BLAS thread each
        for r in ex.map(work, pairs):
            rows.append(r)
            bar.update(1)
    bar.close()
    return pd.DataFrame(rows)


def changed_layers(df: pd.DataFrame, n: int | None = None) -> pd.DataFrame:
    """Layers ranked by their summed squared relative change, with the matrix that changed most in each."""
    d = df[df.layer_idx >= 0].assign(rel2=lambda x: x.rel_change**2)
    g = d.groupby("layer_idx")
    out = pd.DataFrame(
        {
            "rel_change (layer)": np.sqrt(g.rel2.sum() / g.rel2.count()),
            "most changed": g.apply(lambda x: x.loc[x.rel_change.idxmax(), "weight_type"], include_groups=False),
            "its rel_change": g.rel_change.max(),
            "max rank of dW": g["rank"].max(),
        }
    ).sort_values("rel_change (layer)", ascending=False, kind="stable")
    return out.reset_index() if n is None else out.head(n).reset_index()
