"""Issue 21, single runs: one checked run context from the command line to the kernel, parameters refused
before anything is created, one owner per run name, signals at any moment, nothing left in /tmp. Each test
reproduces what went wrong; most use the tiny test notebook (tests/notebooks/99_tiny.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import REPO_ROOT, TINY_NOTEBOOK
from helpers import default_sigint, hidden_files, wait_for

from utils.running.claim import AlreadyRunning, FolderLock, NameClash, process_alive
from utils.running.context import CONTEXT_ENV, make_context
from utils.running.paths import OutputRootError
from utils.running.record import Run, start_run
from utils.running.runner import execute

CLI = [sys.executable, "-m", "utils.run_notebook"]
TINY = str(TINY_NOTEBOOK)


def cli(*args, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, cwd=REPO_ROOT, env=env, **kw)


def start(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen(CLI + [str(a) for a in args], cwd=REPO_ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_sigint)  # fmt: skip


def kernel_started(root: Path, name: str = "r"):
    """(staging folder, kernel pid) once the kernel has opened the run."""
    for st in root.glob(f"99_tiny/.{name}.staging-*"):
        try:
            return st, int(json.loads((st / "run.json").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            pass
    return None


# ----------------------------------------------------------------------------- item 12: rules up front
@pytest.mark.parametrize(
    "args,msg",
    [
        (["03", "-p", "anchor", "bogus"], "parameter anchor must be one of 'last', 'middle', 'best'; got 'bogus'"),
        (["01", "-p", "n_boot", "-5"], "parameter n_boot must be at least 0; got -5"),
        (["01", "-p", "precision", "float16"], "parameter precision must be one of 'auto', 'float64', 'float32'"),
        (["01", "-p", "layer_idx", "99"], "parameter layer_idx=99 is out of range: smollm2 has 30 layers"),
        (["02", "-p", "head_idx", "9"], "parameter head_idx=9 is out of range: smollm2 has 9 query heads"),
        (["02", "-p", "device", ""], "device='' is not a device"),  # item 14: '' meant auto
        (["01", "-p", "include_embeddings", "yes"], "include_embeddings must be a bool (true/false, 1/0)"),
        (["01", "-p", "null_seed", "1_000"], "null_seed must be an integer, got '1_000'"),
        (["01", "-p", "model", "/no/such/model"], "parameter model='/no/such/model'"),
    ],
)
def test_choices_bounds_and_indices_are_refused_before_anything_is_created(tmp_path, args, msg):
    """These were refused only inside the kernel, leaving a .failed/ folder."""
    out = cli(*args, "--run-name", "t", "--output-root", tmp_path)
    assert out.returncode == 2 and msg in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- items 3, 11, 14: one value each
def test_run_name_and_output_root_parameters_are_the_options(tmp_path):
    """-p run_name X and -p output_root Y were ignored: the run went to output/<nb>/default and replaced it."""
    root = tmp_path / "elsewhere"
    out = cli(TINY, "-p", "run_name", "named", "-p", "output_root", root)
    assert out.returncode == 0, out.stderr
    rec = json.loads((root / "99_tiny" / "named" / "run.json").read_text())
    assert rec["status"] == "complete" and rec["run_name"] == "named" and rec["params"]["output_root"] == str(root)
    assert (root / "index.html").is_file() and not (REPO_ROOT / "output" / "99_tiny").exists()
    same = cli(TINY, "--run-name", "named", "-p", "run_name", "named", "--output-root", root)
    assert same.returncode == 0, same.stderr
    for args, msg in (
        (["--run-name", "a", "-p", "run_name", "b"], "--run-name 'a' and -p run_name 'b' disagree"),
        (["--output-root", root, "-p", "output_root", tmp_path / "x"], "--output-root"),
        (["-p", "label", "a", "-p", "label", "b"], "-p label is given twice"),
    ):
        bad = cli(TINY, *args)
        assert bad.returncode == 2 and msg in bad.stderr, bad.stderr
    model = cli("01", "-p", "model", "smollm2", "--model", "random:smollm2", "--output-root", tmp_path / "m")
    assert model.returncode == 2 and "--model 'random:smollm2' and -p model 'smollm2' disagree" in model.stderr
    assert not (tmp_path / "m").exists() and not (tmp_path / "x").exists()


def test_the_api_refuses_a_name_given_twice(tmp_path):
    with pytest.raises(ValueError, match="the run name is given twice, as 'a' and as the parameter run_name='b'"):
        make_context(TINY, {"run_name": "b"}, run_name="a", output_root_=str(tmp_path))
    ctx = make_context(TINY, {"run_name": "b", "output_root": str(tmp_path)})
    assert ctx.final == tmp_path / "99_tiny" / "b" and ctx.params["run_name"] == "b"


@pytest.mark.parametrize("name", ["nl\n", "ok\n\n", "a\nb"])
def test_names_are_matched_in_full(tmp_path, name):
    """`--run-name $'nl\\n'` was accepted: the pattern ended in `$`."""
    out = cli(TINY, "--run-name", name, "--output-root", tmp_path)
    assert out.returncode == 2 and "is not allowed" in out.stderr and list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- item 10: the output root
def test_an_output_root_that_cannot_be_a_folder_is_one_clear_refusal(tmp_path):
    """A file in the root's place or an unwritable root gave a raw traceback with exit 1 ("a cell raised")."""
    afile = tmp_path / "file"
    afile.write_text("not a folder")
    for root, msg in (
        (afile, f"the output root {afile} cannot be a folder: {afile} is a file"),
        (afile / "sub", f"{afile} is a file"),
        (Path("/sys/tspectra-out"), "/sys/tspectra-out"),  # not writable, even for root
    ):
        out = cli(TINY, "--output-root", root)
        assert out.returncode == 2 and out.stderr.startswith("error: ") and msg in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and "choose another --output-root" in out.stderr
        with pytest.raises(OutputRootError):
            execute(TINY, "r", {}, str(root))
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"name: s\nruns:\n  - notebook: {TINY}\n")
    for args in (["--dry-run"], []):
        out = subprocess.run([sys.executable, "-m", "utils.sweep", str(sweep), "--output-root", str(afile), *args],
                             capture_output=True, text=True, cwd=REPO_ROOT)  # fmt: skip
        assert out.returncode == 2 and f"{afile} is a file" in out.stderr and "Traceback" not in out.stderr
    assert afile.read_text() == "not a folder" and not Path("/sys/tspectra-out").exists()


