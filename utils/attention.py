"""Exact per-head spectra of the attention kernels QK and OV, computed in d_head x d_head space.

For query head ``i`` of a layer with ``h`` query heads, ``n_kv`` key/value heads and head width
``r = d_head`` (grouped-query attention: head ``i`` reads KV head ``g = i // (h // n_kv)``)::

    QK kernel  A_i = W_Q_i^T W_K_g      (d, d)   x^T A_i y is the pre-softmax score (no RoPE)
    OV circuit B_i = W_O_i   W_V_g      (d, d)   what head i writes for the value it reads

with ``W_Q_i = W_q[i*r:(i+1)*r, :]`` (r, d), ``W_K_g = W_k[g*r:(g+1)*r, :]`` (r, d),
``W_V_g = W_v[g*r:(g+1)*r, :]`` (r, d) and ``W_O_i = W_o[:, i*r:(i+1)*r]`` (d, r), all in
``nn.Linear`` convention (out_features, in_features).

Both kernels are a product ``X Y`` of a thin ``X`` (d, r) and a flat ``Y`` (r, d), so rank <= r.
Everything is computed from r x r matrices, in float64, batched over heads:

* singular values: thin QR ``X = Q1 R1`` and ``Y^T = Q2 R2`` give ``X Y = Q1 (R1 R2^T) Q2^T``
  with orthonormal ``Q1, Q2``, so ``svd(X Y) = svd(R1 R2^T)`` (r x r), plus d - r exact zeros;
* eigenvalues: the non-zero eigenvalues of ``X Y`` (d x d) are those of ``Y X`` (r x r); the
  remaining d - r eigenvalues are exactly zero. Only these r are reported;
* ``||X Y||_F^2 = sum sigma^2`` and ``tr((X Y)^2) = tr((Y X)^2)`` give the asymmetry
  ``||A - A^T||_F / ||A||_F = sqrt(2 - 2 tr(A^2)/||A||_F^2)`` and the symmetry score
  ``||sym(A)||_F^2 / ||A||_F^2 = (1 + tr(A^2)/||A||_F^2) / 2`` without any d x d matrix.

The dense d x d computation (the research seed's approach) is kept in :func:`dense_kernel_oracle`,
for tests only. Rotary position embeddings act between W_Q and W_K at run time and are not part of A.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import torch

from .spectral import effective_rank

ENERGY_MILESTONES = (0.50, 0.75, 0.90, 0.95, 0.99)
PERCENTILES = (0, 5, 10, 25, 50, 75, 90, 95, 100)
#: an eigenvalue counts as complex when |Im| > COMPLEX_RTOL * max|lambda| of its head. LAPACK returns
#: real eigenvalues of a real matrix with an imaginary part of exactly 0, so any tiny tolerance works.
COMPLEX_RTOL = 1e-10
CIRCUITS = ("qk", "ov")


# ---------------------------------------------------------------------------------------
# head bookkeeping
# ---------------------------------------------------------------------------------------
def kv_head_index(n_heads: int, n_kv: int) -> np.ndarray:
    """KV head read by each query head: ``i // (n_heads // n_kv)``, shape ``(n_heads,)``."""
    if n_heads <= 0 or n_kv <= 0 or n_heads % n_kv:
        raise ValueError(f"n_heads={n_heads} must be a positive multiple of n_kv={n_kv} "
                         "(grouped-query attention shares each KV head among n_heads // n_kv query heads)")
    return np.arange(n_heads) // (n_heads // n_kv)


def _check_shape(W: torch.Tensor, shape: tuple[int, int], role: str) -> None:
    if tuple(W.shape) != tuple(shape):
        raise ValueError(f"W_{role} has shape {tuple(W.shape)}, expected {tuple(shape)} "
                         "(nn.Linear convention (out_features, in_features)); check n_heads, n_kv and d_head")


def _as_f64(W, device=None) -> torch.Tensor:
    if isinstance(W, np.ndarray):
        W = torch.from_numpy(np.ascontiguousarray(W))
    W = W.detach()
    if device is not None:
        W = W.to(device)
    return W.to(torch.float64)


