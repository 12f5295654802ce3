"""Issue 23: what a user sees around a run. The running cell's progress in the runner's terminal, papermill's
conventions (-f / -y / --log-output, one rule for relative paths), runs from Lab and plain papermill (their own
place, a ``.failed`` folder, the index refreshed), one duration everywhere, the git state in the record."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, TINY_NOTEBOOK

CLI = [sys.executable, "-m", "utils.run_notebook"]
TINY = str(TINY_NOTEBOOK)


def test_the_runner_prints_the_running_cells_progress_with_an_eta(tmp_path):
    env = dict(os.environ, TSPECTRA_PROGRESS_INTERVAL="0.3")
    args = [TINY, "--run-name", "r", "--output-root", tmp_path, "-p", "seconds", "4", "-p", "steps", "8"]
    proc = subprocess.Popen(CLI + [str(a) for a in args], cwd=REPO_ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    seen_while_running = []
    for line in proc.stderr:  # read as the runner prints it
        if line.startswith("[99_tiny/r]") and proc.poll() is None:
            seen_while_running.append(line.strip())
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    progress = [ln for ln in seen_while_running if re.search(r"tiny steps [1-7]/8 · step_\d · ETA \d+:\d\d", ln)]
    assert progress, f"no progress line with an ETA among {seen_while_running}"
    assert not list(tmp_path.rglob(".progress")), "the progress file stays in the staging folder, removed with it"


def _papermill_notebook(tmp_path, **values):
    """The tiny notebook as papermill reads it (``.ipynb``), calling start_run with its source's path;
    ``values``: parameter defaults changed in its parameters cell (for jupytext, which injects none)."""
    import jupytext

    nb = jupytext.read(TINY_NOTEBOOK)
    for c in nb.cells:
        c.source = c.source.replace('start_run("99_tiny"', f"start_run({TINY!r}")
        for name, value in values.items():
            c.source = re.sub(rf"^{name}: (\w+) = [^#]*#", rf"{name}: \1 = {value!r}  #", c.source, flags=re.M)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "tiny.ipynb"
    jupytext.write(nb, path)
    return path


def _papermill(args, cwd, root):
    env = dict(os.environ, TSPECTRA_OUTPUT=str(root))
    env.pop("TSPECTRA_RUN_CONTEXT", None)
    env.pop("TSPECTRA_HEADLESS", None)
    cmd = [sys.executable, "-m", "papermill", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_same_papermill_command_with_a_relative_path_works_from_the_root_and_from_notebooks(tmp_path):
    nb, root = _papermill_notebook(tmp_path), tmp_path / "out"
    rel = "tests/notebooks/99_tiny.py"  # relative to the project root: the one rule
    for cwd in (REPO_ROOT, REPO_ROOT / "notebooks"):
        cmd = [nb, tmp_path / "executed.ipynb", "-p", "run_name", "r", "-p", "copy_from", rel]
        done = _papermill(cmd, cwd, root)
        assert done.returncode == 0, f"from {cwd}: {done.stderr[-2000:]}"
        run = root / "99_tiny" / "r"
        assert (run / "copy.txt").read_text() == TINY_NOTEBOOK.read_text(), f"from {cwd}"
        assert json.loads((run / "run.json").read_text())["status"] == "complete"
        (run / "copy.txt").unlink()
    # the index of runs is refreshed by a run that the runner did not start
    assert "99_tiny" in (root / "index.html").read_text()


@pytest.mark.parametrize("tool", ["papermill", "jupytext"])
def test_a_notebook_that_fails_under_plain_papermill_or_jupytext_leaves_a_failed_folder(tmp_path, tool):
    root = tmp_path / "out"
    if tool == "papermill":
        nb = _papermill_notebook(tmp_path)
        done = _papermill([nb, tmp_path / "ran.ipynb", "-p", "run_name", "f", "-p", "fail", "True"], REPO_ROOT, root)
    else:
        nb = _papermill_notebook(tmp_path, run_name="f", fail=True)
        env = dict(os.environ, TSPECTRA_OUTPUT=str(root))
        env.pop("TSPECTRA_RUN_CONTEXT", None)
        env.pop("TSPECTRA_HEADLESS", None)
        cmd = [sys.executable, "-m", "jupytext", "--execute", "--to", "ipynb", "-o", tmp_path / "ran.ipynb", nb]
        done = subprocess.run([str(c) for c in cmd], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "failed on purpose" in done.stderr + done.stdout
    failed = root / "99_tiny" / "f.failed"
    rec = json.loads((failed / "run.json").read_text())
    assert rec["status"] == "failed" and rec["error"]["ename"] == "RuntimeError"
    assert rec["error"]["evalue"] == "the tiny notebook failed on purpose"
    assert (failed / "step_0.txt").is_file() and rec["duration_s"] is not None
    assert not (root / "99_tiny" / "f").exists()
    hidden = [str(p.relative_to(root)) for p in root.rglob(".*")]
    assert hidden == [], f"hidden staging or lock files left: {hidden}"
    assert "f.failed" in (root / "index.html").read_text()


def test_an_interactive_run_left_at_the_default_name_goes_to_its_own_folder(tmp_path, monkeypatch):
    import utils.progress
    from utils.running.record import start_run

    monkeypatch.delenv("TSPECTRA_RUN_CONTEXT", raising=False)
    monkeypatch.setattr(utils.progress, "_in_kernel", lambda: True)
    monkeypatch.setattr(utils.progress, "headless", lambda: False)
    run = start_run(TINY, {"output_root": str(tmp_path)})
    assert run.final_dir == tmp_path / "99_tiny" / "lab"
    run.finish()
    named = start_run(TINY, {"output_root": str(tmp_path), "run_name": "mine"})
    assert named.final_dir == tmp_path / "99_tiny" / "mine"
    named.finish()
    monkeypatch.setattr(utils.progress, "headless", lambda: True)  # papermill / jupytext: the name as given
    assert start_run(TINY, {"output_root": str(tmp_path)}).final_dir == tmp_path / "99_tiny" / "default"


def test_parameters_the_papermill_way_file_then_yaml_then_p_and_log_output(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("steps: 3\nlabel: from the file\nseconds: 0.0\n")
    args = [TINY, "--run-name", "r", "--output-root", tmp_path / "out", "-f", params, "-y", "label: from -y"]
    args += ["-p", "steps", "2", "--log-output"]
    done = subprocess.run(CLI + [str(a) for a in args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rec = json.loads((tmp_path / "out" / "99_tiny" / "r" / "run.json").read_text())
    assert rec["params"]["steps"] == 2 and rec["params"]["label"] == "from -y" and rec["params"]["seconds"] == 0.0
    assert "report: " in done.stdout and "tiny steps: 100%" in done.stdout  # cell outputs, by --log-output
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    for extra in (["-f", bad], ["-y", "steps: [1"], ["-f", tmp_path / "missing.yaml"]):
        done = subprocess.run(CLI + [TINY, "--output-root", str(tmp_path / "o2"), *map(str, extra)], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 2 and done.stderr.startswith("error: "), done.stderr
        assert "YAML" in done.stderr or "cannot read the parameters file" in done.stderr
    assert not (tmp_path / "o2").exists()


def test_help_is_written_for_users():
    sweep = subprocess.run(
        [sys.executable, "-m", "utils.sweep", "--help"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert sweep.returncode == 0 and "``" not in sweep.stdout and "index.csv" in sweep.stdout
    done = subprocess.run(CLI + ["--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    text = done.stdout
    for option in ("-f FILE", "-y YAML", "-p NAME VALUE", "--log-output", "--list-params", ".failed"):
        assert option in text
    for markup in ("``", ":mod:", ":func:", ":class:", "About 450 lines", "supervisor"):
        assert markup not in text, f"developer text in --help: {markup}"


def test_a_progress_line_has_the_count_the_current_item_and_the_time_left():
    from tqdm import tqdm

    from utils.progress import progress_line

    bar = tqdm(total=211, desc="weight sweep", disable=False, file=open(os.devnull, "w"))
    bar.n, bar.start_t = 87, bar._time() - 30.0  # 87 items in 30 s: 124 left take 124 * 30 / 87 s
    bar.set_postfix_str("blk.14.ffn_up", refresh=False)
    assert progress_line(bar) == f"weight sweep 87/211 · blk.14.ffn_up · ETA {tqdm.format_interval(124 * 30 / 87)}"
    costs = tqdm(total=1000, desc="12/226 matrices, now blk.3", bar_format="{desc}", file=open(os.devnull, "w"))
    costs.n, costs.start_t = 250, costs._time() - 10.0
    assert progress_line(costs) == "12/226 matrices, now blk.3 · 25% · ETA 00:30"
