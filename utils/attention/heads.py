"""Exact per-head spectra of the attention kernels QK and OV, computed in d_head x d_head space.

For query head ``i`` of a layer with ``h`` query heads, ``n_kv`` key/value heads and head width
``r = d_head`` (grouped-query attention: head ``i`` reads KV head ``g = i // (h // n_kv)``)::

    QK kernel  A_i = W_Q_i^T W_K_g      (d, d)   x^T A_i y is the pre-softmax score (no RoPE)
    OV circuit B_i = W_O_i   W_V_g      (d, d)   what head i writes for the value it reads

with ``W_Q_i = W_q[i*r:(i+1)*r, :]`` (r, d), ``W_K_g = W_k[g*r:(g+1)*r, :]`` (r, d),
``W_V_g = W_v[g*r:(g+1)*r, :]`` (r, d) and ``W_O_i = W_o[:, i*r:(i+1)*r]`` (d, r), all in
``nn.Linear`` convention (out_features, in_features). Both are products of a thin and a flat
factor, held as a :class:`~utils.spectral.FactoredKernels` and decomposed exactly in float64
without a d x d matrix. Rotary position embeddings act between W_Q and W_K at run time and are
not part of A.

One entry point per scale: :func:`layer_kernels` (one layer's heads as a ``FactoredKernels``,
indexable by head) and :func:`sweep_attention` (every layer, streamed, as arrays ``(L, h, r)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from ..device import resolve_device
from ..markdown import md_table
from ..progress import progress_bar
from ..spectral import ENERGY_LEVELS, FactoredKernels, KernelSpectra, complex_mask, effective_rank, energy_count
from ..spectral.factored import as_f64
from .forms import check_kernel, kv_head_index, ov_factors, qk_factors

PERCENTILES = (0, 5, 10, 25, 50, 75, 90, 95, 100)
CIRCUITS = ("qk", "ov")
TITLES = {
    "qk": "QK kernel W_Q,iᵀ W_K,g",
    "ov": "OV circuit W_O,i W_V,g",
    "qk_rope": "decoupled rotary QK kernel (MLA)",
}


def _check_shape(W, shape: tuple[int, int], role: str) -> None:
    if tuple(W.shape) != tuple(shape):
        raise ValueError(
            f"W_{role} has shape {tuple(W.shape)}, expected {tuple(shape)} "
            "(nn.Linear convention (out_features, in_features)); check n_heads, n_kv and d_head"
        )


def qk_kernels(W_q, W_k, n_heads: int, n_kv: int, d_head: int, device=None) -> FactoredKernels:
    """The h QK kernels of one layer from its raw matrices: ``X[i] = W_Q_i^T`` (d, r), ``Y[g] = W_K_g`` (r, d)."""
    W_q, W_k = as_f64(W_q, device), as_f64(W_k, device)
    d = W_q.shape[-1]
    _check_shape(W_q, (n_heads * d_head, d), "Q")
    _check_shape(W_k, (n_kv * d_head, d), "K")
    X = W_q.reshape(n_heads, d_head, d).mT
    return FactoredKernels(X, W_k.reshape(n_kv, d_head, d), kv_head_index(n_heads, n_kv))


def ov_kernels(W_v, W_o, n_heads: int, n_kv: int, d_head: int, device=None) -> FactoredKernels:
    """The h OV circuits of one layer from its raw matrices: ``X[i] = W_O_i`` (d, r), ``Y[g] = W_V_g`` (r, d)."""
    W_v, W_o = as_f64(W_v, device), as_f64(W_o, device)
    d = W_v.shape[-1]
    _check_shape(W_v, (n_kv * d_head, d), "V")
    _check_shape(W_o, (d, n_heads * d_head), "O")
    X = W_o.reshape(d, n_heads, d_head).permute(1, 0, 2)
    return FactoredKernels(X, W_v.reshape(n_kv, d_head, d), kv_head_index(n_heads, n_kv))


def circuits_of(src) -> tuple[str, ...]:
    """The kernels a model's heads have: ``qk``, ``ov`` and, for multi-head latent attention, ``qk_rope``."""
    fam = getattr(src, "fam", None)
    return ("qk", "ov", "qk_rope") if fam is not None and fam.attention.mla else CIRCUITS


