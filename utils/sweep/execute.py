"""Running a sweep: every run a task on a Dask cluster, through the headless runner.

About 400 lines because planning, submitting, interrupting and indexing a sweep share its state;
the file format and the index writer are in :mod:`.spec` and :mod:`.index`.

:func:`run_sweep` plans the runs of a :class:`~utils.sweep.spec.Sweep`, skips those already complete
with the same parameters, and submits the others to Dask (``dask.distributed``):

* **Where.** By default an embedded ``LocalCluster`` (one worker process per core, one run at a time
  per worker, everything on 127.0.0.1); with ``scheduler=`` (or ``$TSPECTRA_DASK_SCHEDULER``) an
  existing cluster (``dask scheduler`` + ``dask worker``, or ``dask-jobqueue`` on SLURM / PBS), whose
  workers must see the same output folder. Runs that need a GPU ask for the Dask resource ``GPU=1``:
  on the embedded cluster one extra worker per CUDA device has it, on a cluster start GPU workers with
  ``dask worker ADDRESS --resources GPU=1``.
* **How.** Each task calls :func:`utils.running.runner.execute` (the runner of single runs): the
  notebook runs in a child process into a hidden staging folder, swapped in whole when it completes.
* **Failures.** A failing notebook is a result, not an error: its run is kept as ``<key>.failed/``
  with the executed notebook and the error, and the other runs go on. A worker that dies mid-run takes
  its runner with it; the runner's child then stops the kernel and removes the staging folder, and
  Dask retries the task on a live worker (up to ``distributed.scheduler.allowed-failures`` times).
* **Ctrl-C.** Runs in progress are interrupted (kept as ``<key>.interrupted/``), runs not started
  are not started, the index is written, the cluster is closed; a second Ctrl-C stops at once.
* **After.** The sweep's index (CSV, :mod:`utils.sweep.index`) is rewritten after every run and at the
  end; ``<output root>/index.html`` lists every run (:mod:`utils.running.index`).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..running.paths import output_root as resolve_output_root
from ..running.paths import run_dir
from ..running.record import clean_stale_stages, utc_now
from .spec import RESERVED, RunSpec, Sweep, SweepError

SCHEDULER_ENV = "TSPECTRA_DASK_SCHEDULER"
DEFAULT_DASHBOARD = "127.0.0.1:8787"
STOP_GRACE_S = 60.0
ATTEMPTS = ("failed", "interrupted")

_STOPS: dict[str, threading.Event] = {}  # per worker process: one event per sweep invocation


# ----------------------------------------------------------------------------- on the workers
def stop_event(sweep_id: str) -> threading.Event:
    """The stop flag of one sweep invocation in this process."""
    return _STOPS.setdefault(sweep_id, threading.Event())


def set_stop(sweep_id: str) -> None:
    stop_event(sweep_id).set()


def forget_stop(sweep_id: str) -> None:
    _STOPS.pop(sweep_id, None)


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return ""


def run_task(job: dict, *after) -> dict:
    """Execute one run (a Dask task); returns its index row. ``after``: results of the runs it waited for."""
    from ..running.runner import NotebookFailed, RunInterrupted, execute

    stop = stop_event(job["sweep_id"])
    row = {"worker": _worker_address(), "host": platform.node(), "started_utc": utc_now(), "executed": True}
    if stop.is_set():
        return {**row, "status": "cancelled", "path": "", "error": "sweep stopped before this run started"}
    t0 = time.perf_counter()
    path, error = None, ""
    try:
        path = execute(job["notebook"], job["key"], job["params"], job["root"], group=job["group"], stop=stop)
        status = "complete"
        drop_attempts(path)
    except NotebookFailed as e:
        status, path, error = "failed", e.run_dir, str(e)
    except RunInterrupted as e:
        status, path, error = "interrupted", e.run_dir, str(e)
    except Exception as e:  # bad parameters, missing notebook: recorded, the sweep goes on
        status, error = "failed", f"{type(e).__name__}: {e}"
    return {
        **row,
        "status": status,
        "path": str(path or ""),
        "error": error,
        "ended_utc": utc_now(),
        "duration_s": round(time.perf_counter() - t0, 2),
    }


def drop_attempts(final: Path) -> None:
    """Remove earlier failed / interrupted attempts of a run that has now completed."""
    for s in ATTEMPTS:
        shutil.rmtree(final.with_name(f"{final.name}.{s}"), ignore_errors=True)


# ----------------------------------------------------------------------------- planning
def expected_params(spec: RunSpec) -> dict:
    """Every parameter of the run as the notebook will record it (defaults filled in), less the reserved ones."""
    from ..running.params import notebook_parameters
    from ..running.paths import notebook_source

    values = {p.name: p.default for p in notebook_parameters(notebook_source(spec.notebook))}
    values.update(spec.params)
    return {k: v for k, v in values.items() if k not in RESERVED}


def stored_record(final: Path) -> dict | None:
    import json

    try:
        return json.loads((final / "run.json").read_text())
    except (OSError, ValueError):
        return None


def is_done(spec: RunSpec, final: Path) -> bool:
    """True when ``final`` holds a complete run of ``spec`` with exactly the same parameters."""
    rec = stored_record(final)
    if not rec or rec.get("status") != "complete":
        return False
    stored = {k: v for k, v in (rec.get("params") or {}).items() if k not in RESERVED}
    return stored == expected_params(spec)


@dataclass
class Planned:
    spec: RunSpec
    final: Path
    done: bool
    execute: bool = True
    row: dict = field(default_factory=dict)


def plan(sweep: Sweep, root: Path) -> list[Planned]:
    """Each run with its folder; a run executes unless complete with the same parameters and none of
    the runs it waits for executes."""
    out = []
    for s in sweep.runs:
        final = run_dir(root, s.notebook, s.key, sweep.name)
        done = is_done(s, final)
        out.append(Planned(s, final, done, execute=not done))
    changed = True
    while changed:  # a run after an executing run executes too
        changed = False
        executing = {p.spec.notebook for p in out if p.execute}
        for p in out:
            if not p.execute and any(a in executing for a in p.spec.after):
                p.execute = changed = True
    return out


# ----------------------------------------------------------------------------- the cluster
def local_gpu_count() -> int:
    try:
        import torch

        return int(torch.cuda.device_count())
    except ImportError:
        return 0


@contextlib.contextmanager
def ignore_sigint():
    """SIGINT ignored while worker processes are started, so Ctrl-C reaches only this process."""
    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGINT, old)


@contextlib.contextmanager
def open_client(scheduler: str | None = None, workers: int | None = None, gpus: int = 0, dashboard=DEFAULT_DASHBOARD):
    """A Dask client: on ``scheduler`` (or ``$TSPECTRA_DASK_SCHEDULER``), else on an embedded LocalCluster
    with ``workers`` CPU workers (default: one per core) and ``gpus`` GPU workers (resource ``GPU=1``)."""
    import logging

    from distributed import Client, LocalCluster

    address = scheduler or os.environ.get(SCHEDULER_ENV, "").strip() or None
    if address:
        try:
            client = Client(address, timeout="30s")
        except (OSError, TimeoutError) as e:
            raise SweepError(f"could not reach the Dask scheduler at {address!r} ({e}); is it running?") from None
        try:
            yield client
        finally:
            client.close()
        return
    n = workers or os.cpu_count() or 1
    threads = str(max(1, (os.cpu_count() or 1) // n))
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
    with ignore_sigint():
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=dashboard,
            silence_logs=logging.ERROR,
            env=env,
        )
        for j in range(gpus):
            opts = dict(cluster.new_spec["options"], resources={"GPU": 1}, env={**env, "CUDA_VISIBLE_DEVICES": str(j)})
            cluster.worker_spec[f"gpu-{j}"] = {"cls": cluster.new_spec["cls"], "options": opts}
        if gpus:
            cluster.scale(len(cluster.worker_spec))
        client = Client(cluster)
        if gpus:
            client.wait_for_workers(n + gpus, timeout=120)
    try:
        yield client
    finally:
        client.close()
        with ignore_sigint():
            cluster.close()


def gpu_workers(client) -> list[str]:
    return [a for a, w in client.scheduler_info()["workers"].items() if (w.get("resources") or {}).get("GPU", 0) >= 1]


# ----------------------------------------------------------------------------- running
@dataclass
class SweepResult:
    sweep: Sweep
    rows: list[dict]
    root: Path
    interrupted: bool = False
    index_csv: Path | None = None
    index_html: Path | None = None
    dashboard: str = ""
    gpu_workers: list = field(default_factory=list)

    def counts(self) -> dict:
        out: dict = {}
        for r in self.rows:
            k = r["status"] if r.get("executed") else f"{r['status']} (skipped)"
            out[k] = out.get(k, 0) + 1
        return out

    @property
    def executed(self) -> int:
        return sum(bool(r.get("executed")) for r in self.rows)

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(r["status"] == "complete" for r in self.rows)


def _initial_row(p: Planned, sweep: Sweep) -> dict:
    row = {"sweep": sweep.name, "notebook": p.spec.notebook, "run_key": p.spec.key, "params": p.spec.params}
    if p.execute:
        return {**row, "status": "pending", "executed": False, "path": ""}
    rec = stored_record(p.final) or {}
    return {
        **row,
        "status": "complete",
        "executed": False,
        "path": str(p.final),
        "started_utc": rec.get("started_utc"),
        "ended_utc": rec.get("ended_utc"),
        "duration_s": rec.get("elapsed_s"),
    }


def _job(p: Planned, sweep: Sweep, root: Path, sweep_id: str) -> dict:
    s = p.spec
    return {"notebook": s.notebook, "key": s.key, "params": s.params, "root": str(root), "group": sweep.name,
            "sweep_id": sweep_id}  # fmt: skip


def _future_row(fut) -> dict:
    if fut.status == "finished":
        return fut.result()
    if fut.status == "cancelled":
        return {"status": "cancelled", "executed": False, "error": "cancelled"}
    exc = fut.exception()
    return {"status": "failed", "executed": True, "error": f"{type(exc).__name__}: {exc}"}


def run_sweep(
    sweep: Sweep,
    output_root=None,
    scheduler: str | None = None,
    workers: int | None = None,
    gpus: int | None = None,
    dashboard: str = DEFAULT_DASHBOARD,
    progress: bool = True,
    html_index: bool = True,
) -> SweepResult:
    """Run every run of ``sweep`` that is not already complete (module docstring)."""
    from .index import write_sweep_index

    root = resolve_output_root(output_root)
    planned = plan(sweep, root)
    rows = [_initial_row(p, sweep) for p in planned]
    todo = [i for i, p in enumerate(planned) if p.execute]
    result = SweepResult(sweep, rows, root)
    result.index_csv = write_sweep_index(root, sweep, rows)
    need_gpu = [planned[i].spec for i in todo if planned[i].spec.gpu]
    if todo:
        remote = bool(scheduler or os.environ.get(SCHEDULER_ENV, "").strip())
        n_gpus = 0 if remote else (gpus if gpus is not None else (local_gpu_count() if need_gpu else 0))
        if need_gpu and not remote and n_gpus == 0:
            raise SweepError(
                f"{need_gpu[0].label} needs a GPU (device={need_gpu[0].params.get('device')!r} or gpu: true) but this "
                "machine has none: pass --scheduler ADDRESS of a cluster with a GPU worker "
                "(dask worker ADDRESS --resources GPU=1), or set device: cpu"
            )
        with open_client(scheduler, workers, n_gpus, dashboard) as client:
            result.dashboard = client.dashboard_link or ""
            result.gpu_workers = gpu_workers(client)
            if need_gpu and not result.gpu_workers:
                raise SweepError(
                    f"{need_gpu[0].label} needs a GPU but no worker of the cluster has the resource GPU "
                    "(start one with: dask worker ADDRESS --resources GPU=1)"
                )
            print(f"sweep {sweep.name}: {len(todo)} run(s) to execute, {len(rows) - len(todo)} already complete; "
                  f"Dask dashboard: {result.dashboard or 'not available (install bokeh)'}", flush=True)  # fmt: skip
            result.interrupted = _execute(client, sweep, planned, rows, todo, root, progress, result)
    else:
        print(f"sweep {sweep.name}: all {len(rows)} run(s) already complete with the same parameters", flush=True)
    if not scheduler and not os.environ.get(SCHEDULER_ENV, "").strip():
        settle_stages([p.final for p in planned])
    result.index_csv = write_sweep_index(root, sweep, rows)
    if html_index:
        from ..running.index import write_index_html

        result.index_html = write_index_html(root)
    return result


def _execute(client, sweep, planned, rows, todo, root, progress, result) -> bool:
    """Submit the runs, collect their rows as they finish; returns True when stopped by Ctrl-C."""
    from distributed import as_completed, wait

    from ..progress import progress_bar
    from .index import write_sweep_index

    sweep_id = uuid.uuid4().hex[:12]
    futures, by_notebook = {}, {}
    for i in todo:  # in file order: the runs a run waits for are submitted before it
        p = planned[i]
        deps = [f for nb in p.spec.after for f in by_notebook.get(nb, [])]
        fut = client.submit(
            run_task,
            _job(p, sweep, root, sweep_id),
            *deps,
            key=f"{p.spec.notebook}/{p.spec.key}-{sweep_id}",
            pure=False,
            resources={"GPU": 1} if p.spec.gpu else None,
        )
        futures[fut] = i
        by_notebook.setdefault(p.spec.notebook, []).append(fut)
        rows[i]["status"] = "queued"
    bar = progress_bar(total=len(futures), desc=f"sweep {sweep.name}", unit="run", disable=not progress)

    def take(fut):
        i = futures.pop(fut)
        rows[i].update(_future_row(fut))
        bar.update(1)
        bar.set_postfix_str(f"{rows[i]['notebook']}/{rows[i]['run_key']}: {rows[i]['status']}")
        write_sweep_index(root, sweep, rows)

    interrupted = False
    try:
        for fut in as_completed(list(futures)):
            take(fut)
    except KeyboardInterrupt:
        interrupted = True
        bar.write("Ctrl-C: interrupting the runs in progress, starting no new one (Ctrl-C again to stop at once)")
        try:
            client.run(set_stop, sweep_id)
            with contextlib.suppress(TimeoutError):
                wait(list(futures), timeout=STOP_GRACE_S)
            for fut in [f for f in futures if f.done()]:
                take(fut)
        except KeyboardInterrupt:
            bar.write("stopping at once")
        for fut, i in futures.items():
            fut.cancel()
            rows[i].update(status="cancelled", error="sweep interrupted")
    finally:
        bar.close()
        with contextlib.suppress(Exception):
            client.run(forget_stop, sweep_id)
    return interrupted


def settle_stages(finals: list[Path], timeout: float = 5.0) -> int:
    """Remove staging folders left by runs whose processes are gone (a killed worker's run stops its
    kernel and removes its own staging folder within a second or two); returns how many remain."""
    deadline = time.monotonic() + timeout
    while True:
        left = 0
        for f in finals:
            if f.parent.is_dir():
                clean_stale_stages(f)
                left += len(list(f.parent.glob(f".{f.name}.staging-*")))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.25)