def qk_factors(W_q, W_k, n_heads: int, n_kv: int, d_head: int, device=None):
    """Thin factors of the QK kernels: ``X`` (h, d, r) = W_Q_i^T, ``Y`` (n_kv, r, d) = W_K_g.

    Returns ``(X, Y, kv_idx)``; the kernel of head i is ``X[i] @ Y[kv_idx[i]]``.
    """
    W_q, W_k = _as_f64(W_q, device), _as_f64(W_k, device)
    d = W_q.shape[-1]
    _check_shape(W_q, (n_heads * d_head, d), "Q")
    _check_shape(W_k, (n_kv * d_head, d), "K")
    kv = kv_head_index(n_heads, n_kv)
    return W_q.reshape(n_heads, d_head, d).mT, W_k.reshape(n_kv, d_head, d), kv


def ov_factors(W_v, W_o, n_heads: int, n_kv: int, d_head: int, device=None):
    """Thin factors of the OV circuits: ``X`` (h, d, r) = W_O_i, ``Y`` (n_kv, r, d) = W_V_g."""
    W_v, W_o = _as_f64(W_v, device), _as_f64(W_o, device)
    d = W_v.shape[-1]
    _check_shape(W_v, (n_kv * d_head, d), "V")
    _check_shape(W_o, (d, n_heads * d_head), "O")
    kv = kv_head_index(n_heads, n_kv)
    return W_o.reshape(d, n_heads, d_head).permute(1, 0, 2), W_v.reshape(n_kv, d_head, d), kv


# ---------------------------------------------------------------------------------------
# the exact factored spectra
# ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def _small_lapack_threads(device: torch.device) -> Iterator[None]:
    """One BLAS / LAPACK thread for the batched per-head problems on the CPU.

    Multi-threaded MKL on 128 x 128 eigenproblems was 5-100x *slower* than one thread on the
    2-core, shared development machine (thread start-up and oversubscription), and the batched
    thin QRs were 3x slower, so each LAPACK call runs single-threaded and the heads are split over
    worker threads instead (see ``_factored``). The previous thread count is restored afterwards.
    """
    if device.type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@dataclass
