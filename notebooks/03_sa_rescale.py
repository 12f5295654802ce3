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
# then the seed's three-way verdict, and beyond the seed: heatmaps, a bootstrap interval over heads
# for the correlations, and the residual left by a rank-k correction on top of the scalar rescale.

# %% tags=["parameters"]
model: str = "smollm2"  # bundled default, or a .gguf path, an HF checkpoint dir, or a hub id
run_name: str = "default"  # results go to output/<notebook>/<run_name>/
output_root: str = "output"  # root folder for results
geometry_json: str = ""  # path of a geometry JSON (seed-003 schema) made elsewhere; if set, no model is loaded
anchor: str = "last"  # anchor layer: "last", "middle" or "best" (highest total shape cosine to all layers)
text_path: str = ""  # UTF-8 text file for the attention entropies; empty: the shipped utils/data/sample_passage.txt
seq_len: int = 128  # tokens per sequence (before the tokenizer's special tokens)
n_seqs: int = 16  # number of consecutive text chunks to run (fewer if the text is shorter)
skip_first: int = 1  # query positions excluded from the entropy average (position 0 has entropy 0)
batch_size: int = 4  # sequences per forward pass
rank_k_max: int = 4  # largest k of the rank-k correction follow-up (0 skips it)
n_boot: int = 2000  # bootstrap resamples over heads for the correlation intervals
boot_seed: int = 0  # seed of the bootstrap
heads_to_plot: int = 4  # heads whose spectral shapes across layers are drawn

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from utils import geometry as G
from utils import rescale as R
from utils.report import fmt, md_image, md_table
from utils.runs import start_run

# one clear error per bad parameter, before any work
if anchor not in R.ANCHORS:
    raise ValueError(f"anchor must be one of {R.ANCHORS}, got {anchor!r}")
for _name, _val, _lo in (("seq_len", seq_len, 2), ("n_seqs", n_seqs, 1), ("skip_first", skip_first, 0),
                         ("batch_size", batch_size, 1), ("rank_k_max", rank_k_max, 0), ("n_boot", n_boot, 0),
                         ("heads_to_plot", heads_to_plot, 1)):
    if not isinstance(_val, int) or _val < _lo:
        raise ValueError(f"{_name} must be an integer >= {_lo}, got {_val!r}")
if skip_first >= seq_len:
    raise ValueError(f"skip_first={skip_first} must be smaller than seq_len={seq_len}")
if geometry_json and not Path(geometry_json).expanduser().is_file():
    raise FileNotFoundError(f"geometry_json {geometry_json!r} does not exist: pass a JSON file in the seed-003 "
                            "schema, or leave it empty to extract the geometry from `model`")

run = start_run("03_sa_rescale", run_name, params=dict(
    model=model, geometry_json=geometry_json, anchor=anchor, text_path=text_path, seq_len=seq_len,
    n_seqs=n_seqs, skip_first=skip_first, batch_size=batch_size, rank_k_max=rank_k_max, n_boot=n_boot,
    boot_seed=boot_seed, heads_to_plot=heads_to_plot), output_root=output_root)

# %% [markdown]
# ## Geometry
# Static: singular values of every head's `W_Q_h^T W_K_h` (exact factored computation, float64).
# Dynamic: mean attention entropy per head over a text sample (rule printed below). A supplied
# `geometry_json` replaces both and no model is loaded.

# %%
if geometry_json:
    with run.timer("load geometry"):
        geo = G.load_geometry(geometry_json)
    source = f"supplied JSON `{geometry_json}`" + (f" (model: {geo['model']})" if "model" in geo else "")
else:
    with run.timer("extract geometry"):
        geo = G.extract_geometry(model, text_path=text_path or None, seq_len=seq_len, n_seqs=n_seqs,
                                 skip_first=skip_first, batch_size=batch_size)
    source = f"extracted from `{geo['model']}`"
