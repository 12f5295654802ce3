"""Composition scores and directionality against dense d x d oracles (MHA and GQA), and notebook 02's use."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import RandomAttentionWeights

from utils.attention import (
    composition_scores,
    directionality,
    directionality_summary,
    directionality_table,
    layer_kernels,
    layer_qk,
)


def _fro(M):
    return torch.linalg.matrix_norm(M).item()


def dense_composition(src, la, a, lb, b):
    """Elhage et al.'s scores from the dense d x d circuits (TransformerLens' definition, column convention)."""
    Ba, Ab, Bb = layer_kernels(src, la, "ov").dense()[a], layer_kernels(src, lb, "qk").dense()[b], None
    Bb = layer_kernels(src, lb, "ov").dense()[b]
    return {
        "q": _fro(Ba.T @ Ab) / (_fro(Ba) * _fro(Ab)),
        "k": _fro(Ab @ Ba) / (_fro(Ba) * _fro(Ab)),
        "v": _fro(Bb @ Ba) / (_fro(Ba) * _fro(Bb)),
    }


def dense_directionality(A: torch.Tensor, num_std: float = 2.0) -> float:
    """attention-geometry's utils/scores.py::directionality_score, on a dense matrix."""
    rn, cn = torch.norm(A, dim=1), torch.norm(A, dim=0)
    rt, ct = rn.mean() + num_std * rn.std(), cn.mean() + num_std * cn.std()
    re, ce = (rn[rn > rt] - rt).sum(), (cn[cn > ct] - ct).sum()
    return 0.0 if re + ce == 0 else float((ce - re) / (ce + re))


@pytest.mark.parametrize("n_kv", [4, 2, 1], ids=["MHA", "GQA", "MQA"])
@pytest.mark.parametrize("route", ["factor", "gram"])
def test_composition_scores_equal_dense_oracle(n_kv, route):
    src = RandomAttentionWeights(L=3, d=24, h=4, n_kv=n_kv, d_head=6, seed=n_kv)
    cs = composition_scores(src, route=route, progress=False)
    assert cs.route == route
    H = 12
    for ia in range(H):
        for ib in range(H):
            la, a, lb, b = ia // 4, ia % 4, ib // 4, ib % 4
            for c in "qkv":
                if la < lb:
                    assert cs.scores[c][ia, ib] == pytest.approx(dense_composition(src, la, a, lb, b)[c], rel=1e-10)
                else:
                    assert np.isnan(cs.scores[c][ia, ib])
    assert len(cs.pairs()) == 3 * 16


@pytest.mark.parametrize("n_kv", [4, 2])
def test_directionality_equals_dense_oracle_per_head_and_per_layer(n_kv):
    src = RandomAttentionWeights(L=2, d=32, h=4, n_kv=n_kv, d_head=8, seed=7)
    for layer in range(2):
        K = layer_kernels(src, layer, "qk")
        ref = [dense_directionality(A) for A in K.dense()]
        assert np.allclose(directionality(K), ref, rtol=1e-10, atol=1e-12)
        M = layer_qk(src, layer).dense()[0]
        assert torch.allclose(M, K.dense().sum(0))  # the layer's kernel is the sum of its heads'
        assert directionality(layer_qk(src, layer))[0] == pytest.approx(dense_directionality(M), rel=1e-10, abs=1e-12)
    # the table reads each layer's W_q / W_k once and gives the same per-head and whole-layer scores
    reads = []
    layer_weight = src.layer_weight
    src.layer_weight = lambda li, role, **kw: reads.append((li, role)) or layer_weight(li, role, **kw)
    t = directionality_table(src, progress=False)
    assert sorted(reads) == [(0, "k"), (0, "q"), (1, "k"), (1, "q")]
    for layer in range(2):
        K, M = layer_kernels(src, layer, "qk"), layer_qk(src, layer).dense()[0]
        got = t[t.layer == layer].set_index("head").directionality
        assert np.allclose(got.loc[[0, 1, 2, 3]], [dense_directionality(A) for A in K.dense()], rtol=1e-10, atol=1e-12)
        assert got.loc[-1] == pytest.approx(dense_directionality(M), rel=1e-10, abs=1e-12)
    # a kernel with a few dominant key-side columns scores positive
    X, Y = torch.randn(1, 32, 8, dtype=torch.float64), torch.randn(1, 8, 32, dtype=torch.float64)
    Y[..., :2] *= 20
    from utils.spectral import FactoredKernels

    assert directionality(FactoredKernels(X, Y))[0] > 0.5


@pytest.mark.slow
def test_notebook_02_composition_matches_dense_oracle(tiny_llama_dir, tmp_path):
    import pandas as pd
    from conftest import run_notebook_smoke

    from utils.weights import open_weights

    run_dir = run_notebook_smoke("02_attention_kernels", {"model": str(tiny_llama_dir), "top_pairs": 3}, tmp_path)
    files = {p.name for p in run_dir.iterdir()}
    assert {"composition_scores.csv", "composition_heatmaps.png", "heads_vs_null.png", "directionality.csv"} <= files
    df = pd.read_csv(run_dir / "composition_scores.csv")
    r = df[(df.layer_a == 0) & (df.head_a == 1) & (df.layer_b == 2) & (df.head_b == 3)].iloc[0]
    ref = dense_composition(open_weights(tiny_llama_dir), 0, 1, 2, 3)
    assert (r.q, r.k, r.v) == pytest.approx((ref["q"], ref["k"], ref["v"]), rel=1e-9)
    assert np.isfinite(r.q_z) and "q_null_mean" in df
    report = (run_dir / "report.md").read_text()
    assert "## Head circuits: composition scores and directionality" in report and "heads with |z| > 3" in report


def test_notebook_02_without_null_model_computes_no_null(tiny_llama_dir, tmp_path):
    from conftest import run_notebook_smoke

    run_dir = run_notebook_smoke("02_attention_kernels", {"model": str(tiny_llama_dir), "null_model": False}, tmp_path)
    files = {p.name for p in run_dir.iterdir()}
    assert "composition_scores.csv" in files and "directionality.csv" in files
    assert "composition_vs_null.png" not in files and "heads_vs_null.png" not in files
    assert "q_null_mean" not in pd.read_csv(run_dir / "composition_scores.csv")
    report = (run_dir / "report.md").read_text()
    assert "| per head | trained |" in report and "| per head | null |" not in report


def test_directionality_summary_with_and_without_null():
    t = pd.DataFrame({"head": [0, 1, -1], "directionality": [0.2, -0.4, 0.1]})
    alone = directionality_summary(t)
    assert list(alone.model) == ["trained", "trained"]
    assert alone.iloc[0]["max |score|"] == pytest.approx(0.4) and alone.iloc[1]["mean"] == pytest.approx(0.1)
    both = directionality_summary(t, t.assign(directionality=0.0))
    assert list(both.model) == ["trained", "null", "trained", "null"] and both.iloc[1]["max |score|"] == 0
