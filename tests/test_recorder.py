"""SpectralRecorder: spectra against numpy oracles, tied weights, metadata, checkpoint folders."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from utils.dynamics.recorder import (
    SpectralRecorder,
    find_checkpoints,
    record_checkpoint_dir,
    two_d_weights,
    weight_spectra,
)
from utils.dynamics.store import EIG, SV, SpectralFile, verify_spectral_file
from utils.dynamics.tiny_gpt import TinyGPTConfig, encode_bytes, make_tiny_gpt, offline_text, train_tiny_gpt

TINY = TinyGPTConfig(n_layer=1, n_embd=8, n_head=2, block_size=8, batch_size=2, n_steps=4, warmup_steps=1)


def _match_eigs(got: np.ndarray, want: np.ndarray, tol: float) -> None:
    """Every oracle eigenvalue has a stored one within tol (and the counts agree)."""
    assert got.shape == want.shape
    for w in want:
        assert np.min(np.abs(got - w)) < tol, (w, got)


def test_weight_spectra_match_numpy():
    g = torch.Generator().manual_seed(0)
    rect = torch.randn(7, 5, generator=g)
    sq = torch.randn(6, 6, generator=g)
    s_rect = weight_spectra(rect)
    assert set(s_rect) == {SV}
    np.testing.assert_allclose(s_rect[SV], np.linalg.svd(rect.double().numpy(), compute_uv=False), rtol=1e-7, atol=1e-9)
    s_sq = weight_spectra(sq)
    np.testing.assert_allclose(s_sq[SV], np.linalg.svd(sq.double().numpy(), compute_uv=False), rtol=1e-7, atol=1e-9)
    want = np.linalg.eigvals(sq.double().numpy())
    _match_eigs(s_sq[EIG], want, 1e-9)
    assert np.all(np.diff(np.abs(s_sq[EIG])) <= 1e-12)  # sorted by descending magnitude
    assert np.iscomplexobj(s_sq[EIG])
    assert EIG not in weight_spectra(sq, eigenvalues=False)


def test_nan_weight_records_nan_with_warning():
    W = torch.ones(3, 3)
    W[0, 0] = float("nan")
    with pytest.warns(RuntimeWarning):
        s = weight_spectra(W)
    assert np.isnan(s[SV]).all() and np.isnan(s[EIG]).all()


def test_tied_weights_recorded_once():
    model = make_tiny_gpt(TINY, seed=0)
    names = list(two_d_weights(model))
    assert "lm_head.weight" not in names and "transformer.wte.weight" in names
    sd = model.state_dict()
    assert "lm_head.weight" in sd  # the state dict lists the tied tensor twice ...
    assert len(two_d_weights(sd)) == len(names)  # ... recorded once
    compiled_style = {"_orig_mod." + k: v for k, v in sd.items()}
    assert set(two_d_weights(compiled_style)) == set(two_d_weights(sd))


def test_recorder_file_contents_and_metadata(tmp_path):
    model = make_tiny_gpt(TINY, seed=3)
    path = tmp_path / "run.h5"
    snaps = {}
    with SpectralRecorder(path, model, config=TINY.as_dict(), seed=3, metadata={"note": "x"}) as rec:
        for step in (0, 5, 10):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01 * torch.randn_like(p))
            snaps[step] = {k: v.detach().clone() for k, v in two_d_weights(model).items()}
            rec.log_loss(step, 5.0 - step / 10)
            rec.record(step, loss=4.0)  # already logged at this step: not logged twice
        assert not path.exists()  # appears only on close
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["batches"][()], [0, 5, 10])
        np.testing.assert_array_equal(f["batch_numbers"][()], [0, 5, 10])
        np.testing.assert_allclose(f["loss_values"][()], [5.0, 4.5, 4.0])
        meta = f["metadata"].attrs
        assert int(meta["seed"]) == 3
        assert json.loads(meta["config"])["n_embd"] == 8
        assert "torch" in json.loads(meta["versions"])
        assert f["model"].attrs["class_name"] == "GPT2LMHeadModel"
        assert "GPT2Block" in f["model"].attrs["description"]
        for i, step in enumerate((0, 5, 10)):
            for name, W in snaps[step].items():
                sv = f[f"layers/{name}/{SV}/batch_{i}"][()]
                assert sv.dtype == np.float32
                np.testing.assert_allclose(
                    sv, np.linalg.svd(W.double().numpy(), compute_uv=False), rtol=1e-5, atol=1e-6
                )
                if W.shape[0] == W.shape[1]:
                    ev = f[f"layers/{name}/{EIG}/batch_{i}"][()]
                    assert ev.dtype == np.complex64
                    _match_eigs(ev.astype(np.complex128), np.linalg.eigvals(W.double().numpy()), 1e-5)
                else:
                    assert EIG not in f[f"layers/{name}"]
    with SpectralFile(path) as sf:
        assert sf.runs == [1] and not sf.merged
        assert sf.metadata(1)["note"] == "x"
        assert sf.metadata(1)["config"]["n_layer"] == 1
    assert verify_spectral_file(path).ok


def test_exception_inside_recorder_leaves_no_file(tmp_path):
    model = make_tiny_gpt(TINY, seed=0)
    path = tmp_path / "run.h5"
    with pytest.raises(RuntimeError, match="boom"):
        with SpectralRecorder(path, model) as rec:
            rec.record(0)
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_recorder_refuses_changed_weights(tmp_path):
    rec = SpectralRecorder(tmp_path / "r.h5", make_tiny_gpt(TINY, seed=0))
    rec.record(0)
    other = make_tiny_gpt(TinyGPTConfig(n_layer=1, n_embd=4, n_head=2, block_size=8), seed=0)
    with pytest.raises(ValueError, match="changed shape"):
        rec.record(1, model=other)
    rec.abort()
    assert not (tmp_path / "r.h5").exists()


def test_record_checkpoint_dir_hf_and_torch_files(tmp_path):
    ck = tmp_path / "ckpts"
    ck.mkdir()
    saved = {}
    for step in (20, 10):  # written out of order: recorded in step order
        m = make_tiny_gpt(TINY, seed=step)
        d = ck / f"checkpoint-{step}"
        m.save_pretrained(d)
        (d / "trainer_state.json").write_text(
            json.dumps({"global_step": step, "log_history": [{"step": step, "loss": step / 10}]})
        )
        saved[step] = two_d_weights(m)
    m = make_tiny_gpt(TINY, seed=30)
    torch.save({"model": m.state_dict(), "iter_num": 30, "best_val_loss": torch.tensor(1.5)}, ck / "ckpt_30.pt")
    saved[30] = two_d_weights(m)
    assert [s for s, _ in find_checkpoints(ck)] == [10, 20, 30]
    out = record_checkpoint_dir(ck, tmp_path / "rec.h5", progress=False)
    with SpectralFile(out) as sf:
        np.testing.assert_array_equal(sf.checkpoint_steps(1), [10, 20, 30])
        steps, losses = sf.loss(1)
        np.testing.assert_array_equal(steps, [10, 20, 30])
        np.testing.assert_allclose(losses, [1.0, 2.0, 1.5])
        assert set(sf.layers) == set(saved[10])
        for i, step in enumerate((10, 20, 30)):
            for name, W in saved[step].items():
                np.testing.assert_allclose(
                    sf.spectrum(name, SV, 1, i),
                    np.linalg.svd(W.detach().double().numpy(), compute_uv=False),
                    rtol=1e-5,
                    atol=1e-6,
                )
        assert sf.metadata(1)["checkpoints"] == ["checkpoint-10", "checkpoint-20", "ckpt_30.pt"]


def test_find_checkpoints_empty_folder_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        find_checkpoints(tmp_path)


@pytest.fixture()
def one_thread():
    """One torch thread: much faster than two on a small shared CPU; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_tiny_gpt_training_is_seeded_and_learns(one_thread):
    text, info = offline_text(50_000)
    assert info["n_chars"] == len(text) and len(info["sha256"]) == 64
    data = encode_bytes(text)
    assert data.max() < 256 and data.dtype == torch.long
    cfg = TinyGPTConfig(
        n_layer=1, n_embd=16, n_head=2, block_size=16, batch_size=8, n_steps=25, warmup_steps=3, lr=1e-2
    )
    runs = []
    for _ in range(2):
        losses = []
        m = make_tiny_gpt(cfg, seed=1)
        train_tiny_gpt(m, data, cfg, seed=1, on_step=lambda s, l, _m, out=losses: out.append(l), progress=False)
        runs.append(losses)
    assert runs[0] == runs[1]  # same seed, same run
    assert len(runs[0]) == cfg.n_steps + 1
    assert np.mean(runs[0][-5:]) < runs[0][0] - 0.5  # learns something (uniform bytes: ln 256 = 5.55)


def test_record_checkpoint_dir_on_a_single_hf_checkpoint(tiny_gpt2_dir, tmp_path):
    """A plain HF checkpoint folder (the shared tiny GPT-2) is one checkpoint; config.json is kept."""
    from transformers import AutoModelForCausalLM

    out = record_checkpoint_dir(tiny_gpt2_dir, tmp_path / "one.h5", progress=False)
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    want = two_d_weights(model)
    with SpectralFile(out) as sf:
        assert sf.n_checkpoints(1) == 1 and set(sf.layers) == set(want)
        assert sf.metadata(1)["config"]["model_type"] == "gpt2"
        for name, W in want.items():
            np.testing.assert_allclose(
                sf.spectrum(name, SV, 1, 0),
                np.linalg.svd(W.detach().double().numpy(), compute_uv=False),
                rtol=1e-5,
                atol=1e-6,
            )
