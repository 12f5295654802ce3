"""Run a notebook headless with parameters into a staged run folder, or list its parameters.

About 430 lines because the supervisor, its signal handling and the staging swap must agree on
one sequence of states; the kernel-side child is :mod:`.child`.

    python -m utils.run_notebook notebooks/01_weight_ranks.py --run-name smollm2 -p layer_idx 12
    python -m utils.run_notebook 01 --list-params

The jupytext ``.py`` source is converted in memory and executed by papermill, in a child process,
with the parameters injected (typed by the notebook's own declarations, see
:mod:`utils.running.params`). Everything is written into a hidden staging folder next to the run's
final place and swapped in whole at the end. What a user finds afterwards:

* **complete**: ``<root>/<notebook>/<run name>/`` holds the executed notebook, ``report.md``,
  ``report.html``, the result files and ``run.json`` with ``"status": "complete"``; it replaced the
  previous run of that name as a whole (no file of the old run survives).
* **failed** (a cell raised): ``<run name>.failed/`` holds the executed notebook with the error
  visible in the failing cell, whatever files the run wrote, and ``run.json`` with
  ``"status": "failed"`` and the error. The last complete run of that name is untouched, unless
  ``--replace`` was given (then the failed run takes its place).
* **interrupted** (SIGINT / Ctrl-C or SIGTERM): the kernel is stopped, temp files are removed and
  the run is kept as ``<run name>.interrupted/`` (``"status": "interrupted"``; the executed
  notebook says where it stopped); the last complete run is untouched. Exit code 130.

No staging folder, temp file or kernel is left behind in any of the three cases, nor when the
runner itself is killed: the child notices that its parent is gone, stops the kernel and removes the
staging folder (:mod:`utils.running.child`).

A run of a *group* (``group=``, used by sweeps) lives in ``<root>/<notebook>/<group>/<run name>/``;
``stop=`` (an event) lets a caller outside the main thread interrupt a run as SIGINT would.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from ..files import stage_dir_for, swap_in
from .params import ParameterError, coerce_all, notebook_parameters
from .paths import PROJECT_ROOT, check_run_name, find_notebook, run_dir
from .paths import output_root as resolve_output_root
from .record import GROUP_ENV, STAGE_ENV, clean_stale_stages, utc_now

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (transformer-spectra)", "language": "python"}
CHILD_ERROR = ".child-error.json"
GRACE_S = 20.0


class NotebookFailed(RuntimeError):
    """A cell raised; ``.notebook`` is the executed notebook kept for inspection."""

    def __init__(self, message: str, notebook: Path, run_dir: Path):
        super().__init__(message)
        self.notebook = notebook
        self.run_dir = run_dir


class RunInterrupted(RuntimeError):
    """The run was stopped by SIGINT or SIGTERM; ``.run_dir`` is where it was kept."""

    def __init__(self, message: str, run_dir: Path):
        super().__init__(message)
        self.run_dir = run_dir


def to_ipynb(src: Path, dst: Path) -> None:
    """A jupytext ``.py`` (or ``.ipynb``) as an ``.ipynb`` with the project kernel and no pairing metadata."""
    import jupytext
    import nbformat

    nb = jupytext.read(src) if src.suffix == ".py" else nbformat.read(src, as_version=4)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata.pop("jupytext", None)
    nbformat.write(nb, dst)


def list_params(notebook) -> list[dict]:
    """The notebook's parameters: name, type, default and help text."""
    return [
        {"name": p.name, "type": p.type, "default": p.default, "help": p.help}
        for p in notebook_parameters(find_notebook(notebook))
    ]


# ----------------------------------------------------------------------------- supervising
class _Supervisor:
    """Signal handling for one run: on SIGINT / SIGTERM, or once ``stop`` is set, stop the child (SIGKILL
    on a second signal, or after ``GRACE_S``). Handlers stay installed until the run folder is final, so
    a second signal during the clean-up cannot kill the runner halfway (main thread only; elsewhere the
    caller uses ``stop``)."""

    def __init__(self, stop=None):
        self.proc: subprocess.Popen | None = None
        self.stop = stop
        self.signal: int | None = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False

    def _handler(self, signum, frame):
        first = self.signal is None
        self.signal = self.signal or signum
        self.send(signal.SIGTERM if first else signal.SIGKILL)

    def send(self, sig) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def wait(self, proc: subprocess.Popen) -> int:
        self.proc = proc
        if self.signal is not None:  # a signal came before the child existed
            self.send(signal.SIGTERM)
        deadline = None
        while True:
            try:
                return proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                if self.signal is None and self.stop is not None and self.stop.is_set():
                    self._handler(signal.SIGINT, None)
                if self.signal is not None:
                    deadline = deadline or time.monotonic() + GRACE_S
                    if time.monotonic() > deadline:
                        self.send(signal.SIGKILL)


