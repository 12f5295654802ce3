"""Effective ranks of every weight matrix of a model, and the tables built on them.

:func:`weight_sweep` streams every 2-D weight from a :class:`~utils.models.WeightSource` and
returns one row per matrix. On the CPU, two worker threads each dequantise a matrix and take its
singular values (float64 Gram + eigvalsh, one BLAS thread each), so loading overlaps computing.
On a GPU, same-shape matrices of consecutive layers are stacked and decomposed as one batch.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .models import MatrixRef, WeightSource
from .spectral import ENERGY_LEVELS, _svdvals_gram, default_device, summarize, svdvals

PER_LAYER_ORDER = ["W_Q", "W_K", "W_V", "W_O", "W_gate", "W_up", "W_down"]


class NonFiniteWeights(ValueError):
    """A weight matrix holds NaN or Inf."""


def _check_finite(W: torch.Tensor, ref: MatrixRef) -> None:
    bad = (~torch.isfinite(W)).sum().item()
    if bad:
        raise NonFiniteWeights(
            f"weight {ref.name!r} (layer {ref.layer}, {ref.weight_type}) holds {bad} NaN/Inf values: the "
            "checkpoint is corrupted or overflowed in a low precision; re-download or re-export it")


@contextlib.contextmanager
def _single_threaded_blas():
    """One BLAS / torch thread per worker while the workers run in parallel."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
        ctx = threadpool_limits(1)
    except ImportError:  # pragma: no cover
        ctx = contextlib.nullcontext()
    try:
        with ctx:
            yield
    finally:
        torch.set_num_threads(n)


def _row(ref: MatrixRef, S: np.ndarray) -> dict:
    r = {"layer_idx": ref.layer, "weight_type": ref.weight_type, "shape": f"{ref.shape[0]}x{ref.shape[1]}",
         "rows": ref.shape[0], "cols": ref.shape[1], "name": ref.name}
    r.update(summarize(S).as_dict())
    return r


def select_matrices(src: WeightSource, include_model_level: bool = True) -> list[MatrixRef]:
    return [m for m in src.matrices() if include_model_level or m.layer >= 0]


