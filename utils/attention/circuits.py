"""Head circuits: Q-, K-, V-composition scores between heads of different layers, and QK directionality.

**Composition** (Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"; the same
definition as TransformerLens' ``all_composition_scores``). With head ``a``'s OV circuit
``B_a = W_O,a W_V,g(a)`` (what it writes) in an earlier layer and head ``b``'s QK kernel
``A_b = W_Q,b^T W_K,g(b)`` and OV circuit ``B_b`` in a later layer (column-vector convention of
:mod:`utils.attention.heads`, grouped-query heads read their own KV head ``g``)::

    Q-composition  ||B_a^T A_b||_F / (||B_a||_F ||A_b||_F)     b's queries read a's output
    K-composition  ||A_b B_a||_F   / (||B_a||_F ||A_b||_F)     b's keys read a's output
    V-composition  ||B_b B_a||_F   / (||B_a||_F ||B_b||_F)     b's values read a's output

**Exact, without a d x d circuit.** Every squared numerator is an inner product of two rank-r Gram
matrices, ``<B_a B_a^T, A_b A_b^T>``, ``<B_a B_a^T, A_b^T A_b>`` and ``<B_a B_a^T, B_b^T B_b>``, and each
Gram is ``Z Z^T`` with a thin ``Z`` (d, r) built from the factors and an r x r triangular factor (for
``A = X Y``: ``A A^T = (X R_Y^T)(X R_Y^T)^T`` with ``Y^T = Q R_Y``; ``A^T A = (Y^T R_X^T)(...)^T`` with
``X = Q R_X``). So ``score^2 = ||Z_a^T Z_b||_F^2 / (||Z_a||_F^2 ||Z_b||_F^2)``: route ``"factor"``
computes the r x r blocks ``Z_a^T Z_b`` in d_head space (``r^2 d`` per pair); route ``"gram"`` streams
row slabs of the Grams ``Z Z^T`` (``d^2 / 2`` per pair, never a whole d x d matrix) and wins when
``r^2 > d / 2`` (d_head 128, d 2048). ``"auto"`` picks the cheaper one. Both are float64 and exact.

**Directionality** (Saponati et al. 2025, "The underlying structures of self-attention: symmetry,
directionality, and emergent dynamics in Transformer training"; code github.com/matteosaponati/
attention-geometry, ``utils/scores.py::directionality_score``): for a QK matrix ``M`` (rows: query
side, columns: key side), with row norms ``r`` and column norms ``c``, thresholds ``mean + 2 std``
(std with ddof=1, as ``torch.std``) and excesses ``E_r = sum (r_i - t_r)`` over rows above their
threshold (``E_c`` likewise), the score is ``(E_c - E_r) / (E_c + E_r)`` (0 when both are 0), in
[-1, 1]: positive when a few key-side directions carry outsized norm. Their code scores the whole layer
(``W_q^T W_k``, all heads); :func:`directionality` scores any batch of factored kernels, so per head and,
with :func:`layer_qk`, per layer. Row / column norms come from ``diag(X (Y Y^T) X^T)`` and
``diag(Y^T (X^T X) Y)``: O(d r^2), no d x d matrix.

**Null.** :func:`composition_scores` of :class:`~utils.spectral.null.PermutedWeights` in mode
``"residual"`` (each layer's residual coordinates permuted): every head keeps its own spectrum, only the
alignment between layers is destroyed. :func:`with_null` adds the null mean and a z-score per pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..progress import progress_bar
from ..spectral import FactoredKernels
from ..spectral.null import zscore
from .heads import layer_kernels

COMPOSITIONS = ("q", "k", "v")
RIGHT_FAMILY = {"q": "qk_rows", "k": "qk_cols", "v": "ov_cols"}


def _r_factor(M: torch.Tensor) -> torch.Tensor:
    """(..., k, r) upper-triangular ``R`` with ``M^T M = R^T R`` for ``M`` (..., d, r)."""
    return torch.linalg.qr(M, mode="r")[1]


def gram_factors(qk: FactoredKernels, ov: FactoredKernels) -> dict[str, torch.Tensor]:
    """Thin factors (h, d, k) of one layer's Grams: ``ov_rows`` (B B^T), ``qk_rows`` (A A^T), ``qk_cols``
    (A^T A), ``ov_cols`` (B^T B), each ``Z`` with Gram ``Z Z^T`` (module docstring)."""
    out = {}
    for name, K in (("qk", qk), ("ov", ov)):
        idx = torch.as_tensor(K.index, device=K.X.device)
        RY = _r_factor(K.Y.mT)[idx]  # (h, k, r): Y Y^T = R^T R
        RX = _r_factor(K.X)  # (h, k, r): X^T X = R^T R
        out[f"{name}_rows"] = K.X @ RY.mT
        out[f"{name}_cols"] = K.Y[idx].mT @ RX.mT
    return out


def _route(H_left: int, H_right: int, d: int, r: int) -> str:
    pairs = H_left * H_right
    return "gram" if pairs * d * d / 2 + 4 * (H_left + H_right) * d * d * r / 2 < pairs * r * r * d else "factor"


def _sq_inner_factor(Zl: torch.Tensor, Zr: torch.Tensor) -> torch.Tensor:
    """(Hl, Hr) ``||Zl_a^T Zr_b||_F^2`` from the r x r blocks (d_head space)."""
    Hl, d, r = Zl.shape
    G = Zl.permute(1, 0, 2).reshape(d, -1).mT @ Zr.permute(1, 0, 2).reshape(d, -1)  # (Hl r, Hr r)
    return (G.reshape(Hl, r, -1, Zr.shape[-1]) ** 2).sum(dim=(1, 3))


def _sq_inner_gram(Zl, Zrs, left_layer, right_layer, rows: int = 64, blocks: int = 4) -> list[torch.Tensor]:
    """``<Zl_a Zl_a^T, Zr_b Zr_b^T>`` for several right families, over upper-triangular row slabs of the
    Grams; only pairs with a writer layer below the reader's block are multiplied (``blocks`` writer blocks)."""
    Hl, d, _ = Zl.shape
    dev, dt = Zl.device, Zl.dtype
    acc = [torch.zeros(Hl, Z.shape[0], dtype=dt, device=dev) for Z in Zrs]
    ll, rl = torch.as_tensor(left_layer, device=dev), torch.as_tensor(right_layer, device=dev)
    bounds = np.unique(np.linspace(0, Hl, blocks + 1).astype(int))
    parts = [(a, b, int(torch.searchsorted(rl, ll[a], right=True))) for a, b in zip(bounds[:-1], bounds[1:])]
    for a0 in range(0, d, rows):
        a1 = min(a0 + rows, d)
        i = torch.arange(a1 - a0, device=dev)[:, None]
        j = torch.arange(d - a0, device=dev)[None, :]
        w = torch.where(j > i, 2.0, torch.where(j == i, 1.0, 0.0)).to(dt)  # symmetric: upper part twice
        Sl = ((Zl[:, a0:a1] @ Zl[:, a0:].mT) * w).reshape(Hl, -1)
        for k, Z in enumerate(Zrs):
            Sr = (Z[:, a0:a1] @ Z[:, a0:].mT).reshape(Z.shape[0], -1)
            for a, b, c in parts:  # reader heads sorted by layer: those from c on can follow writers a..b
                if c < Z.shape[0]:
                    acc[k][a:b, c:] += Sl[a:b] @ Sr[c:].mT
    return acc