# ----------------------------------------------------------------------------- item 2: runs and sweeps
def test_a_run_never_takes_a_sweeps_name_nor_a_sweep_a_runs(tmp_path):
    """`run_notebook 03 --run-name small` swapped its folder in over the sweep `small`, and the reverse order
    wrote the sweep's runs inside the single run's folder."""
    from utils.sweep import parse_sweep
    from utils.sweep.execute import run_sweep

    sweep_run = tmp_path / "99_tiny" / "small" / "label=a"
    sweep_run.mkdir(parents=True)
    (sweep_run / "run.json").write_text(json.dumps({"status": "complete", "params": {}}))
    (sweep_run.parent / "index.csv").write_text("sweep\nsmall\n")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(NameClash, match=r"is the folder of sweep 'small' \(1 run folder\(s\)\); a single run cannot"):
        execute(TINY, "small", {}, str(tmp_path))
    out = cli(TINY, "--run-name", "small", "--output-root", tmp_path)
    assert out.returncode == 2 and "choose another --run-name" in out.stderr
    assert sorted(tmp_path.rglob("*")) == before

    single = Run("99_tiny", "solo", {}, tmp_path, source=TINY)
    single.finish()
    before = sorted(tmp_path.rglob("*"))
    sw = parse_sweep({"name": "solo", "runs": [{"notebook": TINY, "grid": {"label": ["a"]}}]})
    with pytest.raises(NameClash, match="is a single run named 'solo'; a sweep cannot take its name"):
        run_sweep(sw, tmp_path, progress=False)
    with pytest.raises(NameClash):  # a sweep's runner on a cluster refuses it too
        execute(TINY, "label=a", {"label": "a"}, str(tmp_path), group="solo")
    assert sorted(tmp_path.rglob("*")) == before


