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
# # 01 · Weight effective ranks
#
# How much of its available dimension does each weight matrix of a transformer use? For every 2-D
# weight of every layer (and the embeddings) we take the singular values and report the
# **effective rank** (Roy & Vetterli: `exp(H(p))` with `p = σ / Σσ`), the stable rank, spectral
# norm, condition number and the number of components holding 50/75/90/95/99 % of the energy
# `Σσ²`. Weights are streamed one tensor at a time; the model is never instantiated.

# %% tags=["parameters"]
model: str = "smollm2"  # bundled default, or a .gguf path, an HF checkpoint dir, or a hub id
run_name: str = "default"  # results go to output/<notebook>/<run_name>/
output_root: str = "output"  # root folder for results
layer_idx: int = -1  # layer for the down-projection variance analysis; negative counts from the end
device: str = "auto"  # "auto" (GPU when present), "cpu" or "cuda"
include_embeddings: bool = True  # also analyse the token / position embeddings and an untied LM head

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from utils.models import open_weights
from utils.report import df_to_md, md_image, md_table
from utils.runs import start_run
from utils.weight_ranks import (largest_transitions, phase_analysis, per_layer, stats_by_weight_type,
                                variance_explained, weight_sweep, weight_types)
from utils.spectral import svdvals

run = start_run("01_weight_ranks", run_name, params=dict(
    model=model, layer_idx=layer_idx, device=device, include_embeddings=include_embeddings),
    output_root=output_root)

with run.timer("open weights"):
    src = open_weights(model)
D = src.dims
layer = src._check_layer(layer_idx)  # clear IndexError if out of range
print(src)
print(f"down-projection analysis on layer {layer}")

# %% [markdown]
# ## Sweep: singular values of every weight matrix

# %%
with run.timer("weight sweep"):
    df = weight_sweep(src, device=device, include_model_level=include_embeddings)
run.save_csv(df, "weight_ranks.csv")
df.head(10)

# %% [markdown]
# ## Effective rank statistics by weight type
# Population statistics over layers (std and variance with ddof = 0); *first* / *last* are layers
# 0 and L-1; CV = std / mean.

# %%
stats = stats_by_weight_type(df)
run.save_csv(stats, "eff_rank_stats_by_type.csv")
stats

# %%
types = weight_types(per_layer(df))
ncol = 4
nrow = int(np.ceil(len(types) / ncol))
fig, axes = plt.subplots(nrow, ncol, figsize=(4.5 * ncol, 3.4 * nrow), sharey=False, squeeze=False)
pl = per_layer(df)
for ax, wt in zip(axes.flat, types):
    sub = pl[pl["weight_type"] == wt].sort_values("layer_idx")
    r = sub["eff_rank"].to_numpy()
    ax.plot(sub["layer_idx"], r, marker=".", ms=4)
    ax.axhline(min(sub["rows"].iloc[0], sub["cols"].iloc[0]), color="gray", ls=":", lw=0.8, label="full rank")
    ax.set_title(f"{wt} ({sub['shape'].iloc[0]})\nμ={r.mean():.1f}, σ={r.std():.1f}, range={np.ptp(r):.1f}", fontsize=9)
    ax.set_xlabel("layer"); ax.set_ylabel("effective rank")
for ax in list(axes.flat)[len(types):]:
    ax.set_visible(False)
fig.suptitle(f"Effective rank by layer: {src.name}")
fig.tight_layout()
fig_by_layer = run.save_figure(fig, "eff_rank_by_layer.png")

# %%
pivot = pl.pivot(index="layer_idx", columns="weight_type", values="eff_rank")[types]
full = pl.assign(full=np.minimum(pl["rows"], pl["cols"])).pivot(index="layer_idx", columns="weight_type", values="full")[types]
fig, ax = plt.subplots(figsize=(1.2 * len(types) + 3, max(4, 0.22 * D.L + 1)))
im = ax.imshow((pivot / full).to_numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1)
ax.set_xticks(range(len(types)), types)
ax.set_ylabel("layer")
ax.set_title("Effective rank / full rank")
fig.colorbar(im, ax=ax, label="fraction of min(m, n)")
fig.tight_layout()
fig_heat = run.save_figure(fig, "eff_rank_fraction_heatmap.png")

# %% [markdown]
# ## Down-projection: variance explained in one layer

# %%
W_down = src.layer_weight(layer, "down")
S_down = svdvals(W_down)
ve = variance_explained(S_down)
n99 = ve["milestones"][0.99]
fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
a1.plot(ve["per_component"]); a1.set_yscale("log")
a1.set_title(f"Variance explained per component (W_down, layer {layer})"); a1.set_xlabel("component")
a2.plot(ve["cumulative"]); a2.axhline(0.99, color="r", ls="--", label="99%")
a2.axvline(n99, color="gray", ls=":", label=f"n={n99}")
a2.set_title(f"Cumulative variance (99% at {n99}/{len(S_down)} components)"); a2.set_xlabel("component"); a2.legend()
fig.tight_layout()
fig_down = run.save_figure(fig, "down_proj_variance.png")
down_rows = [[f"{int(100 * k)}%", v, f"{100 * v / len(S_down):.1f}%"] for k, v in ve["milestones"].items()]
print(md_table(["variance", "components", "share of all"], down_rows))

