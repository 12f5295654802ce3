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
# # 05 · Spectral dynamics during training
#
# How do the spectra of a transformer's weight matrices evolve while it learns? This notebook
# trains a small GPT-2 (built from a `GPT2Config`, nanoGPT scale) byte-level on text found
# offline on this machine, several times with different seeds. During each run a
# `SpectralRecorder` stores, at regular steps, the singular values of every 2-D weight and the
# eigenvalues of every square one into an HDF5 file per run. The runs are merged into one file in
# the layout of seed `000` (`layers/<name>/singular_values/batch_<i>_run<r>`, ...), the merge is
# verified, and the notebook plots the loss curves, the effective rank of each weight against
# step, the top singular values against step and the spectra at the first and last checkpoints.
#
# Set `merged_file` to look at an existing merged file (written here or elsewhere in the same
# layout) instead of training; set `checkpoints_dir` to a folder of saved checkpoints to record those.

# %% tags=["parameters"]
checkpoints_dir: str = ""  # empty: train the GPT-2 config below from scratch; or a folder of saved checkpoints (HF checkpoint-*/ dirs or *.pt/*.safetensors files) to record as one run
run_name: str = "default"  # results go to output/<notebook>/<run_name>/
output_root: str = "output"  # results root; a relative path is taken from the project root
merged_file: str = ""  # an existing merged spectral HDF5 file (seed layout) to plot instead of training
n_runs: int = 3  # training runs, with seeds seed, seed+1, ... {1..}
seed: int = 0  # seed of the first run
n_layer: int = 4  # transformer blocks
n_embd: int = 64  # model width d
n_head: int = 4  # attention heads
block_size: int = 64  # context length (bytes)
batch_size: int = 16  # sequences per optimiser step
n_steps: int = 300  # optimiser steps per run {1..}
lr: float = 2e-3  # AdamW peak learning rate (warmup, then cosine to lr/10)
record_every: int = 25  # record spectra every this many steps (and at step 0 and the last step) {1..}
text_chars: int = 1000000  # characters of offline training text (installed packages' docs and licences) {1..}
top_k: int = 4  # how many top singular values to plot against step {1..}
n_threads: int = 1  # torch CPU threads (1 is fastest on a small shared CPU) {1..}

# %%
from pathlib import Path

import pandas as pd
import torch

from utils import plots
from utils.dynamics import tables
from utils.dynamics.experiment import record
from utils.dynamics.store import EIG, SV, SpectralFile, verify_spectral_file
from utils.dynamics.tiny_gpt import TinyGPTConfig
from utils.running import start_run
from utils.running.params import check_file

run = start_run("05_spectral_dynamics", globals())
if merged_file:
    check_file("merged_file", merged_file, "merged spectral HDF5 file")
elif checkpoints_dir and not Path(checkpoints_dir).is_dir():
    raise FileNotFoundError(f"parameter checkpoints_dir={checkpoints_dir!r}: no such folder of saved checkpoints")