def socket_prefix() -> str:
    """A path prefix for the kernel's IPC sockets of one run alone (runs side by side must not share one)."""
    return os.path.join(tempfile.gettempdir(), f"tspectra-kernel-{uuid.uuid4().hex[:12]}")


def remove_sockets(prefix: str) -> None:
    """Delete the kernel's IPC socket files ``<prefix>-<n>``."""
    for f in glob.glob(glob.escape(prefix) + "-*"):
        with contextlib.suppress(OSError):
            os.unlink(f)


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill_kernel(stage: Path) -> None:
    """Stop the kernel recorded in the staging folder if it still runs (after an interrupt or a failure)."""
    try:
        pid = int(json.loads((stage / "run.json").read_text())["pid"])
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, KeyError, TypeError):
        return
    if b"ipykernel" not in cmd:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + 3.0
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not process_alive(pid):
            return


def _mark_notebook(path: Path, status: str, signum: int | None) -> None:
    """Strip jupytext pairing metadata and record the status; after an interrupt, say where it stopped."""
    import nbformat

    if not path.is_file():
        return
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception:  # a notebook cut off mid-write by a kill: keep the file as it is
        return
    nb.metadata.pop("jupytext", None)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["transformer_spectra"] = {"status": status}
    if status == "interrupted":
        ran = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.get("execution_count")]
        for c in nb.cells:
            pm = c.metadata.get("papermill")
            if c.cell_type == "code" and not c.get("execution_count") and pm is not None:
                pm["status"] = "pending"
        name = signal.Signals(signum).name if signum else "a signal"
        where = f"after cell {ran[-1]}" if ran else "before the first cell ran"
        nb.cells.insert(
            0,
            nbformat.v4.new_markdown_cell(
                f"**Run interrupted by {name}** {where}: cells below that point did not run; "
                "this notebook and the files beside it are partial."
            ),
        )
    tmp = path.with_name(f".{path.name}.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)


def _finalize(
    stage: Path,
    final: Path,
    nb_name: str,
    run_name: str,
    params: dict,
    status: str,
    error: dict | None,
    started: str,
    replace: bool,
    signum: int | None,
    group: str | None = None,
) -> Path:
    rec_path = stage / "run.json"
    try:
        rec = json.loads(rec_path.read_text())
    except (OSError, ValueError):
        rec = {"notebook": nb_name, "run_name": run_name, "group": group, "params": params, "files": []}
    rec.update(
        status=status,
        started_utc=rec.get("started_utc") or started,
        ended_utc=utc_now(),
        error=error,
        runner_pid=os.getpid(),
    )
    if status == "interrupted":
        rec["signal"] = signal.Signals(signum).name if signum else None
    _mark_notebook(stage / f"{nb_name}.ipynb", status, signum)
    for p in stage.iterdir():  # temp files of atomic writes and of the child
        if p.name.startswith(".") and p.is_file():
            p.unlink(missing_ok=True)
    from ..files import atomic_write_json

    atomic_write_json(rec_path, rec)
    target = final if status == "complete" or replace else final.with_name(f"{run_name}.{status}")
    swap_in(stage, target)
    return target


def execute(
    notebook,
    run_name: str = "default",
    params: dict | None = None,
    output_root: str | None = None,
    replace: bool = False,
    timeout: int | None = None,
    progress: bool = False,
    group: str | None = None,
    stop=None,
) -> Path:
    """Execute a notebook with parameters into its run folder (module docstring); returns the folder.

    ``group``: the run goes to ``<root>/<notebook>/<group>/<run_name>/``. ``stop``: an object with
    ``is_set()`` (a ``threading.Event``); once set, the run is interrupted as by SIGINT.

    Raises ``ValueError`` (bad name or parameter) before anything is created, :class:`NotebookFailed`
    when a cell raised, :class:`RunInterrupted` after SIGINT / SIGTERM.
    """
    src = find_notebook(notebook)
    nb_name = src.stem
    typed = coerce_all(notebook_parameters(src), dict(params or {}))
    if "device" in typed:  # the same rule as start_run, before a kernel is started
        from ..device import resolve_device

        resolve_device(typed["device"])
    check_run_name(run_name)
    root = resolve_output_root(output_root)
    final = run_dir(root, nb_name, run_name, group)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_stages(final)
    stage = stage_dir_for(final)
    stage.mkdir()
    typed.update(run_name=run_name, output_root=str(root))
    args = {
        "source": str(src),
        "output": str(stage / f"{nb_name}.ipynb"),
        "parameters": typed,
        "timeout": timeout,
        "progress": progress,
        "sockets": socket_prefix(),
    }
    env = dict(os.environ, **{STAGE_ENV: str(stage), "TSPECTRA_HEADLESS": "1", "PYTHONUNBUFFERED": "1"})
    env.pop(GROUP_ENV, None)
    if group:
        env[GROUP_ENV] = group
    started = utc_now()
    with _Supervisor(stop) as sup:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "utils.running.child", json.dumps(args)],
                cwd=PROJECT_ROOT,
                env=env,
                start_new_session=True,
            )
            rc = sup.wait(proc)
        except BaseException:  # the runner itself failed: leave nothing behind
            sup.send(signal.SIGKILL)
            kill_kernel(stage)
            shutil.rmtree(stage, ignore_errors=True)
            raise
        error = None
        if sup.signal is not None:
            status = "interrupted"
        elif rc == 0:
            status = "complete"
        else:
            status = "failed"
            try:
                error = json.loads((stage / CHILD_ERROR).read_text())
            except (OSError, ValueError):
                error = {"ename": "ExecutionError", "evalue": f"the notebook process exited with code {rc}"}
        if status != "complete":
            kill_kernel(stage)
        remove_sockets(args["sockets"])  # the kernel's IPC sockets, however it ended
        target = _finalize(stage, final, nb_name, run_name, typed, status, error, started, replace, sup.signal, group)
    nb_path = target / f"{nb_name}.ipynb"
    if status == "interrupted":
        raise RunInterrupted(
            f"{nb_name}: interrupted by {signal.Signals(sup.signal).name}; partial run kept in {target}", target
        )
    if status == "failed":
        where = f"cell {error.get('exec_count')} raised " if error.get("exec_count") else ""
        raise NotebookFailed(
            f"{nb_name}: {where}{error.get('ename')}: {error.get('evalue')}\n"
            f"executed notebook kept with the error visible: {nb_path}",
            nb_path,
            target,
        )
    return target