# ----------------------------------------------------------------------------- item 4: one owner per name
def test_two_runs_of_one_name_at_once_the_second_is_refused_naming_the_first(tmp_path):
    """Two runs of one name deleted each other's staging folder: one failed with FileNotFoundError."""
    first = start(TINY, "--run-name", "r", "--output-root", tmp_path, "-p", "seconds", "6", "-p", "steps", "3")
    try:
        wait_for(lambda: list(tmp_path.glob("99_tiny/.r.staging-*")), what="the first run's staging folder")
        second = cli(TINY, "--run-name", "r", "--output-root", tmp_path)
        assert second.returncode == 2, second.stderr
        assert f"is in use: run 99_tiny/r is already running (pid {first.pid}" in second.stderr
        with pytest.raises(AlreadyRunning, match=f"pid {first.pid}"):
            execute(TINY, "r", {}, str(tmp_path))
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    rec = json.loads((tmp_path / "99_tiny" / "r" / "run.json").read_text())
    assert rec["status"] == "complete" and len([f for f in rec["files"] if f.startswith("step_")]) == 3
    assert hidden_files(tmp_path) == []


def test_only_staging_folders_of_dead_owners_are_cleaned(tmp_path):
    nb = tmp_path / "99_tiny"
    nb.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        host = os.uname().nodename
        for name, pid in (("dead", int(dead.stdout)), ("live", live.pid)):
            (nb / f".r.staging-{name}").mkdir()
            (nb / f".r.staging-{name}" / ".owner.json").write_text(json.dumps({"pid": pid, "host": host}))
        assert cli(TINY, "--run-name", "r", "--output-root", tmp_path).returncode == 0
        assert sorted(p.name for p in nb.iterdir()) == [".r.staging-live", "r"]
    finally:
        live.kill()


def test_a_lock_taken_again_in_the_same_kernel_passes_to_the_new_run(tmp_path):
    """A notebook cell that opened a run, run again in JupyterLab: the new run takes the name over."""
    a = Run("99_tiny", "r", {}, tmp_path, source=TINY)
    b = Run("99_tiny", "r", {}, tmp_path, source=TINY)
    assert not a.dir.exists() and b.dir.exists()
    b.finish()
    assert hidden_files(tmp_path) == [] and (tmp_path / "99_tiny" / "r" / "run.json").is_file()
    with FolderLock(tmp_path / "99_tiny" / "r", "a test"):  # held for another purpose: no takeover
        with pytest.raises(AlreadyRunning, match=f"a test is already running \\(pid {os.getpid()}"):
            Run("99_tiny", "r", {}, tmp_path, source=TINY)


# ----------------------------------------------------------------------------- the run context
def test_start_run_trusts_the_context_the_runner_passed(tmp_path, monkeypatch):
    """Under the runner the kernel takes the context as it is: it does not read the parameters cell again
    (here the notebook file named in the context does not even exist)."""
    ctx = make_context(TINY, {"seconds": "2.5", "label": "x"}, "r", str(tmp_path))
    gone = dataclasses.replace(ctx, source=str(tmp_path / "nowhere" / "99_tiny.py"))
    monkeypatch.setenv(CONTEXT_ENV, gone.to_json())
    ns = {"seconds": 0.0}
    run = start_run("99_tiny", ns)
    assert ns["seconds"] == 2.5 and ns["label"] == "x" and run.params == ctx.params
    assert run.final_dir == tmp_path / "99_tiny" / "r"
    with pytest.raises(RuntimeError, match="started by the runner for 99_tiny, not 01_weight_ranks"):
        start_run("01_weight_ranks", {})


def test_outside_the_runner_start_run_honours_the_notebooks_own_run_name_and_root(tmp_path, monkeypatch):
    """Plain papermill `-p run_name x -p output_root y`: the injected values decide where the run goes."""
    monkeypatch.delenv(CONTEXT_ENV, raising=False)
    ns = {"run_name": "x", "output_root": str(tmp_path / "y"), "steps": "2"}
    run = start_run(TINY, ns)
    assert run.final_dir == tmp_path / "y" / "99_tiny" / "x" and ns["steps"] == 2
    with pytest.raises(ValueError, match="steps must be at least 1"):
        start_run(TINY, {"steps": 0, "output_root": str(tmp_path)})
    run.finish()