@dataclass
class CompositionScores:
    """Scores (H, H) per composition ``q, k, v`` over all ``H = L h`` heads (row: writer a, column: reader
    b; NaN unless layer(a) < layer(b)), with each head's ``layer`` and ``head`` index (length H)."""

    scores: dict[str, np.ndarray]
    layer: np.ndarray
    head: np.ndarray
    h: int
    route: str = ""
    null: dict[str, np.ndarray] = field(default_factory=dict)  # same shape, from a null model

    def valid(self) -> np.ndarray:
        return self.layer[:, None] < self.layer[None, :]

    def pairs(self) -> pd.DataFrame:
        """One row per valid pair: ``layer_a, head_a, layer_b, head_b`` and ``q, k, v`` (and null columns)."""
        ia, ib = np.nonzero(self.valid())
        cols = {"layer_a": self.layer[ia], "head_a": self.head[ia], "layer_b": self.layer[ib], "head_b": self.head[ib]}
        for c, s in self.scores.items():
            cols[c] = s[ia, ib]
            if c in self.null:
                cols[f"{c}_null_mean"] = np.nanmean(self.null[c][self.valid()])
                cols[f"{c}_z"] = zscore(s[ia, ib], self.null[c][self.valid()])
        return pd.DataFrame(cols)

    def layer_matrix(self, comp: str, reduce: str = "max") -> np.ndarray:
        """(L, L) the max (or mean) score over the head pairs of each layer pair (NaN on and below the diagonal)."""
        L = int(self.layer.max()) + 1
        s = self.scores[comp].reshape(L, self.h, L, self.h)
        with np.errstate(all="ignore"):
            return np.nanmax(s, axis=(1, 3)) if reduce == "max" else np.nanmean(s, axis=(1, 3))