# ----------------------------------------------------------------------------- command line
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m utils.run_notebook", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("notebook", help="notebooks/NN_name.py, NN_name or NN")
    ap.add_argument("--run-name", default="default", help="results go to <output-root>/<notebook>/<run-name>/")
    ap.add_argument(
        "-p",
        "--param",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="set a parameter (repeatable); the value is converted to the parameter's declared type",
    )
    ap.add_argument("--model", default=None, help="set the `model` parameter, for notebooks that have one")
    ap.add_argument(
        "--output-root",
        default=None,
        help="results root (default: $TSPECTRA_OUTPUT or <project>/output; relative paths are "
        "taken from the project root)",
    )
    ap.add_argument(
        "--replace",
        action="store_true",
        help="let a failed or interrupted run replace the last complete run of the same name",
    )
    ap.add_argument("--list-params", action="store_true", help="print the notebook's parameters and exit")
    ap.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    a = ap.parse_args(argv)
    # while a run is active its supervisor handles SIGINT / SIGTERM; around it, the command line
    # absorbs them (noting the first), so a second signal during the clean-up cannot kill it halfway
    got = []
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda signum, frame: got.append(signum))
    try:
        if a.list_params:
            from .report import md_table

            rows = [[p["name"], p["type"], repr(p["default"]), p["help"]] for p in list_params(a.notebook)]
            print(md_table(["parameter", "type", "default", "help"], rows))
            return 0
        params = dict(a.param)
        if a.model is not None:
            if any(p["name"] == "model" for p in list_params(a.notebook)):
                params.setdefault("model", a.model)
            else:
                print(
                    f"note: {find_notebook(a.notebook).stem} takes no `model` parameter; --model ignored",
                    file=sys.stderr,
                )
        run = execute(
            a.notebook, a.run_name, params, a.output_root, replace=a.replace, timeout=a.timeout, progress=True
        )
    except NotebookFailed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        _write_index(a.output_root)
        return 1
    except RunInterrupted as e:
        for s in (signal.SIGINT, signal.SIGTERM):  # Python resets handlers at exit, but keeps SIG_IGN
            signal.signal(s, signal.SIG_IGN)
        print(f"INTERRUPTED: {e}", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, ParameterError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _write_index(a.output_root)
    if got:
        print(f"INTERRUPTED by {signal.Signals(got[0]).name} before or after the run", file=sys.stderr)
        return 130
    print(f"done: {run}")
    return 0


def _write_index(root) -> None:
    """Refresh ``<output root>/index.html`` (every run, :mod:`utils.running.index`); never fails the run."""
    from .index import write_index_html

    try:
        write_index_html(resolve_output_root(root))
    except OSError as e:
        print(f"note: could not update the index of runs ({e})", file=sys.stderr)
