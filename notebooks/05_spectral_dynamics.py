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
output_root: str = "output"  # root folder for results
merged_file: str = ""  # an existing merged spectral HDF5 file (seed layout) to plot instead of training
n_runs: int = 3  # training runs, with seeds seed, seed+1, ...
seed: int = 0  # seed of the first run
n_layer: int = 4  # transformer blocks
n_embd: int = 64  # model width d
n_head: int = 4  # attention heads
block_size: int = 64  # context length (bytes)
batch_size: int = 16  # sequences per optimiser step
n_steps: int = 300  # optimiser steps per run
lr: float = 2e-3  # AdamW peak learning rate (warmup, then cosine to lr/10)
record_every: int = 25  # record spectra every this many steps (and at step 0 and the last step)
text_chars: int = 1000000  # characters of offline training text (installed packages' docs and licences)
top_k: int = 4  # how many top singular values to plot against step
n_threads: int = 1  # torch CPU threads (1 is fastest on a small shared CPU)

# %%
import math
import re
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from utils.recorder import SpectralRecorder, record_checkpoint_dir
from utils.report import df_to_md, fmt, md_image, md_table
from utils.runs import start_run
from utils.spectral_store import EIG, SV, SpectralFile, merge_runs, verify_spectral_file
from utils.tiny_gpt import TinyGPTConfig, encode_bytes, make_tiny_gpt, offline_text, train_tiny_gpt

# --- validate parameters early, one clear error each ---
if merged_file and not Path(merged_file).is_file():
    raise FileNotFoundError(f"merged_file={merged_file!r} does not exist: give the path of a merged "
                            "spectral HDF5 file, or leave it empty to train")
if not merged_file and checkpoints_dir and not Path(checkpoints_dir).is_dir():
    raise FileNotFoundError(f"checkpoints_dir={checkpoints_dir!r} is not a folder: give a folder of saved "
                            "checkpoints, or leave it empty to train the small GPT-2")
for _name, _val in dict(n_runs=n_runs, n_steps=n_steps, record_every=record_every, top_k=top_k,
                        n_threads=n_threads).items():
    if int(_val) < 1:
        raise ValueError(f"{_name} must be a positive integer, got {_val!r}")
