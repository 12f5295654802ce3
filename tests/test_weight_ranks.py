"""The weight sweep and its tables, checked against numpy and hand-worked cases."""

import numpy as np
import pandas as pd
import pytest

from utils.weight_ranks import (
    largest_transitions,
    phase_analysis,
    phase_bounds,
    stats_by_weight_type,
    trend_label,
    variance_explained,
    weight_sweep,
)
from utils.weights import open_weights


def np_eff_rank(W):
    s = np.linalg.svd(np.asarray(W, dtype=np.float64), compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


@pytest.mark.parametrize("batched", [False, True])
def test_sweep_matches_numpy(tiny_llama_dir, batched):
    src = open_weights(tiny_llama_dir)
    df = weight_sweep(src, device="cpu", progress=False, batched=batched)
    assert len(df) == 3 * 7 + 2  # 7 roles x 3 layers + embed + untied lm_head
    assert {"layer_idx", "weight_type", "shape", "eff_rank", "stable_rank", "condition_number", "n99"} <= set(df)
    for ref in src.matrices():
        W = src.load(ref).numpy()
        row = df[df["name"] == ref.name].iloc[0]
        assert row["eff_rank"] == pytest.approx(np_eff_rank(W), rel=1e-9)
        s = np.linalg.svd(W.astype(np.float64), compute_uv=False)
        assert row["spectral_norm"] == pytest.approx(s[0], rel=1e-9)
        assert row["condition_number"] == pytest.approx(s[0] / s[-1], rel=1e-6)
    assert list(df["layer_idx"])[:7] == [0] * 7 and list(df["layer_idx"])[-2:] == [-1, -1]


def test_sweep_rejects_nan_weights(tmp_path):
    from conftest import build_tiny_checkpoint
    from safetensors.torch import load_file, save_file

    folder = build_tiny_checkpoint("llama", tmp_path / "m")
    sd = load_file(folder / "model.safetensors")
    sd["model.layers.1.mlp.up_proj.weight"][0, 0] = float("inf")
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*1 NaN/Inf"):
        weight_sweep(open_weights(folder), device="cpu", progress=False)


def _toy_df():
    rows = []
    rng = np.random.default_rng(0)
    vals = {"W_Q": [5, 3, 1, 2, 4, 6], "W_K": [1, 2, 3, 4, 5, 6]}
    for wt, v in vals.items():
        for i, x in enumerate(v):
            rows.append({"layer_idx": i, "weight_type": wt, "shape": "4x4", "eff_rank": float(x)})
    rows.append({"layer_idx": -1, "weight_type": "W_embed", "shape": "9x4", "eff_rank": rng.random()})
    return pd.DataFrame(rows)


def test_stats_table_against_numpy():
    st = stats_by_weight_type(_toy_df()).set_index("weight_type")
    assert list(st.index) == ["W_Q", "W_K"]  # embeddings excluded
    x = np.array([5, 3, 1, 2, 4, 6], float)
    r = st.loc["W_Q"]
    assert (r["count"], r["min"], r["max"], r["first"], r["last"]) == (6, 1, 6, 5, 6)
    assert r["mean"] == pytest.approx(x.mean()) and r["median"] == pytest.approx(np.median(x))
    assert r["std"] == pytest.approx(x.std()) and r["variance"] == pytest.approx(x.var())
    assert r["range"] == 5 and r["cv"] == pytest.approx(x.std() / x.mean())


def test_phases_trends_and_transitions():
    assert phase_bounds(6) == {"early": (0, 2), "middle": (2, 4), "late": (4, 6)}
    assert phase_bounds(8) == {"early": (0, 2), "middle": (2, 4), "late": (4, 8)}
    pa = phase_analysis(_toy_df(), 6)
    tr = pa.trends.set_index("weight_type")
    # W_Q: early mean 4, middle 1.5, late 5 -> U; W_K: 1.5, 3.5, 5.5 -> monotone up
    assert tr.loc["W_Q", ["early", "middle", "late"]].tolist() == [4, 1.5, 5]
    assert tr.loc["W_Q", "trend"] == "U-SHAPE" and tr.loc["W_K", "trend"] == "MONOTONE UP"
    agg = pa.aggregate.set_index("phase")
    assert agg.loc["early", "mean"] == pytest.approx(np.mean([5, 3, 1, 2]))
    assert agg.loc["early", "std"] == pytest.approx(np.std([5, 3, 1, 2], ddof=1))
    assert trend_label(3, 2, 1) == "MONOTONE DOWN" and trend_label(1, 3, 2) == "INVERTED-U"
    assert trend_label(1, 1, 1) == "OTHER"
    t = largest_transitions(_toy_df()).set_index("weight_type")
    assert t.loc["W_Q", "max_drop_layers"] == "0->1" and t.loc["W_Q", "max_drop"] == -2
    # diffs -2, -2, +1, +2, +2: the first of tied extremes is reported
    assert t.loc["W_Q", "max_jump_layers"] == "3->4" and t.loc["W_Q", "max_jump"] == 2
    assert t.loc["W_K", "max_jump"] == 1
    with pytest.raises(ValueError, match="at least 3 layers"):
        phase_analysis(_toy_df(), 2)


def test_variance_explained_hand_worked():
    ve = variance_explained(np.array([3.0, 1.0]))
    np.testing.assert_allclose(ve["per_component"], [0.9, 0.1])
    assert ve["milestones"][0.9] == 1 and ve["milestones"][0.95] == 2


@pytest.mark.slow
def test_bundled_model_sweep_against_independent_gguf_reader(bundled_gguf):
    """Real weights: our streamed GGUF + Gram singular values vs the gguf package + numpy SVD."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    src = open_weights("smollm2")
    df = weight_sweep(src, device="cpu", progress=False)
    assert len(df) == 30 * 7 + 1
    reader = {t.name: t for t in GGUFReader(str(bundled_gguf)).tensors}
    for name in ("blk.0.attn_v.weight", "blk.17.ffn_down.weight", "blk.29.attn_output.weight"):
        t = reader[name]
        W = dequantize(t.data, t.tensor_type)
        assert df.set_index("name").loc[name, "eff_rank"] == pytest.approx(np_eff_rank(W), rel=1e-8)


def test_per_matrix_hook_adds_columns_computed_on_the_loaded_matrix(tiny_llama_dir):
    src = open_weights(tiny_llama_dir)

    def frob(W, ref, S):
        return {"frob_direct": float(np.linalg.norm(W.double().numpy())), "n_from_hook": len(S)}

    df = weight_sweep(src, device="cpu", progress=False, per_matrix=frob)
    np.testing.assert_allclose(df["frob_direct"], df["frobenius_norm"], rtol=1e-9)  # sqrt(sum sigma^2) = ||W||_F
    assert (df["n_from_hook"] == df["n_sv"]).all()
