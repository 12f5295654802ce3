"""Running a sweep: every run a task on a Dask cluster, through the headless runner.

About 450 lines because planning, claiming, submitting, interrupting and indexing a sweep share its
state; the file format and the index writer are in :mod:`.spec` and :mod:`.index`.

:func:`run_sweep` claims the sweep's name (a lock per notebook folder: the same sweep started twice is
refused with the first one's pid, and a sweep never takes a single run's name), plans the runs (each
a checked :class:`~utils.running.context.RunContext`), skips those already complete with the same
parameters, and submits the others to Dask (``dask.distributed``):

* **Where.** By default an embedded ``LocalCluster`` (one worker process per core, one run at a time
  per worker, everything on 127.0.0.1, its scratch space in a temp folder removed at the end); with
  ``scheduler=`` (or ``$TSPECTRA_DASK_SCHEDULER``) an existing cluster (``dask scheduler`` + ``dask
  worker``, or ``dask-jobqueue`` on SLURM / PBS), whose workers must see the same output folder. Runs
  that need a GPU ask for the Dask resource ``GPU=1``: on the embedded cluster one extra worker per
  CUDA device has it, on a cluster start GPU workers with ``dask worker ADDRESS --resources GPU=1``.
* **How.** Each task hands its run's context to :func:`utils.running.runner.execute_context` (the
  runner of single runs): the notebook runs in a child process into a hidden staging folder, swapped
  in whole when it completes.
* **Failures.** A failing notebook is a result, not an error: its run is kept as ``<key>.failed/``
  with the executed notebook and the error, and the other runs go on. A worker that dies mid-run takes
  its runner with it; the runner's child then stops the kernel and removes the staging folder, and
  Dask retries the task on a live worker (up to ``distributed.scheduler.allowed-failures`` times).
* **Ctrl-C and SIGTERM** (also while the cluster starts): runs in progress are interrupted (kept as
  ``<key>.interrupted/``), runs not started are cancelled at once, the index is written, the cluster is
  closed, exit code 130; a second signal stops at once. Worker processes of the embedded cluster start
  with SIGINT blocked, so a terminal's Ctrl-C reaches only the sweep's own process.
* **After.** The sweep's index (CSV, :mod:`utils.sweep.index`) is written once per batch of finished
  runs and at the end, where every row is checked against the run folders on disk;
  ``<output root>/index.html`` lists every run (:mod:`utils.running.index`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from multiprocessing import resource_tracker
from pathlib import Path

from ..progress import progress_bar
from ..provenance import utc_now
from ..running.claim import ATTEMPTS, claim_group, settle
from ..running.context import RunContext, make_context, recorded
from ..running.index import write_index_html
from ..running.paths import check_output_root
from ..running.paths import output_root as resolve_output_root
from ..running.runner import NotebookFailed, RunInterrupted, execute_context
from ..running.signals import SignalFlag
from .index import write_sweep_index
from .spec import MAX_RUNS, RunSpec, Sweep, SweepError

SCHEDULER_ENV = "TSPECTRA_DASK_SCHEDULER"
DEFAULT_DASHBOARD = "127.0.0.1:8787"
STOP_GRACE_S = 60.0
POLL_S = 0.25

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
    stop = stop_event(job["sweep_id"])
    row = {"worker": _worker_address(), "host": platform.node(), "started_utc": utc_now()}
    if stop.is_set():
        return {**row, "status": "cancelled", "executed": False, "path": "", "error": "sweep stopped before it started"}
    t0 = time.perf_counter()
    path, error, executed = None, "", True
    try:
        path = execute_context(RunContext.from_json(job["context"]), stop=stop)
        status = "complete"
        drop_attempts(path)
    except NotebookFailed as e:
        status, path, error = "failed", e.run_dir, str(e)
    except RunInterrupted as e:
        status, path, error = ("interrupted", e.run_dir, str(e)) if e.run_dir else ("cancelled", None, str(e))
        executed = e.run_dir is not None
    except Exception as e:  # refused (name in use, a GPU missing here): recorded, the sweep goes on
        status, error = "failed", f"{type(e).__name__}: {e}"
    row.update(ended_utc=utc_now(), duration_s=round(time.perf_counter() - t0, 2))
    rec = stored_record(Path(path)) if path else None
    if rec and rec.get("duration_s") is not None:  # the run's own times: one duration everywhere
        row.update(started_utc=rec["started_utc"], ended_utc=rec["ended_utc"], duration_s=rec["duration_s"])
    return {**row, "status": status, "executed": executed, "path": str(path or ""), "error": error}


def drop_attempts(final: Path) -> None:
    """Remove earlier failed / interrupted attempts of a run that has now completed."""
    for s in ATTEMPTS:
        shutil.rmtree(final.with_name(f"{final.name}.{s}"), ignore_errors=True)


# ----------------------------------------------------------------------------- planning
def stored_record(final: Path) -> dict | None:
    try:
        return json.loads((final / "run.json").read_text())
    except (OSError, ValueError):
        return None


def is_done(ctx: RunContext, final: Path | None = None) -> bool:
    """True when the run's folder holds a complete run with exactly the parameters of ``ctx``."""
    rec = stored_record(final or ctx.final)
    if not rec or rec.get("status") != "complete":
        return False
    return recorded(rec.get("params") or {}) == recorded(ctx.params)