def composition_scores(
    src,
    layers=None,
    route: str = "auto",
    device=None,
    progress: bool = True,
    rows: int = 64,
    dtype: torch.dtype = torch.float64,
    kernel: str = "raw",
) -> CompositionScores:
    """Q-, K-, V-composition scores of every pair of heads in different layers of ``src`` (module docstring).

    ``src``: a WeightSource (or anything with ``.dims`` and ``.layer_weight``); ``layers`` defaults to all.
    Memory: four (d, d_head) factors per head. ``route``: ``"auto"``, ``"factor"`` or ``"gram"``;
    ``dtype``: precision of the big products (float64 exact to ~1e-15; float32 ~1e-6, twice as fast);
    ``kernel``: ``raw`` or ``folded`` (:mod:`utils.attention.forms`; multi-head latent attention: the
    content QK kernel, its decoupled rotary part left out).
    """
    D = src.dims
    layers = (
        list(range(D.L))
        if layers is None
        else [src.layer_index(i) if hasattr(src, "layer_index") else i for i in layers]
    )
    fams: dict[str, list] = {k: [] for k in ("ov_rows", "qk_rows", "qk_cols", "ov_cols")}
    for li in progress_bar(layers, desc="head factors", unit="layer", disable=not progress):
        f = gram_factors(layer_kernels(src, li, "qk", device, kernel), layer_kernels(src, li, "ov", device, kernel))
        for k in fams:
            fams[k].append(f[k])
    Z = {k: torch.cat(v) for k, v in fams.items()}
    H, d, r = Z["ov_rows"].shape
    route = _route(H, H, d, r) if route == "auto" else route
    if route not in ("factor", "gram"):
        raise ValueError(f"route must be 'auto', 'factor' or 'gram', got {route!r}")
    norms2 = {k: (v**2).sum(dim=(1, 2)) for k, v in Z.items()}
    Zd = {k: v.to(dtype) for k, v in Z.items()}
    right = [Zd[RIGHT_FAMILY[c]] for c in COMPOSITIONS]
    layer = np.repeat(np.asarray(layers), D.h)
    if route == "gram":
        num2 = _sq_inner_gram(Zd["ov_rows"], right, layer, layer, rows)
    else:
        num2 = [_sq_inner_factor(Zd["ov_rows"], Zr) for Zr in right]
    valid = layer[:, None] < layer[None, :]
    scores = {}
    for c, n2 in zip(COMPOSITIONS, num2):
        den = torch.sqrt(norms2["ov_rows"][:, None] * norms2[RIGHT_FAMILY[c]][None, :])
        s = (n2.double().clamp_min(0).sqrt() / den).cpu().numpy()
        scores[c] = np.where(valid, s, np.nan)
    return CompositionScores(scores, layer, np.tile(np.arange(D.h), len(layers)), D.h, route)


def with_null(cs: CompositionScores, null: CompositionScores) -> CompositionScores:
    """``cs`` with the null model's scores attached (for the null means and z-scores of :meth:`pairs`)."""
    cs.null = null.scores
    return cs


def top_pairs(cs: CompositionScores, n: int = 10) -> pd.DataFrame:
    """The ``n`` strongest pairs of each composition (by score), with the null mean and z-score when known."""
    p = cs.pairs()
    out = []
    for c in COMPOSITIONS:
        t = p.nlargest(n, c)
        keep = ["layer_a", "head_a", "layer_b", "head_b", c] + [k for k in (f"{c}_null_mean", f"{c}_z") if k in p]
        out.append(t[keep].rename(columns={c: "score", f"{c}_null_mean": "null mean", f"{c}_z": "z"}).assign(comp=c))
    return pd.concat(out, ignore_index=True)[
        ["comp", "layer_a", "head_a", "layer_b", "head_b", "score"] + [k for k in ("null mean", "z") if k in out[0]]
    ]