run.save_json(geo, "geometry.json")
sigma = G.collect_spectra(geo)
ent = G.collect_entropy(geo)
L, H, K = sigma.shape
ranks = np.array([[len(s) for s in row["metric_singvals_per_head"]] for row in geo["static"]])
print(f"{source}: {L} layers x {H} heads, up to {K} singular values per head")

geo_rows = [["source", source], ["layers x heads", f"{L} x {H}"], ["max rank K (zero-padded)", K],
            ["heads with rank < K", int((ranks < K).sum())]]
for key, label in (("text", "text"), ("n_seqs", "sequences"), ("tokens_per_seq", "tokens per sequence"),
                   ("skip_first", "query positions skipped"), ("causal", "causal attention"),
                   ("uniform_entropy", "uniform-attention entropy (nats, same positions)"),
                   ("entropy_split_half_corr", "split-half reliability of per-head entropy (even vs odd sequences)")):
    if key in geo:
        geo_rows.append([label, geo[key]])
geo_rows.append(["entropy range (nats)", f"{ent.min():.3f} .. {ent.max():.3f}"])
geo_table = md_table(["item", "value"], geo_rows)
entropy_rule = geo.get("entropy_rule", "not stated in the supplied JSON")
print(entropy_rule)

# %% [markdown]
# ## The analysis (all experiments; definitions in `utils/rescale.py`)

# %%
with run.timer("analysis"):
    res = R.analyze(sigma, ent, anchor, rank_k_max=rank_k_max, n_boot=n_boot, boot_seed=boot_seed)
    others = {a: (res if a == anchor else R.analyze(sigma, ent, a, rank_k_max=0, n_boot=0)) for a in R.ANCHORS}
aL = res.anchor_layer
print(f"anchor layer {aL}; mean residual {res.mean_resid:.4f}; {res.verdict}")

# %% [markdown]
# ### (1) Spectral shape invariance across layers

# %%
shape_stats = md_table(["statistic over heads", "value"], [
    ["mean", res.shape_cos_mean], ["std", res.shape_cos_std], ["min", res.shape_cos_min], ["max", res.shape_cos_max]])
per_head_table = md_table(["head", "mean pairwise cos across layers"],
                          [[h, res.per_head_cos[h]] for h in range(H)])
print(shape_stats)

# %% [markdown]
# ### (2) Scalar rescale fit against the anchor

# %%
layer_table = md_table(["L", "mean resid", "max resid", "mean T"],
                       [[l, res.layer_mean_resid[l], res.layer_max_resid[l], res.layer_mean_T[l]] for l in range(L)])
overall_table = md_table(["quantity", "value"], [
    ["overall mean residual", res.mean_resid], ["overall max residual", res.max_resid],
    ["fraction of (L, h) with resid < 0.10", res.frac_below[0.10]],
    ["fraction of (L, h) with resid < 0.20", res.frac_below[0.20]]])
anchor_table = md_table(["anchor", "layer", "mean resid", "max resid", "frac < 0.10", "frac < 0.20", "corr(T, entropy)"],
                        [[a, r.anchor_layer, r.mean_resid, r.max_resid, r.frac_below[0.10], r.frac_below[0.20],
                          r.corr_T_entropy] for a, r in others.items()])
anchor_note = ""
if anchor == "best":
    top = np.argsort(-res.anchor_scores)[:5]
    anchor_note = ("Total shape-cosine score of the best candidates (sum over heads and other layers): "
                   + ", ".join(f"L{l}: {res.anchor_scores[l]:.3f}" for l in top) + ".")
print(overall_table)

