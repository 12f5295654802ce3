"""Which runs the comparison notebook reads (a sweep, run folders, or a run name), their labels and order,
and the rank-fraction table against a numpy computation."""

import json

import numpy as np
import pandas as pd
import pytest

from utils.compare import find_runs, model_labels, rank_fraction_table, weight_ranks
from utils.compare.runs import model_order
from utils.compare.tables import twin_of
from utils.running.params import ParameterError


def _fake_run(root, notebook, run, model, group=None, status="complete"):
    d = root / notebook / group / run if group else root / notebook / run
    d.mkdir(parents=True)
    rec = {"notebook": notebook, "run_name": run, "group": group, "status": status, "params": {"model": model}}
    (d / "run.json").write_text(json.dumps(rec))
    return d


def test_labels_and_order():
    one = model_labels(["/data/ckpt/Qwen2.5-3B/", "random:/data/ckpt/llama@3", "Qwen/Qwen2.5-3B", "random:smollm2"])
    assert one == {
        "/data/ckpt/Qwen2.5-3B/": "ckpt/Qwen2.5-3B",
        "random:/data/ckpt/llama@3": "random:ckpt/llama@3",
        "Qwen/Qwen2.5-3B": "Qwen/Qwen2.5-3B",
        "random:smollm2": "random:smollm2",
    }
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
        ("01_weight_ranks", "model=x", "m/x", "complete"),
        ("01_weight_ranks", "model=random-x", "random:m/x", "complete"),
        ("03_sa_rescale", "bad.failed", "m/x", "failed"),
    ]
    both = find_runs(tmp_path, sweep="sw", runs=f"02_attention_kernels/default, {single}")
    assert len(both) == 4 and set(both.label) == {"m/x", "random:m/x", "m/y"}
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
    for run, label in (("a", "m/x"), ("b", "random:m/x")):
        raw = pd.read_csv(tmp_path / "01_weight_ranks" / "sw" / run / "weight_ranks.csv")
        k = raw[raw.weight_type == "W_K"]
        assert t.loc["W_K", label] == pytest.approx(np.mean(k.eff_rank / 4), abs=1e-4)
    ratio = t.loc["W_Q", "m/x"] / t.loc["W_Q", "random:m/x"]
    assert t.loc["W_Q", "m/x / random:m/x"] == pytest.approx(ratio, rel=1e-3)


def test_rescale_table_takes_each_anchors_verdict_from_the_run(tmp_path):
    """The comparison reads the verdict 03 recorded (a one-layer geometry: NOT DETERMINED), not one recomputed
    from the mean residual with rescale's thresholds (which would say 'supported')."""
    from utils.compare import rescale_table

    d = _fake_run(tmp_path, "03_sa_rescale", "a", "/m/x", group="sw")
    comp = {
        "anchor_layer": 0,
        "mean_resid": 0.01,
        "max_resid": 0.02,
        "frac_below": {"0.10": 1.0},
        "corr_T_entropy": 0.5,
    }
    res = {
        "analysis": {"anchor": "last", "shape_cos_mean": 0.9, "stability": "not determined"},
        "anchor_comparison": {"last": {**comp, "verdict_key": "not_determined"}, "middle": comp},
    }
    (d / "results.json").write_text(json.dumps(res))
    t = rescale_table(find_runs(tmp_path, sweep="sw")).set_index("anchor")
    assert t.loc["last", "verdict"] == "not determined" and t.loc["middle", "verdict"] == "not recorded"


def test_labels_are_what_the_user_passed_and_never_shared(tmp_path):
    """Issue 21, item 5: checkpoints `runs/a/final` and `runs/b/final` were both labelled "final", and a folder
    `.../all-MiniLM-L6-v2/model` was "model". The label is the spec each run recorded, shortened only as far
    as it stays unique among the runs shown; a configuration's `_name_or_path` plays no part."""
    specs = ["/w/runs/a/final", "/w/runs/b/final", "random:/w/runs/a/final@2", "/h/all-MiniLM-L6-v2/model", "smollm2"]
    for i, spec in enumerate(specs):
        d = _fake_run(tmp_path, "01_weight_ranks", f"r{i}", spec, group="sw")
        (d / "config.json").write_text(json.dumps({"_name_or_path": "HuggingFaceTB/SmolLM2-135M"}))
    df = find_runs(tmp_path, sweep="sw")
    labels = dict(zip(df.model, df.label))
    assert labels == {
        "/w/runs/a/final": "a/final",
        "/w/runs/b/final": "b/final",
        "random:/w/runs/a/final@2": "random:a/final@2",
        "/h/all-MiniLM-L6-v2/model": "all-MiniLM-L6-v2/model",
        "smollm2": "smollm2",
    }
    assert twin_of("a/final", df.label) == "random:a/final@2" and twin_of("b/final", df.label) is None
    # deeper where needed; specs that differ only in spelling keep their full text; never a shared label
    many = model_labels(["x/a/b/c", "y/a/b/c", "a/b/c", "q/b/c", "z/p", "z/p/", "./z/p"])
    assert many["x/a/b/c"] == "x/a/b/c" and many["q/b/c"] == "q/b/c" and many["a/b/c"] == "a/b/c"
    assert len(set(many.values())) == len(many)
    assert model_labels(["/m/x"]) == {"/m/x": "m/x"} and model_labels([""]) == {"": ""}
