"""Random-matrix diagnostics and permuted nulls against independent computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from utils.spectral import rmt
from utils.spectral.null import PermutedWeights, derived_seed, permute_entries
from utils.weight_ranks.rmt import NULL_SV, RMTColumns, rmt_sweep, spectrum_columns


@pytest.mark.parametrize("shape", [(400, 100), (150, 450), (300, 300), (2000, 64)])
def test_mp_edge_and_no_spikes_on_gaussian_matrices(shape):
    sd = 0.03
    W = np.random.default_rng(sum(shape)).standard_normal(shape) * sd
    S = np.linalg.svd(W, compute_uv=False)
    N, M = max(shape), min(shape)
    fit = rmt.mp_fit(rmt.esd(S, shape), N)
    lam_plus = sd**2 * (1 + np.sqrt(M / N)) ** 2  # the asymptotic edge, from the true variance
    assert fit.n_spikes == 0 and fit.spike_mass == 0
    assert fit.sigma2 == pytest.approx(sd**2, rel=0.03)
    assert S[0] ** 2 / N < fit.edge < 1.2 * lam_plus
    assert fit.lambda_plus == pytest.approx(lam_plus, rel=0.03)


def test_planted_spikes_are_counted_with_their_mass():
    rng = np.random.default_rng(0)
    N, M, k = 1200, 300, 3
    W = rng.standard_normal((N, M))
    U, V = np.linalg.qr(rng.standard_normal((N, k)))[0], np.linalg.qr(rng.standard_normal((M, k)))[0]
    W += U @ np.diag([200.0, 150.0, 120.0]) @ V.T  # far above the BBP threshold sqrt(N) (M/N)^(1/4)
    S = np.linalg.svd(W, compute_uv=False)
    fit = rmt.mp_fit(rmt.esd(S, W.shape), N)
    assert fit.n_spikes == k
    assert fit.spike_mass == pytest.approx((S[:k] ** 2).sum() / (S**2).sum())


@pytest.mark.parametrize("alpha", [2.5, 4.0])
def test_alpha_recovered_within_bootstrap_interval_on_pareto_samples(alpha):
    x = 0.01 * (1 + np.random.default_rng(int(alpha * 10)).pareto(alpha - 1, 3000))  # density ~ x^-alpha
    fit = rmt.powerlaw_fit(x, n_boot=60, seed=1)
    assert fit.alpha_lo <= alpha <= fit.alpha_hi and fit.credible
    assert fit.alpha_hi - fit.alpha_lo < 1.0


def test_alpha_equals_powerlaw_package_mle_at_the_same_cutoff():
    powerlaw = pytest.importorskip("powerlaw")
    W = np.random.default_rng(3).standard_t(3, (800, 200))  # heavy-tailed entries: a heavy-tailed ESD
    lam = rmt.esd(np.linalg.svd(W, compute_uv=False), W.shape)
    fit = rmt.powerlaw_fit(lam)
    # powerlaw 2.0 bounds alpha to [0, 3] by default: widen it so its numerical MLE is unconstrained
    ref = powerlaw.Fit(lam, xmin=fit.xmin, verbose=False, parameter_ranges={"alpha": [1, 30]}).power_law.alpha
    assert fit.alpha == pytest.approx(ref, rel=1e-6)
    assert rmt.alpha_mle(lam, fit.xmin) == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("policy", ["csn", "ww"])
def test_vectorised_cutoff_scan_equals_a_loop(policy):
    x = np.sort(0.5 * (1 + np.random.default_rng(5).pareto(2.0, 300)))
    idx, alpha, D = rmt.scan_xmin(x, min_tail=2, policy=policy, chunk=37)
    n = len(x)
    for i, a, d in zip(idx, alpha, D):
        t = x[i:]
        m = len(t)
        a_ref = 1 + m / np.log(t / t[0]).sum()
        F = 1 - (t / t[0]) ** (1 - a_ref)
        lo, hi = np.arange(m) / m, np.arange(1, m + 1) / m
        d_ref = np.abs(F - lo).max() if policy == "ww" else max((F - lo).max(), (hi - F).max())
        assert a == pytest.approx(a_ref, rel=1e-10) and d == pytest.approx(d_ref, rel=1e-9, abs=1e-12)
    assert len(idx) == n - 1


def test_too_small_matrix_gives_a_flagged_row_not_an_error():
    S = np.linalg.svd(np.random.default_rng(0).standard_normal((6, 4)), compute_uv=False)
    cols = spectrum_columns(S, (6, 4))
    assert np.isnan(cols["alpha"]) and not cols["credible"] and "too few eigenvalues" in cols["flag"]
    assert np.isnan(cols["mp_edge"])


def test_permuted_null_keeps_the_entries_and_is_seeded():
    W = torch.randn(37, 23)
    P = permute_entries(W, 5)
    assert P.shape == W.shape and not torch.equal(P, W)
    assert torch.equal(torch.sort(P.reshape(-1)).values, torch.sort(W.reshape(-1)).values)
    assert torch.equal(P, permute_entries(W, 5)) and not torch.equal(P, permute_entries(W, 6))


def test_rmt_hook_null_spectrum_equals_numpy_svd_of_the_permuted_matrix():
    from utils.weights import MatrixRef

    W = torch.randn(120, 40, dtype=torch.float64)
    ref = MatrixRef("x", 0, "W_up", (120, 40), "up")
    hook = RMTColumns(null=True, seed=2, keep_null_spectra=True)
    out = hook(W, ref, np.linalg.svd(W.numpy(), compute_uv=False))
    Wp = permute_entries(W, derived_seed(2, "layer 0 up")).numpy()
    s0 = np.linalg.svd(Wp, compute_uv=False)
    p = s0 / s0.sum()
    assert out["null_eff_rank"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-9)
    assert out["null_stable_rank"] == pytest.approx((s0**2).sum() / s0[0] ** 2, rel=1e-9)
    assert np.allclose(out[NULL_SV], s0, rtol=1e-8)


def test_residual_null_keeps_every_head_spectrum(tiny_llama_dir):
    from utils.attention import layer_kernels
    from utils.weights import open_weights

    src = open_weights(tiny_llama_dir)
    null = PermutedWeights(src, seed=1, mode="residual")
    for c in ("qk", "ov"):
        a, b = layer_kernels(src, 1, c).spectra(), layer_kernels(null, 1, c).spectra()
        assert np.allclose(a.sv, b.sv, rtol=1e-10) and np.allclose(a.symmetry, b.symmetry, atol=1e-12)
    assert not torch.equal(src.layer_weight(1, "q"), null.layer_weight(1, "q"))


def test_rmt_sweep_resumed_from_its_cache_gives_the_same_table_and_null_spectra(tiny_llama_dir, tmp_path):
    from utils.weights import open_weights

    src = open_weights(tiny_llama_dir)
    kw = dict(null=True, seed=3, n_boot=5, device="cpu", progress=False)
    df0, sp0, nu0 = rmt_sweep(src, **kw)
    df1, sp1, nu1 = rmt_sweep(src, cache=tmp_path, **kw)  # computes and caches
    df2, sp2, nu2 = rmt_sweep(src, cache=tmp_path, **kw)  # reads everything back
    assert df1.attrs["computed"] == len(df0) and df2.attrs["reused"] == len(df0) and df2.attrs["computed"] == 0
    for df, nu in ((df1, nu1), (df2, nu2)):
        assert NULL_SV not in df
        pd.testing.assert_frame_equal(df.reset_index(drop=True), df0.reset_index(drop=True))
        assert set(nu) == set(nu0) and all(np.array_equal(nu[k], nu0[k]) for k in nu0)
    # other hook settings are another cache file, never mixed with these results
    df3, _, _ = rmt_sweep(src, cache=tmp_path, **{**kw, "seed": 4})
    assert df3.attrs["computed"] == len(df0) and df3.attrs["cache"] != df2.attrs["cache"]
    assert not np.allclose(df3.null_eff_rank, df0.null_eff_rank)
