"""Sweeps on a real Dask cluster (127.0.0.1): failure isolation, resume, GPU placement, the comparison
notebook after its runs, a worker killed mid-run, Ctrl-C. Tiny checkpoints, notebook 01 mostly."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import yaml
from conftest import REPO_ROOT

from utils.sweep import parse_sweep
from utils.sweep.execute import run_sweep

pytestmark = pytest.mark.slow


def _sweep_file(folder: Path, data: dict) -> Path:
    p = folder / f"{data['name']}.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _whole(run: Path, notebook: str = "01_weight_ranks") -> dict:
    """The run folder is complete and holds every file its record lists; returns the record."""
    rec = json.loads((run / "run.json").read_text())
    assert rec["status"] == "complete", run
    assert (run / "report.html").is_file() and (run / f"{notebook}.ipynb").is_file()
    assert all((run / f).is_file() for f in rec["files"]), run
    assert not [p for p in run.iterdir() if p.name.startswith(".")], f"temp files left in {run}"
    return rec


def _no_stages(group: Path) -> None:
    assert not [p.name for p in group.iterdir() if p.name.startswith(".")], f"staging folders left in {group}"


def _report_table_row(report: str, first_cell: str) -> list[str]:
    line = next(ln for ln in report.splitlines() if ln.startswith(f"| {first_cell} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_failures_are_isolated_the_compare_runs_after_and_a_second_run_executes_nothing(
    tiny_llama_dir, nan_llama_dir, tmp_path
):
    llama = str(tiny_llama_dir)
    good = {"notebook": "01_weight_ranks", "params": {"layer_idx": 1}, "grid": {"model": [llama, f"random:{llama}"]}}
    bad = {"notebook": "01_weight_ranks", "params": {"model": str(nan_llama_dir), "layer_idx": 1}, "gpu": True}
    comp = {"notebook": "06_compare", "params": {"sweep": "iso"}, "after": "all"}
    sw = parse_sweep({"name": "iso", "runs": [good, bad, comp]})
    keys = [r.key for r in sw.runs[:2]]
    res = run_sweep(sw, tmp_path, workers=2, gpus=1, dashboard="127.0.0.1:0", progress=False)

    by_key = {(r["notebook"], r["run_key"]): r for r in res.rows}
    assert [r["status"] for r in res.rows] == ["complete", "complete", "failed", "complete"]
    assert res.dashboard.startswith("http://127.0.0.1:")
    group = tmp_path / "01_weight_ranks" / "iso"
    for key in keys:
        _whole(group / key)
    # the failing run (a model that opens, with a NaN weight): kept with its executed notebook and the error;
    # it ran on the GPU worker
    failed = by_key[("01_weight_ranks", "default")]
    assert Path(failed["path"]) == group / "default.failed" and "NaN" in failed["error"]
    assert json.loads((group / "default.failed" / "run.json").read_text())["error"]["ename"] == "ValueError"
    assert "NaN/Inf values" in (group / "default.failed" / "01_weight_ranks.ipynb").read_text()
    assert failed["worker"] in res.gpu_workers and len(res.gpu_workers) == 1  # CPU runs may go anywhere
    _no_stages(group)
    # the index of runs
    index = pd.read_csv(tmp_path / "sweeps" / "iso" / "index.csv")
    assert list(index.status) == ["complete", "complete", "failed", "complete"] and index.executed.all()
    assert {"model", "layer_idx", "duration_s", "started_utc", "path", "report", "error"} <= set(index.columns)
    assert (index.duration_s > 0).all() and index.path.map(lambda p: Path(p).is_dir()).all()
    assert len(pd.read_csv(group / "index.csv")) == 3
    # issue 23: one duration per run, the same in index.csv, run.json and index.html's list
    from utils.running.index import collect_runs

    listed = {str(r["path"]): r["duration_s"] for r in collect_runs(tmp_path)}
    for path, seconds in zip(index.path, index.duration_s):
        rec = json.loads((Path(path) / "run.json").read_text())
        assert seconds == pytest.approx(rec["duration_s"], abs=1e-3) and listed[path] == rec["duration_s"]
    # the comparison ran after the runs it waits for, and its numbers are the runs' numbers
    cmp_dir = tmp_path / "06_compare" / "iso" / "default"
    cmp_rec = _whole(cmp_dir, "06_compare")
    ends = [json.loads((group / k / "run.json").read_text())["ended_utc"] for k in keys]
    assert cmp_rec["started_utc"] >= max(ends)
    row = _report_table_row((cmp_dir / "report.md").read_text(), "W_down")
    for cell, key in zip(row[1:3], keys):
        df = pd.read_csv(group / key / "weight_ranks.csv")
        d = df[(df.weight_type == "W_down") & (df.layer_idx >= 0)]
        assert float(cell) == pytest.approx(np.mean(d.eff_rank / np.minimum(d.rows, d.cols)), rel=1e-3)
    assert (tmp_path / "index.html").is_file()

    # resume: the same runs again (without the failing one) execute nothing and touch nothing
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("run.json")}
    again = run_sweep(parse_sweep({"name": "iso", "runs": [good]}), tmp_path, workers=2, progress=False)
    assert again.executed == 0 and [r["status"] for r in again.rows] == ["complete", "complete"]
    assert again.dashboard == ""  # no cluster was started
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def _tree(pid: int) -> list:
    try:
        p = psutil.Process(pid)
        return [p] + p.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _listening(procs) -> set:
    out = set()
    for p in procs:
        try:
            out |= {c.laddr.ip for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def _wait_for_kernel(group: Path, proc, timeout: float = 120.0):
    """A staging folder whose kernel has started (its run.json names the kernel's pid): (folder, pid)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else "the sweep ended early"
        for st in group.glob(".*.staging-*") if group.is_dir() else []:
            try:
                pid = int(json.loads((st / "run.json").read_text())["pid"])
            except (OSError, ValueError, KeyError):
                continue
            return st, pid
        time.sleep(0.2)
    raise AssertionError("no run started in time")


def _start_sweep(tmp_path: Path, data: dict, *args: str):
    f = _sweep_file(tmp_path, data)
    cmd = [sys.executable, "-m", "utils.sweep", str(f), "--output-root", str(tmp_path / "out"), "--no-progress", *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=_default_sigint)  # fmt: skip


def _default_sigint():  # a test runner may ignore SIGINT; a terminal's child would not
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def dask_cluster(tmp_path: Path, n_workers: int = 2):
    """A real Dask cluster from the ``dask`` command line: a scheduler and ``n_workers`` worker processes
    (one thread each, behind nannies), everything on 127.0.0.1; yields (address, [processes])."""
    dask = str(Path(sys.executable).with_name("dask"))
    sf = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address",
                               "127.0.0.1:0", "--scheduler-file", str(sf)], start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not sf.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(sf.read_text())["address"]
        worker = [dask, "worker", address, "--nworkers", str(n_workers), "--nthreads", "1", "--host", "127.0.0.1",
                  "--dashboard-address", "127.0.0.1:0"]  # fmt: skip
        procs.append(
            subprocess.Popen(worker, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
        from distributed import Client

        with Client(address, timeout="30s") as c:
            c.wait_for_workers(n_workers, timeout=90)
        yield address, procs
    finally:
        for p in procs[::-1]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=20)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)


