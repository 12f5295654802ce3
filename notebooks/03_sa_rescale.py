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
# # 03 · SA rescale: is every layer a temperature-rescaled copy of one attention operator?
#
# If depth acted like a simulated-annealing schedule, each layer's attention metric
# `W_Q_h^T W_K_h` would be one shared operator times a per-layer scalar ("temperature"). Then the
# singular values `σ_L^h` of head `h` in layer `L` would be a scalar multiple of the anchor layer's
# `σ_anchor^h`. This notebook runs the test of seed 003 on geometry extracted from the model itself:
#
# 1. **shape invariance**: per head, the mean pairwise cosine across layers of `σ / σ_max`;
# 2. **scalar rescale fit**: `T = <σ_L, σ_anchor> / |σ_anchor|²` and the relative residual
#    `|σ_L - T σ_anchor| / |σ_L|` for every (layer, head), against an anchor layer (last, middle or
#    the best-matching one); (2b) does `T` track the measured attention entropy?
# 3. **cross-head sharing**: mean pairwise shape cosine of the heads within each layer;
#
# then the seed's three-way verdict (mean residual < 0.10 supported, < 0.30 partially supported, else
# rejected; shape mean cosine > 0.98 very stable, > 0.90 approximately stable), and beyond the seed:
# heatmaps, a bootstrap interval over heads for the correlations, and the residual left by a rank-k
# correction on top of the scalar rescale. Definitions are in `utils/rescale/analysis.py`.

# %% tags=["parameters"]
model: str = "smollm2"  # bundled default, or a .gguf path, an HF checkpoint dir, or a hub id
run_name: str = "default"  # results go to output/<notebook>/<run_name>/
output_root: str = "output"  # results root; a relative path is taken from the project root
geometry_json: str = ""  # path of a geometry JSON (seed 003 schema) made elsewhere; if set, no model is loaded
anchor: str = "last"  # anchor layer: last, middle or best (highest total shape cosine to all layers) {last, middle, best}
text_path: str = ""  # UTF-8 text file for the attention entropies; empty: the shipped sample passage
seq_len: int = 128  # tokens per sequence (before the special tokens of the tokenizer) {1..}
n_seqs: int = 16  # number of consecutive text chunks to run (fewer if the text is shorter) {1..}
skip_first: int = 1  # query positions excluded from the entropy average (position 0 has entropy 0) {0..}
batch_size: int = 4  # sequences per forward pass {1..}
rank_k_max: int = 4  # largest k of the rank-k correction follow-up (0 skips it) {0..}
n_boot: int = 2000  # bootstrap resamples over heads for the correlation intervals {0..}
boot_seed: int = 0  # seed of the bootstrap
heads_to_plot: int = 4  # heads whose spectral shapes across layers are drawn {1..}
kernel: str = "raw"  # raw (products of the checkpoint's weights) or folded (the form on the normalised stream) {raw, folded}

# %%
from utils import explore, plots, rescale
from utils.rescale import tables
from utils.running import start_run
from utils.running.params import ParameterError, check_file

run = start_run("03_sa_rescale", globals())
if skip_first >= seq_len:
    raise ParameterError(f"skip_first={skip_first} must be smaller than seq_len={seq_len}")
if geometry_json:
    check_file("geometry_json", geometry_json, "geometry JSON file")

# %% [markdown]
# ## Geometry
#
# Static: singular values of every head's QK kernel (exact factored computation, float64), `W_Q_h^T W_K_h`
# with `kernel = raw`, the bilinear form on the normalised residual stream with `kernel = folded` (norm gains,
# QK-norm, the scale; `utils.attention.forms`); the geometry records which.
# Dynamic: mean attention entropy per head over a text sample, by the rule printed below. A supplied
# `geometry_json` replaces both and no model is loaded. The geometry analysed is saved as `geometry.json`.

# %%
with run.timer("geometry"):
    if geometry_json:
        geo = rescale.load_geometry(geometry_json)
        source = f"supplied JSON `{geometry_json}`" + (f" (model: {geo['model']})" if "model" in geo else "")
    else:
        geo = rescale.extract_geometry(model, text_path=text_path or None, seq_len=seq_len, n_seqs=n_seqs,
                                       skip_first=skip_first, batch_size=batch_size, kernel=kernel)
        source = f"extracted from `{geo['model']}` ({kernel} kernels)"
run.save_json(geo, "geometry.json")
sigma, ent = rescale.collect_spectra(geo), rescale.collect_entropy(geo)
entropy_rule = geo.get("entropy_rule", "not stated in the supplied JSON")
run.show(tables.geometry_table(geo, source, sigma, ent))
run.show(f"Entropy averaging rule: {entropy_rule}")

# %% [markdown]
# ## Summary
#
# The analysis against the chosen anchor (with the bootstrap and the rank-k follow-up), and the same
# fit against the other two anchor choices for comparison.