def layer_kernels(src, layer: int, circuit: str = "qk", device=None, kernel: str = "raw") -> FactoredKernels:
    """Every head's QK kernel (``circuit="qk"``), OV circuit (``"ov"``) or, for multi-head latent attention,
    decoupled rotary kernel (``"qk_rope"``) of one layer of a WeightSource, in the ``kernel`` convention
    (``raw`` or ``folded``, :mod:`utils.attention.forms`)."""
    dev = None if device is None else resolve_device(device)
    if circuit not in ("qk", "ov", "qk_rope"):
        raise ValueError(f"unknown circuit {circuit!r}: use 'qk', 'ov' or (multi-head latent attention) 'qk_rope'")
    if not hasattr(src, "fam"):  # a bare stand-in with q / k / v / o matrices and dims (raw kernels only)
        check_kernel(kernel)
        if kernel != "raw" or circuit == "qk_rope":
            raise ValueError(f"{circuit} / {kernel} kernels need a WeightSource (utils.weights.open_weights)")
        D = src.dims
        if circuit == "qk":
            return qk_kernels(
                src.layer_weight(layer, "q", dtype=None),
                src.layer_weight(layer, "k", dtype=None),
                D.h,
                D.n_kv,
                D.d_head,
                dev,
            )
        return ov_kernels(
            src.layer_weight(layer, "v", dtype=None),
            src.layer_weight(layer, "o", dtype=None),
            D.h,
            D.n_kv,
            D.d_head,
            dev,
        )
    if circuit == "ov":
        X, Y, idx = ov_factors(src, layer, kernel, dev)
    else:
        X, Y, idx = qk_factors(src, layer, kernel, "content" if circuit == "qk" else "rope", dev)
    return FactoredKernels(X, Y, idx)


@dataclass
class AttentionSweep:
    """Spectra of every layer and head: arrays (L, h, r) per circuit, plus the model's dims.

    ``L`` is the number of layers swept and ``layers`` their indices in the model (row j of every
    array is model layer ``layers[j]``). ``eig`` and ``tr_sq`` are empty when eigenvalues were skipped.
    """

    L: int
    d: int
    h: int
    n_kv: int
    d_head: int
    layers: list = field(default_factory=list)
    kernel: str = "raw"
    sv: dict[str, np.ndarray] = field(default_factory=dict)  # circuit -> (L, h, r) float64
    eig: dict[str, np.ndarray] = field(default_factory=dict)  # circuit -> (L, h, r) complex128
    fro2: dict[str, np.ndarray] = field(default_factory=dict)  # circuit -> (L, h)
    tr_sq: dict[str, np.ndarray] = field(default_factory=dict)  # circuit -> (L, h)

    def spectra(self, circuit: str) -> KernelSpectra:
        return KernelSpectra(
            self.sv[circuit], self.eig.get(circuit), self.fro2[circuit], self.tr_sq.get(circuit), self.d
        )

    def eff_rank(self, circuit: str = "qk") -> np.ndarray:
        """(L, h) effective rank (Roy-Vetterli, singular values) of each head's kernel."""
        return effective_rank(self.sv[circuit])

    def to_frame(self):
        """One row per (layer, head): ``layer, head, kv_head, eff_rank, op_norm, ...`` and ``ov_*`` columns."""
        import pandas as pd

        L, h = self.L, self.h
        cols = {
            "layer": np.repeat(np.asarray(self.layers), h),
            "head": np.tile(np.arange(h), L),
            "kv_head": np.tile(kv_head_index(h, self.n_kv), L),
        }
        for c in self.sv:
            for k, v in self.spectra(c).metrics("" if c == "qk" else f"{c}_").items():
                cols[k] = np.asarray(v).reshape(-1)
        return pd.DataFrame(cols)


