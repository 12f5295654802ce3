# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Attention kernels: exact per-head spectra
#
# For query head *i* the pre-softmax score between a query-side input `x` and a key-side input `y`
# is `x^T A_i y` with the **QK kernel** `A_i = W_Q,i^T W_K,g` (d × d), where `g = i // (h / n_kv)`
# is the key/value head that query head *i* reads under grouped-query attention. What the head
# writes back is governed by the **OV circuit** `B_i = W_O,i W_V,g` (d × d).
#
# Both are products of a (d × d_head) and a (d_head × d) matrix, so their rank is at most d_head.
# Everything here is computed **exactly in d_head × d_head space**, in float64: singular values from
# the R factors of two thin QRs, the non-zero eigenvalues from the d_head × d_head matrix
# `W_K,g W_Q,i^T` (resp. `W_V,g W_O,i`), asymmetry and symmetry from traces. No d × d matrix is formed,
# which makes the sweep over every head of every layer fast enough for a 70B model.

# %% tags=["parameters"]
model: str = "smollm2"  # bundled default, or a .gguf path, an HF checkpoint dir, or a hub id
run_name: str = "default"  # results go to output/<notebook>/<run_name>/
output_root: str = "output"  # root folder for results
layer_idx: int = -1  # layer for the single-head analysis; -1 is the last layer, negative counts from the end
head_idx: int = 0  # query head for the single-head analysis, 0 .. h-1
include_ov: bool = True  # also analyse the OV circuits W_O,i W_V,g
device: str = "cpu"  # "cpu", "cuda" or "auto" (GPU when present) for the float64 decompositions
top_k: int = 20  # rows of the top-eigenvalue table
dense_check_max_d: int = 4096  # rerun the seed's dense d x d eigendecomposition on the chosen head when d <= this (0 = never)

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from utils.attention import (ENERGY_MILESTONES, dense_kernel_oracle, head_eigen_report, kv_head_index,
                             layer_attention_spectra, qk_factors,
                             quartile_labels, summarize_heads, sweep_attention)
from utils.models import open_weights
from utils.report import df_to_md, fmt, md_image, md_table
from utils.runs import start_run

if device == "auto":
    device = "cuda" if torch.cuda.is_available() else "cpu"
if device not in ("cpu", "cuda"):
    raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
if device == "cuda" and not torch.cuda.is_available():
    raise ValueError("device='cuda' but no CUDA GPU is visible: use device='cpu' or 'auto'")
if top_k < 1:
    raise ValueError(f"top_k must be >= 1, got {top_k}")

src = open_weights(model)
D = src.dims
L, d, h, n_kv, d_head = D.L, D.d, D.h, D.n_kv, D.d_head
if not -L <= layer_idx < L:
    raise IndexError(f"layer_idx={layer_idx} is out of range: {src.name} has L={L} layers; "
                     f"use 0..{L - 1}, or -1 for the last layer")
if not -h <= head_idx < h:
    raise IndexError(f"head_idx={head_idx} is out of range: {src.name} has h={h} query heads per layer; "
                     f"use 0..{h - 1}")
layer = layer_idx % L
head = head_idx % h
kv_of = kv_head_index(h, n_kv)
circuits = ("qk", "ov") if include_ov else ("qk",)

run = start_run("02_attention_kernels", run_name, params=dict(
    model=model, layer_idx=layer_idx, head_idx=head_idx, include_ov=include_ov, device=device, top_k=top_k,
    dense_check_max_d=dense_check_max_d),
    output_root=output_root)
print(src)
print(f"single-head analysis: layer {layer}, head {head} (reads KV head {kv_of[head]})")

