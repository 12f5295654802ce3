"""Model-vs-model diff: a model against itself, a synthetic low-rank update, mismatched and incomplete models."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import build_tiny_checkpoint, run_notebook_smoke

from utils.diff import ArchitectureMismatch, IncompleteCheckpoint, changed_layers, diff_sweep, head_diff
from utils.weights import open_weights

INJECT = {(0, "q_proj"): "W_Q", (2, "q_proj"): "W_Q", (1, "down_proj"): "W_down"}
RANK = 2


def _edit(src_dir, dst_dir, fn):
    from safetensors.torch import load_file, save_file

    shutil.copytree(src_dir, dst_dir)
    t = load_file(str(dst_dir / "model.safetensors"))
    fn(t)
    save_file(t, str(dst_dir / "model.safetensors"), metadata={"format": "pt"})
    return dst_dir


@pytest.fixture(scope="module")
def injected(tiny_llama_dir, tmp_path_factory):
    """The tiny llama with a rank-2 update added to layer 0 and 2's W_Q and layer 1's W_down."""
    updates = {}

    def inject(t):
        g = torch.Generator().manual_seed(0)
        for (layer, proj), _ in INJECT.items():
            key = next(
                k for k in t if k.endswith(f"layers.{layer}.{'self_attn' if proj == 'q_proj' else 'mlp'}.{proj}.weight")
            )
            m, n = t[key].shape
            dW = torch.randn(m, RANK, generator=g) @ torch.randn(RANK, n, generator=g) * 0.05
            updates[key] = (t[key].double().clone(), dW)
            t[key] = t[key] + dW

    folder = _edit(tiny_llama_dir, tmp_path_factory.mktemp("inj") / "m", inject)
    return folder, updates


def test_diff_of_a_model_with_itself_is_exactly_zero(tiny_llama_dir):
    src = open_weights(tiny_llama_dir)
    df = diff_sweep(src, src, progress=False)
    assert len(df) == len(src.matrices())
    assert (df.rel_change == 0).all() and (df["rank"] == 0).all() and (df.diff_eff_rank == 0).all()
    assert (df.angle_max == 0).all() and (df.overlap == 1).all()
    h = head_diff(src, src, progress=False)
    assert (h[["qk_sv_change", "ov_sv_change", "qk_dsymmetry", "ov_dsymmetry"]].to_numpy() == 0).all()


def test_rank_r_update_found_at_exactly_the_injected_layers(tiny_llama_dir, injected):
    folder, updates = injected
    df = diff_sweep(open_weights(tiny_llama_dir), open_weights(folder), progress=False)
    changed = df[df.rel_change > 0]
    assert set(zip(changed.layer_idx, changed.weight_type)) == {(k[0], v) for k, v in INJECT.items()}
    assert (changed["rank"] == RANK).all()
    # relative change against an independent numpy computation on the stored tensors
    W, dW = updates[next(k for k in updates if "layers.1.mlp" in k)]
    Wb = (W.float() + dW.float()).double()  # as stored (float32)
    row = changed[changed.weight_type == "W_down"].iloc[0]
    assert row.rel_change == pytest.approx(np.linalg.norm(Wb - W) / np.linalg.norm(W), rel=1e-9)
    top = changed_layers(df)
    assert set(top.layer_idx[:3]) == {0, 1, 2} and top["rel_change (layer)"].iloc[0] > 0


def test_mismatched_architectures_are_refused_naming_the_first_difference(tiny_llama_dir, tiny_gpt2_dir, tmp_path):
    a = open_weights(tiny_llama_dir)
    with pytest.raises(ArchitectureMismatch, match="family 'llama' in A .* and 'gpt2' in B"):
        diff_sweep(a, open_weights(tiny_gpt2_dir), progress=False)
    qwen = build_tiny_checkpoint("qwen2", tmp_path / "qwen")  # another family with the same tensor names
    with pytest.raises(ArchitectureMismatch, match="family 'llama' in A .* and 'qwen2' in B"):
        diff_sweep(a, open_weights(qwen), progress=False)
    short = build_tiny_checkpoint("llama", tmp_path / "short", num_hidden_layers=2)
    with pytest.raises(ArchitectureMismatch, match=r"layers \(L\) is 3 in A .* and 2 in B"):
        diff_sweep(a, open_weights(short), progress=False)
    narrow = build_tiny_checkpoint("llama", tmp_path / "narrow", head_dim=8)
    with pytest.raises(ArchitectureMismatch, match=r"head width \(d_head\) is 16 in A .* and 8 in B"):
        head_diff(a, open_weights(narrow), progress=False)


def test_model_with_a_layer_missing_gives_one_clear_message(tiny_llama_dir, tmp_path):
    from utils.weight_ranks import rmt_sweep

    def drop(t):
        for k in [k for k in t if ".layers.2." in k]:
            del t[k]

    broken = open_weights(_edit(tiny_llama_dir, tmp_path / "broken", drop))
    for run in (lambda: rmt_sweep(broken, progress=False), lambda: diff_sweep(open_weights(tiny_llama_dir), broken)):
        with pytest.raises(IncompleteCheckpoint, match="missing, first W_Q of layer 2"):
            run()


def test_a_quantised_checkpoint_is_refused_naming_the_fix(tiny_llama_dir, tmp_path):
    """A folder whose config declares quantised storage (FP8 codes with block scales, GPTQ, ...) is not read as
    if its stored numbers were the weights."""
    import json

    from utils.weights.sources import QuantisedCheckpoint

    q = tmp_path / "fp8"
    shutil.copytree(tiny_llama_dir, q)
    cfg = json.loads((q / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    (q / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(QuantisedCheckpoint, match=r"quant_method 'fp8'.*bf16/fp16 export"):
        open_weights(q)


@pytest.mark.slow
def test_notebook_07_finds_the_injected_update(tiny_llama_dir, injected, tmp_path):
    folder, _ = injected
    run_dir = run_notebook_smoke("07_model_diff", {"model": str(tiny_llama_dir), "model_b": str(folder)}, tmp_path)
    files = {p.name for p in run_dir.iterdir()}
    assert {"weight_diff.csv", "head_diff.csv", "diff_by_layer.png", "report.md"} <= files
    df = pd.read_csv(run_dir / "weight_diff.csv")
    assert sorted(df[df["rank"] > 0].layer_idx) == [0, 1, 2] and set(df[df["rank"] > 0]["rank"]) == {RANK}
    h = pd.read_csv(run_dir / "head_diff.csv")
    assert (h[h.layer == 1].qk_sv_change == 0).all() and (h[h.layer == 0].qk_sv_change > 0).any()
    assert "3 of" in (run_dir / "report.md").read_text()


@pytest.mark.parametrize("shape", [(40, 12), (12, 40)])
def test_weight_diff_spectra_and_angles_against_numpy_svd(shape):
    """One Gram + eigh per matrix gives the spectra and top-k subspaces of numpy's SVD (tall and wide)."""
    from utils.diff import weight_diff
    from utils.spectral import effective_rank, gram_svd

    rng = np.random.default_rng(0)
    Wa = rng.standard_normal(shape)
    Wb = Wa + 0.3 * rng.standard_normal(shape)
    k = 4
    d = weight_diff(Wa, Wb, top_k=k)
    Ua, Sa, Vta = np.linalg.svd(Wa)
    Ub, Sb, Vtb = np.linalg.svd(Wb)
    tall = shape[0] >= shape[1]
    Qa, Qb = (Vta[:k].T, Vtb[:k].T) if tall else (Ua[:, :k], Ub[:, :k])
    cos = np.clip(np.linalg.svd(Qa.T @ Qb, compute_uv=False), 0, 1)
    assert d["angle_max"] == pytest.approx(np.degrees(np.arccos(cos.min())), rel=1e-7)
    assert d["overlap"] == pytest.approx(np.mean(cos**2), rel=1e-10)
    assert d["eff_rank_a"] == pytest.approx(float(effective_rank(Sa)), rel=1e-10)
    assert d["eff_rank_b"] == pytest.approx(float(effective_rank(Sb)), rel=1e-10)
    np.testing.assert_allclose(d["sv_diff"], np.linalg.svd(Wb - Wa, compute_uv=False)[:32], rtol=1e-9)
    np.testing.assert_allclose(d["sv_a"], Sa[:32], rtol=1e-10)
    np.testing.assert_allclose(d["sv_b"], Sb[:32], rtol=1e-10)
    np.testing.assert_allclose(np.sort(d["angles"]), np.sort(np.degrees(np.arccos(cos))), rtol=1e-7, atol=1e-6)
    S, V = gram_svd(torch.from_numpy(Wa), k)
    np.testing.assert_allclose(S, Sa, rtol=1e-10)
    np.testing.assert_allclose(np.abs(V.numpy().T @ Qa), np.eye(k), atol=1e-8)  # same vectors up to sign
