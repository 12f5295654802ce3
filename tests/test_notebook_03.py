"""Notebook 03 (SA rescale) end to end: on a tiny model, on a supplied geometry JSON (no model),
and bad input. The numbers in results.json are checked against the seed's formulas
(the loop reference in test_rescale.py)."""

import json

import numpy as np
import pytest
from conftest import run_notebook_smoke
from test_rescale import random_geometry, reference

from utils.rescale.geometry import load_geometry, save_geometry
from utils.running.runner import NotebookFailed

FILES = {
    "03_sa_rescale.ipynb",
    "report.md",
    "run.json",
    "results.json",
    "geometry.json",
    "resid_heatmap.png",
    "T_heatmap.png",
    "T_vs_entropy.png",
    "head_shapes.png",
    "rank_k_residual.png",
}


def _check_against_seed(run_dir, anchor):
    geo = load_geometry(run_dir / "geometry.json")
    ref = reference(geo, anchor)
    out = json.loads((run_dir / "results.json").read_text())
    a = out["analysis"]
    assert a["anchor_layer"] == ref["anchor_layer"]
    close = dict(rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.array(a["T"], float), ref["T"], **close)
    np.testing.assert_allclose(np.array(a["resid"], float), ref["resid"], **close)
    np.testing.assert_allclose(np.array(a["per_head_cos"], float), ref["per_head_cos"], **close)
    np.testing.assert_allclose(np.array(a["cross_head_cos"], float), ref["cross"], **close)
    np.testing.assert_allclose(
        [a["mean_resid"], a["max_resid"], a["corr_T_entropy"], a["corr_opnorm_entropy"]],
        [ref["mean_resid"], ref["max_resid"], ref["corr_T"], ref["corr_op"]],
        **close,
    )
    assert a["frac_below"]["0.10"] == ref["frac10"] and a["frac_below"]["0.20"] == ref["frac20"]
    assert a["stability"] == ref["stability"] and a["verdict_key"] == ref["verdict"]
    report = (run_dir / "report.md").read_text()
    assert f"anchor layer: {ref['anchor_layer']}" in report
    assert f"scalar-rescale fit residual: mean {ref['mean_resid']:.3f}" in report
    assert f"spectral shape is **{ref['stability']}** across layers" in report
    return out, report


def test_notebook_03_on_tiny_model(tiny_llama_dir, tmp_path):
    run_dir = run_notebook_smoke(
        "03_sa_rescale",
        {"model": str(tiny_llama_dir), "anchor": "best", "seq_len": 16, "n_seqs": 2, "n_boot": 50, "heads_to_plot": 2},
        tmp_path,
    )
    assert FILES <= {p.name for p in run_dir.iterdir()}
    out, report = _check_against_seed(run_dir, "best")
    geo = json.loads((run_dir / "geometry.json").read_text())
    assert geo["num_layers"] == 3 and geo["num_heads"] == 4 and geo["n_seqs"] == 2 and geo["causal"] is True
    assert "Entropy averaging rule: For every sequence" in report
    assert "![resid heatmap](resid_heatmap.png)" in report and "## Run record" in report
    assert out["analysis"]["bootstrap"]["corr_T_entropy"]["n_boot"] == 50
    # headless progress: a few whole lines, no widget warning, no per-update stderr blocks (issue 15)
    nb = json.loads((run_dir / "03_sa_rescale.ipynb").read_text())
    streams = [o for c in nb["cells"] for o in c.get("outputs", []) if o["output_type"] == "stream"]
    text = "".join("".join(o["text"]) for o in streams)
    assert "IProgress" not in text and "\r" not in text
    assert sum(o["name"] == "stderr" for o in streams) == 0, [o["text"] for o in streams if o["name"] == "stderr"]
    assert "jupytext" not in nb["metadata"] and nb["metadata"]["kernelspec"]["display_name"].endswith("spectra)")


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_notebook_03_on_other_families(tiny_model_dirs, tmp_path, family):
    run_dir = run_notebook_smoke(
        "03_sa_rescale",
        {"model": str(tiny_model_dirs[family]), "anchor": "last", "seq_len": 16, "n_seqs": 2, "n_boot": 20},
        tmp_path,
    )
    _check_against_seed(run_dir, "last")
    geo = json.loads((run_dir / "geometry.json").read_text())
    assert geo["num_layers"] == 3 and geo["causal"] is (family == "gpt2")


def test_notebook_03_on_supplied_json_needs_no_model(tmp_path):
    geo = random_geometry(np.random.default_rng(3), 5, 3, 6, ragged=True)
    p = save_geometry(geo, tmp_path / "geo.json")
    run_dir = run_notebook_smoke(
        "03_sa_rescale",
        {
            "geometry_json": str(p),
            "model": str(tmp_path / "no_model"),
            "anchor": "middle",
            "n_boot": 20,
            "rank_k_max": 2,
        },
        tmp_path,
    )
    assert FILES <= {p.name for p in run_dir.iterdir()}
    out, report = _check_against_seed(run_dir, "middle")
    assert "supplied JSON" in report and "not stated in the supplied JSON" in report
    assert set(out["anchor_comparison"]) == {"last", "middle", "best"}
    assert np.array(out["analysis"]["rank_k"]["resid"]).shape == (5, 3)


def test_notebook_03_bad_json_fails_clearly(tmp_path):
    # (each run costs a kernel start; the other parameter checks are unit-tested in test_rescale/test_geometry)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"num_layers": 2, "num_heads": 1, "static": [], "dynamic": []}))
    with pytest.raises(NotebookFailed, match="static must be a list of num_layers=2 rows"):
        run_notebook_smoke("03_sa_rescale", {"geometry_json": str(bad)}, tmp_path)
