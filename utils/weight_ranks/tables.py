"""Tables built on the weight sweep: statistics by weight type, phases, transitions, variance explained."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..spectral import ENERGY_LEVELS, energy_count, energy_share
from .sweep import PER_LAYER_ORDER


def experts_averaged(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (layer, weight type): the experts of a mixture-of-experts block averaged (every numeric
    column the mean over the block's experts, ``n_experts`` their count); unchanged for a dense model."""
    if "expert" not in df or not (df["expert"] >= 0).any():
        return df
    dense = df[df["expert"] < 0]
    ex = df[df["expert"] >= 0]
    num = [
        c
        for c in ex.columns
        if pd.api.types.is_numeric_dtype(ex[c])
        and not pd.api.types.is_bool_dtype(ex[c])
        and c not in ("layer_idx", "expert")
    ]
    flags = [c for c in ex.columns if pd.api.types.is_bool_dtype(ex[c])]
    keys = ["layer_idx", "weight_type"]
    agg = ex.groupby(keys, sort=False)[num].mean()
    agg[flags] = ex.groupby(keys, sort=False)[flags].all()  # a flag (credible) holds for the block if for every expert
    num += flags
    first = ex.groupby(keys, sort=False)[[c for c in ex.columns if c not in num + keys]].first()
    merged = pd.concat([agg, first], axis=1).reset_index()
    merged["n_experts"] = ex.groupby(keys, sort=False).size().to_numpy()
    merged["expert"] = -2  # marks a row that averages experts
    # the name of a fused 3-D tensor's expert slice `[3]` or of a per-expert tensor's `experts.3.` stands for all
    name = merged["name"].str.replace(r"\[\d+\]", "[*]", regex=True)
    merged["name"] = name.str.replace(r"experts\.\d+\.", "experts.*.", regex=True)
    out = pd.concat([dense, merged[[c for c in list(df.columns) + ["n_experts"] if c in merged]]], ignore_index=True)
    order = {t: i for i, t in enumerate(PER_LAYER_ORDER)}
    out["_l"] = out["layer_idx"].where(out["layer_idx"] >= 0, 10**9)
    out["_o"] = out["weight_type"].map(lambda t: order.get(t, 99))
    return out.sort_values(["_l", "_o", "weight_type"], kind="stable").drop(columns=["_l", "_o"]).reset_index(drop=True)


def expert_spread(df: pd.DataFrame, metrics=("eff_rank", "alpha")) -> pd.DataFrame:
    """How much the experts of one block differ: per (layer, weight type) of a mixture of experts, the count,
    mean, std, min and max over the experts of each metric, and beside it the same spread of the permuted
    null (``null_<metric>``, when the sweep computed it): the spread the experts' entry distributions alone
    give. Empty for a dense model."""
    if "expert" not in df or not (df["expert"] >= 0).any():
        return pd.DataFrame()
    ex = df[df["expert"] >= 0]
    rows = []
    for (layer, wt), g in ex.groupby(["layer_idx", "weight_type"], sort=False):
        row = {"layer": layer, "weight_type": wt, "experts": len(g)}
        for m in metrics:
            for col, tag in ((m, m), (f"null_{m}", f"null {m}")):
                if col in g:
                    x = g[col].to_numpy(dtype=float)
                    row.update(
                        {
                            f"{tag} mean": np.nanmean(x),
                            f"{tag} std": np.nanstd(x),
                            f"{tag} min": np.nanmin(x),
                            f"{tag} max": np.nanmax(x),
                        }
                    )
        rows.append(row)
    return pd.DataFrame(rows)


def per_layer(df: pd.DataFrame) -> pd.DataFrame:
    """Only the per-layer matrices (drops embeddings), sorted by layer; the experts of a block averaged
    (:func:`experts_averaged`)."""
    df = experts_averaged(df)
    return df[df["layer_idx"] >= 0].sort_values(["layer_idx"], kind="stable")


def weight_types(df: pd.DataFrame) -> list[str]:
    present = set(df["weight_type"])
    return [t for t in PER_LAYER_ORDER if t in present] + sorted(present - set(PER_LAYER_ORDER))


