"""Reading the result files of several runs into one long table per question, and their summaries.

Each reader takes the runs table of :func:`utils.compare.runs.find_runs` and returns a DataFrame with
a ``model`` column (the run's label) and ``run`` (its folder name); runs of other notebooks and runs
that are not complete are ignored. A run whose result file is missing is skipped with a note in
``df.attrs["skipped"]``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..running.labels import RANDOM_PREFIX, base_label
from .runs import complete, model_order


def _read(runs: pd.DataFrame, prefix: str, name: str, reader) -> pd.DataFrame:
    parts, skipped = [], []
    for r in complete(runs, prefix).itertuples():
        p = Path(r.path) / name
        if not p.is_file():
            skipped.append(f"{r.notebook}/{r.run}: no {name}")
            continue
        df = reader(p, r)
        if df is not None and len(df):
            parts.append(df.assign(model=r.label, run=r.run))
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    out.attrs["skipped"] = skipped
    return out


# ----------------------------------------------------------------------------- 01 weight ranks
def weight_ranks(runs: pd.DataFrame) -> pd.DataFrame:
    """``weight_ranks.csv`` of every 01 run, with ``L``, ``rel_depth = layer / L``, ``full_rank``
    ``= min(rows, cols)`` and ``frac_full = eff_rank / full_rank`` (model-level rows: rel_depth NaN)."""

    def read(p, r):
        df = pd.read_csv(p)
        L = int(df.loc[df.layer_idx >= 0, "layer_idx"].max()) + 1
        df["L"] = L
        df["rel_depth"] = np.where(df.layer_idx >= 0, df.layer_idx / L, np.nan)
        df["full_rank"] = np.minimum(df["rows"], df["cols"])
        df["frac_full"] = df["eff_rank"] / df["full_rank"]
        return df

    return _read(runs, "01", "weight_ranks.csv", read)


def twin_of(label: str, labels) -> str | None:
    """The ``random:`` twin of a model label among ``labels`` (any seed), or None."""
    if label.startswith(RANDOM_PREFIX):
        return None
    for other in labels:
        if other.startswith(RANDOM_PREFIX) and base_label(other) == label:
            return other
    return None


def rank_fraction_table(wr: pd.DataFrame) -> pd.DataFrame:
    """Mean fraction of full rank per weight type (rows) and model (columns) over layers, and for every
    model with a ``random:`` twin the ratio model / twin (the same architecture before training)."""
    per_layer = wr[wr.layer_idx >= 0]
    t = per_layer.pivot_table(index="weight_type", columns="model", values="frac_full", aggfunc="mean", sort=False)
    for m in list(t.columns):
        tw = twin_of(m, t.columns)
        if tw is not None:
            t[f"{m} / {tw}"] = t[m] / t[tw]
    return t.round(4).rename_axis(None, axis=1).reset_index()


# ----------------------------------------------------------------------------- 02 attention kernels
def attention_heads(runs: pd.DataFrame) -> pd.DataFrame:
    """``attention_heads.csv`` of every 02 run (one row per layer and head), with ``rel_depth``."""

    def read(p, r):
        df = pd.read_csv(p)
        df["rel_depth"] = df["layer"] / (int(df["layer"].max()) + 1)
        return df

    return _read(runs, "02", "attention_heads.csv", read)


def kernel_summary(heads: pd.DataFrame) -> pd.DataFrame:
    """Per model: heads, mean and quartiles of the QK (and OV) effective rank, mean symmetry score."""
    rows = []
    for m, g in heads.groupby("model", sort=False):
        row = {"model": m, "heads": len(g)}
        for prefix, name in (("", "QK"), ("ov_", "OV")):
            if f"{prefix}eff_rank" not in g:
                continue
            er = g[f"{prefix}eff_rank"]
            row[f"{name} eff. rank mean"] = er.mean()
            row[f"{name} eff. rank q25-q75"] = f"{er.quantile(0.25):.2f}-{er.quantile(0.75):.2f}"
            if f"{prefix}symmetry" in g:
                row[f"{name} symmetry mean"] = g[f"{prefix}symmetry"].mean()
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- 03 SA rescale
def rescale_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, anchor) from the 03 runs' ``results.json``: anchor layer, mean and max
    residual, share of residuals < 0.1, corr(T, entropy), shape stability and the seed's verdict.
    Every run reports all three anchors; the run made with that anchor wins where there are several. The
    verdict is the one the run recorded for that anchor (NOT DETERMINED included); a results file written
    before verdicts were recorded per anchor says "not recorded"."""

    def read(p, r):
        res = json.loads(p.read_text())
        a = res["analysis"]
        out = []
        for anchor, c in res.get("anchor_comparison", {}).items():
            out.append(
                {
                    "anchor": anchor,
                    "anchor layer": c["anchor_layer"],
                    "mean residual": c["mean_resid"],
                    "max residual": c["max_resid"],
                    "share < 0.10": c["frac_below"].get("0.10"),
                    "corr(T, entropy)": c["corr_T_entropy"],
                    "shape cosine": a["shape_cos_mean"],
                    "stability": a["stability"],
                    "verdict": c.get("verdict_key", "not_recorded").replace("_", " "),
                    "own": anchor == a["anchor"],
                }
            )
        return pd.DataFrame(out)

    df = _read(runs, "03", "results.json", read)
    if df.empty:
        return df
    df = df.sort_values("own", ascending=False).drop_duplicates(["model", "anchor"]).drop(columns=["own", "run"])
    order = {a: i for i, a in enumerate(("last", "middle", "best"))}
    models = {m: i for i, m in enumerate(model_order(df.model))}
    df = (
        df.assign(_m=df.model.map(models), _o=df.anchor.map(order)).sort_values(["_m", "_o"]).drop(columns=["_m", "_o"])
    )
    return df[["model"] + [c for c in df.columns if c != "model"]].reset_index(drop=True)


