"""Tables of notebook 05 built on :meth:`utils.dynamics.store.SpectralFile.spectral_frame`."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ..markdown import fmt


def short_name(name: str) -> str:
    """``transformer.h.0.attn.c_attn.weight`` -> ``h.0.attn.c_attn``."""
    return re.sub(r"^(transformer|model)\.", "", name).removesuffix(".weight")


def first_vs_last(df: pd.DataFrame, layers: list[str], shapes: dict) -> pd.DataFrame:
    """Per weight, means over runs at each run's first and last checkpoint: effective rank, its
    spread over runs at the end, sigma_1 and (square weights) the spectral radius, and the relative
    change of effective rank in percent."""
    first = df[df.step == df.groupby("run").step.transform("min")].groupby("layer")
    last = df[df.step == df.groupby("run").step.transform("max")].groupby("layer")
    tab = pd.DataFrame(
        {
            "weight": [short_name(n) for n in layers],
            "shape": [str(shapes.get(n) or "") for n in layers],
            "eff. rank first": [first.eff_rank.mean()[n] for n in layers],
            "eff. rank last": [last.eff_rank.mean()[n] for n in layers],
            "spread last (max-min over runs)": [np.ptp(last.get_group(n).eff_rank) for n in layers],
            "sigma_1 first": [first.sigma_1.mean()[n] for n in layers],
            "sigma_1 last": [last.sigma_1.mean()[n] for n in layers],
            "max abs eig first": [first.eig_radius.mean()[n] for n in layers],
            "max abs eig last": [last.eig_radius.mean()[n] for n in layers],
        }
    )
    tab["eff. rank change %"] = 100 * (tab["eff. rank last"] / tab["eff. rank first"] - 1)
    return tab


def loss_summary(losses: dict, seeds: dict) -> pd.DataFrame:
    """One row per run: seed, logged values, first loss, final loss (mean of the last 10 %), min."""
    rows = []
    for r, (_, lv) in sorted(losses.items()):
        tail = lv[-max(1, len(lv) // 10) :]
        rows.append(
            {
                "run": r or "all",
                "seed": seeds.get(r, ""),
                "logged values": len(lv),
                "first loss": lv[0] if len(lv) else None,
                "final loss (mean of last 10%)": float(np.mean(tail)) if len(tail) else None,
                "min loss": float(np.min(lv)) if len(lv) else None,
            }
        )
    return pd.DataFrame(rows)


def change_findings(tab: pd.DataFrame) -> str:
    """One sentence on the largest and smallest relative change of effective rank, and the spread over runs."""
    drop = tab.sort_values("eff. rank change %")
    most, least = drop.iloc[0], drop.iloc[-1]
    return (
        f"Measured here: the largest relative change in effective rank is in `{most.weight}` "
        f"({fmt(most['eff. rank first'])} → {fmt(most['eff. rank last'])}, {most['eff. rank change %']:+.1f}%); "
        f"the smallest in `{least.weight}` ({least['eff. rank change %']:+.1f}%). The spread across runs at the "
        f"last checkpoint is at most {fmt(tab['spread last (max-min over runs)'].max())} (of ranks around "
        f"{fmt(tab['eff. rank last'].median())})."
    )


def growth_sentence(tab: pd.DataFrame) -> str:
    """How much sigma_1 grows from the first to the last checkpoint (range and median over weights)."""
    g = (tab["sigma_1 last"] / tab["sigma_1 first"]).to_numpy()
    return (
        f"σ1 grows by a factor between {np.nanmin(g):.3g} and {np.nanmax(g):.3g} from the first to the last "
        f"checkpoint (median {np.nanmedian(g):.3g})."
    )


def complex_sentence(df: pd.DataFrame, square: list[str], shapes: dict) -> str:
    """Mean number of non-real eigenvalues of the square weights at the last checkpoint."""
    last = df[(df.step == df.groupby("run").step.transform("max")) & df.layer.isin(square)]
    n = np.mean([shapes[s][0] for s in square if shapes.get(s)])
    return (
        f"At the last checkpoint the square weights have on average {last.n_complex_eig.mean():.3g} non-real "
        f"eigenvalues (of {n:.3g})."
    )
