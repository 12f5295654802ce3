"""Sweep files: parsing, grid expansion, run keys, and one clear message naming the key for each mistake."""

from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT

from utils.sweep import SweepError, load_sweep, parse_sweep
from utils.sweep.spec import run_key


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


def test_run_keys_are_folder_names_and_collisions_get_a_hash():
    assert (
        run_key({"model": "/data/ckpt/Qwen2.5-3B/", "lr": 0.001, "bf16": True}) == "model=Qwen2-5-3B+lr=0p001+bf16=true"
    )
    assert run_key({"model": "random:/x/llama@2"}) == "model=random-llama-2"
    sw = parse_sweep(
        {"name": "s", "runs": [{"notebook": "01", "grid": {"model": ["/a/tiny", "/b/tiny"], "layer_idx": [1]}}]}
    )
    k1, k2 = (r.key for r in sw.runs)
    assert k1 != k2 and k1.startswith("model=tiny+layer_idx=1-") and len(k1) == len("model=tiny+layer_idx=1-") + 8
    gpu = parse_sweep({"name": "s", "runs": [{"notebook": "02", "grid": {"device": ["cuda", "cpu", "auto"]}}]})
    assert [r.gpu for r in gpu.runs] == [True, False, False]
    assert parse_sweep({"name": "s", "runs": [{"notebook": "01", "gpu": True}]}).runs[0].gpu


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
]


@pytest.mark.parametrize("data,message", BAD)
def test_a_bad_sweep_gives_one_clear_message_naming_the_key(data, message):
    with pytest.raises(SweepError, match=message):
        parse_sweep(data, "x.yaml")


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
