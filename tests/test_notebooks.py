"""The notebooks as files: parameters cells, headers, jupytext pairing, typed parameters, report assembly."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from utils.running.params import ParameterError, coerce_all, coerce_value, notebook_parameters, parse_parameters
from utils.running.report import assemble
from utils.running.runner import KERNELSPEC, to_ipynb

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9]*.py"))


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_sees_every_parameter_with_its_help(nb, tmp_path, caplog):
    import papermill as pm

    ipynb = tmp_path / f"{nb.stem}.ipynb"
    to_ipynb(nb, ipynb)
    with caplog.at_level(logging.WARNING, logger="papermill"):
        seen = pm.inspect_notebook(str(ipynb))
    ours = notebook_parameters(nb)
    assert [p.name for p in ours] == list(seen), "papermill must see every assignment of the parameters cell"
    for p in ours:
        assert p.help, f"{nb.stem}: {p.name} has no help comment"
        assert seen[p.name]["help"] == p.help, f"papermill reads another help for {p.name}"
        assert seen[p.name]["inferred_type_name"] == p.type
    assert not [r for r in caplog.records if "Unable to parse" in r.getMessage()]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_headers_name_the_installed_kernel_and_no_version_stamp(nb):
    header = nb.read_text().split("# ---", 2)[1]
    assert f"display_name: {KERNELSPEC['display_name']}" in header and f"name: {KERNELSPEC['name']}" in header
    assert "jupytext_version:" not in header.replace("-jupytext.text_representation.jupytext_version", "")
    text = nb.read_text()
    assert text.count('# %% tags=["parameters"]') == 1 and "run.finish()" in text


def test_jupytext_sync_on_a_fresh_copy_changes_no_py_file(tmp_path):
    """`make sync` on a fresh clone must be a no-op for the tracked .py sources."""
    folder = tmp_path / "notebooks"
    shutil.copytree(REPO_ROOT / "notebooks", folder, ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints"))
    before = {p.name: p.read_bytes() for p in folder.glob("*.py")}
    jupytext = [sys.executable, "-m", "jupytext", "--sync", *sorted(str(p) for p in folder.glob("[0-9]*.py"))]
    subprocess.run(jupytext, check=True, capture_output=True, cwd=tmp_path)
    assert {p.name: p.read_bytes() for p in folder.glob("*.py")} == before
    assert len(list(folder.glob("*.ipynb"))) == len(NOTEBOOKS)
    subprocess.run(jupytext, check=True, capture_output=True, cwd=tmp_path)  # and a second sync as well
    assert {p.name: p.read_bytes() for p in folder.glob("*.py")} == before


def test_parameters_cell_parsing_and_errors():
    src = 'a: int = 3  # count\nb: bool = True  # flag\nc: str = "x = y"  # text with = inside\nd: float = 1  # real\n'
    ps = parse_parameters(src)
    assert [(p.name, p.type, p.default, p.help) for p in ps] == [
        ("a", "int", 3, "count"),
        ("b", "bool", True, "flag"),
        ("c", "str", "x = y", "text with = inside"),
        ("d", "float", 1.0, "real"),
    ]
    for bad, msg in (
        ("a = 3  # no type", "is not of the form"),
        ("a: list = []  # x", "use str, int"),
        ("a: int = f(3)  # x", "plain literal"),
        ("a: int = (  # x", "not valid Python"),
    ):
        with pytest.raises(ParameterError, match=msg):
            parse_parameters(bad)


@pytest.mark.parametrize(
    "value,expected",
    [
        ("false", False),
        ("FALSE", False),
        ("True", True),
        ("1", True),
        ("0", False),
        (0, False),
        (1, True),
        (" true ", True),
        (True, True),
    ],
)
def test_bool_parameters_accept_true_false_one_zero(value, expected):
    assert coerce_value("include_ov", "bool", value) is expected


@pytest.mark.parametrize(
    "type_name,value",
    [
        ("bool", "banana"),
        ("bool", 2),
        ("bool", "2"),
        ("bool", "yes"),  # issue 21, item 14: the README says true/false/1/0
        ("bool", "no"),
        ("int", "1_000"),
        ("int", "٣"),  # an Arabic-Indic digit, which int() takes
        ("int", "²"),
        ("int", "1.5"),
        ("int", 2.5),
        ("int", True),
        ("float", "x"),
        ("float", "nan"),
        ("float", "inf"),
        ("float", float("nan")),
        ("float", "1_0.5"),
        ("float", False),
        ("str", None),
    ],
)
def test_bad_values_name_the_parameter_and_its_type(type_name, value):
    with pytest.raises(ParameterError, match=f"parameter p must be .*got {value!r}"):
        coerce_value("p", type_name, value)


def test_numbers_and_strings_convert_to_the_declared_type():
    declared = parse_parameters('n: int = 1  # x\nr: float = 0.5  # x\ns: str = ""  # x\n')
    assert coerce_all(declared, {"n": "12", "r": "3", "s": 42}) == {"n": 12, "r": 3.0, "s": "42"}
    assert coerce_value("n", "int", 4.0) == 4
    with pytest.raises(ParameterError, match="unknown parameter.*zz.*n, r, s"):
        coerce_all(declared, {"zz": 1})


def test_rules_declared_beside_the_parameters():
    """Issue 21, item 12: choices and bounds are declared once, in the comment, and checked on conversion."""
    src = (
        'anchor: str = "last"  # anchor layer {last, middle, best}\n'
        "n: int = 2  # count {1..}\n"
        "k: int = 0  # skips {0..}\n"
        "r: int = 4  # ratio {4, 6, 10}\n"
        "tau: float = 0.5  # temperature {> 0, ..1}\n"
        'model: str = "smollm2"  # the model\n'
        "layer_idx: int = -1  # a layer {layer of model}\n"
        'mode: str = ""  # a mode {"", "a, b"}\n'
        "lr: float = 0.1  # no rule (a brace {inside} the text is no rule) here\n"
    )
    ps = {p.name: p for p in parse_parameters(src)}
    assert ps["anchor"].rule.choices == ("last", "middle", "best") and ps["anchor"].help.endswith(
        "{last, middle, best}"
    )
    assert ps["r"].rule.choices == (4, 6, 10) and ps["mode"].rule.choices == ("", "a, b")
    assert ps["n"].rule.bounds == ((">=", 1.0),) and ps["tau"].rule.bounds == ((">", 0.0), ("<=", 1.0))
    assert ps["layer_idx"].rule.index == ("layer", "model") and ps["lr"].rule is None
    assert ps["r"].convert("6") == 6 and ps["tau"].convert("1") == 1.0 and ps["k"].convert(0) == 0
    for name, value, msg in (
        ("anchor", "bogus", "anchor must be one of 'last', 'middle', 'best'; got 'bogus'"),
        ("n", "0", "n must be at least 1; got 0"),
        ("k", -5, "k must be at least 0; got -5"),
        ("r", 5, "r must be one of 4, 6, 10; got 5"),
        ("tau", 0, "tau must be greater than 0 and at most 1; got 0.0"),
        ("tau", 1.5, "at most 1; got 1.5"),
    ):
        with pytest.raises(ParameterError, match=re.escape(msg)):
            ps[name].convert(value)
    for bad, msg in (
        ("n: int = 0  # count {1..}", "the default of n breaks its own rule"),
        ("n: int = 1  # count {}", "the rule {} of n is empty"),
        ('s: str = "a"  # text {1..}', "bounds need an int or float"),
        ("n: int = 1  # count {1, x}", "parameter n must be an integer, got 'x'"),
        ("n: int = 1  # count {layer of nothing}", "names no parameter"),
    ):
        with pytest.raises(ParameterError, match=re.escape(msg)):
            parse_parameters(bad)


def test_every_notebook_declares_its_rules_once_in_the_parameters_cell():
    """No notebook states rules in its start_run call any more, and the declared choices are the library's."""
    from utils import attention, rescale, weight_ranks

    for nb in NOTEBOOKS:
        call = re.search(r"^run = start_run\((.*?)\)$", nb.read_text(), re.M | re.S)
        assert call and call.group(1) == f'"{nb.stem}", globals()', f"{nb.stem}: {call.group(0) if call else None}"
        for p in notebook_parameters(nb):
            assert "=" not in p.help, f"{nb.stem}: papermill drops a parameter line with two '=' ({p.name})"
    rules = {nb.stem: {p.name: p.rule for p in notebook_parameters(nb)} for nb in NOTEBOOKS}
    assert rules["01_weight_ranks"]["precision"].choices == tuple(weight_ranks.PRECISIONS)
    assert rules["03_sa_rescale"]["anchor"].choices == tuple(rescale.ANCHORS)
    for nb in ("02_attention_kernels", "03_sa_rescale", "07_model_diff"):
        assert rules[nb]["kernel"].choices == tuple(attention.KERNELS), nb
    assert rules["01_weight_ranks"]["layer_idx"].index == ("layer", "model")
    assert rules["02_attention_kernels"]["head_idx"].index == ("head", "model")


