"""Exact factored attention-kernel spectra (utils.attention, utils.spectral.factored) against dense d x d references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import RandomAttentionWeights

from utils.attention import (
    dense_kernel_spectra,
    head_eigen_report,
    kv_head_index,
    match_eigenvalues,
    ov_kernels,
    qk_kernels,
    quartile_labels,
    sweep_attention,
)
from utils.spectral import FactoredKernels, KernelSpectra, effective_rank


def qk_factors(*a):
    K = qk_kernels(*a)
    return K.X, K.Y, K.index


def ov_factors(*a):
    K = ov_kernels(*a)
    return K.X, K.Y, K.index


def qk_singular_values(src):
    return sweep_attention(src, ("qk",), eigenvalues=False, progress=False).sv["qk"]


RTOL = 1e-6


def _rand(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64)


def assert_matches_dense(ks, X, Y, kv, heads=None):
    """Factored spectra of every head == dense d x d oracle (sv, non-zero eigenvalues, asymmetry)."""
    r = ks.r
    for i in range(X.shape[0]) if heads is None else heads:
        o = dense_kernel_spectra(X[i], Y[kv[i]])
        scale = o["sv"][0]
        np.testing.assert_allclose(ks.sv[i], o["sv"][:r], rtol=0, atol=RTOL * scale)
        # the dense kernel has d - r more singular values, all zero up to rounding
        assert o["sv"][r:].max(initial=0) <= 1e-12 * scale
        # non-zero eigenvalues as a multiset: the r largest dense ones, matched greedily
        lam_scale = np.abs(o["eig"][0])
        dense_top = o["eig"][:r]
        np.testing.assert_allclose(match_eigenvalues(ks.eig[i], dense_top), ks.eig[i], rtol=0, atol=RTOL * lam_scale)
        np.testing.assert_allclose(ks.asymmetry[i], o["asymmetry"], rtol=RTOL, atol=1e-9)
        np.testing.assert_allclose(ks.symmetry[i], o["symmetry"], rtol=RTOL, atol=1e-9)
        np.testing.assert_allclose(np.sqrt(ks.fro2[i]), np.linalg.norm(o["A"]), rtol=1e-10)


# ---------------------------------------------------------------------------------------
# bookkeeping
# ---------------------------------------------------------------------------------------
def test_kv_head_index_gqa_mapping():
    assert kv_head_index(8, 2).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert kv_head_index(4, 4).tolist() == [0, 1, 2, 3]
    assert kv_head_index(6, 1).tolist() == [0] * 6
    with pytest.raises(ValueError, match="multiple of n_kv"):
        kv_head_index(6, 4)


def test_factors_slice_the_right_rows_and_columns():
    h, n_kv, r, d = 4, 2, 3, 10
    Wq, Wk, Wv, Wo = _rand((h * r, d), 1), _rand((n_kv * r, d), 2), _rand((n_kv * r, d), 3), _rand((d, h * r), 4)
    X, Y, kv = qk_factors(Wq, Wk, h, n_kv, r)
    for i in range(h):
        g = i // 2
        A = Wq[i * r : (i + 1) * r].T @ Wk[g * r : (g + 1) * r]
        torch.testing.assert_close(X[i] @ Y[kv[i]], A)
    X, Y, kv = ov_factors(Wv, Wo, h, n_kv, r)
    for i in range(h):
        g = i // 2
        B = Wo[:, i * r : (i + 1) * r] @ Wv[g * r : (g + 1) * r]
        torch.testing.assert_close(X[i] @ Y[kv[i]], B)
    with pytest.raises(ValueError, match="W_K has shape"):
        qk_factors(Wq, Wk[:-1], h, n_kv, r)


# ---------------------------------------------------------------------------------------
# factored == dense on random weights
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "h,n_kv,r,d",
    [
        (4, 4, 8, 48),  # MHA
        (8, 2, 16, 96),  # GQA, 4 query heads per KV head
        (6, 1, 12, 40),
    ],
)  # MQA
def test_qk_factored_equals_dense(h, n_kv, r, d):
    Wq, Wk = _rand((h * r, d), 10 + h), _rand((n_kv * r, d), 20 + h)
    ks = qk_kernels(Wq, Wk, h, n_kv, r).spectra()
    assert ks.sv.shape == (h, r) and ks.eig.shape == (h, r) and ks.d == d
    assert np.all(np.diff(ks.sv, axis=-1) <= 0)
    assert np.all(np.diff(np.abs(ks.eig), axis=-1) <= 1e-12)
    X, Y, kv = qk_factors(Wq, Wk, h, n_kv, r)
    assert_matches_dense(ks, X, Y, kv)


@pytest.mark.parametrize("h,n_kv,r,d", [(4, 4, 8, 48), (8, 2, 16, 96)])
def test_ov_factored_equals_dense(h, n_kv, r, d):
    Wv, Wo = _rand((n_kv * r, d), 30 + h), _rand((d, h * r), 40 + h)
    ks = ov_kernels(Wv, Wo, h, n_kv, r).spectra()
    X, Y, kv = ov_factors(Wv, Wo, h, n_kv, r)
    assert_matches_dense(ks, X, Y, kv)


def test_rank_deficient_and_d_smaller_than_r():
    # a head whose W_Q has rank 2 < r: the extra singular values / eigenvalues are exact zeros
    r, d = 6, 30
    Wq = _rand((r, 2), 1) @ _rand((2, d), 2)
    ks = qk_kernels(Wq, _rand((r, d), 3), 1, 1, r).spectra()
    o = dense_kernel_spectra(Wq.T, _rand((r, d), 3))
    np.testing.assert_allclose(ks.sv[0], o["sv"][:r], atol=1e-9 * o["sv"][0])
    assert ks.sv[0, 2:].max() <= 1e-12 * ks.sv[0, 0]
    # d < r (degenerate but legal): padded with zeros
    ks = qk_kernels(_rand((8, 3), 4), _rand((8, 3), 5), 1, 1, 8).spectra()
    o = dense_kernel_spectra(_rand((8, 3), 4).T, _rand((8, 3), 5))
    np.testing.assert_allclose(ks.sv[0, :3], o["sv"], rtol=1e-10)
    assert np.all(ks.sv[0, 3:] == 0)


def test_symmetric_and_antisymmetric_kernels():
    # W_K = W_Q: A = W_Q^T W_Q is symmetric PSD -> real non-negative eigenvalues = singular values
    r, d = 5, 20
    Wq = _rand((r, d), 7)
    ks = qk_kernels(Wq, Wq, 1, 1, r).spectra()
    assert ks.symmetry[0] == pytest.approx(1.0, abs=1e-12)
    assert ks.asymmetry[0] == pytest.approx(0.0, abs=1e-6)
    assert ks.complex_mask().sum() == 0
    np.testing.assert_allclose(ks.eig[0].real, ks.sv[0], rtol=1e-10)
    # A = U J U^T with J = [[0, 1], [-1, 0]]: antisymmetric, eigenvalues +-i ||u||^2 (hand-worked)
    u = torch.zeros(2, d, dtype=torch.float64)
    u[0, 0] = u[1, 1] = 2.0
    J = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    ks = FactoredKernels(u.T[None], (J @ u)[None]).spectra()
    assert ks.symmetry[0] == pytest.approx(0.0, abs=1e-12)
    assert ks.asymmetry[0] == pytest.approx(2.0, abs=1e-12)
    np.testing.assert_allclose(sorted(ks.eig[0].imag), [-4.0, 4.0], atol=1e-12)
    np.testing.assert_allclose(ks.eig[0].real, 0.0, atol=1e-12)
    np.testing.assert_allclose(ks.sv[0], [4.0, 4.0], atol=1e-12)
    assert ks.metrics()["complex_frac"][0] == 1.0


def test_seed_dense_float32_counts_noise_eigenvalues():
    """The seed's dense float32 eig returns d - r noise eigenvalues; the factored method has exactly r."""
    h, r, d = 1, 8, 192
    Wq, Wk = _rand((r, d), 11) / d**0.5, _rand((r, d), 12) / d**0.5
    ks = qk_kernels(Wq, Wk, h, h, r).spectra()
    o32 = dense_kernel_spectra(Wq.T, Wk, dtype=torch.float32)
    mag = np.abs(o32["eig"])
    assert len(mag) == d and (mag[r:] > 0).any()  # noise instead of exact zeros
    assert mag[r:].max() < 1e-4 * mag[0]  # ... far below the r true ones
    top_r_energy = (mag[:r] ** 2).sum() / (mag**2).sum()
    assert top_r_energy < 1.0  # the seed's "< 100%" comes from noise only
    rep = head_eigen_report(ks.eig[0], d)
    assert rep["top_d_head_energy"] == 1.0 and rep["plane"]["n_exact_zero"] == d - r


