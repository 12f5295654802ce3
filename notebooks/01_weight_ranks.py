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
#     display_name: Python 3 (transformer-spectra)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Weight effective ranks
#
# How much of its available dimension does each weight matrix of a transformer use? For every weight
# matrix of every layer (each expert's separately in a mixture of experts; fused tensors split into their
# roles; and the embeddings) we take the singular values and report the
# **effective rank** (Roy & Vetterli: `exp(H(p))` with `p = σ / Σσ`), the stable rank, spectral
# norm, condition number and the number of components holding 50/75/90/95/99 % of the energy
# `Σσ²`. Weights are streamed one tensor at a time; the model is never instantiated.

# %% tags=["parameters"]
model: str = "smollm2"  # bundled default, or a .gguf path, an HF checkpoint dir, or a hub id
run_name: str = "default"  # results go to output/<notebook>/<run_name>/
output_root: str = "output"  # results root; a relative path is taken from the project root
layer_idx: int = -1  # layer for the down-projection variance analysis; negative counts from the end {layer of model}
device: str = "auto"  # auto (GPU when present), cpu, cuda or cuda:N
include_embeddings: bool = True  # also analyse the token and position embeddings and an untied LM head
null_model: bool = True  # also take the spectrum of every matrix with its entries permuted (the null)
null_seed: int = 0  # seed of the permuted null (each matrix derives its own from it)
n_boot: int = 30  # bootstrap replicates for the interval of the power-law alpha (0 skips) {0..}
precision: str = "auto"  # auto (float64 Gram on the CPU, float32 SVD on a GPU), float64, or float32 (faster, less exact) {auto, float64, float32}
resume: bool = True  # keep per-matrix results in the output root cache and reuse them (an interrupted sweep continues)

# %%
from pathlib import Path

from utils import explore, plots, weight_ranks
from utils.running import start_run
from utils.spectral import svdvals
from utils.weights import open_weights

run = start_run("01_weight_ranks", globals())
with run.timer("open weights"):
    src = open_weights(model)
layer = src.layer_index(layer_idx)
run.show(src.describe())

# %% [markdown]
# ## Singular values of every weight matrix
#
# Each weight is upcast and decomposed in float64 on the CPU through the Gram matrix of its short
# side, accumulated over blocks so that memory stays at one matrix (exact to about 1.5e-8 · σ_max per
# value), or by a batched float32 SVD on a GPU; `precision = float32` is the faster, less exact path
# (about 3.5e-4 · σ_max per value). In the same pass, while the matrix is loaded, the random-matrix
# diagnostics of the next sections are computed and, with `null_model`, the spectrum of the matrix with
# its entries randomly permuted. Each matrix's results are appended to a cache file under the output
# root (`.cache/weight_sweep/`) as soon as they are computed: with `resume` an interrupted sweep
# continues where it stopped and a finished one is read back. One row per matrix goes to
# `weight_ranks.csv`. The table gives, per weight type, the population statistics of
# the effective rank over layers (std and variance with ddof = 0; *first* / *last* are layers 0 and
# L-1; CV = std / mean).

# %%
with run.timer("weight sweep"):
    df, spectra, null_spectra = weight_ranks.rmt_sweep(
        src, null=null_model, seed=null_seed, n_boot=n_boot, device=device, include_model_level=include_embeddings,
        precision=precision, cache=run.cache_dir / "weight_sweep", resume=resume)
run.save_csv(df, "weight_ranks.csv")
explore.save_weight_spectra(run, df, spectra, null_spectra)  # what the explorer below draws
stats = weight_ranks.stats_by_weight_type(df)
run.save_csv(stats, "eff_rank_stats_by_type.csv")
run.show(f"{len(df)} matrices analysed in {run.timings['weight sweep']:.1f} s: {df.attrs['computed']} computed, "
         f"{df.attrs['reused']} read back from the cache (`{Path(df.attrs['cache']).name}`).")
run.show(stats)