# %%
with run.timer("analysis"):
    res = rescale.analyze(sigma, ent, anchor, rank_k_max=rank_k_max, n_boot=n_boot, boot_seed=boot_seed)
    others = {a: res if a == anchor else rescale.analyze(sigma, ent, a, rank_k_max=0, n_boot=0) for a in rescale.ANCHORS}
aL = res.anchor_layer
explore.save_rescale_fits(run, sigma, others)  # what the explorer below draws
run.show(tables.summary_lines(res))

# %% [markdown]
# ## (1) Spectral shape invariance across layers
#
# For each head, `σ_L^h / max σ_L^h` is compared across all layer pairs by cosine; the table gives the
# distribution over heads of the per-head mean. The figure draws a few heads, from the least to the
# most layer-invariant, every layer coloured by depth and the anchor dashed red.

# %%
run.show(tables.shape_stats(res))
run.show(tables.per_head_table(res), details="per head")
pick = tables.spread_heads(res.per_head_cos, heads_to_plot)
run.show(plots.shapes_across_layers(rescale.spectral_shapes(sigma), pick, aL, res.per_head_cos), "head_shapes.png")

# %% [markdown]
# ## (2) Scalar rescale fit against the anchor
#
# `T_L^h = <σ_L^h, σ_anchor^h> / |σ_anchor^h|²`, residual `|σ_L^h - T_L^h σ_anchor^h| / |σ_L^h|`, per layer
# and overall; the heatmaps mark the anchor layer with a dashed red line. The last table repeats the fit
# against all three anchor choices.

# %%
run.show(tables.overall_table(res))
run.show(tables.layer_table(res))
fig = plots.heatmap(res.resid, f"Scalar-rescale residual vs anchor layer {aL}", "|σ - Tσ_anchor| / |σ|",
                    cmap="magma", vmin=0, mark_row=aL)
run.show(fig, "resid_heatmap.png")
run.show(plots.heatmap(res.T, f"Rescale factor T vs anchor layer {aL}", "T", mark_row=aL), "T_heatmap.png")
if anchor == "best":
    run.show(tables.best_anchor_scores(res))
run.show(tables.anchor_table(others))

# %% [markdown]
# ## (2b) T and operator norm against the attention entropy
#
# The seed expects corr(T, entropy) < 0 if T acts as an inverse temperature (larger T, sharper
# attention, lower entropy). The interval resamples whole heads (all their layers together) with
# replacement; the anchor layer's T is 1 for every head by construction. Spearman's rho (beyond the
# seed) shows whether the Pearson r is carried by a few extreme values.

# %%
run.show(tables.corr_table(res))
fig = plots.scatter_by_layer([res.T, sigma.max(-1)], ent, ["T (rescale factor vs anchor)", "op_norm = σ_max"],
                             [tables.r_text(res.corr_T_entropy), tables.r_text(res.corr_opnorm_entropy)],
                             "mean attention entropy (nats)")
run.show(fig, "T_vs_entropy.png")

# %% [markdown]
# ## (3) Cross-head shape similarity within each layer

# %%
run.show(tables.cross_head_table(res))

# %% [markdown]
# ## Follow-up: a rank-k correction on top of the scalar rescale
#
# Per layer, stack the heads' scalar-rescale residual vectors into the `(H, K)` matrix
# `R_L[h] = σ_L^h - T_L^h σ_anchor^h`. A rank-k correction adds to every head a combination of the same
# k "delta shapes" (k(H + K) numbers per layer); the best one is the truncated SVD of `R_L`, leaving
# `sqrt(Σ_(i>k) s_i(R_L)²) / |Σ_L|_F` with `Σ_L` the layer's `(H, K)` spectra. k = 0 is the layer's
# Frobenius-pooled scalar residual. Baselines: the best rank-k fit of `Σ_L` with no anchor at all, and
# one set of k delta shapes shared by all layers. Parameter counts exclude the anchor layer itself.

# %%
if rank_k_max > 0:
    summary, per_layer, note = tables.rank_k_tables(res, *sigma.shape[1:])
    run.show(summary)
    if note:
        run.show(note)
    curves = {f"k={k}": res.rank_k["resid"][:, k] for k in range(rank_k_max + 1)}
    fig = plots.lines(range(sigma.shape[0]), curves, "layer", "relative residual",
                      "Residual after scalar rescale + rank-k correction", mark_x=aL, yscale="symlog")
    run.show(fig, "rank_k_residual.png")
    run.show(per_layer, index=True, details="per layer")

# %% [markdown]
# ## Files
#
# `geometry.json` (the geometry analysed, seed-003 schema), `results.json` (every number above), the figures.

# %%
run.save_json(tables.results_record(res, others, source, sigma, entropy_rule), "results.json")
run.finish()

# %% [markdown]
# ## Explore
#
# In JupyterLab: pick an anchor, a head and a layer to see that layer's spectrum beside the anchor's
# rescaled by the fitted scalar, and the fit's residual along depth, redrawn from the results above.

# %%
explore.here(run)