# ----------------------------------------------------------------------------- item 6: early signals
@pytest.mark.parametrize("delay", [0.4, 1.5])
def test_an_early_ctrl_c_stops_the_run_and_keeps_the_complete_one(tmp_path, delay):
    """SIGINT 0.4 s after start was swallowed: the run completed, replaced the previous one, then exited 130."""
    assert cli(TINY, "--run-name", "r", "--output-root", tmp_path, "-p", "label", "old").returncode == 0
    previous = (tmp_path / "99_tiny" / "r" / "run.json").read_bytes()
    proc = start(TINY, "--run-name", "r", "--output-root", tmp_path, "-p", "seconds", "8", "-p", "label", "new")
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    assert (tmp_path / "99_tiny" / "r" / "run.json").read_bytes() == previous
    kept = tmp_path / "99_tiny" / "r.interrupted"
    if kept.exists():  # the kernel had opened the run: kept as interrupted, its duration true to its times
        rec = json.loads((kept / "run.json").read_text())
        span = (datetime.fromisoformat(rec["ended_utc"]) - datetime.fromisoformat(rec["started_utc"])).total_seconds()
        assert rec["status"] == "interrupted" and rec["duration_s"] == pytest.approx(span, abs=1.0)
    else:
        assert "nothing" in err or "before or after" in err, err
    assert hidden_files(tmp_path) == []


# ----------------------------------------------------------------------------- item 13: nothing in /tmp
def test_a_sigkilled_runner_leaves_no_kernel_sockets(tmp_path, request):
    """A SIGKILLed runner left its five /tmp/tspectra-kernel-* socket files."""
    tmp, root = Path(tempfile.mkdtemp(prefix="t21-", dir="/tmp")), tmp_path / "out"  # short: socket addresses
    request.addfinalizer(lambda: shutil.rmtree(tmp, ignore_errors=True))
    env = dict(os.environ, TMPDIR=str(tmp))
    proc = start(TINY, "--run-name", "r", "--output-root", root, "-p", "seconds", "60", env=env)
    stage, kernel = wait_for(lambda: kernel_started(root), what="the kernel", proc=proc)
    assert [p.name for p in tmp.iterdir()][0].startswith("tspectra-kernel-")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_for(lambda: not stage.exists() and not process_alive(kernel) and not list(tmp.iterdir()), 30, "clean-up")
    # the runner and its child killed together: the next runner removes the dead runner's kernel folder
    proc = start(TINY, "--run-name", "r", "--output-root", root, "-p", "seconds", "60", env=env)
    stage, kernel = wait_for(lambda: kernel_started(root), what="the kernel", proc=proc)
    child = next(p for p in Path("/proc").glob("[0-9]*") if _is_child_of(p, proc.pid))
    os.kill(int(child.name), signal.SIGKILL)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_for(lambda: not process_alive(kernel), 30, "the kernel to notice its parent is gone")
    assert [p.name for p in tmp.iterdir() if p.name.startswith("tspectra-kernel-")], "expected the dead one's folder"
    assert cli(TINY, "--run-name", "r", "--output-root", root, env=env).returncode == 0
    assert list(tmp.iterdir()) == [] and hidden_files(root) == []


def _is_child_of(proc_dir: Path, parent: int) -> bool:
    try:
        stat = (proc_dir / "stat").read_text()
        return (
            int(stat.rsplit(")", 1)[1].split()[1]) == parent
            and b"utils.running.child" in (proc_dir / "cmdline").read_bytes()
        )
    except (OSError, ValueError, IndexError):
        return False


def test_kernel_sockets_go_to_a_short_enough_folder(tmp_path, monkeypatch):
    """A socket address holds about 108 bytes: with a deep TMPDIR the kernel failed with "File name too long"."""
    from utils.running.runner import SOCKET_PATH_MAX, kernel_dir

    deep = tmp_path / ("d" * 60)
    deep.mkdir()
    monkeypatch.setenv("TMPDIR", str(deep))
    monkeypatch.setattr(tempfile, "tempdir", None)
    k = kernel_dir()
    try:
        assert str(k).startswith("/tmp/tspectra-kernel-") and len(str(k / "kernel-10")) <= SOCKET_PATH_MAX
    finally:
        shutil.rmtree(k)