# %%
def heatmap(M, title, cbar, cmap="viridis", vmin=None, vmax=None):
    fig, ax = plt.subplots(figsize=(min(14, 2.5 + 0.18 * H), min(12, 2.0 + 0.16 * L)))
    im = ax.imshow(M, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xlabel("head"); ax.set_ylabel("layer"); ax.set_title(title)
    ax.axhline(aL, color="red", lw=0.8, ls="--")
    fig.colorbar(im, ax=ax, label=cbar)
    fig.tight_layout()
    return fig

fig = heatmap(res.resid, f"Scalar-rescale residual vs anchor layer {aL} (red line)", "|σ - Tσ_anchor| / |σ|",
              cmap="magma", vmin=0)
fig_resid = run.save_figure(fig, "resid_heatmap.png")
fig = heatmap(res.T, f"Rescale factor T vs anchor layer {aL} (red line)", "T")
fig_T = run.save_figure(fig, "T_heatmap.png")

# %% [markdown]
# ### (2b) Does T track the attention entropy?
# The seed expects a negative correlation: a larger T scales up the logits and sharpens attention.

# %%
boot = res.bootstrap
def ci(key):
    if not boot:
        return "not computed (n_boot = 0)"
    b = boot[key]
    return f"[{b['lo']:+.3f}, {b['hi']:+.3f}] ({b['level']:.0%}, {b['n_valid']} resamples of heads)"
corr_table = md_table(["correlation over all (L, h)", "Pearson r (seed)", "bootstrap interval over heads",
                       "Spearman rho"], [
    ["corr(T, entropy)", f"r = {res.corr_T_entropy:+.3f}", ci("corr_T_entropy"), f"rho = {res.spearman_T_entropy:+.3f}"],
    ["corr(op_norm, entropy)", f"r = {res.corr_opnorm_entropy:+.3f}", ci("corr_opnorm_entropy"),
     f"rho = {res.spearman_opnorm_entropy:+.3f}"]])
op_norm = sigma.max(-1)
fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
for ax, x, lab, r in ((axes[0], res.T, "T (rescale factor vs anchor)", res.corr_T_entropy),
                      (axes[1], op_norm, "op_norm = σ_max", res.corr_opnorm_entropy)):
    sc = ax.scatter(x.ravel(), ent.ravel(), c=np.repeat(np.arange(L), H), cmap="viridis", s=12)
    ax.set_xlabel(lab); ax.set_ylabel("mean attention entropy (nats)"); ax.set_title(f"r = {r:+.3f}")
    if x.min() > 0 and x.max() / x.min() > 50:
        ax.set_xscale("log")
fig.colorbar(sc, ax=axes, label="layer")
fig_scatter = run.save_figure(fig, "T_vs_entropy.png")
print(corr_table)

# %% [markdown]
# ### (3) Cross-head shape similarity within each layer

# %%
cross_table = md_table(["L", "mean pair-cos across heads"], [[l, res.cross_head_cos[l]] for l in range(L)])
print(f"mean over layers: {np.nanmean(res.cross_head_cos) if H > 1 else float('nan'):.4f}")

# %% [markdown]
# ### Spectral shapes of a few heads across layers
# Heads chosen from the least to the most layer-invariant (experiment 1).

# %%
order = np.argsort(res.per_head_cos)
pick = order[np.unique(np.linspace(0, H - 1, min(heads_to_plot, H)).round().astype(int))]
shape = R.spectral_shapes(sigma)
fig, axes = plt.subplots(1, len(pick), figsize=(4.2 * len(pick), 3.6), squeeze=False, sharey=True,
                         layout="constrained")
cmap = plt.get_cmap("viridis")
for ax, h in zip(axes[0], pick):
    for l in range(L):
        ax.plot(shape[l, h], color=cmap(l / max(1, L - 1)), lw=0.9, alpha=0.8)
    ax.plot(shape[aL, h], color="red", lw=1.6, ls="--", label=f"anchor L{aL}")
    ax.set_title(f"head {h}: shape cos {res.per_head_cos[h]:.3f}", fontsize=10)
    ax.set_xlabel("singular value index")
    ax.legend(fontsize=8)
axes[0, 0].set_ylabel("σ / σ_max")
sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, L - 1))
fig.colorbar(sm, ax=axes[0].tolist(), label="layer")
fig_shapes = run.save_figure(fig, "head_shapes.png")

