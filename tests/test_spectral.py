"""Singular values and spectral summaries against numpy and hand-worked spectra."""

import numpy as np
import pytest
import torch

from utils.spectral import effective_rank, energy_counts, stable_rank, summarize, svdvals


def rand_with_spectrum(m, n, s, seed=0):
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((m, len(s))))
    V, _ = np.linalg.qr(rng.standard_normal((n, len(s))))
    return (U * np.asarray(s)) @ V.T


@pytest.mark.parametrize("method", ["gram", "svd"])
@pytest.mark.parametrize("shape", [(40, 40), (120, 30), (30, 120)])
def test_svdvals_matches_numpy(method, shape):
    W = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    ref = np.linalg.svd(W.astype(np.float64), compute_uv=False)
    got = svdvals(torch.from_numpy(W), device="cpu", method=method)
    assert got.dtype == np.float64 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9 * ref[0])


def test_gram_precision_on_ill_conditioned_matrix():
    # documented: absolute error ~ sqrt(eps64) * sigma_max, so a condition number of 1e5 is still exact to 1e-3
    s = np.logspace(0, -5, 50)
    W = rand_with_spectrum(200, 50, s)
    got = svdvals(torch.from_numpy(W), device="cpu", method="gram")
    np.testing.assert_allclose(got, s, rtol=1e-3)
    np.testing.assert_allclose(got[:20], s[:20], rtol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_upcast(dtype):
    W = torch.randn(64, 32).to(dtype)
    ref = np.linalg.svd(W.float().numpy().astype(np.float64), compute_uv=False)
    for method in ("gram", "svd"):
        np.testing.assert_allclose(svdvals(W, device="cpu", method=method), ref, rtol=1e-9)


def test_batch_matches_loop():
    B = torch.randn(5, 30, 20, dtype=torch.float64)
    for method in ("gram", "svd"):
        got = svdvals(B, device="cpu", method=method)
        assert got.shape == (5, 20)
        for i in range(5):
            np.testing.assert_allclose(got[i], np.linalg.svd(B[i].numpy(), compute_uv=False), rtol=1e-9)


def test_nan_rejected_with_clear_message():
    W = torch.randn(8, 8)
    W[2, 3] = float("nan")
    with pytest.raises(ValueError, match="holds 1 NaN/Inf values"):
        svdvals(W, device="cpu")


def test_effective_rank_known_cases():
    assert effective_rank(np.ones(7)) == pytest.approx(7.0)  # identity-like: full rank
    assert effective_rank(np.array([3.0, 0, 0, 0])) == pytest.approx(1.0)  # rank one
    p = np.array([0.5, 0.25, 0.25])  # hand-worked entropy
    assert effective_rank(p * 8) == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    assert effective_rank(np.zeros(4)) == 0.0
    batch = effective_rank(np.array([[1.0, 1.0], [1.0, 0.0]]))
    np.testing.assert_allclose(batch, [2.0, 1.0])


def test_effective_rank_of_identity_and_rank_one_matrices():
    assert effective_rank(svdvals(torch.eye(16), device="cpu")) == pytest.approx(16.0)
    u = torch.randn(20, 1, dtype=torch.float64)
    v = torch.randn(1, 12, dtype=torch.float64)
    S = svdvals(u @ v, device="cpu")
    assert effective_rank(S) == pytest.approx(1.0, abs=1e-6)


def test_summary_of_chosen_spectrum():
    s = np.array([4.0, 2.0, 1.0, 1.0])
    W = rand_with_spectrum(30, 10, s)
    S = svdvals(torch.from_numpy(W), device="cpu")  # 10 values: 4 non-zero, 6 ~ 1e-8 noise
    sm = summarize(S)
    assert sm.spectral_norm == pytest.approx(4.0)
    assert sm.stable_rank == pytest.approx((16 + 4 + 1 + 1) / 16)
    assert sm.frobenius_norm == pytest.approx(np.sqrt(22))
    assert sm.eff_rank == pytest.approx(np.exp(-(p := s / s.sum()) @ np.log(p)), rel=1e-6)
    assert sm.condition_number > 1e6  # rank deficient
    # energies 16, 4, 1, 1 of 22: cumulative .727, .909, .955, 1 -> 50%: 1, 75%: 2, 90%: 2, 95%: 3, 99%: 4
    assert (sm.n50, sm.n75, sm.n90, sm.n95, sm.n99) == (1, 2, 2, 3, 4)
    full = summarize(s)
    assert full.condition_number == pytest.approx(4.0)


def test_energy_counts_exact_level_and_numpy_oracle():
    S = np.array([1.0, 1.0, 1.0, 1.0])
    assert energy_counts(S, levels=(0.5, 0.75, 1.0)) == {0.5: 2, 0.75: 3, 1.0: 4}
    rng = np.random.default_rng(3)
    S = np.sort(rng.random(100))[::-1]
    cum = np.cumsum(S**2) / (S**2).sum()
    for lv, k in energy_counts(S).items():
        assert cum[k - 1] >= lv - 1e-12 and (k == 1 or cum[k - 2] < lv)


def test_stable_rank_zero_matrix():
    assert stable_rank(np.zeros(3)) == 0.0


def test_the_gpu_code_paths_run_on_the_cpu(tiny_llama_dir):
    """Issue 21: every GPU branch reachable without a GPU: inside utils.device.device_path() the CPU takes
    the batched float32 SVD of the weight sweep, the torch Gram on the device and the one-batch factored
    kernels, and each agrees with the CPU path (float32: to its precision)."""
    import torch

    from utils.device import device_path
    from utils.spectral import FactoredKernels, svdvals
    from utils.spectral.core import gram
    from utils.weight_ranks import weight_sweep
    from utils.weights import open_weights

    rng = np.random.default_rng(0)
    W = rng.standard_normal((300, 120))
    ref = np.linalg.svd(W, compute_uv=False)
    host = gram(W)
    with device_path():
        G = gram(W, device="cpu")
        assert isinstance(G, torch.Tensor) and not isinstance(host, torch.Tensor)  # the device branch ran
        np.testing.assert_allclose(G.numpy(), host, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(svdvals(W, device="cpu"), ref, rtol=1e-5)  # float32 SVD, as on a GPU
        X, Y = rng.standard_normal((6, 40, 8)), rng.standard_normal((3, 8, 40))
        dev_sp = FactoredKernels(X, Y, [0, 0, 1, 1, 2, 2]).spectra()
        src = open_weights(tiny_llama_dir)
        gpu_like = weight_sweep(src, device="cpu", progress=False)  # batched float32 SVD by default
    cpu_sp = FactoredKernels(X, Y, [0, 0, 1, 1, 2, 2]).spectra()
    np.testing.assert_allclose(dev_sp.sv, cpu_sp.sv, rtol=1e-12)
    np.testing.assert_allclose(np.sort_complex(dev_sp.eig), np.sort_complex(cpu_sp.eig), rtol=1e-9)
    exact = weight_sweep(src, device="cpu", progress=False)
    assert gpu_like.attrs["computed"] == len(exact)
    assert gpu_like.attrs["method"] == "batched svd (float32)" and exact.attrs["method"] == "gram (float64)"
    np.testing.assert_allclose(gpu_like.eff_rank, exact.eff_rank, rtol=1e-4)
    np.testing.assert_allclose(gpu_like.spectral_norm, exact.spectral_norm, rtol=1e-5)


def test_only_utils_device_asks_torch_cuda(monkeypatch):
    """Issue 21: one module answers 'is there a GPU, how many, which': utils.device. A visible GPU, faked
    there, reaches the run record and the sweep's worker count."""
    from pathlib import Path

    import utils
    import utils.device as device
    from utils.provenance import package_versions
    from utils.sweep.execute import local_gpu_count

    root = Path(utils.__file__).parent
    askers = [
        str(p.relative_to(root)) for p in root.rglob("*.py") if "torch.cuda" in p.read_text() and p.name != "device.py"
    ]
    assert askers == []
    monkeypatch.setattr(device, "cuda_available", lambda: True)
    monkeypatch.setattr(device, "gpu_count", lambda: 3)
    monkeypatch.setattr(device, "gpu_name", lambda i=0: "Fake GPU")
    assert local_gpu_count() == 3
    v = package_versions()
    assert v["cuda_available"] == "True" and v["cuda_device"] == "Fake GPU"