def test_head_eigen_report_hand_worked():
    eig = np.array([3 + 4j, 3 - 4j, -2.0 + 0j, 1.0 + 0j])
    rep = head_eigen_report(eig, d=10)
    p = rep["plane"]
    assert (p["n_complex"], p["n_real"], p["n_conjugate_pairs"]) == (2, 2, 1)
    assert (p["n_positive_real"], p["n_negative_real"], p["n_exact_zero"]) == (3, 1, 6)
    assert (p["real_min"], p["real_max"], p["imag_min"], p["imag_max"]) == (-2, 3, -4, 4)
    # energies 25, 25, 4, 1 of 55: 50% -> 2 (25/55 < .5), 90% -> 2 (50/55=.909), 95% -> 3, 99% -> 4
    assert rep["milestones"] == {0.5: 2, 0.75: 2, 0.9: 2, 0.95: 3, 0.99: 4}
    assert rep["percentiles"][0] == 1.0 and rep["percentiles"][100] == 5.0
    assert rep["percentiles"][50] == pytest.approx(np.median([5, 5, 2, 1]))
    assert rep["top"][2] == (2, -2.0, 0.0, 2.0)


def test_quartile_labels():
    lab = quartile_labels(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert lab.tolist() == ["LOW-RANK", "LOW-RANK", "MID", "HIGH-RANK", "HIGH-RANK"]


# ---------------------------------------------------------------------------------------
# whole-model sweep
# ---------------------------------------------------------------------------------------
def test_sweep_and_qk_singular_values_on_random_source():
    src = RandomAttentionWeights(L=3, d=40, h=4, n_kv=2, d_head=8, seed=3)
    sw = sweep_attention(src, progress=False)
    S = qk_singular_values(src)
    assert S.shape == (3, 4, 8) and S.dtype == np.float64
    np.testing.assert_allclose(S, sw.sv["qk"], rtol=1e-12)
    for li in range(3):
        Wq, Wk = src.layer_weight(li, "q", torch.float64), src.layer_weight(li, "k", torch.float64)
        for i in range(4):
            g = i // 2
            A = Wq[i * 8 : (i + 1) * 8].T @ Wk[g * 8 : (g + 1) * 8]
            np.testing.assert_allclose(S[li, i], torch.linalg.svdvals(A).numpy()[:8], rtol=0, atol=1e-12 * S[li, i, 0])
    df = sw.to_frame()
    assert len(df) == 12
    for col in (
        "layer",
        "head",
        "kv_head",
        "eff_rank",
        "op_norm",
        "asymmetry",
        "complex_frac",
        "ov_eff_rank",
        "ov_op_norm",
        "ov_asymmetry",
        "ov_symmetry",
        "ov_complex_frac",
    ):
        assert col in df.columns
    assert df["kv_head"].tolist()[:4] == [0, 0, 1, 1]
    np.testing.assert_allclose(df["eff_rank"].to_numpy().reshape(3, 4), effective_rank(S))
    np.testing.assert_allclose(df["op_norm"].to_numpy().reshape(3, 4), S[..., 0])
    sub = sweep_attention(src, layers=[2, -3], circuits=("qk",), progress=False)
    assert sub.layers == [2, 0] and sub.to_frame()["layer"].tolist() == [2] * 4 + [0] * 4
    np.testing.assert_allclose(sub.sv["qk"], S[[2, 0]], rtol=1e-12)
    with pytest.raises(IndexError, match=r"\[5\] are out of range.*L=3"):
        sweep_attention(src, layers=[0, 5], progress=False)
    with pytest.raises(IndexError, match="L=3"):
        src.layer_weight(3, "q")


# ---------------------------------------------------------------------------------------
# real checkpoints: GPT-2 fused c_attn, BERT query/key/value, llama GQA, the bundled model
# ---------------------------------------------------------------------------------------
def _check_source_against_dense(src, layers):
    D = src.dims
    sw = sweep_attention(src, layers=layers, progress=False)
    for j, li in enumerate(layers):
        Wq, Wk = src.layer_weight(li, "q", torch.float64), src.layer_weight(li, "k", torch.float64)
        Wv, Wo = src.layer_weight(li, "v", torch.float64), src.layer_weight(li, "o", torch.float64)
        X, Y, kv = qk_factors(Wq, Wk, D.h, D.n_kv, D.d_head)
        assert_matches_dense(_row(sw, "qk", j), X, Y, kv)
        X, Y, kv = ov_factors(Wv, Wo, D.h, D.n_kv, D.d_head)
        assert_matches_dense(_row(sw, "ov", j), X, Y, kv)
    return sw


def _row(sw, circuit, j):
    return KernelSpectra(sw.sv[circuit][j], sw.eig[circuit][j], sw.fro2[circuit][j], sw.tr_sq[circuit][j], sw.d)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_tiny_checkpoints_match_dense_and_transformers(family, tiny_model_dirs):
    from safetensors.torch import load_file

    from utils.weights import open_weights

    folder = tiny_model_dirs[family]
    src = open_weights(folder)
    D = src.dims
    _check_source_against_dense(src, [0, D.L - 1])
    # independent slicing from the raw checkpoint tensors (the loader's role mapping is checked too)
    raw = load_file(str(folder / "model.safetensors"))
    li = 1
    if family == "gpt2":
        W = next(v for k, v in raw.items() if k.endswith(f"h.{li}.attn.c_attn.weight")).double()  # (d, 3d)
        Wq, Wk = W[:, : D.d].T, W[:, D.d : 2 * D.d].T
    elif family == "bert":
        Wq = next(v for k, v in raw.items() if k.endswith(f"layer.{li}.attention.self.query.weight")).double()
        Wk = next(v for k, v in raw.items() if k.endswith(f"layer.{li}.attention.self.key.weight")).double()
    else:
        Wq = next(v for k, v in raw.items() if k.endswith(f"layers.{li}.self_attn.q_proj.weight")).double()
        Wk = next(v for k, v in raw.items() if k.endswith(f"layers.{li}.self_attn.k_proj.weight")).double()
    S = qk_singular_values(src)
    r, grp = D.d_head, D.h // D.n_kv
    for i in range(D.h):
        g = i // grp
        A = Wq[i * r : (i + 1) * r].T @ Wk[g * r : (g + 1) * r]
        np.testing.assert_allclose(S[li, i], torch.linalg.svdvals(A).numpy()[:r], rtol=0, atol=RTOL * S[li, i, 0])


@pytest.mark.slow
def test_bundled_model_matches_dense(bundled_gguf):
    """SmolLM2-135M (GQA 9 query / 3 KV heads, d 576): factored == dense on two layers, every head."""
    from utils.weights import open_weights

    src = open_weights(str(bundled_gguf))
    D = src.dims
    assert D.h % D.n_kv == 0 and D.n_kv < D.h
    sw = sweep_attention(src, layers=[0, D.L - 1], progress=False)
    heads = [0, D.h // 2, D.h - 1]  # one query head in each KV group
    for j, li in enumerate([0, D.L - 1]):
        X, Y, kv = qk_factors(
            src.layer_weight(li, "q", torch.float64), src.layer_weight(li, "k", torch.float64), D.h, D.n_kv, D.d_head
        )
        assert_matches_dense(_row(sw, "qk", j), X, Y, kv, heads=heads)
    X, Y, kv = ov_factors(
        src.layer_weight(D.L - 1, "v", torch.float64),
        src.layer_weight(D.L - 1, "o", torch.float64),
        D.h,
        D.n_kv,
        D.d_head,
    )
    assert_matches_dense(_row(sw, "ov", 1), X, Y, kv, heads=[D.h - 1])
    # the seed's float32 dense eig on a real head: noise eigenvalues inflate its complex count
    X, Y, kv = qk_factors(src.layer_weight(D.L - 1, "q"), src.layer_weight(D.L - 1, "k"), D.h, D.n_kv, D.d_head)
    o32 = dense_kernel_spectra(X[0], Y[0], dtype=torch.float32)
    seed_complex = int((np.abs(o32["eig"].imag) > 1e-6).sum())
    exact_complex = int(_row(sw, "qk", 1).complex_mask()[0].sum())
    assert seed_complex > exact_complex + 10 and np.abs(o32["eig"][D.d_head :]).max() < 1e-5 * np.abs(o32["eig"][0])


# ---------------------------------------------------------------------------------------
# notebook 02 end to end on tiny checkpoints
# ---------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_notebook_02_runs_on_tiny_models(tiny_model_dirs, tmp_path, family):
    import pandas as pd
    from conftest import run_notebook_smoke

    run_dir = run_notebook_smoke(
        "02_attention_kernels", {"model": str(tiny_model_dirs[family]), "layer_idx": -1, "head_idx": 1}, tmp_path
    )
    files = {p.name for p in run_dir.iterdir()}
    assert {
        "report.md",
        "run.json",
        "attention_heads.csv",
        "qk_head_spectrum.png",
        "ov_head_spectrum.png",
        "eff_rank_heatmap.png",
        "qk_per_head_summary.csv",
    } <= files
    assert not [f for f in files if f.startswith(".")]
    from utils.weights import open_weights

    src = open_weights(tiny_model_dirs[family])
    D = src.dims
    df = pd.read_csv(run_dir / "attention_heads.csv")
    assert len(df) == D.L * D.h
    assert {"layer", "head", "kv_head", "eff_rank", "op_norm", "asymmetry", "complex_frac", "ov_eff_rank"} <= set(
        df.columns
    )
    # independent check: numpy SVD of the dense d x d kernel of every head of the last layer
    L, r, grp = D.L - 1, D.d_head, D.h // D.n_kv
    Wq, Wk = src.layer_weight(L, "q").double().numpy(), src.layer_weight(L, "k").double().numpy()
    for i in range(D.h):
        A = Wq[i * r : (i + 1) * r].T @ Wk[(i // grp) * r : (i // grp + 1) * r]
        s = np.linalg.svd(A, compute_uv=False)[:r]
        p = s / s.sum()
        assert df[(df["layer"] == L) & (df["head"] == i)]["eff_rank"].item() == pytest.approx(
            np.exp(-(p * np.log(p)).sum()), rel=1e-9
        )
    assert df["kv_head"].tolist()[: D.h] == kv_head_index(D.h, D.n_kv).tolist()
    report = (run_dir / "report.md").read_text()
    assert f"layer {D.L - 1}, head 1" in report and "![eff rank heatmap](eff_rank_heatmap.png)" in report
    assert "Rotary position embeddings are not part of A" in report
    assert "Exact reduction" in report and "## Run record" in report


@pytest.mark.slow
def test_notebook_02_rejects_bad_head(tiny_llama_dir, tmp_path):
    """Refused before anything is created: the rule {head of model} is checked against the model's heads."""
    from conftest import run_notebook_smoke

    from utils.running.params import ParameterError

    with pytest.raises(ParameterError, match=r"head_idx=4 is out of range: .* has 4 query heads.*0\.\.3"):
        run_notebook_smoke("02_attention_kernels", {"model": str(tiny_llama_dir), "head_idx": 4}, tmp_path)
    assert list(tmp_path.iterdir()) == []