# %% [markdown]
# ### Follow-up: a rank-k correction on top of the scalar rescale
# Per layer, stack the heads' scalar-rescale residual vectors into the `(H, K)` matrix
# `R_L[h] = σ_L^h - T_L^h σ_anchor^h`. A rank-k correction adds to every head a combination of the
# same k "delta shapes" (k(H + K) numbers per layer); the best one is the truncated SVD of `R_L`,
# leaving `sqrt(Σ_{i>k} s_i(R_L)²) / |Σ_L|_F` with `Σ_L` the layer's `(H, K)` spectra. k = 0 is the
# layer's Frobenius-pooled scalar residual. For scale: the best rank-k fit of `Σ_L` with no anchor,
# and one set of k delta shapes shared by all layers.

# %%
rk_rows, rk_summary = [], []
if rank_k_max > 0:
    rk = res.rank_k
    ks = list(range(rank_k_max + 1))
    rk_rows = [[l] + [rk["resid"][l, k] for k in ks] for l in range(L)]
    rk_summary = [["anchor + rank-k, per layer (mean over layers)"] + [rk["resid"][:, k].mean() for k in ks],
                  ["anchor + rank-k, per layer (max over layers)"] + [rk["resid"][:, k].max() for k in ks],
                  ["no anchor, best rank-k per layer (mean)"] + [rk["no_anchor"][:, k].mean() for k in ks],
                  ["anchor + rank-k shared by all layers"] + list(rk["global_resid"]),
                  ["numbers per layer: anchor + rank-k"] + [H + k * (H + K) for k in ks],
                  ["numbers per layer: no anchor rank-k"] + [k * (H + K) for k in ks]]
    rk_layer_table = md_table(["L"] + [f"k={k}" for k in ks], rk_rows)
    rk_summary_table = md_table(["relative Frobenius residual"] + [f"k={k}" for k in ks], rk_summary)
    triv = rk["trivial_from_k"]
    rk_note = (f"With {H} heads and {K} singular values, any k >= {triv} leaves 0 trivially."
               if triv <= rank_k_max else "")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for k in ks:
        ax.plot(range(L), rk["resid"][:, k], marker=".", label=f"k={k}")
    ax.axvline(aL, color="red", ls="--", lw=0.8)
    ax.set_xlabel("layer"); ax.set_ylabel("relative residual"); ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_title("Residual after scalar rescale + rank-k correction"); ax.legend()
    fig_rk = run.save_figure(fig, "rank_k_residual.png")
    print(rk_summary_table)

# %% [markdown]
# ## Report

# %%
results = {"source": source, "num_layers": L, "num_heads": H, "max_rank": K, "anchor": anchor,
           "analysis": res.to_dict(),
           "anchor_comparison": {a: {"anchor_layer": r.anchor_layer, "mean_resid": r.mean_resid,
                                     "max_resid": r.max_resid, "frac_below": {f"{t:.2f}": v for t, v in r.frac_below.items()},
                                     "corr_T_entropy": r.corr_T_entropy} for a, r in others.items()},
           "rank_k_definition": R.rank_k_correction.__doc__.strip().split("\n\n")[1].strip(),
           "entropy_rule": entropy_rule}
run.save_json(results, "results.json")

