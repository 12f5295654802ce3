"""Per-head change between two models: QK / OV singular values, effective rank and symmetry."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..attention import sweep_attention
from .match import match_models


def head_diff(a, b, circuits=("qk", "ov"), progress: bool = True, kernel: str = "raw") -> pd.DataFrame:
    """One row per (layer, head): for each circuit ``<c>_sv_change`` = ||s_b - s_a|| / ||s_a|| of the
    singular values, ``<c>_eff_rank_a/_b`` and ``<c>_symmetry_a/_b`` with their difference ``<c>_dsymmetry``;
    the kernels in the ``kernel`` convention (:mod:`utils.attention.forms`)."""
    match_models(a, b)
    sa = sweep_attention(a, circuits=circuits, progress=progress, kernel=kernel)
    sb = sweep_attention(b, circuits=circuits, progress=progress, kernel=kernel)
    fa, fb = sa.to_frame(), sb.to_frame()
    out = fa[["layer", "head", "kv_head"]].copy()
    for c in circuits:
        p = "" if c == "qk" else f"{c}_"
        na = np.linalg.norm(sa.sv[c], axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"{c}_sv_change"] = (np.linalg.norm(sb.sv[c] - sa.sv[c], axis=-1) / na).reshape(-1)
        out[f"{c}_eff_rank_a"], out[f"{c}_eff_rank_b"] = fa[f"{p}eff_rank"], fb[f"{p}eff_rank"]
        out[f"{c}_symmetry_a"], out[f"{c}_symmetry_b"] = fa[f"{p}symmetry"], fb[f"{p}symmetry"]
        out[f"{c}_dsymmetry"] = out[f"{c}_symmetry_b"] - out[f"{c}_symmetry_a"]
    return out