@dataclass
class Planned:
    spec: RunSpec
    ctx: RunContext
    done: bool
    execute: bool = True

    @property
    def final(self) -> Path:
        return self.ctx.final


def plan(sweep: Sweep, root: Path) -> list[Planned]:
    """Each run with its checked context; a run executes unless complete with the same parameters and none of
    the runs it waits for executes."""
    out = []
    for s in sweep.runs:
        ctx = make_context(s.source or s.notebook, s.params, s.key, str(root), sweep.name, here=False)
        done = is_done(ctx)
        out.append(Planned(s, ctx, done, execute=not done))
    changed = True
    while changed:  # a run after an executing run executes too
        changed = False
        executing = {p.spec.notebook for p in out if p.execute}
        for p in out:
            if not p.execute and any(a in executing for a in p.spec.after):
                p.execute = changed = True
    return out


# ----------------------------------------------------------------------------- signals
@contextlib.contextmanager
def sigint_held():
    """SIGINT blocked in this thread while worker processes are started: threads and processes started
    meanwhile inherit the block (a terminal's Ctrl-C then reaches only this process), and a Ctrl-C that
    comes meanwhile is delivered, not lost, when the block ends."""
    main = threading.current_thread() is threading.main_thread()
    # multiprocessing's resource tracker unblocks SIGINT in the thread that first starts it (bpo-33613):
    # start it first, so that no thread of the cluster unblocks SIGINT by starting it later
    resource_tracker.ensure_running()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if main else None
    try:
        yield
    finally:
        if main:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


# ----------------------------------------------------------------------------- the cluster
def local_gpu_count() -> int:
    try:
        from utils.device import gpu_count
    except ImportError:  # pragma: no cover (no torch)
        return 0
    return gpu_count()