# %% [markdown]
# ## Phases: early / middle / late thirds
# Layers split into thirds (`L // 3` layers each, the remainder in the late phase). A weight type is
# labelled **U-SHAPE** when its middle-phase mean is below both others, **INVERTED-U** when above both,
# **MONOTONE DOWN / UP** when the three means are strictly ordered, else **OTHER**.

# %%
phases = phase_analysis(df, D.L)
trans = largest_transitions(df)
print(phases.aggregate.to_string(index=False))
print(phases.trends.to_string(index=False))
print(trans.to_string(index=False))
fig, ax = plt.subplots(figsize=(9, 4))
x = np.arange(len(phases.trends))
for k, ph in enumerate(["early", "middle", "late"]):
    ax.bar(x + (k - 1) * 0.27, phases.trends[ph], width=0.27, label=ph)
ax.set_xticks(x, phases.trends["weight_type"]); ax.set_ylabel("mean effective rank"); ax.legend()
ax.set_title("Mean effective rank by phase")
fig.tight_layout()
fig_phase = run.save_figure(fig, "phase_means.png")

# %% [markdown]
# ## Report

# %%
model_level = df[df["layer_idx"] < 0]
metric_cols = ["eff_rank", "stable_rank", "spectral_norm", "condition_number", "n50", "n90", "n99"]
top = pl.sort_values("eff_rank").iloc[[0, -1]]
md = [f"# Weight effective ranks: {src.name}", "",
      f"Model spec `{model}` ({src.kind}, family `{src.family}`). {len(df)} matrices analysed in "
      f"{run.timings['weight sweep']:.1f} s.", "",
      "## Model configuration", "",
      md_table(["L", "d", "d_ff", "h", "n_kv", "d_head", "V"], [[D.L, D.d, D.d_ff, D.h, D.n_kv, D.d_head, D.V]]), "",
      "## Method", "",
      "Singular values of each weight (upcast to float32 storage, decomposed in float64 on the CPU through "
      "the Gram matrix of the short side, or float32 SVD on a GPU; see `utils/spectral.py`). "
      "Effective rank = exp(entropy of σ/Σσ) (Roy & Vetterli, 2007); stable rank = Σσ²/σ_max²; "
      "nXX = number of leading components holding XX % of Σσ². Full data: `weight_ranks.csv`.", "",
      "## Effective rank statistics by weight type", "",
      df_to_md(stats, 4), "",
      md_image(fig_by_layer, "effective rank by layer"), "",
      md_image(fig_heat, "effective rank fraction heatmap"), "",
      f"Lowest effective rank: {top.iloc[0]['weight_type']} of layer {int(top.iloc[0]['layer_idx'])} "
      f"({top.iloc[0]['eff_rank']:.1f} of {min(top.iloc[0]['rows'], top.iloc[0]['cols'])}); highest: "
      f"{top.iloc[1]['weight_type']} of layer {int(top.iloc[1]['layer_idx'])} ({top.iloc[1]['eff_rank']:.1f}).", ""]
if len(model_level):
    md += ["## Model-level matrices", "",
           df_to_md(model_level[["weight_type", "shape"] + metric_cols], 4), ""]
md += ["## Effective rank per layer", "", df_to_md(pivot.round(2), 5, index=True), "",
       f"## W_down variance explained (layer {layer})", "",
       f"Shape {W_down.shape[0]} x {W_down.shape[1]}; top σ {S_down[0]:.4f}, smallest σ {S_down[-1]:.6f}, "
       f"condition number {S_down[0] / S_down[-1]:.1f}; 99 % of the variance in {n99}/{len(S_down)} components.", "",
       md_table(["variance", "components", "share of all"], down_rows), "",
       md_image(fig_down, "down projection variance explained"), "",
       "## Phase analysis: early / middle / late", "",
       "Layers split into thirds: " + ", ".join(f"{k} {a}-{b - 1}" for k, (a, b) in phases.bounds.items()) + ".", "",
       "### Mean effective rank by phase (all per-layer matrices; std with ddof = 1)", "",
       df_to_md(phases.aggregate, 4), ""]
for ph, t in phases.per_phase.items():
    md += [f"### {ph.capitalize()} layers {phases.bounds[ph][0]}-{phases.bounds[ph][1] - 1}", "", df_to_md(t, 4, index=True), ""]
md += ["### Per-weight phase trend", "",
       "U-SHAPE: middle below both ends; INVERTED-U: middle above both; MONOTONE: strictly ordered; else OTHER.", "",
       df_to_md(phases.trends, 4), "", md_image(fig_phase, "phase means"), "",
       "### Largest layer-over-layer transitions", "", df_to_md(trans, 4), ""]
report_path = run.write_report("\n".join(md))
print(f"report: {report_path}")
