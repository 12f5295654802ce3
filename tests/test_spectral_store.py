"""HDF5 spectral store: merge in the seed's layout, refusal, atomicity, verify, foreign files,
and the 05_spectral_dynamics notebook smoke test."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_notebook_smoke

from utils.dynamics.recorder import SpectralRecorder, two_d_weights
from utils.dynamics.store import (
    EIG,
    SV,
    MergeMismatchError,
    RunFileWriter,
    SpectralFile,
    merge_runs,
    verify_spectral_file,
)
from utils.dynamics.store.__main__ import main
from utils.dynamics.tiny_gpt import TinyGPTConfig, make_tiny_gpt

TINY = TinyGPTConfig(n_layer=1, n_embd=8, n_head=2, block_size=8)
STEPS = (0, 4, 8)


def _record_run(path: Path, seed: int, cfg: TinyGPTConfig = TINY, include=None, steps=STEPS):
    """A fake 'training': perturb the weights between checkpoints; returns the weights seen."""
    model = make_tiny_gpt(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed)
    seen = []
    with SpectralRecorder(path, model, config=cfg.as_dict(), seed=seed, include=include) as rec:
        for step in steps:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.02 * torch.randn(p.shape, generator=g))
            seen.append({k: v.detach().double().numpy().copy() for k, v in two_d_weights(model, include).items()})
            rec.log_loss(step, 5.0 - 0.1 * step - 0.01 * seed)
            rec.record(step)
    return seen


@pytest.fixture()
def two_runs(tmp_path):
    paths = [tmp_path / "run_a.h5", tmp_path / "run_b.h5"]
    seen = [_record_run(p, seed=s) for p, s in zip(paths, (1, 2))]
    return paths, seen


def test_merge_two_runs_seed_layout(two_runs, tmp_path):
    paths, seen = two_runs
    out = merge_runs(paths, tmp_path / "merged.h5")
    names = list(seen[0][0])
    square = [n for n in names if seen[0][0][n].shape[0] == seen[0][0][n].shape[1]]
    assert len(names) == 6 and set(square) == {"transformer.wpe.weight", "transformer.h.0.attn.c_proj.weight"}
    with h5py.File(out, "r") as f:
        assert {
            "batch_numbers",
            "loss_values",
            "batches",
            "layers",
            "merge_metadata",
            "metadata_run1",
            "metadata_run2",
            "model_run1",
            "model_run2",
        } <= set(f.keys())
        np.testing.assert_array_equal(f["batches"][()], list(STEPS) * 2)
        np.testing.assert_array_equal(f["batch_numbers"][()], list(STEPS) * 2)
        want_loss = [5.0 - 0.1 * s - 0.01 * seed for seed in (1, 2) for s in STEPS]
        np.testing.assert_allclose(f["loss_values"][()], want_loss)
        assert set(f["layers"].keys()) == set(names)
        expected = {f"batch_{i}_run{r}" for i in range(len(STEPS)) for r in (1, 2)}
        for n in names:
            want_an = {SV, EIG} if n in square else {SV}
            assert set(f["layers"][n].keys()) == want_an
            for an in want_an:
                assert set(f["layers"][n][an].keys()) == expected  # 3 checkpoints x 2 runs = 6
            for r in (1, 2):
                for i in range(len(STEPS)):
                    W = seen[r - 1][i][n]
                    np.testing.assert_allclose(
                        f[f"layers/{n}/{SV}/batch_{i}_run{r}"][()],
                        np.linalg.svd(W, compute_uv=False),
                        rtol=1e-5,
                        atol=1e-6,
                    )
        assert int(f["metadata_run2"].attrs["seed"]) == 2
        np.testing.assert_array_equal(f["merge_metadata/checkpoint_counts"][()], [3, 3])
    rep = verify_spectral_file(out, inputs=paths)
    assert rep.ok, rep.summary()
    assert rep.runs == [1, 2] and rep.n_layers == 6 and rep.n_layers_with_eigenvalues == 2
    assert rep.datasets_per_analysis == {SV: 6, EIG: 6}
    assert rep.n_datasets == 6 * 6 + 2 * 6
    assert rep.n_nonfinite_datasets == 0
    assert rep.loss_min == pytest.approx(5.0 - 0.8 - 0.02) and rep.loss_max == pytest.approx(4.99)
    total_in = sum(p.stat().st_size for p in paths)
    assert rep.size_ratio == pytest.approx(out.stat().st_size / total_in)
    text = rep.summary()
    assert "OK" in text and "runs present: 2" in text and "size ratio" in text
    with SpectralFile(out) as sf:
        assert sf.runs == [1, 2] and sf.merged and not sf.notes
        np.testing.assert_array_equal(sf.checkpoint_steps(2), STEPS)
        np.testing.assert_allclose(sf.loss(2)[1], want_loss[3:])
        df = sf.spectral_frame(top_k=2)
        assert len(df) == 6 * 3 * 2
        row = df[(df.run == 2) & (df.checkpoint == 1) & (df.layer == names[0])].iloc[0]
        S = np.linalg.svd(seen[1][1][names[0]], compute_uv=False)
        p = S / S.sum()
        assert row.step == STEPS[1]
        assert row.eff_rank == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-5)
        assert row.sigma_1 == pytest.approx(S[0], rel=1e-5)


def test_merge_refuses_mismatched_runs(two_runs, tmp_path, capsys):
    paths, _ = two_runs
    wide = tmp_path / "wide.h5"
    _record_run(wide, seed=3, cfg=TinyGPTConfig(n_layer=1, n_embd=12, n_head=2, block_size=8))
    out = tmp_path / "m.h5"
    with pytest.raises(MergeMismatchError) as e:
        merge_runs([paths[0], wide], out)
    msg = str(e.value)
    assert "run 2 (wide.h5) differs from run 1 (run_a.h5)" in msg
    assert "shape of transformer.wte.weight: (256, 8) in run 1 vs (256, 12) in run 2" in msg
    fewer = tmp_path / "fewer.h5"
    _record_run(fewer, seed=4, include=r"\.h\.")  # no embeddings
    with pytest.raises(
        MergeMismatchError,
        match=r"layers only in run 1: \['transformer.wpe.weight', "
        r"'transformer.wte.weight'\]",
    ):
        merge_runs([paths[0], paths[1], fewer], out)
    assert not out.exists()
    assert main(["merge", str(out), str(paths[0]), str(wide)]) == 2  # command line: message, no traceback
    printed = capsys.readouterr()
    assert printed.err.startswith("error: cannot merge") and "Traceback" not in printed.err and not printed.out
    assert not out.exists()
    assert main(["merge", str(out), *map(str, paths)]) == 0 and "OK" in capsys.readouterr().out
    out.unlink()
    merged = merge_runs(paths, tmp_path / "ok.h5")
    with pytest.raises(MergeMismatchError, match="already a merged file"):
        merge_runs([merged, paths[0]], out)
    assert not out.exists()


def test_interrupted_merge_leaves_no_file(two_runs, tmp_path, monkeypatch):
    import utils.dynamics.store.merge as merge_mod

    paths, _ = two_runs
    out = tmp_path / "merged.h5"
    before = set(tmp_path.iterdir())

    def crash(*a, **k):  # every layer has been copied; the merge dies before it finishes
        raise RuntimeError("simulated interruption")

    monkeypatch.setattr(merge_mod, "write_attrs", crash)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        merge_runs(paths, out)
    monkeypatch.undo()
    assert set(tmp_path.iterdir()) == before  # no final file, no temp left behind
    with pytest.raises(FileExistsError):
        merge_runs(paths, paths[0], overwrite=False)


def test_writer_abort_leaves_nothing(tmp_path):
    w = RunFileWriter(tmp_path / "x.h5")
    w.write_checkpoint(0, {"a": {SV: np.ones(2)}}, {"a": (2, 3)})
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_verify_reports_truncated_file(two_runs, tmp_path, capsys):
    paths, _ = two_runs
    out = merge_runs(paths, tmp_path / "merged.h5")
    bad = tmp_path / "truncated.h5"
    shutil.copy(out, bad)
    with open(bad, "r+b") as fh:
        fh.truncate(bad.stat().st_size // 2)
    rep = verify_spectral_file(bad)
    assert not rep.ok
    assert len(rep.problems) == 1 and "cannot open" in rep.problems[0] and "truncated" in rep.problems[0]
    assert "FAILED" in rep.summary()
    assert main(["verify", str(bad)]) == 1
    printed = capsys.readouterr().out
    assert "FAILED" in printed and "Traceback" not in printed
    not_hdf5 = tmp_path / "text.h5"
    not_hdf5.write_text("hello")
    assert "cannot open" in verify_spectral_file(not_hdf5).problems[0]
    assert "does not exist" in verify_spectral_file(tmp_path / "missing.h5").problems[0]


def test_verify_reports_corrupted_data_and_nan(two_runs, tmp_path):
    paths, _ = two_runs
    out = merge_runs(paths, tmp_path / "merged.h5")
    target = "layers/transformer.h.0.mlp.c_fc.weight/singular_values/batch_1_run2"
    with h5py.File(out, "r") as f:
        info = f[target].id.get_chunk_info(0)
    with open(out, "r+b") as fh:  # flip bytes inside the data: the Fletcher-32 checksum fails
        fh.seek(info.byte_offset + 4)
        fh.write(b"\xff\x00\xff\x00")
    rep = verify_spectral_file(out)
    assert not rep.ok
    assert any(target in p and "cannot read" in p for p in rep.problems), rep.problems
    # NaN in a spectrum and a missing dataset
    with h5py.File(out, "r+") as f:
        ds = "layers/transformer.wte.weight/singular_values/batch_0_run1"
        f[ds][0] = np.nan
        del f["layers/transformer.wpe.weight/eigenvalues/batch_2_run1"]
    rep = verify_spectral_file(out)
    assert rep.n_nonfinite_datasets == 1
    assert any("batch_0_run1: 1 NaN/Inf" in p for p in rep.problems)
    assert any("transformer.wpe.weight/eigenvalues: run 1 has 2 datasets, expected 3" in p for p in rep.problems)


def _write_seed_layout(path: Path, rng: np.random.Generator):
    """A merged file as another tool would write it: only the seed's names, no merge counts,
    eigenvalues as (n, 2) real/imag, loss log that restarts its step count for each run."""
    shapes = {"transformer.h.0.attn.c_attn.weight": (6, 18), "transformer.h.0.attn.c_proj.weight": (6, 6)}
    spectra = {}
    with h5py.File(path, "w") as f:
        f["batch_numbers"] = np.array([0, 10, 20, 0, 10, 20], dtype=np.int64)
        f["loss_values"] = np.array([9.0, 8.5, 8.2, 10.5, 9.1, 8.3])
        f["batches"] = np.array([0, 10, 20, 30, 0, 10, 20, 30], dtype=np.int64)
        for name, shp in shapes.items():
            for r in (1, 2):
                for i in range(4):
                    W = rng.standard_normal(shp)
                    S = np.linalg.svd(W, compute_uv=False).astype(np.float32)
                    spectra[(name, r, i)] = (W, S)
                    f.create_dataset(f"layers/{name}/singular_values/batch_{i}_run{r}", data=S)
                    if shp[0] == shp[1]:
                        ev = np.linalg.eigvals(W)
                        f.create_dataset(
                            f"layers/{name}/eigenvalues/batch_{i}_run{r}",
                            data=np.stack([ev.real, ev.imag], axis=1).astype(np.float32),
                        )
        f.create_group("merge_metadata").attrs["note"] = "merged elsewhere"
        for r in (1, 2):
            f.create_group(f"metadata_run{r}").attrs["seed"] = r
            f.create_group(f"model_run{r}").attrs["n_layer"] = 1
    return spectra


def test_reads_seed_layout_written_elsewhere(tmp_path):
    path = tmp_path / "foreign.h5"
    spectra = _write_seed_layout(path, np.random.default_rng(0))
    with SpectralFile(path) as sf:
        assert sf.runs == [1, 2]
        assert sf.layers == ["transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.weight"]
        assert sf.analyses("transformer.h.0.attn.c_proj.weight") == [SV, EIG]
        np.testing.assert_array_equal(sf.checkpoint_steps(2), [0, 10, 20, 30])
        np.testing.assert_array_equal(sf.loss(1)[0], [0, 10, 20])
        np.testing.assert_allclose(sf.loss(2)[1], [10.5, 9.1, 8.3])
        W, S = spectra[("transformer.h.0.attn.c_proj.weight", 2, 3)]
        ev = sf.spectrum("transformer.h.0.attn.c_proj.weight", EIG, 2, 3)
        assert np.iscomplexobj(ev)
        for w in np.linalg.eigvals(W):
            assert np.min(np.abs(ev - w)) < 1e-5
        np.testing.assert_allclose(
            sf.spectrum("transformer.h.0.attn.c_attn.weight", SV, 1, 2),
            spectra[("transformer.h.0.attn.c_attn.weight", 1, 2)][1],
        )
        assert sf.metadata(2)["seed"] == 2
    rep = verify_spectral_file(path)
    assert rep.ok, rep.summary()
    assert rep.checkpoints_per_run == {1: 4, 2: 4} and rep.datasets_per_analysis == {SV: 8, EIG: 8}
    assert (rep.loss_min, rep.loss_max) == (8.2, 10.5)


def test_notebook_smoke(tmp_path):
    """Train two 6-step runs of a 1-layer GPT, merge, verify, plot; then re-plot a foreign file."""
    params = dict(
        n_runs=2,
        n_layer=1,
        n_embd=16,
        n_head=2,
        block_size=16,
        batch_size=4,
        n_steps=6,
        record_every=3,
        text_chars=20_000,
        top_k=2,
    )
    run_dir = run_notebook_smoke("05_spectral_dynamics", params, tmp_path)
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")], "temp files left behind"
    for name in (
        "report.md",
        "merged_spectra.h5",
        "run_seed0.h5",
        "run_seed1.h5",
        "verify.txt",
        "effective_rank_vs_step.png",
        "top_singular_values_vs_step.png",
        "spectra_first_last.png",
        "eigenvalue_magnitudes_first_last.png",
        "loss_curves.png",
        "spectral_summary.csv",
    ):
        assert (run_dir / name).is_file(), name
    assert verify_spectral_file(run_dir / "merged_spectra.h5").ok
    # independent check: the step-0 effective rank of run 1 is that of the seed-0 initialisation (numpy SVD)
    cfg = TinyGPTConfig(n_layer=1, n_embd=16, n_head=2, block_size=16, batch_size=4, n_steps=6)
    W = dict(make_tiny_gpt(cfg, seed=0).named_parameters())["transformer.h.0.attn.c_attn.weight"]
    s = np.linalg.svd(W.detach().double().numpy(), compute_uv=False)
    p = s / s.sum()
    df = pd.read_csv(run_dir / "spectral_summary.csv")
    row = df[(df.run == 1) & (df.step == 0) & (df.layer == "transformer.h.0.attn.c_attn.weight")]
    assert row["eff_rank"].item() == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-5)
    report = (run_dir / "report.md").read_text()
    assert "Verification of merged_spectra.h5: OK" in report and "## Run record" in report

    foreign = tmp_path / "foreign.h5"
    _write_seed_layout(foreign, np.random.default_rng(1))
    run_dir2 = run_notebook_smoke("05_spectral_dynamics", {"merged_file": str(foreign)}, tmp_path, run_name="foreign")
    report2 = (run_dir2 / "report.md").read_text()
    assert "Existing merged file" in report2 and "FAILED" not in report2
    assert "loss entries split into runs where the step number drops" in report2
    assert not (run_dir2 / "merged_spectra.h5").exists()


def test_a_merge_refuses_a_folder_as_output_and_a_run_file_given_twice(tmp_path, capsys):
    """Issue 21, item 10: an output that is a folder raised a raw IsADirectoryError, and one run file given
    twice (under any name) made a "2 runs" file of one run."""
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    _record_run(a, 0)
    _record_run(b, 1)
    (tmp_path / "out").mkdir()
    assert main(["merge", str(tmp_path / "out"), str(a), str(b)]) == 2
    assert "is a folder: give the merged file's name" in capsys.readouterr().err
    (tmp_path / "alias.h5").symlink_to(a)
    for twice in ([a, a, b], [a, b, tmp_path / "alias.h5"]):
        assert main(["merge", str(tmp_path / "m.h5"), *map(str, twice)]) == 2
        assert "is given twice (runs 1 and " in capsys.readouterr().err
    assert not (tmp_path / "m.h5").exists() and sorted(p.name for p in (tmp_path / "out").iterdir()) == []
    assert main(["merge", str(tmp_path / "m.h5"), str(a), str(b)]) == 0