class KernelSpectra:
    """Exact spectra of a batch of low-rank kernels ``A = X Y`` (d x d, rank <= r).

    sv:    (..., r) float64, singular values, descending (the d - r others are exactly 0)
    eig:   (..., r) complex128, the non-zero eigenvalues (up to r), sorted by |lambda| descending
    fro2:  (...,) ||A||_F^2
    tr_sq: (...,) tr(A @ A) (real)
    d:     the kernel's side length
    """
    sv: np.ndarray
    eig: np.ndarray
    fro2: np.ndarray
    tr_sq: np.ndarray
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
        """||A - A^T||_F / ||A||_F = 2 sqrt(1 - symmetry), in [0, 2] (the seed's asymmetry).

        From traces, so a kernel within ~1e-8 of symmetric reads as ~1e-8 (rounding in 1 - symmetry);
        anything above that is accurate to ~1e-15 relative.
        """
        return 2.0 * np.sqrt(1.0 - self.symmetry)

    def complex_mask(self, rtol: float = COMPLEX_RTOL) -> np.ndarray:
        """(..., r) bool: eigenvalue has |Im| > rtol * max|lambda| of its kernel."""
        scale = np.abs(self.eig).max(axis=-1, keepdims=True)
        return np.abs(self.eig.imag) > rtol * scale

    def metrics(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Per-kernel scalar summaries, each shaped like the batch (...)."""
        cm = self.complex_mask()
        mag = np.abs(self.eig)
        return {
            f"{prefix}eff_rank": effective_rank(self.sv),
            f"{prefix}op_norm": self.op_norm,
            f"{prefix}fro_norm": np.sqrt(self.fro2),
            f"{prefix}asymmetry": self.asymmetry,
            f"{prefix}symmetry": self.symmetry,
            f"{prefix}n_complex": cm.sum(axis=-1),
            f"{prefix}complex_frac": cm.mean(axis=-1),
            f"{prefix}spectral_radius": mag[..., 0],
            f"{prefix}eig_eff_rank": effective_rank(mag),
            f"{prefix}n99_sv": _energy_count(self.sv ** 2, 0.99),
        }


def _energy_count(energy: np.ndarray, level: float) -> np.ndarray:
    """Smallest k with sum of the k largest entries >= level * total, along the last axis."""
    tot = energy.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        cum = np.cumsum(energy, axis=-1) / np.where(tot > 0, tot, 1.0)
    return (cum < level - 1e-12).sum(axis=-1) + 1


def _grouped_products(Y: torch.Tensor, X: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(B, r, r) ``Y[idx[i]] @ X[i]``, one GEMM per shared Y (a GQA group) instead of B small ones.

    For the heads ``i`` reading the same ``Y[g]``, ``[X_i ...]`` side by side is a (d, n_g * r) view of
    the weight matrix when the heads are contiguous (always, for GQA), so no copy of X is made.
    """
    B, d, r = X.shape
    M = torch.empty(B, r, r, dtype=X.dtype, device=X.device)
    idx_cpu = idx.cpu().numpy()
    for g in np.unique(idx_cpu):
        heads = np.flatnonzero(idx_cpu == g)
        contiguous = heads[-1] - heads[0] + 1 == len(heads)
        Xg = X[heads[0]:heads[-1] + 1] if contiguous else X[torch.as_tensor(heads, device=X.device)]
        P = Y[int(g)] @ Xg.permute(1, 0, 2).reshape(d, len(heads) * r)        # (r, n_g * r)
        M[torch.as_tensor(heads, device=X.device)] = P.reshape(r, len(heads), r).permute(1, 0, 2)
    return M


def _head_chunk(X, Y, R2, idx, eigenvalues: bool):
    """Per-head work for a contiguous chunk of heads: singular values, and eigenvalues and tr(A^2)."""
    # mode "r" never forms Q; for d < r, R is (d, r) and the product is still exact
    R1 = torch.linalg.qr(X, mode="r")[1]                     # (b, k, r), k = min(d, r)
    S = torch.linalg.svdvals(R1 @ R2[idx].mT)                # (b, k): svd(X Y) = svd(R1 R2^T)
    if not eigenvalues:
        return S, None, None
    M = _grouped_products(Y, X, idx)                         # (b, r, r): non-zero eig(X Y) = eig(Y X)
    return S, torch.linalg.eigvals(M), (M * M.mT).sum(dim=(-2, -1))


def _workers(device: torch.device, B: int) -> int:
    """Threads to split the heads over: one per intra-op thread on the CPU (each runs single-threaded)."""
    return max(1, min(B, torch.get_num_threads())) if device.type == "cpu" else 1


def _factored(X: torch.Tensor, Y: torch.Tensor, y_index, eigenvalues: bool = True):
    """Validate, decompose the shared Y once, then the heads in parallel chunks. Returns numpy arrays."""
    if X.ndim != 3 or Y.ndim != 3 or X.shape[-2] != Y.shape[-1] or X.shape[-1] != Y.shape[-2]:
        raise ValueError(f"need X (B, d, r) and Y (G, r, d); got {tuple(X.shape)} and {tuple(Y.shape)}")
    B, d, r = X.shape
    idx = torch.arange(B) if y_index is None else torch.as_tensor(np.asarray(y_index), dtype=torch.long)
    if idx.shape != (B,) or int(idx.max()) >= Y.shape[0] or int(idx.min()) < 0:
        raise ValueError(f"y_index must be (B,)={B} indices into the {Y.shape[0]} Y factors")
    X, Y = X.to(torch.float64), Y.to(torch.float64)
    idx = idx.to(X.device)
    n_work = _workers(X.device, B)
    bounds = np.linspace(0, B, n_work + 1).astype(int)
    with _small_lapack_threads(X.device):
        R2 = torch.linalg.qr(Y.mT, mode="r")[1]              # (G, k, r), once per KV head
        jobs = [(X[a:b], Y, R2, idx[a:b], eigenvalues) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        if len(jobs) == 1:
            parts = [_head_chunk(*jobs[0])]
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(len(jobs)) as ex:      # LAPACK releases the GIL
                parts = list(ex.map(lambda j: _head_chunk(*j), jobs))
    S = torch.cat([p[0] for p in parts]).cpu().numpy()
    if S.shape[-1] < r:  # d < r: pad with the exact zeros
        S = np.concatenate([S, np.zeros(S.shape[:-1] + (r - S.shape[-1],))], axis=-1)
    if not np.isfinite(S).all():
        raise ValueError("attention weights contain NaN or Inf: check the checkpoint")
    if not eigenvalues:
        return S, None, None
    lam = torch.cat([p[1] for p in parts]).cpu().numpy()
    order = np.argsort(-np.abs(lam), axis=-1, kind="stable")
    tr_sq = torch.cat([p[2] for p in parts]).cpu().numpy()
    return S, np.take_along_axis(lam, order, axis=-1), tr_sq


def lowrank_kernel_spectra(X: torch.Tensor, Y: torch.Tensor, y_index=None) -> KernelSpectra:
    """Exact spectra of ``A_i = X[i] @ Y[y_index[i]]`` for a batch of thin factors.

    X: (B, d, r); Y: (G, r, d); y_index: (B,) ints into Y (default ``arange(B)``, which needs
    G == B). Computed in float64 on the factors' device; shared factors (GQA) are decomposed once.
    """
    S, lam, tr_sq = _factored(X, Y, y_index)
    return KernelSpectra(sv=S, eig=lam, fro2=(S ** 2).sum(axis=-1), tr_sq=tr_sq, d=X.shape[-2])


def qk_spectra(W_q, W_k, n_heads: int, n_kv: int, d_head: int, device=None) -> KernelSpectra:
    """Exact spectra of the h QK kernels ``W_Q_i^T W_K_{i // (h / n_kv)}`` of one layer, batch (h,)."""
    X, Y, kv = qk_factors(W_q, W_k, n_heads, n_kv, d_head, device)
    return lowrank_kernel_spectra(X, Y, kv)


def ov_spectra(W_v, W_o, n_heads: int, n_kv: int, d_head: int, device=None) -> KernelSpectra:
    """Exact spectra of the h OV circuits ``W_O_i W_V_{i // (h / n_kv)}`` of one layer, batch (h,)."""
    X, Y, kv = ov_factors(W_v, W_o, n_heads, n_kv, d_head, device)
    return lowrank_kernel_spectra(X, Y, kv)


# ---------------------------------------------------------------------------------------
# TEST ORACLE: the seed's dense d x d computation (slow; used by tests only)
# ---------------------------------------------------------------------------------------
def dense_kernel_oracle(X_i, Y_i, dtype: torch.dtype = torch.float64) -> dict:
    """TEST ORACLE ONLY. Build the dense d x d kernel ``A = X_i @ Y_i`` and decompose it directly.

    X_i: (d, r); Y_i: (r, d). Returns numpy: ``A``, ``sv`` (d,) descending, ``eig`` (d,) complex
    sorted by |lambda| descending (including the d - r numerical-noise eigenvalues), ``asymmetry`` =
    ||A - A^T||_F/||A||_F, ``symmetry`` = ||sym A||_F^2/||A||_F^2. Costs O(d^3). ``dtype=float32``
    reproduces the research seed (which decomposed ``.float()`` weights).
    """
    A = (_as_f64(X_i) @ _as_f64(Y_i)).to(dtype)
    with _small_lapack_threads(A.device):  # multi-threaded dense eig is pathological on a busy machine
        sv = torch.linalg.svdvals(A).double().numpy()
        lam = torch.linalg.eigvals(A).to(torch.complex128).numpy()
    lam = lam[np.argsort(-np.abs(lam), kind="stable")]
    A = A.double()
    fro = torch.linalg.matrix_norm(A).item()
    asym = torch.linalg.matrix_norm(A - A.T).item() / fro
    sym = torch.linalg.matrix_norm(0.5 * (A + A.T)).item() ** 2 / fro ** 2
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
        dist = np.where(used, np.inf, np.abs(b - a[j]))
        k = int(np.argmin(dist))
        used[k] = True
        out[j] = b[k]
    return out


# ---------------------------------------------------------------------------------------
# one head, in the seed's report format
# ---------------------------------------------------------------------------------------
def head_eigen_report(eig: np.ndarray, d: int, rtol: float = COMPLEX_RTOL) -> dict:
    """Summaries of one head's r non-zero eigenvalues (sorted by |lambda| descending).

    Returns a dict with ``top`` (rows index, real, imag, magnitude), ``percentiles``
    ({p: |lambda| at percentile p of the non-zero magnitudes}), ``plane`` (real / imaginary
    ranges, counts of complex, real, positive-real, negative-real eigenvalues), ``milestones``
    ({level: components needed for that share of sum |lambda|^2}) and ``cum_energy`` (r,).
    ``d`` is the kernel's side: the d - r eigenvalues not listed are exactly zero.
    """
    eig = np.asarray(eig)
    mag = np.abs(eig)
    cm = np.abs(eig.imag) > rtol * (mag.max() if mag.size else 0.0)
    nonzero = mag[mag > 0]
    e = mag ** 2
    cum = np.cumsum(e) / e.sum() if e.sum() > 0 else np.zeros_like(e)
    return {
        "top": [(i, float(z.real), float(z.imag), float(abs(z))) for i, z in enumerate(eig[:20])],
        "percentiles": {p: float(v) for p, v in zip(PERCENTILES, np.percentile(nonzero, PERCENTILES))}
        if nonzero.size else {},
        "plane": {
            "real_min": float(eig.real.min()), "real_max": float(eig.real.max()),
            "imag_min": float(eig.imag.min()), "imag_max": float(eig.imag.max()),
            "n_complex": int(cm.sum()), "n_real": int((~cm).sum()),
            "n_conjugate_pairs": int(cm.sum() // 2),
            "n_positive_real": int((eig.real > 0).sum()), "n_negative_real": int((eig.real < 0).sum()),
            "n_nonzero": int(nonzero.size), "n_exact_zero": int(d - nonzero.size),
        },
        "milestones": {lv: int(_energy_count(e, lv)) for lv in ENERGY_MILESTONES},
        "cum_energy": cum,
        # share of sum |lambda|^2 in the top d_head of all d eigenvalues: the other d - r are exactly
        # zero, so this is 1 by construction (the seed's dense eig reported < 1 from rounding noise)
        "top_d_head_energy": 1.0 if e.sum() > 0 else float("nan"),
    }


# ---------------------------------------------------------------------------------------
# every layer and head of a model
# ---------------------------------------------------------------------------------------
def _dims(src):
    D = src.dims
    return D.L, D.d, D.h, D.n_kv, D.d_head


def layer_attention_spectra(src, layer: int, circuits: Iterable[str] = CIRCUITS, device=None
                            ) -> dict[str, KernelSpectra]:
    """Exact spectra of every head of one layer of a WeightSource: ``{"qk": ..., "ov": ...}``, batch (h,)."""
    L, d, h, n_kv, r = _dims(src)
    out = {}
    for c in circuits:
        if c == "qk":
            out[c] = qk_spectra(src.layer_weight(layer, "q", dtype=None), src.layer_weight(layer, "k", dtype=None),
                                h, n_kv, r, device)
        elif c == "ov":
            out[c] = ov_spectra(src.layer_weight(layer, "v", dtype=None), src.layer_weight(layer, "o", dtype=None),
                                h, n_kv, r, device)
        else:
            raise ValueError(f"unknown circuit {c!r}: use 'qk' and/or 'ov'")
    return out


@dataclass
class AttentionSweep:
    """Spectra of every layer and head: arrays (L, h, r) per circuit, plus the model's dims.

    ``L`` is the number of layers swept and ``layers`` their indices in the model (row j of every
    array is model layer ``layers[j]``).
    """
    L: int
    d: int
    h: int
    n_kv: int
    d_head: int
    layers: list = field(default_factory=list)
    sv: dict[str, np.ndarray] = field(default_factory=dict)       # circuit -> (L, h, r) float64
    eig: dict[str, np.ndarray] = field(default_factory=dict)      # circuit -> (L, h, r) complex128
    fro2: dict[str, np.ndarray] = field(default_factory=dict)     # circuit -> (L, h)
    tr_sq: dict[str, np.ndarray] = field(default_factory=dict)    # circuit -> (L, h)

    def spectra(self, circuit: str) -> KernelSpectra:
        return KernelSpectra(self.sv[circuit], self.eig[circuit], self.fro2[circuit], self.tr_sq[circuit], self.d)

    def eff_rank(self, circuit: str = "qk") -> np.ndarray:
        """(L, h) effective rank (Roy-Vetterli, singular values) of each head's kernel."""
        return effective_rank(self.sv[circuit])

    def to_frame(self):
        """One row per (layer, head): ``layer, head, kv_head, eff_rank, op_norm, ...`` and ``ov_*`` columns."""
        import pandas as pd

        L, h = self.L, self.h
        layer_ids = np.asarray(self.layers if len(self.layers) == L else range(L))
        cols = {"layer": np.repeat(layer_ids, h), "head": np.tile(np.arange(h), L),
                "kv_head": np.tile(kv_head_index(h, self.n_kv), L)}
        for c in self.sv:
            pre = "" if c == "qk" else f"{c}_"
            for k, v in self.spectra(c).metrics(pre).items():
                cols[k] = np.asarray(v).reshape(-1)
        return pd.DataFrame(cols)


def sweep_attention(src, circuits: Iterable[str] = CIRCUITS, layers: Iterable[int] | None = None,
                    device=None, progress: bool = True) -> AttentionSweep:
    """Exact QK / OV spectra of every head of every layer, streaming one layer's weights at a time.

    src: a WeightSource (``utils.models.open_weights``) or anything with ``.dims`` (L, d, h, n_kv,
    d_head) and ``.layer_weight(layer, role, dtype)``. ``layers`` defaults to all; the arrays are
    then indexed by position in ``layers``. ``device``: where to decompose (default: the CPU).
    """
    L, d, h, n_kv, r = _dims(src)
    circuits = tuple(circuits)
    layers = list(range(L)) if layers is None else [int(i) for i in layers]
    bad = [i for i in layers if not -L <= i < L]
    if bad:
        raise IndexError(f"layer indices {bad} are out of range: the model has L={L} layers "
                         f"(valid 0..{L - 1}, or negative from the end)")
    layers = [i % L for i in layers]
    n = len(layers)
    sw = AttentionSweep(L=n, d=d, h=h, n_kv=n_kv, d_head=r, layers=layers)
    for c in circuits:
        sw.sv[c] = np.zeros((n, h, r))
        sw.eig[c] = np.zeros((n, h, r), complex)
        sw.fro2[c] = np.zeros((n, h))
        sw.tr_sq[c] = np.zeros((n, h))
    it = layers
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(layers, desc="attention spectra", unit="layer")
    for j, li in enumerate(it):
        res = layer_attention_spectra(src, li, circuits, device)
        for c, ks in res.items():
            sw.sv[c][j], sw.eig[c][j], sw.fro2[c][j], sw.tr_sq[c][j] = ks.sv, ks.eig, ks.fro2, ks.tr_sq
    return sw


def qk_singular_values(src) -> np.ndarray:
    """(L, h, d_head) float64: exact singular values of every head's QK kernel, descending per head.

    Uses the factored QR method of :func:`lowrank_kernel_spectra` on every layer of a WeightSource.
    """
    L, d, h, n_kv, r = _dims(src)
    out = np.zeros((L, h, r))
    for li in range(L):
        X, Y, kv = qk_factors(src.layer_weight(li, "q", dtype=None), src.layer_weight(li, "k", dtype=None),
                              h, n_kv, r)
        out[li] = _factored(X, Y, kv, eigenvalues=False)[0]
    return out


def quartile_labels(values: np.ndarray) -> np.ndarray:
    """'LOW-RANK' at or below the 25th percentile, 'HIGH-RANK' at or above the 75th, else 'MID'."""
    v = np.asarray(values, dtype=float)
    lo, hi = np.percentile(v, 25), np.percentile(v, 75)
    return np.where(v <= lo, "LOW-RANK", np.where(v >= hi, "HIGH-RANK", "MID"))


def summarize_heads(values: np.ndarray, axis: int) -> dict[str, np.ndarray]:
    """mean / std / min / max of an (L, h) array over ``axis`` (0: per head, 1: per layer)."""
    v = np.asarray(values, dtype=float)
    return {"mean": v.mean(axis), "std": v.std(axis), "min": v.min(axis), "max": v.max(axis)}


class RandomAttentionWeights:
    """A stand-in WeightSource with random Gaussian attention weights (for benchmarks and tests).

    ``dims`` has L, d, h, n_kv, d_head (plus d_ff, V = 0); ``layer_weight(layer, role, dtype)`` returns
    roles q, k, v, o in nn.Linear convention, std ``1/sqrt(d)``. ``distinct_layers`` layers are drawn
    once and reused cyclically, so a 36-layer model needs the memory of a few layers only.
    """

    family = "llama"

    def __init__(self, L: int, d: int, h: int, n_kv: int, d_head: int, seed: int = 0,
                 distinct_layers: int | None = None, dtype: torch.dtype = torch.float32):
        from types import SimpleNamespace

        self.dims = SimpleNamespace(L=L, d=d, d_ff=0, h=h, n_kv=n_kv, d_head=d_head, V=0)
        self.name = f"random(L={L}, d={d}, h={h}, n_kv={n_kv}, d_head={d_head})"
        g = torch.Generator().manual_seed(seed)
        shapes = {"q": (h * d_head, d), "k": (n_kv * d_head, d), "v": (n_kv * d_head, d), "o": (d, h * d_head)}
        n = L if distinct_layers is None else max(1, min(L, distinct_layers))
        self._layers = [{r: torch.randn(s, generator=g, dtype=dtype) / d ** 0.5 for r, s in shapes.items()}
                        for _ in range(n)]

    def layer_weight(self, layer: int, role: str, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        L = self.dims.L
        if not -L <= layer < L:
            raise IndexError(f"layer index {layer} is out of range: {self.name} has L={L} layers")
        W = self._layers[(layer % L) % len(self._layers)][role]
        return W if dtype is None else W.to(dtype)