def sweep_attention(
    src,
    circuits: Iterable[str] = CIRCUITS,
    layers: Iterable[int] | None = None,
    eigenvalues: bool = True,
    device=None,
    progress: bool = True,
    kernel: str = "raw",
) -> AttentionSweep:
    """Exact QK / OV spectra of every head of every layer, streaming one layer's weights at a time.

    src: a WeightSource (``utils.weights.open_weights``) or anything with ``.dims`` (L, d, h, n_kv,
    d_head) and ``.layer_weight(layer, role, dtype)``. ``layers`` defaults to all (negative indices
    count from the end); the arrays are indexed by position in ``layers``. ``eigenvalues=False``
    computes singular values only. ``kernel``: ``raw`` or ``folded`` (:mod:`utils.attention.forms`).
    Each circuit's arrays have its own rank r (MLA: the content, rotary and value widths differ).
    """
    check_kernel(kernel)
    D = src.dims
    L, h, r = D.L, D.h, D.d_head
    circuits = tuple(circuits)
    layers = list(range(L)) if layers is None else [int(i) for i in layers]
    bad = [i for i in layers if not -L <= i < L]
    if bad:
        raise IndexError(
            f"layer indices {bad} are out of range: the model has L={L} layers "
            f"(valid 0..{L - 1}, or negative from the end)"
        )
    layers = [i % L for i in layers]
    n = len(layers)
    sw = AttentionSweep(L=n, d=D.d, h=h, n_kv=D.n_kv, d_head=r, layers=layers, kernel=kernel)
    for j, li in enumerate(progress_bar(layers, desc="attention spectra", unit="layer", disable=not progress)):
        for c in circuits:
            ks = layer_kernels(src, li, c, device, kernel).spectra(eigenvalues)
            if c not in sw.sv:
                rc = ks.sv.shape[-1]
                sw.sv[c], sw.fro2[c] = np.zeros((n, h, rc)), np.zeros((n, h))
                if eigenvalues:
                    sw.eig[c], sw.tr_sq[c] = np.zeros((n, h, rc), complex), np.zeros((n, h))
            sw.sv[c][j], sw.fro2[c][j] = ks.sv, ks.fro2
            if eigenvalues:
                sw.eig[c][j], sw.tr_sq[c][j] = ks.eig, ks.tr_sq
    return sw