# %% [markdown]
# ## Effective rank by layer
#
# One panel per weight type; the dotted line is full rank, min(m, n). The heatmap shows the same
# numbers as a fraction of full rank, so weight types of different shapes share one colour scale.

# %%
fig = plots.by_layer(weight_ranks.with_full_rank(df), "eff_rank", ceiling="full_rank", ylabel="effective rank",
                     title=f"Effective rank by layer: {src.name}")
run.show(fig, "eff_rank_by_layer.png")
fig = plots.heatmap(weight_ranks.layer_table(df, fraction=True), "Effective rank / full rank",
                    "fraction of min(m, n)", xlabel="weight type", vmin=0, vmax=1)
run.show(fig, "eff_rank_fraction_heatmap.png")
run.show(weight_ranks.extremes(df))

# %% [markdown]
# ## Model-level matrices and every layer
#
# Token and position embeddings (and an untied output head), then the effective rank of every
# per-layer matrix.

# %%
model_level = df[df.layer_idx < 0]
if len(model_level):
    run.show(model_level[weight_ranks.MODEL_LEVEL_COLUMNS])
run.show(weight_ranks.layer_table(df).round(2), digits=5, index=True)

# %% [markdown]
# ## Down-projection: variance explained in one layer
#
# The share of `Σσ²` in each singular direction of `W_down` of the chosen layer, and how many
# directions hold 50 ... 99 % of it.

# %%
W_down, down_label = weight_ranks.down_projection(src, layer)
S = svdvals(W_down, device=device)
ve = weight_ranks.variance_explained(S)
run.show(plots.variance_explained(ve["per_component"], ve["cumulative"], f"{down_label}, layer {layer}"),
         "down_proj_variance.png")
run.show(f"{down_label} of layer {layer}: top σ {S[0]:.4f}, smallest σ {S[-1]:.6f}, condition number "
         f"{S[0] / S[-1]:.1f}; 99 % of the variance in {ve['milestones'][0.99]}/{len(S)} components.")
run.show(weight_ranks.milestone_table(ve["milestones"], len(S)))

# %% [markdown]
# ## Phases: early / middle / late thirds
#
# Layers split into thirds (`L // 3` layers each, the remainder in the late phase). A weight type is
# **U-SHAPE** when its middle-phase mean is below both others, **INVERTED-U** when above both,
# **MONOTONE DOWN / UP** when the three means are strictly ordered, else **OTHER**. The mean by phase
# pools all per-layer matrices of the phase (std with ddof = 1).

# %%
if src.dims.L < 3:
    run.show(f"Not determined: the phase analysis needs at least 3 layers; this model has {src.dims.L}.")
else:
    phases = weight_ranks.phase_analysis(df, src.dims.L)
    run.show("Layers split into thirds: " + ", ".join(f"{k} {a}-{b - 1}" for k, (a, b) in phases.bounds.items()))
    run.show(phases.aggregate)
    for ph, table in phases.per_phase.items():
        run.show(f"**{ph.capitalize()} layers {phases.bounds[ph][0]}-{phases.bounds[ph][1] - 1}**")
        run.show(table, index=True)
    run.show(phases.trends)
    fig = plots.grouped_bars(phases.trends, "weight_type", ["early", "middle", "late"], "mean effective rank",
                             "Mean effective rank by phase")
    run.show(fig, "phase_means.png")

