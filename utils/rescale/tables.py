"""Tables and the results record of notebook 03, built from :class:`~utils.rescale.analysis.RescaleResult`."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .analysis import RescaleResult, rank_k_correction

GEOMETRY_KEYS = (
    ("text", "text"),
    ("n_seqs", "sequences"),
    ("tokens_per_seq", "tokens per sequence"),
    ("skip_first", "query positions skipped"),
    ("causal", "causal attention"),
    ("uniform_entropy", "uniform-attention entropy (nats, same positions)"),
    ("entropy_split_half_corr", "split-half reliability of per-head entropy (even vs odd sequences)"),
)


def geometry_table(geo: dict, source: str, sigma: np.ndarray, entropy: np.ndarray) -> pd.DataFrame:
    L, H, K = sigma.shape
    ranks = np.array([[len(s) for s in row["metric_singvals_per_head"]] for row in geo["static"]])
    rows = [
        ["source", source],
        ["layers x heads", f"{L} x {H}"],
        ["max rank K (zero-padded)", K],
        ["heads with rank < K", int((ranks < K).sum())],
    ]
    rows += [[label, geo[key]] for key, label in GEOMETRY_KEYS if key in geo]
    rows.append(["entropy range (nats)", f"{entropy.min():.3f} .. {entropy.max():.3f}"])
    return pd.DataFrame(rows, columns=["item", "value"])


def summary_lines(res: RescaleResult) -> str:
    """The headline: anchor, shape stability, residual, correlations, verdict (markdown bullets)."""
    L = res.resid.shape[0]
    no_anchor = float(np.delete(res.resid, res.anchor_layer, axis=0).mean()) if L > 1 else float("nan")
    worst = int(np.argmax(res.layer_mean_resid))
    cross = float(np.nanmean(res.cross_head_cos)) if np.isfinite(res.cross_head_cos).any() else float("nan")
    return "\n".join(
        [
            f"- anchor layer: {res.anchor_layer} ({res.anchor})",
            f"- spectral shape is **{res.stability}** across layers "
            f"(per-head mean pairwise cos = {res.shape_cos_mean:.3f})",
            f"- scalar-rescale fit residual: mean {res.mean_resid:.3f}, max {res.max_resid:.3f}; "
            f"{res.frac_below[0.10]:.1%} of (layer, head) under 0.10, {res.frac_below[0.20]:.1%} under 0.20 "
            f"(mean {no_anchor:.3f} without the anchor layer's exact zeros; worst layer {worst} with mean "
            f"{res.layer_mean_resid[worst]:.3f})",
            f"- corr(T, entropy): {r_text(res.corr_T_entropy)} {ci_text(res, 'corr_T_entropy')}; "
            f"corr(op_norm, entropy): {r_text(res.corr_opnorm_entropy)} "
            f"(Spearman: {r_text(res.spearman_T_entropy, 'rho')}, {r_text(res.spearman_opnorm_entropy, 'rho')})",
            f"- cross-head shape similarity within a layer: mean {cross:.3f}",
            "",
            f"**Verdict:** {res.verdict}",
        ]
    )


def r_text(r: float, name: str = "r") -> str:
    """A correlation, or "not determined" when it is undefined (a constant input)."""
    return f"{name} = {r:+.3f}" if np.isfinite(r) else f"{name} not determined (constant input)"


def ci_text(res: RescaleResult, key: str) -> str:
    if not res.bootstrap:
        return "not computed (n_boot = 0)"
    b = res.bootstrap[key]
    if not np.isfinite([b["lo"], b["hi"]]).all():
        return f"not determined ({b['n_valid']} usable resamples)"
    return f"[{b['lo']:+.3f}, {b['hi']:+.3f}] ({b['level']:.0%}, {b['n_valid']} resamples of heads)"


def shape_stats(res: RescaleResult) -> pd.DataFrame:
    return pd.DataFrame(
        [
            ["mean", res.shape_cos_mean],
            ["std", res.shape_cos_std],
            ["min", res.shape_cos_min],
            ["max", res.shape_cos_max],
        ],
        columns=["statistic over heads", "value"],
    )


def per_head_table(res: RescaleResult) -> pd.DataFrame:
    return pd.DataFrame({"head": np.arange(len(res.per_head_cos)), "mean pairwise cos across layers": res.per_head_cos})


def overall_table(res: RescaleResult) -> pd.DataFrame:
    return pd.DataFrame(
        [
            ["overall mean residual", res.mean_resid],
            ["overall max residual", res.max_resid],
            ["fraction of (L, h) with resid < 0.10", res.frac_below[0.10]],
            ["fraction of (L, h) with resid < 0.20", res.frac_below[0.20]],
        ],
        columns=["quantity", "value"],
    )


def layer_table(res: RescaleResult) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "L": np.arange(len(res.layer_mean_resid)),
            "mean resid": res.layer_mean_resid,
            "max resid": res.layer_max_resid,
            "mean T": res.layer_mean_T,
        }
    )


def anchor_table(results: dict) -> pd.DataFrame:
    return pd.DataFrame(
        [
            [a, r.anchor_layer, r.mean_resid, r.max_resid, r.frac_below[0.10], r.frac_below[0.20], r.corr_T_entropy]
            for a, r in results.items()
        ],
        columns=["anchor", "layer", "mean resid", "max resid", "frac < 0.10", "frac < 0.20", "corr(T, entropy)"],
    )


def corr_table(res: RescaleResult) -> pd.DataFrame:
    return pd.DataFrame(
        [
            [
                "corr(T, entropy)",
                r_text(res.corr_T_entropy),
                ci_text(res, "corr_T_entropy"),
                r_text(res.spearman_T_entropy, "rho"),
            ],
            [
                "corr(op_norm, entropy)",
                r_text(res.corr_opnorm_entropy),
                ci_text(res, "corr_opnorm_entropy"),
                r_text(res.spearman_opnorm_entropy, "rho"),
            ],
        ],
        columns=["correlation over all (L, h)", "Pearson r (seed)", "bootstrap interval over heads", "Spearman rho"],
    )


def cross_head_table(res: RescaleResult) -> pd.DataFrame:
    return pd.DataFrame({"L": np.arange(len(res.cross_head_cos)), "mean pair-cos across heads": res.cross_head_cos})


def rank_k_tables(res: RescaleResult, H: int, K: int) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Summary (mean / max over layers, no-anchor and shared baselines, parameter counts), per-layer
    residuals, and a note when k reaches the trivial range."""
    rk = res.rank_k
    ks = list(range(rk["resid"].shape[1]))
    cols = [f"k={k}" for k in ks]
    summary = pd.DataFrame(
        [
            ["anchor + rank-k, per layer (mean over layers)"] + [rk["resid"][:, k].mean() for k in ks],
            ["anchor + rank-k, per layer (max over layers)"] + [rk["resid"][:, k].max() for k in ks],
            ["no anchor, best rank-k per layer (mean)"] + [rk["no_anchor"][:, k].mean() for k in ks],
            ["anchor + rank-k shared by all layers"] + list(rk["global_resid"]),
            ["numbers per layer: anchor + rank-k"] + [H + k * (H + K) for k in ks],
            ["numbers per layer: no anchor rank-k"] + [k * (H + K) for k in ks],
        ],
        columns=["relative Frobenius residual"] + cols,
    )
    per_layer = pd.DataFrame(rk["resid"], columns=cols).rename_axis("L")
    triv = rk["trivial_from_k"]
    note = f"With {H} heads and {K} singular values, any k >= {triv} leaves 0 trivially." if triv <= ks[-1] else ""
    return summary, per_layer, note