config_rows = [["Model", src.name], ["Family", src.family], ["Layers (L)", L], ["Hidden size (d)", d],
               ["Query heads (h)", h], ["KV heads (n_kv)", n_kv], ["Query heads per KV head", h // n_kv],
               ["Head dim (d_head)", d_head], ["KV dim (n_kv · d_head)", n_kv * d_head]]
md_table(["parameter", "value"], config_rows)

# %% [markdown]
# ## One head: the QK kernel and the OV circuit
#
# The whole layer is decomposed at once (all heads batched); the chosen head is then read out.
# Only the **d_head non-zero eigenvalues** exist: `A = X Y` with X (d × d_head) and Y (d_head × d) has
# the eigenvalues of `Y X` (d_head × d_head) plus d − d_head eigenvalues that are exactly zero.
# A dense d × d eigendecomposition (the research seed's approach) returns those zeros as rounding
# noise of size up to ~1e-6 · |λ_max| in float32, many with imaginary parts above its absolute 1e-6
# threshold, which it counted as complex eigenvalues; the same noise is all that kept its
# "share of energy in the top d_head" from being exactly 100%. The comparison below runs the seed's
# dense computation on the chosen head, live, when d is small enough.

# %%
with run.timer("single layer"):
    layer_spec = layer_attention_spectra(src, layer, circuits, device=device)

titles = {"qk": "QK kernel W_Q,iᵀ W_K,g", "ov": "OV circuit W_O,i W_V,g"}
head_tables, head_reports = {}, {}
for c in circuits:
    ks = layer_spec[c]
    m = {k: np.asarray(v)[head] for k, v in ks.metrics().items()}
    rep = head_eigen_report(ks.eig[head], d)
    head_reports[c] = rep
    n99 = rep["milestones"][0.99]
    head_tables[c] = md_table(["metric", "value"], [
        ["Kernel shape", f"{d} x {d} (rank <= {d_head})"],
        ["Asymmetry ‖A − Aᵀ‖_F / ‖A‖_F", fmt(m["asymmetry"])],
        ["Symmetry score ‖sym A‖²_F / ‖A‖²_F", fmt(m["symmetry"])],
        ["Complex eigenvalues (of the d_head non-zero)",
         f"{int(m['n_complex'])}/{d_head} ({100 * m['complex_frac']:.1f}%)"],
        [f"Top {d_head} eigenvalues energy", f"{100 * rep['top_d_head_energy']:.1f}% (exact: the other "
                                             f"{d - d_head} are 0)"],
        ["Effective rank (singular values)", fmt(m["eff_rank"])],
        ["Effective rank (eigenvalue magnitudes, the seed's single-head figure)", fmt(m["eig_eff_rank"])],
        ["Operator norm σ_max", fmt(m["op_norm"])],
        ["Frobenius norm", fmt(m["fro_norm"])],
        ["Spectral radius |λ|_max", fmt(m["spectral_radius"])],
        ["99% eigenvalue energy at", f"{n99}/{d_head} components ({d} in all)"],
    ])
    print(f"{titles[c]}  layer {layer}, head {head}")
    print(head_tables[c])


# %% [markdown]
# ### The seed's dense computation on the same head, for comparison

# %%
dense_md = ""
if 0 < d <= dense_check_max_d:
    with run.timer("dense comparison (one head)"):
        Xq, Yk, kv_idx = qk_factors(src.layer_weight(layer, "q"), src.layer_weight(layer, "k"), h, n_kv, d_head)
        dense = dense_kernel_oracle(Xq[head], Yk[kv_idx[head]], dtype=torch.float32)
    lam_d = dense["eig"]
    mag_d = np.abs(lam_d)
    exact = head_reports["qk"]
    dense_rows = [
        ["eigenvalues returned", f"{d}", f"{d_head}"],
        ["counted complex", f"{int((np.abs(lam_d.imag) > 1e-6).sum())} (|Im λ| > 1e-6, the seed's rule)",
         f"{exact['plane']['n_complex']} (|Im λ| > 1e-10 · |λ|_max)"],
        [f"energy share of the top {d_head}", f"{100 * (mag_d[:d_head] ** 2).sum() / (mag_d ** 2).sum():.6f}%", "100% (exact)"],
        [f"largest of the {d - d_head} 'zero' eigenvalues / |λ|_max",
         f"{mag_d[d_head:].max() / mag_d[0]:.2e}" if d > d_head else "-", "0 (exact)"],
    ]
    dense_md = md_table(["", "seed: dense float32 d × d", "here: exact d_head × d_head"], dense_rows)
    print(dense_md)
else:
    print(f"dense comparison skipped (d = {d} > dense_check_max_d = {dense_check_max_d})")

# %%
def three_panel(c):
    """Magnitudes (log axis), complex plane, cumulative energy with the 99% line, for one head."""
    ks, rep = layer_spec[c], head_reports[c]
    lam = ks.eig[head]
    mag = np.abs(lam)
    n_c = rep["plane"]["n_complex"]
    asym = float(ks.asymmetry[head])
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    ax = axes[0]
    ax.semilogy(np.arange(len(mag)), np.where(mag > 0, mag, np.nan), ".-", ms=3)
    ax.set_title(f"|λ| of the {d_head} non-zero eigenvalues")
    ax.set_xlabel("index (sorted by |λ|)")
    ax.set_ylabel("|λ|")
    ax = axes[1]
    cm = ks.complex_mask()[head]
    ax.scatter(lam.real[~cm], lam.imag[~cm], s=10, label=f"real ({int((~cm).sum())})")
    ax.scatter(lam.real[cm], lam.imag[cm], s=10, label=f"complex ({n_c})")
    ax.axhline(0, color="gray", lw=0.5)
    ax.axvline(0, color="gray", lw=0.5)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(f"complex plane ({n_c} complex, asymmetry {asym:.3f})")
    ax.set_xlabel("Re λ")
    ax.set_ylabel("Im λ")
    ax.legend(loc="best", fontsize=8)
    ax = axes[2]
    cum = rep["cum_energy"]
    n99 = rep["milestones"][0.99]
    ax.plot(np.arange(1, len(cum) + 1), cum)
    ax.axhline(0.99, color="r", ls="--", label="99%")
    ax.axvline(n99, color="gray", ls=":", label=f"n = {n99}")
    ax.set_title(f"cumulative Σ|λ|² (99% at {n99}/{d_head}; {d} in all)")
    ax.set_xlabel("components")
    ax.legend(loc="lower right")
    fig.suptitle(f"{titles[c]} — layer {layer}, head {head} (KV head {kv_of[head]})", fontsize=13)
    fig.tight_layout()
    return fig


figs = {}
for c in circuits:
    fig = three_panel(c)
    figs[c] = run.save_figure(fig, f"{c}_head_spectrum.png")
    plt.show()
    plt.close(fig)

# %% [markdown]
# ### Top eigenvalues, percentiles, complex plane and cumulative energy (QK kernel)

# %%
def head_detail_md(c):
    rep = head_reports[c]
    p = rep["plane"]
    out = [f"#### Top {min(top_k, d_head)} eigenvalues", "",
           md_table(["rank", "real", "imaginary", "magnitude"],
                    [[i, z.real, z.imag, abs(z)] for i, z in enumerate(layer_spec[c].eig[head][:top_k])],
                    digits=6), "",
           "#### Magnitude percentiles", "",
           f"All {d} eigenvalues of the d × d kernel: **{p['n_nonzero']} non-zero**, "
           f"{p['n_exact_zero']} exactly zero (rank <= d_head = {d_head}). Percentiles of the non-zero magnitudes:",
           "", md_table(["percentile", "magnitude"], [[f"{q}%", v] for q, v in rep["percentiles"].items()], digits=6),
           "", "#### Complex plane", "",
           f"- Real part range: [{p['real_min']:.4g}, {p['real_max']:.4g}]",
           f"- Imaginary part range: [{p['imag_min']:.4g}, {p['imag_max']:.4g}]",
           f"- {p['n_complex']} complex eigenvalues ({p['n_conjugate_pairs']} conjugate pairs), "
           f"{p['n_real']} real",
           f"- {p['n_positive_real']} with positive real part, {p['n_negative_real']} with negative real part",
           "", "#### Cumulative spectral energy Σ|λ|²", "",
           md_table(["energy", "components", f"% of d_head ({d_head})", f"% of d ({d})"],
                    [[f"{100 * lv:.0f}%", n, f"{100 * n / d_head:.1f}%", f"{100 * n / d:.1f}%"]
                     for lv, n in rep["milestones"].items()])]
    return "\n".join(out)


print(head_detail_md("qk"))

# %% [markdown]
# ## Every layer and head
#
# The sweep streams one layer's Q, K, V, O weights at a time and decomposes all heads of the layer in
# one batch. Effective rank is Roy–Vetterli (`exp` of the entropy of σ / Σσ) on the singular values,
# as in the seed's heatmap. Quartile labels follow the seed: a head whose mean effective rank over
# layers is at or below the 25th percentile of the per-head means is **LOW-RANK**, at or above the
# 75th **HIGH-RANK**, else MID.

# %%
with run.timer("sweep all layers and heads"):
    sw = sweep_attention(src, circuits=circuits, device=device)
df = sw.to_frame()
run.save_csv(df, "attention_heads.csv")
er = {c: sw.eff_rank(c) for c in circuits}
sym = {c: sw.spectra(c).symmetry for c in circuits}
df.head(10)

# %%
fig, axes = plt.subplots(2, len(circuits), figsize=(7.5 * len(circuits), 9), squeeze=False)
for j, c in enumerate(circuits):
    for i, (arr, label, cmap) in enumerate([(er[c], "effective rank", "viridis"),
                                            (sym[c], "symmetry score", "coolwarm")]):
        ax = axes[i, j]
        im = ax.imshow(arr, aspect="auto", cmap=cmap, interpolation="nearest",
                       **({"vmin": 0, "vmax": 1} if i == 1 else {}))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(f"{titles[c]}: {label}")
        ax.set_xticks(range(0, h, max(1, h // 16)))
        ax.set_yticks(range(0, L, max(1, L // 12)))
        fig.colorbar(im, ax=ax, label=label)
fig.tight_layout()
heatmap_png = run.save_figure(fig, "eff_rank_heatmap.png")
plt.show()
plt.close(fig)


# %%
def sweep_tables(c):
    arr = er[c]
    ph, pl = summarize_heads(arr, 0), summarize_heads(arr, 1)
    labels = quartile_labels(ph["mean"])
    per_head = pd.DataFrame({"head": np.arange(h), "kv_head": kv_of, "mean": ph["mean"], "std": ph["std"],
                             "min": ph["min"], "max": ph["max"], "category": labels})
    per_layer = pd.DataFrame({"layer": np.arange(L), "mean": pl["mean"], "std": pl["std"], "min": pl["min"],
                              "max": pl["max"]})
    glob = md_table(["metric", "value"], [["Global min", arr.min()], ["Global max", arr.max()],
                                          ["Global mean", arr.mean()], ["Global std", arr.std()],
                                          ["Mean asymmetry", sw.spectra(c).asymmetry.mean()],
                                          ["Mean symmetry score", sym[c].mean()],
                                          ["Mean complex fraction", sw.spectra(c).metrics()["complex_frac"].mean()]])
    return glob, per_head, per_layer


tables = {c: sweep_tables(c) for c in circuits}
run.save_csv(tables["qk"][1], "qk_per_head_summary.csv")
run.save_csv(tables["qk"][2], "qk_per_layer_summary.csv")
print(tables["qk"][0])
tables["qk"][1]

# %%
tables["qk"][2]

# %% [markdown]
# ## Report

# %%
heatmap_df = pd.DataFrame(np.round(er["qk"], 1), columns=[f"H{i}" for i in range(h)])
heatmap_df.insert(0, "layer", np.arange(L))
notes = f"""## Notes on what is computed

- **Exact reduction.** `A = X Y` with X = W_Q,iᵀ (d × {d_head}) and Y = W_K,g ({d_head} × d). With thin QRs
  `X = Q₁R₁`, `Yᵀ = Q₂R₂`, `A = Q₁(R₁R₂ᵀ)Q₂ᵀ`, so the singular values of A are those of the {d_head} × {d_head}
  matrix R₁R₂ᵀ plus {d - d_head} exact zeros. The non-zero eigenvalues of A are those of `Y X = W_K,g W_Q,iᵀ`
  ({d_head} × {d_head}); the other {d - d_head} are exactly zero. The same holds for the OV circuit with
  X = W_O,i, Y = W_V,g. Everything runs in float64.
- **Only the d_head non-zero eigenvalues are reported.** A dense d × d eigendecomposition returns the
  {d - d_head} zero eigenvalues as rounding noise (up to ~1e-6 · |λ|_max in float32); the research seed counted
  those with |Im λ| > 1e-6 as complex, and its "share of energy in the top d_head" differed from 100% only by
  that noise. Here the complex fraction is over the {d_head} non-zero eigenvalues (complex when
  |Im λ| > 1e-10 · |λ|_max; LAPACK returns real eigenvalues of a real matrix with Im λ exactly 0), and the
  top-d_head energy share is 100% by construction: the remaining eigenvalues are exactly zero, not small.
- **Asymmetry** is ‖A − Aᵀ‖_F / ‖A‖_F ∈ [0, 2], from ‖A‖²_F = Σσ² and tr(A²) = tr((YX)²):
  ‖A − Aᵀ‖²_F = 2‖A‖²_F − 2 tr(A²). The **symmetry score** is ‖(A + Aᵀ)/2‖²_F / ‖A‖²_F = (1 + tr(A²)/‖A‖²_F)/2
  ∈ [0, 1]: 1 for a symmetric kernel, 0 for an antisymmetric one, about 0.5 for unrelated random Q and K
  (asymmetry = 2·sqrt(1 − symmetry)). For the OV circuit a high score with positive eigenvalues suggests
  copying; negative eigenvalues suggest suppression.
- **Rotary position embeddings are not part of A.** In Llama / Qwen / Mistral models RoPE rotates q and k by
  position-dependent angles between W_Q and W_K, so the score is `x_mᵀ W_Qᵀ R_(n−m) W_K x_n`; A is the
  position-free (relative offset 0) part. GGUF files store Q and K rows permuted for llama.cpp's rotary
  layout; the loader undoes that, and A does not depend on it anyway (the same row permutation of
  W_Q,i and W_K,g cancels in W_Q,iᵀ W_K,g). GPT-2 (learned
  absolute positions) and BERT have no rotation: there A is the whole bilinear form.
- GPT-2's fused `c_attn` is split into W_Q, W_K, W_V (and its Conv1D weights transposed); BERT's
  `query` / `key` / `value` map directly.
"""

md = [f"# Attention kernels: {src.name}", "", "## Model configuration", "", md_table(["parameter", "value"],
                                                                                     config_rows), ""]
for c in circuits:
    md += [f"## {titles[c]}: layer {layer}, head {head} (KV head {kv_of[head]})", "",
           head_tables[c], "", md_image(figs[c], f"{c} spectrum of layer {layer} head {head}"), "",
           head_detail_md(c), ""]
if dense_md:
    md += [f"### The seed's dense computation on the same QK kernel (layer {layer}, head {head})", "",
           "The dense d × d eigendecomposition in float32 returns the exactly-zero eigenvalues as rounding "
           "noise; counted with the seed's absolute 1e-6 rule, noise becomes 'complex eigenvalues'.", "",
           dense_md, ""]
md += ["## Effective rank: all layers × all heads", "",
       f"Heatmaps of the effective rank (Roy–Vetterli, singular values) and the symmetry score of every head, "
       f"{L} layers × {h} heads. Per-head rows of every metric are in `attention_heads.csv`.", "",
       md_image(heatmap_png, "effective rank heatmap"), ""]
for c in circuits:
    glob, per_head, per_layer = tables[c]
    md += [f"### {titles[c]}", "", glob, "", "#### Per-head summary (effective rank over layers)", "",
           df_to_md(per_head, digits=4), "", "#### Per-layer summary (effective rank over heads)", "",
           df_to_md(per_layer, digits=4), ""]
md += ["### Full QK heatmap data (layer × head, effective rank)", "", df_to_md(heatmap_df, digits=4), "", notes]
run.write_report("\n".join(md))
print(f"report written to {run.path('report.md')}")