def head_eigen_report(eig: np.ndarray, d: int, top: int = 20) -> dict:
    """Summaries of one head's r non-zero eigenvalues (sorted by |lambda| descending).

    Returns a dict with ``top`` (rows index, real, imag, magnitude), ``percentiles``
    ({p: |lambda| at percentile p of the non-zero magnitudes}), ``plane`` (real / imaginary
    ranges, counts of complex, real, positive-real, negative-real eigenvalues), ``milestones``
    ({level: components needed for that share of sum |lambda|^2}) and ``cum_energy`` (r,).
    ``d`` is the kernel's side: the d - r eigenvalues not listed are exactly zero.
    """
    eig = np.asarray(eig)
    mag = np.abs(eig)
    cm = complex_mask(eig)
    nonzero = mag[mag > 0]
    e = mag**2
    cum = np.cumsum(e) / e.sum() if e.sum() > 0 else np.zeros_like(e)
    pct = np.percentile(nonzero, PERCENTILES) if nonzero.size else []
    return {
        "top": [(i, float(z.real), float(z.imag), float(abs(z))) for i, z in enumerate(eig[:top])],
        "percentiles": {p: float(v) for p, v in zip(PERCENTILES, pct)},
        "plane": {
            "real_min": float(eig.real.min()),
            "real_max": float(eig.real.max()),
            "imag_min": float(eig.imag.min()),
            "imag_max": float(eig.imag.max()),
            "n_complex": int(cm.sum()),
            "n_real": int((~cm).sum()),
            "n_conjugate_pairs": int(cm.sum() // 2),
            "n_positive_real": int((eig.real > 0).sum()),
            "n_negative_real": int((eig.real < 0).sum()),
            "n_nonzero": int(nonzero.size),
            "n_exact_zero": int(d - nonzero.size),
        },
        "milestones": {lv: energy_count(e, lv) for lv in ENERGY_LEVELS},
        "cum_energy": cum,
        # share of sum |lambda|^2 in the top d_head of all d eigenvalues: the other d - r are exactly
        # zero, so this is 1 by construction (a dense eig reports < 1 from rounding noise)
        "top_d_head_energy": 1.0 if e.sum() > 0 else float("nan"),
    }


def quartile_labels(values: np.ndarray) -> np.ndarray:
    """'LOW-RANK' at or below the 25th percentile, 'HIGH-RANK' at or above the 75th, else 'MID'."""
    v = np.asarray(values, dtype=float)
    lo, hi = np.percentile(v, 25), np.percentile(v, 75)
    return np.where(v <= lo, "LOW-RANK", np.where(v >= hi, "HIGH-RANK", "MID"))


def summarize_heads(values: np.ndarray, axis: int) -> dict[str, np.ndarray]:
    """mean / std / min / max of an (L, h) array over ``axis`` (0: per head, 1: per layer)."""
    v = np.asarray(values, dtype=float)
    return {"mean": v.mean(axis), "std": v.std(axis), "min": v.min(axis), "max": v.max(axis)}


# ----------------------------------------------------------------------------- report tables
def head_table(ks: KernelSpectra, head: int, d: int):
    """One head's summary (metric, value) from a layer's :class:`KernelSpectra` (a DataFrame)."""
    import pandas as pd

    m = {k: np.asarray(v)[head] for k, v in ks.metrics().items()}
    rep = head_eigen_report(ks.eig[head], d)
    r = ks.r
    rows = [
        ["Kernel shape", f"{d} x {d} (rank <= {r})"],
        ["Asymmetry ‖A − Aᵀ‖_F / ‖A‖_F", m["asymmetry"]],
        ["Symmetry score ‖sym A‖²_F / ‖A‖²_F", m["symmetry"]],
        ["Complex eigenvalues (of the d_head non-zero)", f"{int(m['n_complex'])}/{r} ({100 * m['complex_frac']:.1f}%)"],
        [f"Top {r} eigenvalues energy", f"{100 * rep['top_d_head_energy']:.1f}% (exact: the other {d - r} are 0)"],
        ["Effective rank (singular values)", m["eff_rank"]],
        ["Effective rank (eigenvalue magnitudes, the seed's single-head figure)", m["eig_eff_rank"]],
        ["Operator norm σ_max", m["op_norm"]],
        ["Frobenius norm", m["fro_norm"]],
        ["Spectral radius |λ|_max", m["spectral_radius"]],
        ["99% eigenvalue energy at", f"{rep['milestones'][0.99]}/{r} components ({d} in all)"],
    ]
    return pd.DataFrame(rows, columns=["metric", "value"])


def head_details(eig: np.ndarray, d: int, top_k: int) -> str:
    """Top eigenvalues, magnitude percentiles, complex-plane counts and energy milestones of one head (markdown)."""
    rep = head_eigen_report(eig, d)
    p = rep["plane"]
    r = len(eig)
    return "\n".join(
        [
            f"**Top {min(top_k, r)} eigenvalues**",
            "",
            md_table(
                ["rank", "real", "imaginary", "magnitude"],
                [[i, z.real, z.imag, abs(z)] for i, z in enumerate(eig[:top_k])],
                digits=6,
            ),
            "",
            f"All {d} eigenvalues of the d × d kernel: **{p['n_nonzero']} non-zero**, {p['n_exact_zero']} exactly zero "
            f"(rank <= d_head = {r}). Percentiles of the non-zero magnitudes:",
            "",
            md_table(["percentile", "magnitude"], [[f"{q}%", v] for q, v in rep["percentiles"].items()], digits=6),
            "",
            f"Complex plane: real parts in [{p['real_min']:.4g}, {p['real_max']:.4g}], imaginary parts in "
            f"[{p['imag_min']:.4g}, {p['imag_max']:.4g}]; {p['n_complex']} complex "
            f"({p['n_conjugate_pairs']} conjugate pairs), {p['n_real']} real; {p['n_positive_real']} with positive "
            f"and {p['n_negative_real']} with negative real part.",
            "",
            md_table(
                ["energy Σ|λ|²", "components", f"% of d_head ({r})", f"% of d ({d})"],
                [
                    [f"{100 * lv:.0f}%", n, f"{100 * n / r:.1f}%", f"{100 * n / d:.1f}%"]
                    for lv, n in rep["milestones"].items()
                ],
            ),
        ]
    )


def sweep_tables(sw: AttentionSweep, circuit: str):
    """Global, per-head (with quartile labels) and per-layer summaries of the effective rank (DataFrames)."""
    import pandas as pd

    arr = sw.eff_rank(circuit)
    ks = sw.spectra(circuit)
    ph, pl = summarize_heads(arr, 0), summarize_heads(arr, 1)
    glob = pd.DataFrame(
        [
            ["Global min", arr.min()],
            ["Global max", arr.max()],
            ["Global mean", arr.mean()],
            ["Global std", arr.std()],
            ["Mean asymmetry", ks.asymmetry.mean()],
            ["Mean symmetry score", ks.symmetry.mean()],
            ["Mean complex fraction", ks.metrics()["complex_frac"].mean()],
        ],
        columns=["metric", "value"],
    )
    per_head = pd.DataFrame(
        {
            "head": np.arange(sw.h),
            "kv_head": kv_head_index(sw.h, sw.n_kv),
            "mean": ph["mean"],
            "std": ph["std"],
            "min": ph["min"],
            "max": ph["max"],
            "category": quartile_labels(ph["mean"]),
        }
    )
    per_layer = pd.DataFrame(
        {"layer": np.asarray(sw.layers), "mean": pl["mean"], "std": pl["std"], "min": pl["min"], "max": pl["max"]}
    )
    return glob, per_head, per_layer