def test_report_is_the_markdown_cells_with_each_code_cells_outputs():
    cells = [("markdown", "# T\n\nintro"), ("code", "x = 1"), ("markdown", "## A\n\nhow to read"), ("code", "y")]
    md = assemble(cells, {1: ["out of x"], 3: ["table", "figure"], -1: ["unmatched"]}, ["## Run record"])
    assert md.split("\n\n") == [
        "# T",
        "intro",
        "out of x",
        "## A",
        "how to read",
        "table",
        "figure",
        "unmatched",
        "## Run record\n",
    ]


def test_output_root_rule(monkeypatch, tmp_path):
    from utils.running.paths import PROJECT_ROOT, output_root

    monkeypatch.delenv("TSPECTRA_OUTPUT", raising=False)
    monkeypatch.chdir(tmp_path)  # wherever the kernel runs
    assert output_root("output") == output_root("") == PROJECT_ROOT / "output"
    assert output_root("elsewhere/x") == PROJECT_ROOT / "elsewhere" / "x"
    assert output_root(str(tmp_path / "abs")) == tmp_path / "abs"
    monkeypatch.setenv("TSPECTRA_OUTPUT", str(tmp_path / "env"))
    assert output_root("output") == tmp_path / "env" and output_root("mine") == PROJECT_ROOT / "mine"