def weight_sweep(src: WeightSource, device: str | None = "auto", workers: int = 2,
                 include_model_level: bool = True, progress: bool = True, keep_spectra: bool = False,
                 batched: bool | None = None, batch_bytes: int = 1 << 30):
    """Singular-value summaries of every 2-D weight of ``src``.

    Returns a DataFrame (one row per matrix; columns ``layer_idx, weight_type, shape, rows, cols,
    name, n_sv, eff_rank, stable_rank, spectral_norm, frobenius_norm, sigma_min, condition_number,
    n50, n75, n90, n95, n99``; ``layer_idx`` is -1 for embeddings), and, if ``keep_spectra``, also a
    dict ``name -> singular values`` (float64, descending).
    device: ``"auto"`` / ``None`` (GPU if present), ``"cpu"`` or ``"cuda"``.
    batched: stack same-shape matrices (up to ``batch_bytes`` of float32) into one batched SVD;
    default: on a GPU only. Otherwise ``workers`` threads take one matrix each (float64 Gram).
    """
    from tqdm.auto import tqdm

    dev = default_device() if device in (None, "auto") else torch.device(device)
    refs = select_matrices(src, include_model_level)
    spectra: dict[str, np.ndarray] = {}
    rows: list[dict] = []
    bar = tqdm(total=len(refs), desc=f"singular values ({dev.type})", disable=not progress)

    if batched is None:
        batched = dev.type != "cpu"
    if not batched:
        def work(ref):
            W = src.load(ref, dtype=None)
            _check_finite(W, ref)  # names the tensor; the finite check inside svdvals is not repeated
            return ref, _svdvals_gram(W.float(), dev)

        with _single_threaded_blas(), ThreadPoolExecutor(max(1, workers)) as ex:
            # larger matrices first so the two workers finish together
            order = sorted(refs, key=lambda r: -r.shape[0] * r.shape[1] * min(r.shape))
            for ref, S in ex.map(work, order):
                rows.append(_row(ref, S))
                if keep_spectra:
                    spectra[ref.name] = S
                bar.update(1)
    else:
        groups: dict[tuple, list[MatrixRef]] = {}
        for r in refs:
            groups.setdefault((r.weight_type, r.shape), []).append(r)
        for (_, shape), members in groups.items():
            per = 4 * shape[0] * shape[1]
            step = max(1, batch_bytes // max(per, 1))
            for i in range(0, len(members), step):
                chunk = members[i:i + step]
                mats = []
                for ref in chunk:
                    W = src.load(ref, dtype=None)
                    _check_finite(W, ref)
                    mats.append(W.to(dev, torch.float32))
                S_all = svdvals(torch.stack(mats), device=dev, method="svd")
                for ref, S in zip(chunk, S_all):
                    rows.append(_row(ref, S))
                    if keep_spectra:
                        spectra[ref.name] = S
                bar.update(len(chunk))
    bar.close()
    df = pd.DataFrame(rows)
    order = {t: i for i, t in enumerate(PER_LAYER_ORDER)}
    df["_o"] = df["weight_type"].map(lambda t: order.get(t, 99))
    df["_l"] = df["layer_idx"].where(df["layer_idx"] >= 0, 10 ** 9)
    df = df.sort_values(["_l", "_o", "weight_type"]).drop(columns=["_o", "_l"]).reset_index(drop=True)
    return (df, spectra) if keep_spectra else df


# ---------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------
def per_layer(df: pd.DataFrame) -> pd.DataFrame:
    """Only the per-layer matrices (drops embeddings), sorted by layer."""
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
        out.append({"weight_type": wt, "shape": sub["shape"].iloc[0], "count": len(x), "min": x.min(),
                    "max": x.max(), "mean": x.mean(), "median": float(np.median(x)), "std": x.std(),
                    "range": x.max() - x.min(), "first": x[0], "last": x[-1], "variance": x.var(),
                    "cv": x.std() / x.mean() if x.mean() else float("nan")})
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
    bounds: dict            # phase -> (start, stop)
    aggregate: pd.DataFrame  # phase, mean, std (over all per-layer matrices of the phase; ddof=1)
    per_phase: dict          # phase -> DataFrame by weight type: mean std min max median range cv
    trends: pd.DataFrame     # weight_type, early, middle, late, trend


def phase_analysis(df: pd.DataFrame, L: int, metric: str = "eff_rank") -> PhaseAnalysis:
    if L < 3:
        raise ValueError(f"phase analysis needs at least 3 layers (got L={L})")
    d = per_layer(df).copy()
    bounds = phase_bounds(L)
    d["phase"] = d["layer_idx"].map(lambda i: phase_of(int(i), L))
    agg, per = [], {}
    for ph in bounds:
        sub = d[d["phase"] == ph]
        agg.append({"phase": ph, "layers": f"{bounds[ph][0]}-{bounds[ph][1] - 1}",
                    "mean": sub[metric].mean(), "std": sub[metric].std()})
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
        out.append({"weight_type": wt, "max_drop_layers": f"{i}->{i + 1}", "max_drop": diff[i],
                    "max_jump_layers": f"{j}->{j + 1}", "max_jump": diff[j]})
    return pd.DataFrame(out)


def variance_explained(S: np.ndarray, levels=ENERGY_LEVELS) -> dict:
    """Per-component variance share sigma_i^2 / sum sigma^2, its cumulative sum, and milestones."""
    S = np.asarray(S, dtype=np.float64)
    ve = S ** 2 / (S ** 2).sum()
    cum = np.cumsum(ve)
    return {"per_component": ve, "cumulative": cum,
            "milestones": {lv: int(np.searchsorted(cum, lv - 1e-12) + 1) for lv in levels}}