def stats_by_weight_type(df: pd.DataFrame, metric: str = "eff_rank") -> pd.DataFrame:
    """Count, min, max, mean, median, std, range, first, last, variance, CV per weight type.

    ``std`` / ``variance`` are population statistics (ddof=0); ``first`` / ``last`` are layer 0 and
    layer L-1; CV = std / mean.
    """
    d = per_layer(df)
    out = []
    for wt in weight_types(d):
        sub = d[d["weight_type"] == wt].sort_values("layer_idx")
        x = sub[metric].to_numpy(dtype=float)
        out.append(
            {
                "weight_type": wt,
                "shape": sub["shape"].iloc[0],
                "count": len(x),
                "min": x.min(),
                "max": x.max(),
                "mean": x.mean(),
                "median": float(np.median(x)),
                "std": x.std(),
                "range": x.max() - x.min(),
                "first": x[0],
                "last": x[-1],
                "variance": x.var(),
                "cv": x.std() / x.mean() if x.mean() else float("nan"),
            }
        )
    return pd.DataFrame(out)


def phase_bounds(L: int) -> dict[str, tuple[int, int]]:
    """Early / middle / late thirds: ``[0, L//3)``, ``[L//3, 2*(L//3))``, ``[2*(L//3), L)``."""
    t = L // 3
    return {"early": (0, t), "middle": (t, 2 * t), "late": (2 * t, L)}


def phase_of(layer: int, L: int) -> str:
    for name, (a, b) in phase_bounds(L).items():
        if a <= layer < b:
            return name
    raise IndexError(layer)


def trend_label(early: float, middle: float, late: float) -> str:
    """U-SHAPE (middle lowest), INVERTED-U (middle highest), MONOTONE DOWN / UP, else OTHER."""
    if middle < early and middle < late:
        return "U-SHAPE"
    if early > middle > late:
        return "MONOTONE DOWN"
    if early < middle < late:
        return "MONOTONE UP"
    if middle > early and middle > late:
        return "INVERTED-U"
    return "OTHER"


@dataclass
class PhaseAnalysis:
    bounds: dict  # phase -> (start, stop)
    aggregate: pd.DataFrame  # phase, mean, std (over all per-layer matrices of the phase; ddof=1)
    per_phase: dict  # phase -> DataFrame by weight type: mean std min max median range cv
    trends: pd.DataFrame  # weight_type, early, middle, late, trend


def phase_analysis(df: pd.DataFrame, L: int, metric: str = "eff_rank") -> PhaseAnalysis:
    if L < 3:
        raise ValueError(f"phase analysis needs at least 3 layers (got L={L})")
    d = per_layer(df).copy()
    bounds = phase_bounds(L)
    d["phase"] = d["layer_idx"].map(lambda i: phase_of(int(i), L))
    agg, per = [], {}
    for ph in bounds:
        sub = d[d["phase"] == ph]
        agg.append(
            {
                "phase": ph,
                "layers": f"{bounds[ph][0]}-{bounds[ph][1] - 1}",
                "mean": sub[metric].mean(),
                "std": sub[metric].std(),
            }
        )
        s = sub.groupby("weight_type")[metric].agg(["mean", "std", "min", "max", "median"])
        s["range"] = s["max"] - s["min"]
        s["cv"] = s["std"] / s["mean"]
        per[ph] = s.reindex([w for w in weight_types(d) if w in s.index])
    trends = []
    for wt in weight_types(d):
        v = [d[(d["phase"] == ph) & (d["weight_type"] == wt)][metric].mean() for ph in bounds]
        trends.append({"weight_type": wt, "early": v[0], "middle": v[1], "late": v[2], "trend": trend_label(*v)})
    return PhaseAnalysis(bounds, pd.DataFrame(agg), per, pd.DataFrame(trends))