@contextlib.contextmanager
def open_client(scheduler: str | None = None, workers: int | None = None, gpus: int = 0, dashboard=DEFAULT_DASHBOARD):
    """A Dask client: on ``scheduler`` (or ``$TSPECTRA_DASK_SCHEDULER``), else on an embedded LocalCluster
    with ``workers`` CPU workers (default: one per core) and ``gpus`` GPU workers (resource ``GPU=1``)."""
    import dask
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
    scratch = tempfile.mkdtemp(prefix="tspectra-dask-")
    cluster = client = None
    try:
        with sigint_held(), dask.config.set({"temporary-directory": scratch}):
            cluster = LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=dashboard,
                silence_logs=logging.ERROR,
                local_directory=scratch,
                env=env,
            )
            for j in range(gpus):
                opts = dict(
                    cluster.new_spec["options"], resources={"GPU": 1}, env={**env, "CUDA_VISIBLE_DEVICES": str(j)}
                )
                cluster.worker_spec[f"gpu-{j}"] = {"cls": cluster.new_spec["cls"], "options": opts}
            if gpus:
                cluster.scale(len(cluster.worker_spec))
            client = Client(cluster)
            if gpus:
                client.wait_for_workers(n + gpus, timeout=120)
        yield client
    finally:
        with sigint_held():
            if client is not None:
                client.close()
            if cluster is not None:
                cluster.close()
        shutil.rmtree(scratch, ignore_errors=True)


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
    signal: str = ""

    def counts(self) -> dict:
        out: dict = {}
        for r in self.rows:
            k = r["status"] if r.get("executed") or r["status"] != "complete" else f"{r['status']} (skipped)"
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
        "duration_s": rec.get("duration_s"),
    }


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
    max_runs: int | None = MAX_RUNS,
    signals: SignalFlag | None = None,
) -> SweepResult:
    """Run every run of ``sweep`` that is not already complete (module docstring). ``max_runs``: refuse a
    sweep of more runs (None: no limit). ``signals``: a flag already noting SIGINT / SIGTERM (the command
    line installs one first thing); by default one is installed for the sweep's duration. Raises
    :class:`SweepError` or a :class:`~utils.running.paths.RunRefused` (the sweep running already, a name
    clash, an unusable output root) before any run starts."""
    root = check_output_root(resolve_output_root(output_root))
    if max_runs is not None and len(sweep.runs) > max_runs:
        raise SweepError(
            f"sweep {sweep.name} has {len(sweep.runs):,} runs, more than the limit of {max_runs:,}: "
            f"pass --max-runs {len(sweep.runs)} (or --yes) to run them all"
        )
    own = signals is None
    signals = signals if signals is not None else SignalFlag().install()
    try:
        locks = []
        try:
            for nb in sweep.notebooks():
                locks.append(claim_group(root / nb / sweep.name, root, f"sweep {sweep.name}"))
            result = _run(sweep, root, scheduler, workers, gpus, dashboard, progress, signals)
        finally:
            for lock in locks:
                lock.release()
        result.index_csv = write_sweep_index(root, sweep, result.rows)
        if html_index:
            result.index_html = write_index_html(root)
    finally:
        if own:
            signals.restore()
    return result


def _run(sweep, root, scheduler, workers, gpus, dashboard, progress, signals) -> SweepResult:
    planned = plan(sweep, root)
    rows = [_initial_row(p, sweep) for p in planned]
    todo = [i for i, p in enumerate(planned) if p.execute]
    result = SweepResult(sweep, rows, root)
    write_sweep_index(root, sweep, rows)
    t_start = utc_now()
    remote = bool(scheduler or os.environ.get(SCHEDULER_ENV, "").strip())
    if todo and not signals.count:
        need_gpu = [planned[i].spec for i in todo if planned[i].spec.gpu]
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
            if not signals.count:
                print(f"sweep {sweep.name}: {len(todo)} run(s) to execute, {len(rows) - len(todo)} already complete; "
                      f"Dask dashboard: {result.dashboard or 'not available (install bokeh)'}", flush=True)  # fmt: skip
                _execute(client, sweep, planned, rows, todo, root, progress, signals)
    elif not todo:
        print(f"sweep {sweep.name}: all {len(rows)} run(s) already complete with the same parameters", flush=True)
    for i in todo:  # runs never submitted (a signal came before the cluster was up)
        if rows[i]["status"] in ("pending", "queued"):
            rows[i].update(
                status="cancelled", executed=False, error=f"sweep stopped by {signals.name()} before it started"
            )
    if not remote:
        settle_stages([p.final for p in planned])
    reconcile(planned, rows, t_start)
    result.interrupted = bool(signals.count)
    result.signal = signals.name()
    return result