# %% [markdown]
# ## Random-matrix diagnostics: Marchenko–Pastur bulk, spikes, power-law tail
#
# The empirical spectral density (ESD) is the eigenvalues of `WᵀW/N` (N the long side). A matrix of
# i.i.d. entries has a Marchenko–Pastur (MP) bulk; eigenvalues above its finite-size edge (the 99.9 %
# Tracy–Widom margin) are **spikes**, and *spike mass* is their share of `‖W‖²_F`. The tail is fitted by a
# power law `p(λ) ∝ λ^−α` above the cutoff with the smallest Kolmogorov–Smirnov distance (Clauset–Shalizi–
# Newman), with a bootstrap 95 % interval; `*` marks fits that are **not credible** (tail under 20 points or
# α outside 1.5–8). `alpha_weighted` = α·log₁₀ σ²_max is WeightWatcher's weighted alpha (on WeightWatcher's
# scale: σ_max² of `WᵀW`, not divided by N; the CSV's `lambda_max` is σ_max²/N). WeightWatcher reads
# 2 ≤ α ≤ 6 as well trained; the permuted null shows which α a matrix with the same entries and no structure
# gets (an MP-like ESD for light-tailed entries; entries with outliers give the null spikes of their own).
# **This α is not WeightWatcher's**: the cutoff here follows Clauset–Shalizi–Newman (two-sided KS distance,
# tails of at least a few points), while WeightWatcher 0.7.7 chooses among tails down to 2 points against a
# one-sided empirical CDF, so the two differ on matrices where it picks a short tail (up to tens of per cent).
# `policy="ww"` of `utils.weight_ranks.rmt_sweep` reproduces WeightWatcher's α exactly; `make bench` compares
# the two on this model. Plots: the middle layer of each weight type.

# %%
run.show(weight_ranks.quality_by_type(df))
run.show(weight_ranks.layer_quality(df), index=True, details="α by layer and weight type (* not credible)")
run.show(weight_ranks.quality_table(df).round(4), details="every matrix: fit, interval, spikes, null")
run.show(plots.diagnostics.esd_by_type(df, spectra, null_spectra=null_spectra), "esd_by_type.png")

# %% [markdown]
# ## Trained weights against their permuted null
#
# Every metric beside the same metric of the matrix with its entries permuted (same values, no
# correlations): ratio = trained / null. An effective or stable rank ratio below 1 means training
# concentrated the spectrum beyond what the element distribution alone produces; points on the dashed
# diagonal are indistinguishable from the null.

# %%
if null_model:
    run.show(weight_ranks.null_summary(df).round(3))
    run.show(plots.diagnostics.null_vs_trained(df), "null_vs_trained.png")
else:
    run.show("Null model skipped (`null_model = False`).")

# %% [markdown]
# ## Mixture of experts: how much the experts of a block differ
#
# In a mixture-of-experts block every expert's W_gate, W_up and W_down is its own matrix (the tables above
# average them per block). Here, per block and weight type, the spread of the effective rank and of α over
# the experts, beside the same spread of their permuted nulls: a spread no wider than the null's says the
# experts differ only in their entries' distribution, not in their structure.

# %%
spread = weight_ranks.expert_spread(df)
if len(spread):
    run.save_csv(spread, "expert_spread.csv")
    run.show(spread.round(3))
    run.show(plots.diagnostics.expert_spread(df), "expert_spread.png")
else:
    run.show("Not applicable: this model has no mixture-of-experts block.")

# %% [markdown]
# ## Quantisation noise: which part of a spectrum is the model's
#
# A quantised GGUF matrix is the model plus rounding noise: each value is rounded to a multiple of its
# block's step, an error uniform on ± half a step (variance step²/12, from each block's stored scale). The
# **noise edge** is the largest singular value of noise with exactly that variance profile; singular values
# above it are the model's, those below are indistinguishable from what the quantiser adds.

# %%
quant = weight_ranks.quantisation_summary(df)
if len(quant):
    run.show(quant.round(4))
    run.show(plots.diagnostics.quantisation_noise(df, spectra), "quantisation_noise.png")
else:
    run.show("Not applicable: the weights are not block-quantised (F32 / F16 / BF16 tensors carry no rounding noise "
             "model here).")

# %% [markdown]
# ## Largest layer-over-layer transitions
#
# Per weight type, the largest drop and the largest jump of effective rank between consecutive layers.

# %%
run.show(weight_ranks.largest_transitions(df))
run.finish()

# %% [markdown]
# ## Explore
#
# In JupyterLab: pick a weight type, layer (and expert) to see that matrix's spectrum against its null and
# its place along depth, redrawn from the results above (nothing is recomputed). Headless runs keep the
# static figures. Any run folder opens the same way: `explore.open("output/01_weight_ranks/<run>")`.

# %%
explore.here(run)
