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
# # 06 · Comparing runs
#
# The other notebooks each look at one model. Their questions are comparative: is this rank low
# *for this architecture*, does an instruct model differ from its base, do spectra move the same way
# in every seed? This notebook reads the result files of several runs (every run of a sweep, or a
# list of run folders) and puts them side by side, one colour per model. The reference point for
# "what training did" is the model's `random:` twin: the same architecture with fresh weights from
# its own initialiser (dashed, lighter colour). Sections without runs of their notebook say so.

# %% tags=["parameters"]
sweep: str = ""  # sweep name: compare every run under output/<notebook>/<sweep>/
runs: str = ""  # or a comma-separated list of run folders, absolute or relative to the output root (both empty: the runs named like run_name)
run_name: str = "default"  # results go to output/<notebook>/<run_name>/
output_root: str = "output"  # results root; a relative path is taken from the project root
max_dynamics_weights: int = 12  # weights drawn in the spectral-dynamics panel {1..}

# %%
from utils import compare, plots
from utils.running import output_root as resolve_root
from utils.running import start_run

run = start_run("06_compare", globals())
found = compare.find_runs(resolve_root(output_root), sweep, runs, run_name)
run.save_csv(found.drop(columns=["params"]), "runs.csv")
run.show(compare.runs_table(found))

# %% [markdown]
# ## Weight effective ranks against depth (notebook 01)
#
# Effective rank of every per-layer weight against its relative depth layer / L, so that models with
# different numbers of layers share one axis. A trained model below its `random:` twin uses fewer
# directions than the same weights had at initialisation. The twin sits where i.i.d. weights of that
# shape sit (about 0.8 of full rank for a square matrix, closer to 1 for a wide one); dotted: full rank.

# %%
wr = compare.weight_ranks(found)
if wr.empty:
    run.show("No complete runs of notebook 01 in this selection.")
else:
    run.save_csv(wr, "weight_ranks_all.csv")
    run.show(plots.compare.rank_vs_depth(wr), "eff_rank_vs_depth.png",
             caption="Read across a panel: each line is one model, a dashed line its untrained twin; the gap is what training did to that weight type.")
    fig = plots.compare.rank_fraction(wr)
    run.show(fig, "rank_fraction.png", caption="Bars near 1 use every available direction; the ratio columns below give each model over its random twin.")
    run.show(compare.rank_fraction_table(wr))

# %% [markdown]
# ## Attention kernels (notebook 02)
#
# Distributions over all heads of all layers of the QK kernel's effective rank (at most d_head) and
# symmetry score (1 symmetric, 0 antisymmetric, about 0.5 for unrelated random Q and K), and the same
# for the OV circuit when the runs computed it.

# %%
heads = compare.attention_heads(found)
if heads.empty:
    run.show("No complete runs of notebook 02 in this selection.")
else:
    run.show(plots.compare.kernel_distributions(heads), "kernel_distributions.png",
             caption="Each violin is one model over all its heads; a symmetry distribution away from the dotted 0.5 is structure that random weights do not have.")
    run.show(compare.kernel_summary(heads))

# %% [markdown]
# ## SA-rescale verdicts (notebook 03)
#
# Per model and anchor layer: the mean scalar-rescale residual `|σ_L - T σ_anchor| / |σ_L|` over all
# layers and heads, the seed's verdict on it (< 0.10 supported, < 0.30 partially supported, else
# rejected), corr(T, entropy) and the shape stability of the spectra across layers. Read a model against
# its `random:` twin: i.i.d. weights of one shape have nearly one singular-value shape in every layer
# and head, so a scalar rescale fits an untrained network almost exactly; the verdict says something
# about training only as far as the trained model departs from its twin.

# %%
resc = compare.rescale_table(found)
if resc.empty:
    run.show("No complete runs of notebook 03 in this selection.")
else:
    run.save_csv(resc, "rescale_verdicts.csv")
    run.show(resc)
    run.show(compare.rescale_twin_sentence(resc))
    run.show(plots.compare.rescale_residuals(resc), "rescale_residuals.png",
             caption="Darker is a worse fit of one operator times a per-layer scalar; the white ticks on the colour bar are the verdict thresholds 0.10 and 0.30.")

# %% [markdown]
# ## Latent compression (notebook 04)
#
# F1 of every context mode against the compression ratio r (M = ceil(T / r) slots for a context of T
# tokens), with the context-bootstrap intervals; no context (the floor) and the full context (the
# reference) do not depend on r and are drawn as horizontal lines.

# %%
lat = compare.latent_points(found)
if lat.empty:
    run.show("No complete runs of notebook 04 in this selection.")
else:
    run.save_csv(lat, "latent_f1.csv")
    run.show(plots.compare.f1_vs_compression(lat), "f1_vs_compression.png",
             caption="A mode near the full-context line keeps what the context gave; one near the no-context line keeps nothing. Higher at larger r is better.")

# %% [markdown]
# ## Spectral dynamics (notebook 05)
#
# Effective rank of each weight against training step, one line per run (the mean over its training
# seeds, band: their range), for a spread of weights through the stack.

# %%
dyn = compare.dynamics(found)
if dyn.empty:
    run.show("No complete runs of notebook 05 in this selection.")
else:
    run.show(plots.compare.dynamics_curves(dyn, max_dynamics_weights), "dynamics_curves.png",
             caption="Lines that fall together mean runs concentrate the same weights at the same pace; a band shows the spread over seeds within one run.")

# %%
run.finish()
