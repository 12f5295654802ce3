"""Issue 21, sweeps: one owner per sweep, Ctrl-C and SIGTERM at any moment (cluster start-up included), a
clean cancel with the index written once per batch, and the acceptance stress test: 20 runs on the
embedded cluster, two workers killed at random and one Ctrl-C, then a resume. The runs are the tiny test
notebook (tests/notebooks/99_tiny.py), so the time goes to the machinery under test."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml
from conftest import REPO_ROOT, TINY_NOTEBOOK
from helpers import default_sigint, hidden_files, wait_for

from utils.sweep import parse_sweep

pytestmark = pytest.mark.slow
TINY = str(TINY_NOTEBOOK)


@pytest.fixture
def short_tmp(request) -> Path:
    """A private TMPDIR with a short path (the kernels' socket addresses live there)."""
    d = Path(tempfile.mkdtemp(prefix="t21s-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(d, ignore_errors=True))
    return d


def sweep_file(folder: Path, name: str, labels: list[str], seconds: float, steps: int = 2) -> Path:
    data = {"name": name, "runs": [{"notebook": TINY, "params": {"seconds": seconds, "steps": steps},
                                    "grid": {"label": labels}}]}  # fmt: skip
    p = folder / f"{name}.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def start_sweep(path: Path, root: Path, *args, tmp: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **({"TMPDIR": str(tmp)} if tmp else {}))
    cmd = [sys.executable, "-m", "utils.sweep", str(path), "--output-root", str(root), "--no-progress",
           "--dashboard", "127.0.0.1:0", *args]  # fmt: skip
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=default_sigint)  # fmt: skip


def running_stages(group: Path) -> list[Path]:
    """Staging folders whose kernel has opened its run."""
    return [s for s in group.glob(".*.staging-*") if (s / "run.json").is_file()] if group.is_dir() else []


def finish(proc: subprocess.Popen, timeout: float = 240.0) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return out


def index(root: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(root / "sweeps" / name / "index.csv", keep_default_na=False)


# ----------------------------------------------------------------------------- item 4: one owner per sweep
def test_the_same_sweep_started_twice_the_second_is_refused(tmp_path):
    """The same sweep file started twice: three of six runs failed and index.csv said `failed` beside a
    complete folder."""
    f, root = sweep_file(tmp_path, "twice", ["a", "b"], seconds=4), tmp_path / "out"
    first = start_sweep(f, root, "--workers", "1")
    try:
        wait_for(lambda: running_stages(root / "99_tiny" / "twice"), proc=first, what="a run of the first sweep")
        second = subprocess.run([sys.executable, "-m", "utils.sweep", str(f), "--output-root", str(root)],
                                cwd=REPO_ROOT, capture_output=True, text=True)  # fmt: skip
        assert second.returncode == 2, second.stderr
        assert f"sweep twice is already running (pid {first.pid}" in second.stderr, second.stderr
    finally:
        out = finish(first)
    assert first.returncode == 0, out
    assert list(index(root, "twice").status) == ["complete", "complete"] and hidden_files(root) == []


# ----------------------------------------------------------------------------- items 6, 7, 14: signals
def test_ctrl_c_while_the_cluster_starts_runs_nothing(tmp_path):
    """A sweep interrupted while its cluster started ran every run and exited 0."""
    f, root = sweep_file(tmp_path, "early", ["a", "b", "c"], seconds=1), tmp_path / "out"
    proc = start_sweep(f, root, "--workers", "2")
    try:  # the cluster's first process: multiprocessing's resource tracker, started just before the workers
        wait_for(lambda: psutil.Process(proc.pid).children(), proc=proc, what="the cluster to start")
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    finally:
        out = finish(proc)
    assert proc.returncode == 130, out
    assert "run(s) to execute" not in out and "INTERRUPTED by SIGINT" in out
    df = index(root, "early")
    assert list(df.status) == ["cancelled"] * 3 and not df.executed.any()  # item 14: not executed
    assert [p.name for p in (root / "99_tiny" / "early").iterdir()] == ["index.csv"] and hidden_files(root) == []


def test_sigterm_to_a_sweep_is_handled_as_ctrl_c(tmp_path):
    """SIGTERM left index.csv with running rows `pending`, no .interrupted/ folders and a stale index.html."""
    f, root = sweep_file(tmp_path, "term", ["a", "b", "c"], seconds=60), tmp_path / "out"
    proc = start_sweep(f, root, "--workers", "1")
    try:
        wait_for(lambda: running_stages(root / "99_tiny" / "term"), proc=proc, what="a run")
        t_signal = time.time()
        proc.send_signal(signal.SIGTERM)  # the sweep's process only, as `kill PID` does
    finally:
        out = finish(proc)
    assert proc.returncode == 130 and "INTERRUPTED by SIGTERM" in out, out
    df = index(root, "term").set_index("run_key")
    assert sorted(df.status) == ["cancelled", "cancelled", "interrupted"], df.status
    kept = Path(df[df.status == "interrupted"].path.iloc[0])
    assert kept.name.endswith(".interrupted") and json.loads((kept / "run.json").read_text())["signal"] == "SIGINT"
    assert df[df.status == "interrupted"].executed.all() and not df[df.status == "cancelled"].executed.any()
    assert (root / "index.html").stat().st_mtime >= t_signal and "interrupted" in (root / "index.html").read_text()
    assert hidden_files(root) == []


# ----------------------------------------------------------------------------- item 8: a clean cancel
def test_ctrl_c_cancels_queued_runs_at_once_writing_the_index_once_per_batch(tmp_path, monkeypatch, capfd):
    """A first Ctrl-C took over 10 minutes on a big grid: each cancelled task rewrote the whole index twice,
    and the log filled with Dask tracebacks."""
    from utils.sweep import execute

    writes = []
    real = execute.write_sweep_index
    monkeypatch.setattr(execute, "write_sweep_index", lambda *a: writes.append(1) or real(*a))
    labels = [f"r{i:02d}" for i in range(30)]
    sw = parse_sweep(
        {"name": "many", "runs": [{"notebook": TINY, "params": {"seconds": 60}, "grid": {"label": labels}}]}
    )
    group = tmp_path / "99_tiny" / "many"

    def ctrl_c_once_a_run_started():
        wait_for(lambda: running_stages(group), what="a run")
        os.kill(os.getpid(), signal.SIGINT)

    t = threading.Thread(target=ctrl_c_once_a_run_started, daemon=True)
    t.start()
    t0 = time.monotonic()
    res = execute.run_sweep(sw, tmp_path, workers=1, dashboard="127.0.0.1:0", progress=False)
    stop_s = time.monotonic() - t0
    t.join(timeout=5)
    assert res.interrupted and res.signal == "SIGINT"
    statuses = sorted(r["status"] for r in res.rows)
    assert statuses == ["cancelled"] * 29 + ["interrupted"]
    assert sum(bool(r["executed"]) for r in res.rows) == 1
    assert len(writes) <= 5, f"the index was written {len(writes)} times"
    assert stop_s < 120, stop_s
    err = capfd.readouterr().err
    assert "Traceback" not in err and "CancelledError" not in err, err[-3000:]
    assert list(index(tmp_path, "many").status).count("cancelled") == 29 and hidden_files(tmp_path) == []


def test_a_grid_over_the_limit_is_refused_unless_asked_for(tmp_path):
    f = sweep_file(tmp_path, "big", [f"r{i}" for i in range(201)], seconds=0)
    out = subprocess.run([sys.executable, "-m", "utils.sweep", str(f), "--output-root", str(tmp_path / "o"),
                          "--dry-run"], cwd=REPO_ROOT, capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 2 and "the grids give 201 runs, more than the limit of 200" in out.stderr
    assert "--max-runs 201 (or --yes)" in out.stderr and not (tmp_path / "o").exists()
    for extra in (["--max-runs", "201"], ["--yes"]):
        ok = subprocess.run([sys.executable, "-m", "utils.sweep", str(f), "--output-root", str(tmp_path / "o"),
                             "--dry-run", *extra], cwd=REPO_ROOT, capture_output=True, text=True)  # fmt: skip
        assert ok.returncode == 0 and ok.stdout.count("| run |") == 201, ok.stderr


# ----------------------------------------------------------------------------- the acceptance stress test
def _workers(sweep_pid: int) -> list[psutil.Process]:
    """The embedded cluster's worker processes that are running a run (they have a runner child)."""
    out = []
    for p in psutil.Process(sweep_pid).children():
        try:
            if any("utils.running.child" in " ".join(c.cmdline()) for c in p.children()):
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _complete_runs(group: Path) -> list[Path]:
    return [d for d in group.iterdir() if d.is_dir() and not d.name.startswith(".") and "." not in d.name
            and (d / "run.json").is_file()] if group.is_dir() else []  # fmt: skip


def _check_folders_and_index(root: Path, group: Path, name: str, keys: list[str]) -> pd.DataFrame:
    """Every run folder complete or absent; the index says what the folders hold."""
    df = index(root, name).set_index("run_key")
    assert sorted(df.index) == sorted(keys)
    for key in keys:
        run, kept = group / key, group / f"{key}.interrupted"
        status = df.loc[key, "status"]
        if run.exists():
            rec = json.loads((run / "run.json").read_text())
            assert rec["status"] == "complete" and all((run / f).is_file() for f in rec["files"]), key
            assert len([f for f in rec["files"] if f.startswith("step_")]) == 3, key
        if status == "complete":
            assert run.is_dir() and df.loc[key, "path"] == str(run), key
        elif status == "interrupted":
            assert kept.is_dir() and json.loads((kept / "run.json").read_text())["status"] == "interrupted", key
        else:
            assert status == "cancelled" and not run.exists(), (key, status)
    return df


def test_stress_twenty_runs_two_workers_killed_one_ctrl_c_then_resume(tmp_path, short_tmp):
    """Acceptance of issue 21: every run folder complete or absent, the index true, nothing under /tmp left."""
    rng = random.Random(21)
    keys = [f"label=r{i:02d}" for i in range(20)]
    f, root = sweep_file(tmp_path, "stress", [k.split("=")[1] for k in keys], seconds=1.5, steps=3), tmp_path / "out"
    group = root / "99_tiny" / "stress"
    proc = start_sweep(f, root, "--workers", "2", tmp=short_tmp)
    killed = []
    try:
        for _ in range(2):  # two workers killed at random moments, each in the middle of a run
            time.sleep(rng.uniform(0.5, 3.0))
            victim = wait_for(lambda: _workers(proc.pid), proc=proc, what="a worker running a run")
            victim = rng.choice(victim)
            killed.append(victim.pid)
            victim.send_signal(signal.SIGKILL)
        wait_for(lambda: len(_complete_runs(group)) >= 6, proc=proc, what="six complete runs")
        wait_for(lambda: running_stages(group), proc=proc, what="a run in progress")
        os.killpg(proc.pid, signal.SIGINT)
    finally:
        out = finish(proc)
    assert proc.returncode == 130, out
    assert "Traceback" not in out, out
    df = _check_folders_and_index(root, group, "stress", keys)
    assert 6 <= (df.status == "complete").sum() < 20 and set(df.status) <= {"complete", "interrupted", "cancelled"}
    assert hidden_files(root) == [] and list(short_tmp.iterdir()) == [], list(short_tmp.iterdir())
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if str(short_tmp) in " ".join(p.info["cmdline"] or [])]
    assert not leftovers, leftovers
    done_before = {k: (group / k / "run.json").stat().st_mtime_ns for k in df.index[df.status == "complete"]}

    again = start_sweep(f, root, "--workers", "2", tmp=short_tmp)
    out = finish(again)
    assert again.returncode == 0, out
    df = _check_folders_and_index(root, group, "stress", keys)
    assert (df.status == "complete").all() and df.executed.sum() == 20 - len(done_before)
    assert {k: (group / k / "run.json").stat().st_mtime_ns for k in done_before} == done_before
    assert not list(group.glob("*.interrupted")) and hidden_files(root) == [] and list(short_tmp.iterdir()) == []
    with contextlib.suppress(psutil.NoSuchProcess):
        assert not any(psutil.Process(pid).is_running() for pid in killed)
