"""Which runs the comparison notebook reads (a sweep, run folders, or a run name), their labels and order,
and the rank-fraction table against a numpy computation."""

import json

import numpy as np
import pandas as pd
import pytest

from utils.compare import find_runs, model_label, rank_fraction_table, weight_ranks
from utils.compare.runs import model_order
from utils.running.params import ParameterError


def _fake_run(root, notebook, run, model, group=None, status="complete"):
    d = root / notebook / group / run if group else root / notebook / run
    d.mkdir(parents=True)
    rec = {"notebook": notebook, "run_name": run, "group": group, "status": status, "params": {"model": model}}
    (d / "run.json").write_text(json.dumps(rec))
    return d


def test_labels_and_order():
    assert model_label("/data/ckpt/Qwen2.5-3B/") == "Qwen2.5-3B"
    assert model_label("random:/data/ckpt/llama@3") == "random:llama@3"
    assert model_label("Qwen/Qwen2.5-3B") == "Qwen/Qwen2.5-3B" and model_label("random:smollm2") == "random:smollm2"
    order = model_order(["random:b", "random:a@2", "a", "b", "c"])
    assert order == ["a", "random:a@2", "b", "random:b", "c"]  # each model, then its untrained twins


def test_find_runs_by_sweep_by_folders_and_by_run_name(tmp_path):
    _fake_run(tmp_path, "01_weight_ranks", "model=random-x", "random:/m/x", group="sw")
    _fake_run(tmp_path, "01_weight_ranks", "model=x", "/m/x", group="sw")
    _fake_run(tmp_path, "03_sa_rescale", "bad.failed", "/m/x", group="sw", status="failed")
    _fake_run(tmp_path, "06_compare", "default", "", group="sw")  # the comparison itself is not compared
    single = _fake_run(tmp_path, "02_attention_kernels", "default", "/m/y")
    df = find_runs(tmp_path, sweep="sw")
    assert list(zip(df.notebook, df.run, df.label, df.status)) == [
        ("01_weight_ranks", "model=x", "x", "complete"),
        ("01_weight_ranks", "model=random-x", "random:x", "complete"),
        ("03_sa_rescale", "bad.failed", "x", "failed"),
    ]
    both = find_runs(tmp_path, sweep="sw", runs=f"02_attention_kernels/default, {single}")
    assert len(both) == 4 and set(both.label) == {"x", "random:x", "y"}
    by_name = find_runs(tmp_path, run_name="default")
    assert list(by_name.notebook) == ["02_attention_kernels"]
    with pytest.raises(ParameterError, match="give a sweep name"):
        find_runs(tmp_path)
    with pytest.raises(FileNotFoundError, match="no runs of sweep 'nope'"):
        find_runs(tmp_path, sweep="nope")
    with pytest.raises(FileNotFoundError, match="run folder 'missing/run' not found"):
        find_runs(tmp_path, runs="missing/run")


def test_rank_fraction_table_against_numpy(tmp_path):
    rng = np.random.default_rng(0)
    for run, model in (("a", "/m/x"), ("b", "random:/m/x")):
        d = _fake_run(tmp_path, "01_weight_ranks", run, model, group="sw")
        rows = [
            (i, wt, r, c, rng.uniform(1, min(r, c))) for i in range(4) for wt, r, c in (("W_Q", 8, 8), ("W_K", 4, 8))
        ]
        pd.DataFrame(rows, columns=["layer_idx", "weight_type", "rows", "cols", "eff_rank"]).to_csv(
            d / "weight_ranks.csv", index=False
        )
    wr = weight_ranks(find_runs(tmp_path, sweep="sw"))
    assert wr.rel_depth.max() == pytest.approx(3 / 4)
    t = rank_fraction_table(wr).set_index("weight_type")
    for run, label in (("a", "x"), ("b", "random:x")):
        raw = pd.read_csv(tmp_path / "01_weight_ranks" / "sw" / run / "weight_ranks.csv")
        k = raw[raw.weight_type == "W_K"]
        assert t.loc["W_K", label] == pytest.approx(np.mean(k.eff_rank / 4), abs=1e-4)
    assert t.loc["W_Q", "x / random:x"] == pytest.approx(t.loc["W_Q", "x"] / t.loc["W_Q", "random:x"], rel=1e-3)


def test_rescale_table_takes_each_anchors_verdict_from_the_run(tmp_path):
    """The comparison reads the verdict 03 recorded (a one-layer geometry: NOT DETERMINED), not one recomputed
    from the mean residual with rescale's thresholds (which would say 'supported')."""
    from utils.compare import rescale_table

    d = _fake_run(tmp_path, "03_sa_rescale", "a", "/m/x", group="sw")
    comp = {"anchor_layer": 0, "mean_resid": 0.01, "max_resid": 0.02, "frac_below": {"0.10": 1.0}, "corr_T_entropy": 0.5}
    res = {
        "analysis": {"anchor": "last", "shape_cos_mean": 0.9, "stability": "not determined"},
        "anchor_comparison": {"last": {**comp, "verdict_key": "not_determined"}, "middle": comp},
    }
    (d / "results.json").write_text(json.dumps(res))
    t = rescale_table(find_runs(tmp_path, sweep="sw")).set_index("anchor")
    assert t.loc["last", "verdict"] == "not determined" and t.loc["middle", "verdict"] == "not recorded"