# ----------------------------------------------------------------------------- directionality
def directionality(K: FactoredKernels, num_std: float = 2.0) -> np.ndarray:
    """(B,) directionality score of each kernel ``A = X Y`` (module docstring), without forming A."""
    X, Y = K.X, K.Y[torch.as_tensor(K.index, device=K.Y.device)]
    rows = ((X @ (Y @ Y.mT)) * X).sum(-1).clamp_min(0).sqrt()  # (B, d) ||A[i, :]||
    cols = (Y * ((X.mT @ X) @ Y)).sum(-2).clamp_min(0).sqrt()  # (B, d) ||A[:, j]||

    def excess(v):
        t = v.mean(-1, keepdim=True) + num_std * v.std(-1, keepdim=True)
        return torch.where(v > t, v - t, torch.zeros_like(v)).sum(-1)

    er, ec = excess(rows), excess(cols)
    den = er + ec
    return torch.where(den > 0, (ec - er) / torch.where(den > 0, den, 1), 0).cpu().numpy()


def layer_qk(src, layer: int, device=None, kernel: str = "raw") -> FactoredKernels:
    """The whole layer's QK matrix ``sum_i A_i = W_q^T W_k'`` (``W_k'``: each KV head repeated for its
    query heads) as one factored kernel, the unit the attention-geometry code scores."""
    return layer_kernels(src, layer, "qk", device, kernel).summed()


def directionality_table(src, layers=None, device=None, progress: bool = True, kernel: str = "raw") -> pd.DataFrame:
    """Per head and per layer directionality of the QK kernels: ``layer, head`` (-1 for the whole layer), ``score``.

    Each layer's W_q and W_k are read once: the whole-layer kernel is the sum of the head kernels."""
    D = src.dims
    layers = range(D.L) if layers is None else layers
    rows = []
    for li in progress_bar(list(layers), desc="directionality", unit="layer", disable=not progress):
        K = layer_kernels(src, li, "qk", device, kernel)
        for hd, s in enumerate(directionality(K)):
            rows.append({"layer": li, "head": hd, "directionality": float(s)})
        rows.append({"layer": li, "head": -1, "directionality": float(directionality(K.summed())[0])})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- heads against a null
HEAD_NULL_METRICS = ("eff_rank", "symmetry")


def head_null_table(trained: pd.DataFrame, null: pd.DataFrame, circuits=("qk", "ov")) -> pd.DataFrame:
    """Per circuit and metric: trained and null means, their ratio, and the z-score of each trained head
    against the null heads of its own layer (``AttentionSweep.to_frame()`` of the model and of its
    :class:`~utils.spectral.null.PermutedWeights`): mean |z| and the share of heads with |z| > 3."""
    rows = []
    for c in circuits:
        for m in HEAD_NULL_METRICS:
            col = m if c == "qk" else f"{c}_{m}"
            z = np.concatenate(
                [
                    zscore(g[col].to_numpy(), null.loc[null.layer == li, col].to_numpy())
                    for li, g in trained.groupby("layer")
                ]
            )
            rows.append(
                {
                    "circuit": c.upper(),
                    "metric": m,
                    "trained (mean)": trained[col].mean(),
                    "null (mean)": null[col].mean(),
                    "ratio": trained[col].mean() / null[col].mean(),
                    "mean |z|": np.nanmean(np.abs(z)),
                    "heads with |z| > 3": f"{np.mean(np.abs(z) > 3):.0%}",
                }
            )
    return pd.DataFrame(rows)


def directionality_summary(trained: pd.DataFrame, null: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-head and whole-layer directionality (mean, std, max |score|), beside the same for a null model
    when one is given."""
    rows = []
    models = [("trained", trained)] + ([("null", null)] if null is not None else [])
    for what, sel in (("per head", lambda d: d[d["head"] >= 0]), ("whole layer", lambda d: d[d["head"] < 0])):
        for name, d in models:
            v = sel(d).directionality
            rows.append({"unit": what, "model": name, "mean": v.mean(), "std": v.std(), "max |score|": v.abs().max()})
    return pd.DataFrame(rows)