def test_a_worker_killed_mid_run_is_retried_and_every_run_folder_is_whole(tiny_model_dirs, tmp_path):
    models = [str(tiny_model_dirs[f]) for f in ("llama", "gpt2")]
    data = {"name": "kill", "runs": [{"notebook": "01_weight_ranks", "params": {"layer_idx": 1},
                                      "grid": {"model": models}}]}  # fmt: skip
    expected = {r.key for r in parse_sweep(data).runs}
    group = tmp_path / "out" / "01_weight_ranks" / "kill"
    with dask_cluster(tmp_path) as (address, cluster):
        proc = _start_sweep(tmp_path, data, "--scheduler", address)
        try:
            stage, kernel = _wait_for_kernel(group, proc)
            child = psutil.Process(kernel).parent()  # kernel <- runner child <- Dask worker process
            worker = child.parent()
            assert "utils.running.child" in " ".join(child.cmdline())
            assert worker.parent().pid == cluster[1].pid  # a worker process under the `dask worker` nannies
            everything = [q for p in [proc] + cluster for q in _tree(p.pid)]
            assert _listening(everything) == {"127.0.0.1"}, "something listens beyond 127.0.0.1"
            killed_key = stage.name[1:].rsplit(".staging-", 1)[0]
            worker.send_signal(signal.SIGKILL)
            out, _ = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out
    keys = {p.name for p in group.iterdir() if p.is_dir()}
    assert keys == expected, keys  # no .failed attempt, no staging folder
    for k in keys:
        _whole(group / k)
    _no_stages(group)
    index = pd.read_csv(tmp_path / "out" / "sweeps" / "kill" / "index.csv")
    assert list(index.status) == ["complete"] * 2 and killed_key in set(index.run_key)
    assert not psutil.pid_exists(kernel) or psutil.Process(kernel).status() == psutil.STATUS_ZOMBIE


def test_ctrl_c_interrupts_the_run_in_progress_and_stops_cleanly(tiny_llama_dir, tmp_path):
    data = {"name": "stop", "runs": [{"notebook": "01_weight_ranks", "grid": {"model": [str(tiny_llama_dir)]}}]}
    key = parse_sweep(data).runs[0].key
    proc = _start_sweep(tmp_path, data, "--workers", "1", "--dashboard", "127.0.0.1:0")
    group = tmp_path / "out" / "01_weight_ranks" / "stop"
    try:
        _, kernel = _wait_for_kernel(group, proc)
        assert _listening(_tree(proc.pid)) == {"127.0.0.1"}, "the embedded cluster listens beyond 127.0.0.1"
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out
    assert "SIGINT" in out, out
    assert (group / f"{key}.interrupted").is_dir(), out + str(sorted(p.name for p in group.iterdir()))
    rec = json.loads((group / f"{key}.interrupted" / "run.json").read_text())
    assert rec["status"] == "interrupted"
    assert not (group / key).exists()
    _no_stages(group)
    index = pd.read_csv(tmp_path / "out" / "sweeps" / "stop" / "index.csv")
    assert list(index.status) == ["interrupted"]
    time.sleep(1.0)
    assert not psutil.pid_exists(kernel) or psutil.Process(kernel).status() == psutil.STATUS_ZOMBIE