def largest_transitions(df: pd.DataFrame, metric: str = "eff_rank") -> pd.DataFrame:
    """Per weight type, the largest layer-over-layer drop and jump of ``metric``."""
    d = per_layer(df)
    out = []
    for wt in weight_types(d):
        x = d[d["weight_type"] == wt].sort_values("layer_idx")[metric].to_numpy(dtype=float)
        if len(x) < 2:
            continue
        diff = np.diff(x)
        i, j = int(np.argmin(diff)), int(np.argmax(diff))
        out.append(
            {
                "weight_type": wt,
                "max_drop_layers": f"{i}->{i + 1}",
                "max_drop": diff[i],
                "max_jump_layers": f"{j}->{j + 1}",
                "max_jump": diff[j],
            }
        )
    return pd.DataFrame(out)


def variance_explained(S: np.ndarray, levels=ENERGY_LEVELS) -> dict:
    """Per-component variance share sigma_i^2 / sum sigma^2, its cumulative sum, and milestones."""
    e = np.asarray(S, dtype=np.float64) ** 2
    share, cum = energy_share(e)
    return {"per_component": share, "cumulative": cum, "milestones": {lv: energy_count(e, lv) for lv in levels}}


def milestone_table(milestones: dict, n: int) -> pd.DataFrame:
    """``{level: components}`` as a table: level, components needed, their share of all ``n``."""
    return pd.DataFrame(
        [
            {"variance": f"{int(100 * k)}%", "components": v, "share of all": f"{100 * v / n:.1f}%"}
            for k, v in milestones.items()
        ]
    )


def with_full_rank(df: pd.DataFrame) -> pd.DataFrame:
    """Per-layer rows with a ``full_rank`` column, min(rows, cols)."""
    return per_layer(df).assign(full_rank=lambda d: d[["rows", "cols"]].min(axis=1))


def layer_table(df: pd.DataFrame, metric: str = "eff_rank", fraction: bool = False) -> pd.DataFrame:
    """Layers x weight types of ``metric`` (as a fraction of full rank when ``fraction``)."""
    d = with_full_rank(df)
    if fraction:
        d = d.assign(**{metric: d[metric] / d["full_rank"]})
    return d.pivot(index="layer_idx", columns="weight_type", values=metric)[weight_types(d)]


def extremes(df: pd.DataFrame) -> str:
    """One sentence: the per-layer matrices with the lowest and highest effective rank."""
    lo, hi = with_full_rank(df).sort_values("eff_rank").iloc[[0, -1]].itertuples()
    return (
        f"Lowest effective rank: {lo.weight_type} of layer {lo.layer_idx} ({lo.eff_rank:.1f} of {lo.full_rank}); "
        f"highest: {hi.weight_type} of layer {hi.layer_idx} ({hi.eff_rank:.1f} of {hi.full_rank})."
    )


MODEL_LEVEL_COLUMNS = [
    "weight_type",
    "shape",
    "eff_rank",
    "stable_rank",
    "spectral_norm",
    "condition_number",
    "n50",
    "n90",
    "n99",
]


def quantisation_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per weight type of a quantised model: its quantisation type, the noise's share of ``||W||_F`` (median)
    and the share of singular values above the noise edge (mean, min over layers); empty when nothing is
    quantised."""
    if "quant_edge" not in df:
        return pd.DataFrame()
    q = df[df["quant_edge"].notna()].assign(share=lambda d: d.n_above_quant_edge / d[["rows", "cols"]].min(axis=1))
    rows = []
    for wt in weight_types(q):
        d = q[q.weight_type == wt]
        rows.append(
            {
                "weight_type": wt,
                "quantisation": ", ".join(sorted(set(d.quant_type))),
                "matrices": len(d),
                "noise / ‖W‖_F (median)": d.quant_noise_rel.median(),
                "σ above noise edge (mean share)": d.share.mean(),
                "σ above noise edge (min share)": d.share.min(),
            }
        )
    return pd.DataFrame(rows)


def down_projection(src, layer: int):
    """``(matrix, label)``: the block's MLP output projection, W_down; a mixture-of-experts block's shared
    expert's (or its first expert's) when it has no dense one."""
    for role, expert in (("down", None), ("shared_down", None), ("down", 0)):
        if (role, expert) in src.layer_roles(layer):
            label = {"shared_down": "W_shared_down"}.get(role, "W_down") + ("" if expert is None else " of expert 0")
            return src.layer_weight(layer, role, expert=expert), label
    raise KeyError(f"block {layer} of {src.name} has no MLP output projection")