cfg = TinyGPTConfig(n_layer=n_layer, n_embd=n_embd, n_head=n_head, block_size=block_size,
                    batch_size=batch_size, n_steps=n_steps, lr=lr,
                    warmup_steps=min(20, max(1, n_steps // 10)))
cfg.validate()
torch.set_num_threads(n_threads)

params = dict(checkpoints_dir=checkpoints_dir, run_name=run_name, output_root=output_root, merged_file=merged_file,
              n_runs=n_runs, seed=seed, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
              block_size=block_size, batch_size=batch_size, n_steps=n_steps, lr=lr,
              record_every=record_every, text_chars=text_chars, top_k=top_k, n_threads=n_threads)
run = start_run("05_spectral_dynamics", run_name, params=params, output_root=output_root)

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
source_note = ""
run_files: list[Path] = []
train_rows = []
if merged_file:
    merged_path = Path(merged_file)
    source_note = f"Existing merged file `{merged_path}` (nothing trained in this run)."
elif checkpoints_dir:
    with run.timer("record_checkpoints"):
        p = run.path("run_checkpoints.h5")
        record_checkpoint_dir(checkpoints_dir, p)
        run_files.append(p)
    source_note = f"Checkpoints recorded from `{checkpoints_dir}`."
else:
    with run.timer("load_text"):
        text, text_info = offline_text(text_chars)
        data = encode_bytes(text)
    print(f"training text: {text_info['n_chars']:,} characters from {text_info['n_files']} files "
          f"(sha256 {text_info['sha256'][:12]})")
    for r in range(n_runs):
        s = seed + r
        net = make_tiny_gpt(cfg, seed=s)
        p = run.path(f"run_seed{s}.h5")
        t0 = time.perf_counter()
        with run.timer("train_and_record"):
            with SpectralRecorder(p, net, config=cfg.as_dict(), seed=s,
                                  metadata={"text": text_info, "record_every": record_every}) as rec:
                def on_step(step, loss, m, rec=rec):
                    rec.log_loss(step, loss)
                    if step % record_every == 0 or step == n_steps:
                        rec.record(step)
                out = train_tiny_gpt(net, data, cfg, seed=s, on_step=on_step)
        train_rows.append({"run": r + 1, "seed": s, "checkpoints": rec.n_checkpoints,
                           "final loss": out["final_loss"], "seconds": time.perf_counter() - t0})
        run_files.append(p)
    n_params = sum(q.numel() for q in net.parameters())
    source_note = (f"{n_runs} runs of a GPT-2 with {n_layer} layers, width {n_embd}, {n_head} heads, "
                   f"context {block_size} bytes ({n_params:,} parameters), {n_steps} steps of batch "
                   f"{batch_size}, trained on {text_info['n_chars']:,} characters of offline text.")
if run_files:
    merged_path = run.path("merged_spectra.h5")
    with run.timer("merge"):
        merge_runs(run_files, merged_path, overwrite=True)
    for f in run_files + [merged_path]:
        run.register(f.name)
print(source_note)

# %% [markdown]
# ## Merge and verify
#
# The per-run files are merged into one (runs numbered 1..N in seed order) and the result is
# checked: every run present, the expected number of datasets per layer and analysis, no NaN or
# Inf, the loss range, the size against the inputs.

# %%
with run.timer("verify"):
    report = verify_spectral_file(merged_path, inputs=run_files or None)
print(report.summary())
if run_files and not report.ok:
    raise RuntimeError("the merged file written by this run failed verification:\n" + report.summary())
run.save_text(report.summary() + "\n", "verify.txt")

# %%
with run.timer("read"):
    sf = SpectralFile(merged_path)
    df = sf.spectral_frame(top_k=top_k)
    runs = sf.runs
    layers = sf.layers
    losses = {r: sf.loss(r) for r in sf.loss_runs if len(sf.loss(r)[0])}  # run 0: not splittable
    run_meta = {r: sf.metadata(r) for r in runs}
if df.empty:
    raise ValueError(f"{merged_path} holds no singular values to plot")
run.save_csv(df, "spectral_summary.csv")
for note in sf.notes:
    print("note:", note)


def short(name: str) -> str:
    return re.sub(r"^(transformer|model)\.", "", name).removesuffix(".weight")


def layer_grid(names):
    """Rows: weights outside numbered blocks, then one row per block; returns (rows, ncols)."""
    groups: dict = {}
    for n in names:
        m = re.search(r"\.(\d+)\.", n)
        groups.setdefault(int(m.group(1)) if m else -1, []).append(n)
    rows = [groups[k] for k in sorted(groups)]
    return rows, max(len(r) for r in rows)


def grid_axes(names, size=(2.9, 2.2), flat_cols=None):
    """One axis per weight: a row per block, or ``flat_cols`` weights per row."""
    if flat_cols:
        rows = [names[k:k + flat_cols] for k in range(0, len(names), flat_cols)]
        ncols = min(flat_cols, len(names))
    else:
        rows, ncols = layer_grid(names)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(size[0] * ncols, size[1] * len(rows)),
                             squeeze=False)
    where = {}
    for i, row in enumerate(rows):
        for j in range(ncols):
            if j < len(row):
                where[row[j]] = axes[i][j]
            else:
                axes[i][j].axis("off")
    return fig, where


colors = {r: plt.cm.tab10((k % 10)) for k, r in enumerate(runs)}
md = [f"# 05 · Spectral dynamics during training", "", source_note, "",
      f"Merged file: `{merged_path.name if run_files else merged_path}` ({len(runs)} runs, "
      f"{len(layers)} weights).", "",
      "## Verification", "", "```", report.summary(), "```", ""]
if sf.notes:
    md += ["Reading notes: " + "; ".join(sf.notes) + ".", ""]

# %% [markdown]
# ## Loss curves

# %%
fig, ax = plt.subplots(figsize=(7, 4))
loss_rows = []
for r, (st, lv) in sorted(losses.items()):
    c = colors.get(r, "k")
    ax.plot(st, lv, color=c, alpha=0.25, lw=0.8)
    w = max(1, min(20, len(lv) // 15))
    sm = pd.Series(lv).rolling(w, min_periods=1).mean().to_numpy()
    ax.plot(st, sm, color=c, lw=1.8, label=f"run {r}" if r else "all runs")
    tail = lv[-max(1, len(lv) // 10):]
    loss_rows.append([r or "all", run_meta.get(r, {}).get("seed", ""), len(lv), lv[0] if len(lv) else None,
                      float(np.mean(tail)) if len(tail) else None, float(np.min(lv)) if len(lv) else None])
ax.set_xlabel("step")
ax.set_ylabel("training loss (nats/byte)" if not merged_file else "loss")
ax.set_title("Loss per run (thin: every logged value; thick: rolling mean)")
ax.legend()
img = run.save_figure(fig, "loss_curves.png")
plt.show()
md += ["## Loss", "", md_image(img, "loss curves"), "",
       md_table(["run", "seed", "logged values", "first loss", "final loss (mean of last 10%)", "min loss"],
                loss_rows), ""]
if train_rows:
    md += [df_to_md(pd.DataFrame(train_rows)), ""]

# %% [markdown]
# ## Effective rank against step
#
# Effective rank (Roy & Vetterli) is exp of the entropy of the normalised singular values: between
# 1 (one direction) and min(m, n) (flat spectrum). A random initialisation starts near the top of
# that range; learning concentrates energy in fewer directions.

# %%
fig, where = grid_axes(layers)
for name, ax in where.items():
    sub = df[df.layer == name]
    for r in runs:
        d = sub[sub.run == r].sort_values("step")
        ax.plot(d.step, d.eff_rank, color=colors[r], lw=1.3, marker=".", ms=3, label=f"run {r}")
    ax.set_title(f"{short(name)} {sf.shape(name) or ''}", fontsize=8)
    ax.tick_params(which="both", labelsize=7)
next(iter(where.values())).legend(fontsize=7)
fig.supxlabel("step")
fig.supylabel("effective rank")
fig.tight_layout()
img = run.save_figure(fig, "effective_rank_vs_step.png")
plt.show()

first_step = df.groupby("run").step.transform("min")
last_step = df.groupby("run").step.transform("max")
first = df[df.step == first_step].groupby("layer")
last = df[df.step == last_step].groupby("layer")
tab = pd.DataFrame({
    "weight": [short(n) for n in layers],
    "shape": [str(sf.shape(n) or "") for n in layers],
    "eff. rank first": [first.eff_rank.mean()[n] for n in layers],
    "eff. rank last": [last.eff_rank.mean()[n] for n in layers],
    "spread last (max-min over runs)": [np.ptp(last.get_group(n).eff_rank) for n in layers],
    "sigma_1 first": [first.sigma_1.mean()[n] for n in layers],
    "sigma_1 last": [last.sigma_1.mean()[n] for n in layers],
    "max abs eig first": [first.eig_radius.mean()[n] for n in layers],
    "max abs eig last": [last.eig_radius.mean()[n] for n in layers],
})
tab["eff. rank change %"] = 100 * (tab["eff. rank last"] / tab["eff. rank first"] - 1)
run.save_csv(tab, "first_vs_last.csv")
drop = tab.sort_values("eff. rank change %")
most, least = drop.iloc[0], drop.iloc[-1]
md += ["## Effective rank against step", "", md_image(img, "effective rank against step"), "",
       "Means over runs at each run's first and last checkpoint (eigenvalue columns only for square "
       "weights):", "", df_to_md(tab), "",
       f"Measured here: the largest relative change in effective rank is in `{most.weight}` "
       f"({fmt(most['eff. rank first'])} → {fmt(most['eff. rank last'])}, "
       f"{most['eff. rank change %']:+.1f}%); the smallest in `{least.weight}` "
       f"({least['eff. rank change %']:+.1f}%). The spread across runs at the last checkpoint is at most "
       f"{fmt(tab['spread last (max-min over runs)'].max())} (of ranks around "
       f"{fmt(tab['eff. rank last'].median())}).", ""]

# %% [markdown]
# ## Top singular values against step
#
# The `top_k` largest singular values of each weight, averaged over runs (line) with the range over
# runs (band). Growth of the leading values while the rest stay put is what lowers the effective rank.

# %%
fig, where = grid_axes(layers)
sig_cols = [c for c in df.columns if c.startswith("sigma_")][:top_k]
cmap = plt.cm.viridis
for name, ax in where.items():
    sub = df[df.layer == name]
    g = sub.groupby("step")[sig_cols]
    mean, lo, hi = g.mean(), g.min(), g.max()
    for k, c in enumerate(sig_cols):
        col = cmap(k / max(1, len(sig_cols) - 1))
        ax.plot(mean.index, mean[c], color=col, lw=1.3, label=c.replace("sigma_", "σ"))
        if len(runs) > 1:
            ax.fill_between(mean.index, lo[c], hi[c], color=col, alpha=0.2, lw=0)
    ax.set_title(short(name), fontsize=8)
    ax.tick_params(which="both", labelsize=7)
next(iter(where.values())).legend(fontsize=7)
fig.supxlabel("step")
fig.supylabel("singular value")
fig.tight_layout()
img = run.save_figure(fig, "top_singular_values_vs_step.png")
plt.show()
growth = (tab["sigma_1 last"] / tab["sigma_1 first"]).to_numpy()
md += ["## Top singular values against step", "", md_image(img, "top singular values against step"), "",
       f"σ1 grows by a factor between {fmt(np.nanmin(growth), 3)} and {fmt(np.nanmax(growth), 3)} "
       f"from the first to the last checkpoint (median {fmt(np.nanmedian(growth), 3)}).", ""]

# %% [markdown]
# ## Spectra at the first and last checkpoints
#
# Sorted singular values (log scale) at each run's first (dashed) and last (solid) checkpoint, and
# for the square weights the sorted eigenvalue magnitudes |λ| (the eigenvalues are stored complex;
# magnitudes are plotted).

# %%
def first_last(r):
    idx = sf.checkpoint_indices(r)
    return (idx[0], idx[-1]) if idx else (None, None)


fig, where = grid_axes(layers)
for name, ax in where.items():
    for r in runs:
        i0, i1 = first_last(r)
        if i0 is None:
            continue
        for i, ls in ((i0, "--"), (i1, "-")):
            S = np.sort(sf.spectrum(name, SV, r, i))[::-1]
            ax.semilogy(np.arange(1, S.size + 1), np.maximum(S, 1e-12), ls, color=colors[r], lw=1)
    ax.set_title(short(name), fontsize=8)
    ax.tick_params(which="both", labelsize=7)
fig.supxlabel("index (descending)")
fig.supylabel("singular value")
fig.suptitle("Singular values: first checkpoint dashed, last solid; colour = run", fontsize=9)
fig.tight_layout()
img_sv = run.save_figure(fig, "spectra_first_last.png")
plt.show()
md += ["## Spectra at the first and last checkpoints", "", md_image(img_sv, "singular value spectra"), ""]

square = [n for n in layers if EIG in sf.analyses(n)]
if square:
    fig, where = grid_axes(square, flat_cols=5)
    for name, ax in where.items():
        for r in runs:
            i0, i1 = first_last(r)
            if i0 is None or i1 not in sf.checkpoint_indices(r, name, EIG):
                continue
            for i, ls in ((i0, "--"), (i1, "-")):
                mag = np.sort(np.abs(sf.spectrum(name, EIG, r, i)))[::-1]
                ax.semilogy(np.arange(1, mag.size + 1), np.maximum(mag, 1e-12), ls, color=colors[r], lw=1)
        ax.set_title(short(name), fontsize=8)
        ax.tick_params(which="both", labelsize=7)
    fig.supxlabel("index (descending)")
    fig.supylabel("|eigenvalue|")
    fig.suptitle("Eigenvalue magnitudes of square weights: first dashed, last solid", fontsize=9)
    fig.tight_layout()
    img_eig = run.save_figure(fig, "eigenvalue_magnitudes_first_last.png")
    plt.show()
    last_ev = df[(df.step == last_step) & df.layer.isin(square)]
    md += [md_image(img_eig, "eigenvalue magnitudes"), "",
           f"At the last checkpoint the square weights have on average "
           f"{fmt(last_ev.n_complex_eig.mean(), 3)} non-real eigenvalues (of "
           f"{fmt(np.mean([sf.shape(n)[0] for n in square if sf.shape(n)]), 3)}).", ""]

# %% [markdown]
# ## Files

# %%
files = [f"- `{Path(p).name}`: per-run spectra" for p in run_files]
if run_files:
    files.append(f"- `{merged_path.name}`: merged file in the seed's layout")
md += ["## Files", "", *files, "- `spectral_summary.csv`: one row per run, checkpoint and weight",
       "- `first_vs_last.csv`: the table above", "- `verify.txt`: the verification summary", "",
       "Layout: `batch_<i>_run<r>` is the i-th recorded checkpoint of run r; its step is entry "
       "offset_r + i of `batches`; `batch_numbers`/`loss_values` hold every logged loss, run after run; "
       "eigenvalues are stored as complex64 (HDF5 compound {r, i}).", ""]
sf.close()
run.write_report("\n".join(md))
print(f"report: {run.path('report.md')}")
