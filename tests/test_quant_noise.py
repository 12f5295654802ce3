"""Quantised GGUF matrices read honestly: the rounding noise each block's scale implies, and its spectral edge.

A known matrix is quantised with the project's own GGUF writer; the noise model (each value's rounding
error uniform on ± half its block's step, variance step² / 12) is checked against the error actually
made, value by value in aggregate and through the spectrum: the predicted noise edge against the largest
singular value of the measured error, for a matrix of uniform scale and for one whose rows and columns
differ in scale (where the i.i.d. Marchenko-Pastur edge of the mean variance is far off).
"""

from __future__ import annotations

import numpy as np
import pytest
from family_cases import build_case, gguf_from_checkpoint

from utils.spectral.rmt import mp_median, noise_edge
from utils.weight_ranks import rmt_sweep
from utils.weights import open_weights
from utils.weights.gguf import GGUFFile, write_gguf


def _matrix(profiled: bool, N=1536, M=576, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((N, M)) * 0.02
    if profiled:  # rows of different scales and a few outlier columns, as trained weights have
        W *= np.exp(rng.normal(0, 0.5, (N, 1)))
        W[:, :8] *= 5
    return W


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
@pytest.mark.parametrize("profiled", [False, True])
def test_predicted_noise_edge_matches_the_measured_error(tmp_path, qtype, profiled):
    W = _matrix(profiled)
    g = GGUFFile(write_gguf(tmp_path / "w.gguf", "llama", {}, {"w": W}, qtype))
    E = g.tensor("w").double().numpy() - W  # the rounding error actually made
    var = g.rounding_variance("w")
    assert var.shape == W.shape
    assert E.var() / var.mean().item() == pytest.approx(1.0, abs=0.1)  # uniform rounding: step² / 12
    measured = np.linalg.svd(E, compute_uv=False)[0]
    predicted = noise_edge(var, seed=1)
    assert predicted == pytest.approx(measured, rel=0.1)
    iid = np.sqrt(var.mean().item()) * (np.sqrt(W.shape[0]) + np.sqrt(W.shape[1]))
    if profiled:  # the mean-variance MP edge misses a non-uniform profile by a factor of two or more
        assert iid < 0.6 * measured
    else:
        assert iid == pytest.approx(measured, rel=0.1)


def test_unquantised_tensors_have_no_noise_model(tmp_path):
    g = GGUFFile(write_gguf(tmp_path / "w.gguf", "llama", {}, {"w": _matrix(False, 64, 32)}, "F16"))
    assert g.rounding_variance("w") is None


def test_the_weight_sweep_reports_the_quantisation_noise(tmp_path):
    folder = build_case("llama", tmp_path / "ckpt")
    exact = open_weights(gguf_from_checkpoint(folder, "llama", tmp_path / "f32.gguf"))
    quant = open_weights(gguf_from_checkpoint(folder, "llama", tmp_path / "q4.gguf", qtype="Q4_1"))
    df, spectra, _ = rmt_sweep(quant, null=False, progress=False)
    assert not {"quant_type", "quant_edge", "n_above_quant_edge"} & set(rmt_sweep(exact, null=False, progress=False)[0])
    q = df[df.quant_type.notna()]
    assert set(q.quant_type) == {"Q4_1"} and len(q) >= len(df) - 1  # every matrix whose rows fit the blocks
    for ref in quant.matrices():
        row = df[df.name == ref.name].iloc[0]
        if not isinstance(row.quant_type, str):
            continue
        E = (quant.load(ref) - exact.load(ref)).double()
        rms = E.pow(2).mean().sqrt().item()
        assert row.quant_noise_rms == pytest.approx(rms, rel=0.25), ref.name
        S = spectra[ref.name]
        assert row.n_above_quant_edge == int((S > row.quant_edge).sum())
        assert 0 <= row.n_above_quant_edge <= min(ref.shape)


@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.375, 0.1])
def test_mp_median_against_direct_integration(ratio):
    """The Marchenko-Pastur median, square matrices included (their density is not zero at 0)."""
    from scipy import integrate, optimize

    a, b = (1 - np.sqrt(ratio)) ** 2, (1 + np.sqrt(ratio)) ** 2

    def cdf(m):
        f = lambda x: np.sqrt(max((b - x) * (x - a), 0.0)) / (2 * np.pi * ratio * x)  # noqa: E731
        return integrate.quad(f, a, m, limit=400)[0]

    ref = optimize.brentq(lambda m: cdf(m) - 0.5, a + 1e-12, b, xtol=1e-13)
    assert mp_median(ratio) == pytest.approx(ref, rel=1e-6)


def test_a_deepseek_gguf_with_split_latent_attention_is_refused_by_name(tmp_path):
    """llama.cpp's newer DeepSeek files split each block's kv_b into attn_k_b / attn_v_b: refused with the fix,
    not read with wrong head widths."""
    from utils.weights import open_weights
    from utils.weights.gguf import GGUFFormatError

    md = {"deepseek2.expert_count": 4, "deepseek2.attention.key_length_mla": 24}
    path = write_gguf(tmp_path / "ds.gguf", "deepseek2", md, {"blk.0.attn_k_b.weight": _matrix(False, 16, 8)}, "F16")
    with pytest.raises(GGUFFormatError, match="attn_k_b / attn_v_b.*Hugging Face checkpoint"):
        open_weights(path)
