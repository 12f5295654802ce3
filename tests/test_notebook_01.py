"""Notebook 01 end to end on tiny checkpoints of every family, the runner, and bad input."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO_ROOT, run_notebook_smoke

from utils.running.runner import list_params


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_notebook_01_runs_on_each_family(tiny_model_dirs, tmp_path, family):
    run_dir = run_notebook_smoke("01_weight_ranks", {"model": str(tiny_model_dirs[family]), "layer_idx": 1}, tmp_path)
    files = {p.name for p in run_dir.iterdir()}
    assert {
        "01_weight_ranks.ipynb",
        "report.md",
        "run.json",
        "weight_ranks.csv",
        "eff_rank_by_layer.png",
        "down_proj_variance.png",
        "eff_rank_stats_by_type.csv",
        "esd_by_type.png",
        "null_vs_trained.png",
    } <= files
    assert not [f for f in files if f.startswith(".")], "temp files left behind"
    df = pd.read_csv(run_dir / "weight_ranks.csv")
    assert {"layer_idx", "weight_type", "shape", "eff_rank"} <= set(df.columns)
    # independent check: numpy SVD of the raw checkpoint tensor of one matrix (GPT-2 stores it transposed)
    from safetensors.numpy import load_file

    raw = load_file(str(tiny_model_dirs[family] / "model.safetensors"))
    key = {
        "llama": "layers.1.mlp.down_proj.weight",
        "gpt2": "h.1.mlp.c_proj.weight",
        "bert": "layer.1.output.dense.weight",
    }[family]
    W = next(v for k, v in raw.items() if k.endswith(key)).astype(np.float64)
    s = np.linalg.svd(W, compute_uv=False)
    p = s / s.sum()
    row = df[(df.layer_idx == 1) & (df.weight_type == "W_down")]
    assert row["eff_rank"].item() == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-9)
    # random-matrix columns of the same row: top eigenvalue of W^T W / N, weighted alpha, null beside it
    assert row["lambda_max"].item() == pytest.approx(s[0] ** 2 / max(W.shape), rel=1e-9)
    assert row["alpha_weighted"].item() == pytest.approx(row["alpha"].item() * np.log10(s[0] ** 2), rel=1e-9)
    assert row["eff_rank_ratio"].item() == pytest.approx(row["eff_rank"].item() / row["null_eff_rank"].item())
    report = (run_dir / "report.md").read_text()
    assert "![eff rank by layer](eff_rank_by_layer.png)" in report
    assert "## Run record" in report and "## Phases: early / middle / late thirds" in report
    assert "| W_down |" in report and "INVERTED-U" in report  # the markdown cell's definition, once
    rec = json.loads((run_dir / "run.json").read_text())
    assert rec["params"]["layer_idx"] == 1 and "weight sweep" in rec["timings_s"] and rec["versions"]["torch"]
    assert rec["status"] == "complete"


def test_layer_out_of_range_is_refused_clearly_and_writes_nothing(tiny_llama_dir, tmp_path):
    """The rule {layer of model} is checked before anything is created (issue 21, item 12)."""
    with pytest.raises(ValueError, match=r"layer_idx=7 is out of range: .* has 3 layers \(use 0\.\.2"):
        run_notebook_smoke("01_weight_ranks", {"model": str(tiny_llama_dir), "layer_idx": 7}, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_missing_model_path_and_unknown_parameter(tmp_path):
    with pytest.raises(ValueError, match="model path not found"):
        run_notebook_smoke("01_weight_ranks", {"model": str(tmp_path / "missing")}, tmp_path)
    with pytest.raises(ValueError, match="unknown parameter.*layer_index"):
        run_notebook_smoke("01_weight_ranks", {"layer_index": 3}, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cli_lists_params_and_exits_nonzero_on_failure(tmp_path, nan_llama_dir):
    names = [p["name"] for p in list_params("01_weight_ranks")]
    assert names[:3] == ["model", "run_name", "output_root"] and "layer_idx" in names
    cli = [sys.executable, "-m", "utils.run_notebook"]
    out = subprocess.run(cli + ["01", "--list-params"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 0 and "| layer_idx | int | -1 |" in out.stdout
    refused = subprocess.run(
        cli + ["01", "--run-name", "x", "--output-root", str(tmp_path), "-p", "model", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert refused.returncode == 2 and "model path not found" in refused.stderr and list(tmp_path.iterdir()) == []
    bad = subprocess.run(  # a model that opens but holds a NaN: the notebook fails
        cli + ["01", "--run-name", "x", "--output-root", str(tmp_path), "-p", "model", str(nan_llama_dir)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert bad.returncode == 1 and "NaN/Inf" in bad.stderr
    failed = tmp_path / "01_weight_ranks" / "x.failed"
    assert (failed / "01_weight_ranks.ipynb").exists() and not (tmp_path / "01_weight_ranks" / "x").exists()
    rec = json.loads((failed / "run.json").read_text())
    assert rec["status"] == "failed" and "NaN/Inf" in rec["error"]["evalue"]


def test_every_notebook_has_one_typed_parameters_cell():
    import jupytext

    for nb_path in sorted((REPO_ROOT / "notebooks").glob("[0-9]*.py")):
        nb = jupytext.read(nb_path)
        cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(cells) == 1, nb_path.name
        lines = [ln for ln in cells[0].source.splitlines() if ln.strip()]
        for ln in lines:
            assert ":" in ln.split("=")[0] and "#" in ln, f"{nb_path.name}: untyped or uncommented parameter {ln!r}"
        header = nb_path.read_text().split("# ---", 2)[1]
        assert "jupytext_version:" not in header.replace("-jupytext.text_representation.jupytext_version", ""), (
            f"{nb_path.name}: version stamp in header"
        )