cfg = TinyGPTConfig(n_layer=n_layer, n_embd=n_embd, n_head=n_head, block_size=block_size, batch_size=batch_size,
                    n_steps=n_steps, lr=lr, warmup_steps=min(20, max(1, n_steps // 10)))
cfg.validate()
torch.set_num_threads(n_threads)

# %% [markdown]
# ## Record
#
# Each run trains for `n_steps` AdamW steps on random byte windows of the offline text and logs
# its training loss (nats per byte, the batch of that step) at every step. Every `record_every`
# steps, and at steps 0 and `n_steps`, the recorder takes the spectra of all 2-D weights: for this
# model the token and position embeddings and, per block, `attn.c_attn` (d, 3d), `attn.c_proj`
# (d, d, square), `mlp.c_fc` (d, 4d) and `mlp.c_proj` (4d, d). The output head is tied to the token
# embedding and appears once.

# %%
rec = record(run, cfg, merged_file, checkpoints_dir, n_runs, seed, record_every, text_chars)
run.show(rec["source"])
if rec["rows"]:
    run.show(pd.DataFrame(rec["rows"]))

# %% [markdown]
# ## Merge and verify
#
# The per-run files are merged into one (runs numbered 1..N in seed order) and the result is
# checked: every run present, the expected number of datasets per layer and analysis, no NaN or
# Inf, the loss range, the size against the inputs.

# %%
with run.timer("verify"):
    report = verify_spectral_file(rec["merged"], inputs=rec["run_files"] or None)
if rec["run_files"] and not report.ok:
    raise RuntimeError("the merged file written by this run failed verification:\n" + report.summary())
run.save_text(report.summary() + "\n", "verify.txt")
run.show("```\n" + report.summary() + "\n```")
with run.timer("read"):
    sf = SpectralFile(rec["merged"])
    df = sf.spectral_frame(top_k=top_k)
if df.empty:
    raise ValueError(f"{rec['merged']} holds no singular values to plot")
run.save_csv(df, "spectral_summary.csv")
if sf.notes:
    run.show("Reading notes: " + "; ".join(sf.notes) + ".")

# %% [markdown]
# ## Loss curves

# %%
losses = {r: sf.loss(r) for r in sf.loss_runs if len(sf.loss(r)[0])}  # run 0: not splittable by run
run.show(plots.loss_curves(losses, "training loss (nats/byte)" if not merged_file else "loss"), "loss_curves.png")
run.show(tables.loss_summary(losses, {r: sf.metadata(r).get("seed", "") for r in sf.runs}))

# %% [markdown]
# ## Effective rank against step
#
# Effective rank (Roy & Vetterli) is exp of the entropy of the normalised singular values: between
# 1 (one direction) and min(m, n) (flat spectrum). A random initialisation starts near the top of
# that range; learning concentrates energy in fewer directions. The table gives means over runs at each
# run's first and last checkpoint (eigenvalue columns only for square weights).

# %%
layers, shapes = sf.layers, {n: sf.shape(n) for n in sf.layers}
fig = plots.metric_vs_step(df, layers, "eff_rank", "effective rank",
                           label=lambda n: f"{tables.short_name(n)} {shapes[n] or ''}")
run.show(fig, "effective_rank_vs_step.png")
tab = tables.first_vs_last(df, layers, shapes)
run.save_csv(tab, "first_vs_last.csv")
run.show(tab)
run.show(tables.change_findings(tab))

# %% [markdown]
# ## Top singular values against step
#
# The `top_k` largest singular values of each weight, averaged over runs (line) with the range over
# runs (band). Growth of the leading values while the rest stay put is what lowers the effective rank.

# %%
sigmas = [c for c in df.columns if c.startswith("sigma_")][:top_k]
run.show(plots.top_values_vs_step(df, layers, sigmas, label=tables.short_name), "top_singular_values_vs_step.png")
run.show(tables.growth_sentence(tab))

# %% [markdown]
# ## Spectra at the first and last checkpoints
#
# Sorted singular values (log scale) at each run's first (dashed) and last (solid) checkpoint, and
# for the square weights the sorted eigenvalue magnitudes |λ| (the eigenvalues are stored complex;
# magnitudes are plotted). Colour = run.

# %%
ends = sf.first_last_checkpoints()
fig = plots.spectra_first_last(sf.getter(SV), layers, ends, "singular value",
                               "Singular values: first checkpoint dashed, last solid", label=tables.short_name)
run.show(fig, "spectra_first_last.png")
square = [n for n in layers if EIG in sf.analyses(n)]
if square:
    fig = plots.spectra_first_last(sf.getter(EIG), square, ends, "|eigenvalue|", "Eigenvalue magnitudes of square "
                                   "weights: first dashed, last solid", label=tables.short_name, flat_cols=5)
    run.show(fig, "eigenvalue_magnitudes_first_last.png")
    run.show(tables.complex_sentence(df, square, shapes))

# %% [markdown]
# ## Files
#
# `run_seed<s>.h5` per-run spectra, `merged_spectra.h5` the merged file in the seed's layout,
# `spectral_summary.csv` one row per run, checkpoint and weight, `first_vs_last.csv` the table above,
# `verify.txt` the verification summary. Layout: `batch_<i>_run<r>` is the i-th recorded checkpoint of
# run r; its step is entry offset_r + i of `batches`; `batch_numbers` / `loss_values` hold every logged
# loss, run after run; eigenvalues are stored as complex64 (HDF5 compound {r, i}).

# %%
sf.close()
run.finish()