def rescale_twin_sentence(table: pd.DataFrame) -> str:
    """Each model's mean residual next to its ``random:`` twin's, per anchor (markdown), or ''."""
    out = []
    for m in dict.fromkeys(table.model):
        tw = twin_of(m, table.model.unique())
        if tw is None:
            continue
        a, b = (table[table.model == x].set_index("anchor")["mean residual"] for x in (m, tw))
        pairs = ", ".join(f"{k} {a[k]:.3g} vs {b[k]:.3g}" for k in a.index if k in b.index)
        out.append(f"**{m}** against **{tw}** (mean residual by anchor, trained vs untrained): {pairs}.")
    return "\n\n".join(out)


# ----------------------------------------------------------------------------- 04 latent compression
def latent_points(runs: pd.DataFrame) -> pd.DataFrame:
    """Per 04 run, mode and compression ratio r: F1 with its 95% context-bootstrap interval,
    teacher-normalised F1 and the track; ``reference`` marks the modes that do not depend on r (no
    context, the full-context anchor). Rows of evaluations that did not run are left out."""
    reference = {"no_context", "anchor"}

    def read(p, r):
        m = json.loads(p.read_text())
        rows = [
            {
                "mode": row["mode"],
                "track": row.get("track"),
                "compression": row["ratio"],
                "f1": row["f1"],
                "f1_lo": row.get("f1_lo", np.nan),
                "f1_hi": row.get("f1_hi", np.nan),
                "norm_f1": row.get("norm_f1", np.nan),
                "reference": row["mode"] in reference,
            }
            for row in m.get("summary", [])
            if row.get("f1") is not None and np.isfinite(row["f1"])
        ]
        return pd.DataFrame(rows)

    return _read(runs, "04", "metrics.json", read)


# ----------------------------------------------------------------------------- 05 spectral dynamics
def dynamics(runs: pd.DataFrame) -> pd.DataFrame:
    """Per 05 run, weight and step: effective rank averaged over the run's training seeds (and its range)."""

    def read(p, r):
        df = pd.read_csv(p)
        g = df.groupby(["layer", "step"])["eff_rank"]
        lo, hi = g.min().rename("eff_rank_min"), g.max().rename("eff_rank_max")
        return pd.concat([g.mean(), lo, hi], axis=1).reset_index()

    out = _read(runs, "05", "spectral_summary.csv", read)
    if len(out):  # one label per run (several 05 runs usually share model "")
        out["model"] = out["run"]
    return out