cross_mean = float(np.nanmean(res.cross_head_cos)) if H > 1 else float("nan")
# beyond the seed: the seed's mean includes the anchor layer's exact zeros
mean_resid_wo_anchor = float(np.delete(res.resid, aL, axis=0).mean()) if L > 1 else float("nan")
worst = int(np.argmax(res.layer_mean_resid))
results["mean_resid_excluding_anchor"] = mean_resid_wo_anchor
results["worst_layer"] = {"layer": worst, "mean_resid": float(res.layer_mean_resid[worst])}
run.save_json(results, "results.json")
md = f"""# SA rescale: is every layer a temperature-rescaled copy of one operator?

Model / geometry: {source}. Anchor: **{anchor}** (layer {aL}).

## Summary

- anchor layer: {aL}
- spectral shape is **{res.stability}** across layers (per-head mean pairwise cos = {res.shape_cos_mean:.3f})
- scalar-rescale fit residual: mean {res.mean_resid:.3f}, max {res.max_resid:.3f};
  {res.frac_below[0.10]:.1%} of (layer, head) under 0.10, {res.frac_below[0.20]:.1%} under 0.20
  (beyond the seed: mean {mean_resid_wo_anchor:.3f} without the anchor layer's exact zeros; worst layer
  {worst} with mean {res.layer_mean_resid[worst]:.3f})
- corr(T, entropy) = {res.corr_T_entropy:+.3f} {ci('corr_T_entropy')}; corr(op_norm, entropy) = {res.corr_opnorm_entropy:+.3f}
  (Spearman: {res.spearman_T_entropy:+.3f} and {res.spearman_opnorm_entropy:+.3f})
- cross-head shape similarity within a layer: mean {cross_mean:.3f}

**Verdict:** {res.verdict}

Thresholds (the seed's): mean residual < 0.10 supported, < 0.30 partially supported, else rejected;
shape mean cosine > 0.98 very stable, > 0.90 approximately stable, else not stable.

## Geometry

{geo_table}

Entropy averaging rule: {entropy_rule}

## (1) Spectral shape invariance across layers

For each head, `σ_L^h / max σ_L^h` is compared across all layer pairs by cosine; the table gives the
distribution over heads of the per-head mean.

{shape_stats}

<details><summary>per head</summary>

{per_head_table}

</details>

{md_image(fig_shapes, "spectral shapes of selected heads across layers")}

## (2) Scalar rescale fit to anchor layer {aL}

`T_L^h = <σ_L^h, σ_anchor^h> / |σ_anchor^h|²`, residual `|σ_L^h - T_L^h σ_anchor^h| / |σ_L^h|`. {anchor_note}

{overall_table}

{layer_table}

{md_image(fig_resid, "residual heatmap")}

{md_image(fig_T, "T heatmap")}

All three anchor choices (the same fit, other anchor layers):

{anchor_table}

## (2b) T and operator norm against the attention entropy

{corr_table}

The seed expects corr(T, entropy) < 0 if T acts as an inverse temperature (larger T, sharper
attention, lower entropy). The interval resamples whole heads (all their layers together) with
replacement, {n_boot} times; note the anchor layer's T is 1 for every head by construction.
Spearman's rho (beyond the seed) shows whether the Pearson r is carried by a few extreme values
(e.g. one layer with a much larger operator norm).

{md_image(fig_scatter, "T and op_norm against entropy")}

## (3) Cross-head shape similarity within each layer

{cross_table}
"""
if rank_k_max > 0:
    md += f"""
## Follow-up: rank-k correction on top of the scalar rescale

Definition: per layer L, `R_L` is the `(heads x K)` matrix of residual vectors
`σ_L^h - T_L^h σ_anchor^h`; a rank-k correction adds to every head a combination of k delta shapes
shared within the layer, and the best one is the truncated SVD of `R_L`. Reported:
`sqrt(Σ_(i>k) s_i(R_L)²) / |Σ_L|_F`, where `Σ_L` stacks the layer's spectra (k = 0: the pooled scalar
residual). Baselines: the best rank-k approximation of `Σ_L` with no anchor at all (k = 0 is 1 by
definition), and the anchor plus k delta shapes shared by all layers at once (relative to `|σ|_F`
over the whole model). Parameter counts exclude the anchor layer itself. {rk_note}

{rk_summary_table}

{md_image(fig_rk, "rank-k residual by layer")}

<details><summary>per layer</summary>

{rk_layer_table}

</details>
"""
md += """
## Files

`geometry.json` (the geometry analysed, seed-003 schema), `results.json` (every number above),
the figures.
"""
run.write_report(md)
print(f"report: {run.path('report.md')}")