def results_record(res: RescaleResult, others: dict, source: str, sigma: np.ndarray, entropy_rule: str) -> dict:
    """Every number of the analysis as a JSON-ready dict (``results.json``)."""
    L, H, K = sigma.shape
    worst = int(np.argmax(res.layer_mean_resid))
    return {
        "source": source,
        "num_layers": L,
        "num_heads": H,
        "max_rank": K,
        "anchor": res.anchor,
        "analysis": res.to_dict(),
        "anchor_comparison": {
            a: {
                "anchor_layer": r.anchor_layer,
                "mean_resid": r.mean_resid,
                "max_resid": r.max_resid,
                "frac_below": {f"{t:.2f}": v for t, v in r.frac_below.items()},
                "corr_T_entropy": r.corr_T_entropy,
                "verdict_key": r.verdict_key,
            }
            for a, r in others.items()
        },
        "rank_k_definition": rank_k_correction.__doc__.strip().split("\n\n")[1].strip(),
        "entropy_rule": entropy_rule,
        "mean_resid_excluding_anchor": float(np.delete(res.resid, res.anchor_layer, axis=0).mean())
        if L > 1
        else float("nan"),
        "worst_layer": {"layer": worst, "mean_resid": float(res.layer_mean_resid[worst])},
    }


def spread_heads(per_head_cos: np.ndarray, n: int) -> np.ndarray:
    """Up to ``n`` heads spread from the least to the most layer-invariant (by experiment 1)."""
    H = len(per_head_cos)
    return np.argsort(per_head_cos)[np.unique(np.linspace(0, H - 1, min(n, H)).round().astype(int))]


def best_anchor_scores(res: RescaleResult, n: int = 5) -> str:
    """The total shape-cosine scores of the best anchor candidates (anchor="best")."""
    top = np.argsort(-res.anchor_scores)[:n]
    return (
        "Total shape-cosine score of the best candidates (sum over heads and other layers): "
        + ", ".join(f"L{int(i)}: {res.anchor_scores[i]:.3f}" for i in top)
        + "."
    )
