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
# # 07 · Model vs model: what changed, where, and how
#
# Two checkpoints of one architecture (a base model and its fine-tune, two checkpoints of a run, a quantised
# and an unquantised file) are matched weight by weight and streamed: two matrices in memory at a time.
# Per weight: the relative change `‖ΔW‖_F/‖W_A‖_F`, the spectrum of `ΔW = W_B − W_A` with its effective,
# stable and numerical rank (a fine-tune that is a low-rank update shows a small rank), and the principal
# angles between the top-k singular subspaces of `W_A` and `W_B` (on the short side: the input-side, right
# singular vectors of a square or tall matrix, the output-side, left ones of a wide one). Per head: the change of the QK / OV
# singular values and symmetry. Mismatched architectures are refused with the first difference named.
# By default model B is `random:<model A>`, the same network freshly initialised: the diff then shows
# how far training moved each weight from where it started (as a distribution, not the exact start).

# %% tags=["parameters"]
model: str = "smollm2"  # model A (the base): bundled default, a .gguf path, an HF checkpoint dir, or a hub id
model_b: str = "random:smollm2"  # model B: any spec of the same architecture; default the same network at initialisation
run_name: str = "default"  # results go to output/<notebook>/<run_name>/
output_root: str = "output"  # results root; a relative path is taken from the project root
top_k: int = 16  # singular directions whose subspaces are compared by principal angles {1..}
heads: bool = True  # also compare the QK / OV spectra and symmetry of every head
top_layers: int = 10  # rows of the most-changed-layers table {1..}
kernel: str = "raw"  # head kernels: raw (products of the checkpoint's weights) or folded (the form on the normalised stream) {raw, folded}

# %%
from utils import attention, diff, explore, plots
from utils.running import start_run
from utils.weights import open_weights

run = start_run("07_model_diff", globals())
a, b = open_weights(model), open_weights(model_b)
pairs = diff.match_models(a, b)
run.show(f"A: {a.name}; B: {b.name}; {len(pairs)} matched matrices.")
run.show(a.describe())

# %% [markdown]
# ## Every weight: relative change, rank of the difference, subspace angles
#
# `rank` counts singular values of ΔW above 1e-3 · σ_max(ΔW) (0: unchanged). `overlap` is the mean cos² of
# the principal angles between the top-k singular subspaces: 1 for the same subspace, about k/n (n the short
# side) for unrelated ones, the baseline shown in column `overlap_null`. The heatmaps show the relative change and the rank by layer and weight type.

# %%
with run.timer("weight diff"):
    df = diff.diff_sweep(a, b, top_k=top_k)
run.save_csv(df.drop(columns=list(diff.ARRAY_COLUMNS)), "weight_diff.csv")
explore.save_diff_spectra(run, df)  # what the explorer below draws
run.show(f"{int((df.rel_change > 0).sum())} of {len(df)} matrices changed; largest relative change {df.rel_change.max():.3g}.")
run.show(plots.diagnostics.diff_by_layer(df), "diff_by_layer.png")
run.show(df.drop(columns=list(diff.ARRAY_COLUMNS)).round(4), details="every matrix")

# %% [markdown]
# ## The layers that changed most
#
# Layers ranked by the root mean square of the relative change of their matrices.

# %%
run.show(diff.changed_layers(df, top_layers).round(4))

# %% [markdown]
# ## Every head: QK / OV spectra and symmetry
#
# `sv_change` = ‖s_B − s_A‖/‖s_A‖ of a head's kernel singular values; `dsymmetry` the change of its symmetry
# score (0 unchanged; a random kernel sits at ≈ 0.5). The kernels are `raw` or `folded` (parameter `kernel`;
# `folded` includes the norm gains, so a fine-tune that only moved the norms shows here and not above).

# %%
if heads:
    run.show(" ".join(attention.attention_form(a, -1).notes(kernel)))
    with run.timer("head diff"):
        hd = diff.head_diff(a, b, circuits=attention.circuits_of(a), kernel=kernel)
    run.save_csv(hd, "head_diff.csv")
    run.show(hd.nlargest(top_layers, "qk_sv_change").round(4))
run.finish()

# %% [markdown]
# ## Explore
#
# In JupyterLab: pick a matrix to see the spectra of A, B and ΔW and the principal angles between their
# subspaces, redrawn from the results above. `explore.open("output/07_model_diff/<run>")` opens any run.

# %%
explore.here(run)