def _execute(client, sweep, planned, rows, todo, root, progress, signals) -> None:
    """Submit the runs and collect their rows in batches until done, or until a signal stops the sweep."""
    from distributed import as_completed

    sweep_id = uuid.uuid4().hex[:12]
    futures, by_notebook = {}, {}
    for i in todo:  # in file order: the runs a run waits for are submitted before it
        p = planned[i]
        deps = [f for nb in p.spec.after for f in by_notebook.get(nb, [])]
        fut = client.submit(
            run_task,
            {"context": p.ctx.to_json(), "sweep_id": sweep_id},
            *deps,
            key=f"{p.spec.notebook}/{p.spec.key}-{sweep_id}",
            pure=False,
            resources={"GPU": 1} if p.spec.gpu else None,
        )
        futures[fut] = i
        by_notebook.setdefault(p.spec.notebook, []).append(fut)
        rows[i]["status"] = "queued"
    bar = progress_bar(total=len(futures), desc=f"sweep {sweep.name}", unit="run", disable=not progress)
    done_q = as_completed(list(futures))

    def take(batch) -> None:
        batch = [f for f in batch if f in futures]
        for fut in batch:
            i = futures.pop(fut)
            rows[i].update(_future_row(fut))
            bar.set_postfix_str(f"{rows[i]['notebook']}/{rows[i]['run_key']}: {rows[i]['status']}")
        if batch:
            bar.update(len(batch))
            write_sweep_index(root, sweep, rows)

    try:
        while futures and not signals.count:
            take(done_q.next_batch(block=False))
            time.sleep(POLL_S)
        if futures and signals.count:
            _interrupt(client, sweep_id, futures, rows, done_q, take, bar, signals)
    finally:
        bar.close()
        with contextlib.suppress(Exception):
            client.run(forget_stop, sweep_id)


def _interrupt(client, sweep_id, futures, rows, done_q, take, bar, signals) -> None:
    """Interrupt the runs in progress, cancel the rest in one call, wait for the interrupted ones."""
    bar.write(f"{signals.name()}: interrupting the runs in progress, cancelling the others "
              "(a second Ctrl-C stops at once)")  # fmt: skip
    with contextlib.suppress(Exception):
        client.run(set_stop, sweep_id)
    try:
        processing = {k for keys in client.processing().values() for k in keys}
    except Exception:
        processing = set()
    waiting = [f for f in futures if f.key not in processing and not f.done()]
    client.cancel(waiting)
    for f in waiting:
        rows[futures.pop(f)].update(status="cancelled", executed=False, error="sweep interrupted before it started")
    deadline = time.monotonic() + STOP_GRACE_S
    while futures and signals.count < 2 and time.monotonic() < deadline:
        take(done_q.next_batch(block=False))
        time.sleep(POLL_S)
    if futures:
        bar.write("stopping at once" if signals.count >= 2 else "runs did not stop in time: stopping at once")
        client.cancel(list(futures))
        for i in futures.values():
            rows[i].update(status="cancelled", executed=True, error="sweep stopped at once while this run was running")
        futures.clear()
    take([])


def settle_stages(finals: list[Path], timeout: float = 15.0) -> int:
    """Remove staging folders and lock files left by runs whose processes are gone, waiting for those whose
    notebook process still lives (a killed worker's run stops its kernel, within a few seconds, and removes
    its own staging folder); returns how many remain."""
    deadline = time.monotonic() + timeout
    while True:
        left = sum(not settle(f) for f in finals if f.parent.is_dir())
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.25)


def reconcile(planned: list[Planned], rows: list[dict], since: str) -> None:
    """Make every row say what the disk holds: a run that completed (or was kept as interrupted) during this
    sweep, after its row was written off as cancelled, is recorded as such."""
    for p, row in zip(planned, rows):
        if row["status"] in ("complete", "failed"):
            continue
        rec = stored_record(p.final)
        if rec and rec.get("status") == "complete" and is_done(p.ctx) and (rec.get("ended_utc") or "") >= since:
            row.update(status="complete", executed=True, path=str(p.final), error="")
            continue
        kept = p.final.with_name(f"{p.final.name}.interrupted")
        rec = stored_record(kept)
        if rec and (rec.get("ended_utc") or "") >= since:
            row.update(status="interrupted", executed=True, path=str(kept))