@pytest.mark.parametrize("tool", ["papermill from the repo root", "papermill from notebooks/", "jupytext --execute"])
def test_every_tool_writes_results_under_the_same_output_folder(tool, tmp_path, tiny_llama_dir):
    """Plain papermill (from either folder) and jupytext --execute put the run where the runner does."""
    import json
    import os

    out = tmp_path / "out"
    env = dict(os.environ, TSPECTRA_OUTPUT=str(out))
    before = {p.name for p in (REPO_ROOT / "notebooks").iterdir()}
    src = REPO_ROOT / "notebooks" / "01_weight_ranks.py"
    if tool.startswith("papermill"):
        ipynb = tmp_path / "01_weight_ranks.ipynb"
        to_ipynb(src, ipynb)
        cwd = REPO_ROOT if "root" in tool else REPO_ROOT / "notebooks"
        cmd = [
            sys.executable,
            "-m",
            "papermill",
            str(ipynb),
            str(tmp_path / "executed.ipynb"),
            "-p",
            "model",
            str(tiny_llama_dir),
            "-p",
            "layer_idx",
            "1",
            "-k",
            KERNELSPEC["name"],
        ]
    else:
        cwd = tmp_path
        cmd = [
            sys.executable,
            "-m",
            "jupytext",
            "--execute",
            "--to",
            "ipynb",
            "-o",
            str(tmp_path / "x.ipynb"),
            str(src),
        ]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    run = out / "01_weight_ranks" / "default"
    assert json.loads((run / "run.json").read_text())["status"] == "complete" and (run / "report.html").is_file()
    assert {p.name for p in (REPO_ROOT / "notebooks").iterdir()} == before, "results landed in notebooks/"
    assert not (tmp_path / "output").exists()
