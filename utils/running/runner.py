"""Run a notebook headless with parameters into a staged run folder, or list its parameters.

About 450 lines because the supervisor, its signal handling and the staging swap must agree on
one sequence of states; the kernel-side child is :mod:`.child`, the checks are :mod:`.context`,
the name's lock and staging folder :mod:`.claim`.

    python -m utils.run_notebook notebooks/01_weight_ranks.py --run-name smollm2 -p layer_idx 12
    python -m utils.run_notebook 01 --list-params

The run's context (:class:`~utils.running.context.RunContext`: notebook, run name, output root, typed
and checked parameters) is made and checked first, before anything is created; then the run's name
is claimed (a lock: a second run of the same name is refused with the first one's pid, and a run
never takes a sweep's name) and a hidden staging folder is made next to the run's final place. The
jupytext ``.py`` source is converted and executed by papermill, in a child process, with the typed
parameters injected and the context handed to the kernel whole; everything is written into the
staging folder and swapped in at the end. What a user finds afterwards:

* **complete**: ``<root>/<notebook>/<run name>/`` holds the executed notebook, ``report.md``,
  ``report.html``, the result files and ``run.json`` with ``"status": "complete"``; it replaced the
  previous run of that name as a whole (no file of the old run survives).
* **failed** (a cell raised): ``<run name>.failed/`` holds the executed notebook with the error
  visible in the failing cell, whatever files the run wrote, and ``run.json`` with
  ``"status": "failed"`` and the error. The last complete run of that name is untouched, unless
  ``--replace`` was given (then the failed run takes its place).
* **interrupted** (SIGINT / Ctrl-C or SIGTERM): the kernel is stopped, temp files are removed and
  the run is kept as ``<run name>.interrupted/`` (``"status": "interrupted"``; the executed
  notebook says where it stopped); the last complete run is untouched. Exit code 130. A signal
  that comes before the notebook's first cell ran stops the run with nothing kept.

No staging folder, temp file, kernel socket or kernel is left behind in any of these cases, nor when
the runner itself is killed: the child notices that its parent is gone, stops the kernel and removes
the staging folder and the kernel's socket folder (:mod:`utils.running.child`); the next runner
removes socket folders of runners that died with their child.

A run of a *group* (``group=``, used by sweeps) lives in ``<root>/<notebook>/<group>/<run name>/``;
``stop=`` (an event) lets a caller outside the main thread interrupt a run as SIGINT would.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import jupytext
import nbformat

from ..files import atomic_write_json, swap_in
from ..markdown import md_table
from ..progress import PROGRESS_FILE
from ..provenance import git_state, seconds_between, utc_now
from .claim import RunRefused, claim_run, process_alive
from .context import CONTEXT_ENV, RunContext, make_context
from .index import write_index_html
from .params import ParameterError, check_params, notebook_parameters
from .paths import PROJECT_ROOT, find_notebook
from .paths import output_root as resolve_output_root
from .signals import SignalFlag

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (transformer-spectra)", "language": "python"}
CHILD_ERROR = ".child-error.json"
KERNEL_DIR_PREFIX = "tspectra-kernel-"
SOCKET_PATH_MAX = 100  # a Unix socket address holds 108 bytes on Linux (104 on macOS)
GRACE_S = 20.0
PROGRESS_ENV = "TSPECTRA_PROGRESS_INTERVAL"  # seconds between two progress lines in the terminal (default 5)


class _ProgressEcho:
    """Print the running cell's progress bar (the kernel's ``.progress`` line, :mod:`utils.progress`) in the
    terminal, one line at most every few seconds, and only when it changed."""

    def __init__(self, stage: Path, label: str):
        self.path = stage / PROGRESS_FILE
        self.label = label
        try:
            self.every = float(os.environ.get(PROGRESS_ENV, "") or 5.0)
        except ValueError:
            self.every = 5.0
        self.last, self.t = "", 0.0

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self.t < self.every:
            return
        try:
            line = self.path.read_text().strip()
        except OSError:
            return
        if line and line != self.last:
            self.last, self.t = line, now
            # papermill's cell counter redraws its line with a carriage return: clear it (a terminal) or end it
            lead = "\r\033[K" if sys.stderr.isatty() else "\n"
            print(f"{lead}[{self.label}] {line}", file=sys.stderr, flush=True)


class NotebookFailed(RuntimeError):
    """A cell raised; ``.notebook`` is the executed notebook kept for inspection."""

    def __init__(self, message: str, notebook: Path, run_dir: Path):
        super().__init__(message)
        self.notebook = notebook
        self.run_dir = run_dir


class RunInterrupted(RuntimeError):
    """The run was stopped by SIGINT or SIGTERM; ``.run_dir`` is where it was kept (None: nothing kept)."""

    def __init__(self, message: str, run_dir: Path | None):
        super().__init__(message)
        self.run_dir = run_dir


def to_ipynb(src: Path, dst: Path) -> None:
    """A jupytext ``.py`` (or ``.ipynb``) as an ``.ipynb`` with the project kernel and no pairing metadata."""
    nb = jupytext.read(src) if src.suffix == ".py" else nbformat.read(src, as_version=4)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata.pop("jupytext", None)
    nbformat.write(nb, dst)


def list_params(notebook) -> list[dict]:
    """The notebook's parameters: name, type, default and help text (its rule included)."""
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

    def stopped(self) -> bool:
        """True once a signal came or ``stop`` was set (the run must not start, or must stop)."""
        if self.signal is None and self.stop is not None and self.stop.is_set():
            self.signal = getattr(self.stop, "signum", None) or signal.SIGINT
        return self.signal is not None

    def send(self, sig) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def wait(self, proc: subprocess.Popen, tick=None) -> int:
        self.proc = proc
        deadline = None
        while True:
            if tick is not None:
                tick()
            if self.stopped() and deadline is None:
                self.send(signal.SIGTERM)
                deadline = time.monotonic() + GRACE_S
            try:
                return proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                if deadline is not None and time.monotonic() > deadline:
                    self.send(signal.SIGKILL)


# ----------------------------------------------------------------------------- the kernel's sockets
def _kernel_bases() -> list[str]:
    return list(dict.fromkeys([tempfile.gettempdir(), "/tmp"]))


def kernel_dir() -> Path:
    """A private folder for one kernel's IPC sockets and connection file, named after this runner's pid: in
    the temp folder, or in /tmp when the temp folder's path is too long for a socket address."""
    for base in _kernel_bases():
        if len(base) + len(KERNEL_DIR_PREFIX) + 24 + len("/kernel-99") <= SOCKET_PATH_MAX:
            return Path(tempfile.mkdtemp(prefix=f"{KERNEL_DIR_PREFIX}{os.getpid()}-", dir=base))
    raise OSError("no temp folder with a path short enough for the kernel's sockets: set TMPDIR=/tmp")


def remove_stale_kernel_dirs() -> None:
    """Remove the kernel folders of runners that no longer run (killed together with their child)."""
    for base in _kernel_bases():
        for d in Path(base).glob(f"{KERNEL_DIR_PREFIX}*"):
            m = re.match(rf"{KERNEL_DIR_PREFIX}(\d+)-", d.name)
            if m and d.is_dir() and not process_alive(int(m.group(1))):
                shutil.rmtree(d, ignore_errors=True)


def _kernel_pids(stage: Path, kernel_dir: Path | None) -> set[int]:
    """The run's kernel: the pid its record names, and any process started with a connection file in the
    run's kernel folder (a kernel that has not opened its record yet)."""
    pids = set()
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        pid = int(json.loads((stage / "run.json").read_text())["pid"])
        if b"ipykernel" in Path(f"/proc/{pid}/cmdline").read_bytes():
            pids.add(pid)
    if kernel_dir is not None:
        key = str(kernel_dir).encode()
        for proc in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError, ValueError):
                if key in proc.joinpath("cmdline").read_bytes() and int(proc.name) != os.getpid():
                    pids.add(int(proc.name))
    return pids


def kill_kernel(stage: Path, kernel_dir: Path | None = None) -> None:
    """Stop the run's kernel if it still runs (after an interrupt, a failure, or the runner's death), before
    its staging folder is removed: a kernel left running would write into it again."""
    for pid in _kernel_pids(stage, kernel_dir):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            deadline = time.monotonic() + 3.0
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            while process_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not process_alive(pid):
                break


def _mark_notebook(path: Path, status: str, signum: int | None) -> None:
    """Strip jupytext pairing metadata and record the status; after an interrupt, say where it stopped."""

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


def _finalize(ctx: RunContext, status: str, error: dict | None, started: str, replace: bool, signum) -> Path:
    """Record the outcome in ``run.json``, mark the notebook, drop temp files and swap the stage into place."""
    stage = Path(ctx.stage)
    rec_path = stage / "run.json"
    try:
        rec = json.loads(rec_path.read_text())
    except (OSError, ValueError):
        rec = {"notebook": ctx.notebook, "run_name": ctx.run_name, "group": ctx.group, "params": ctx.params}
        rec["files"] = []
    # one duration everywhere (run.json, index.html, index.csv): from the runner's start to the run's end
    rec.update(status=status, started_utc=started, error=error, runner_pid=os.getpid())
    if status != "complete" or not rec.get("ended_utc"):  # a complete run's kernel recorded its own end
        rec["ended_utc"] = utc_now("milliseconds")
    rec["duration_s"] = seconds_between(rec["started_utc"], rec["ended_utc"])
    rec.setdefault("git", git_state())
    if status == "interrupted":
        rec["signal"] = signal.Signals(signum).name if signum else None
    _mark_notebook(stage / f"{ctx.notebook}.ipynb", status, signum)
    for p in stage.iterdir():  # temp files of atomic writes, of the child and of the claim
        if p.name.startswith(".") and p.is_file():
            p.unlink(missing_ok=True)
    atomic_write_json(rec_path, rec)
    final = ctx.final
    target = final if status == "complete" or replace else final.with_name(f"{ctx.run_name}.{status}")
    swap_in(stage, target, keep_missing=target != final)  # an earlier failed attempt's files are not lost
    return target


def execute(
    notebook,
    run_name: str | None = None,
    params: dict | None = None,
    output_root: str | None = None,
    replace: bool = False,
    timeout: int | None = None,
    progress: bool = False,
    group: str | None = None,
    stop=None,
    log_output: bool = False,
) -> Path:
    """Execute a notebook with parameters into its run folder (module docstring); returns the folder.

    ``run_name`` / ``output_root``: as ``--run-name`` / ``--output-root``, or the parameters of those
    names (two different values are refused); default ``default`` and ``output``. ``group``: the run
    goes to ``<root>/<notebook>/<group>/<run_name>/``. ``log_output``: stream the cells' outputs to this
    process's stdout / stderr as they come (papermill's ``--log-output``). ``stop``: an object with ``is_set()`` (a
    ``threading.Event``); once set, the run is interrupted as by SIGINT.

    Raises ``ValueError`` (:class:`~utils.running.params.ParameterError`, a bad name, an unusable output
    root, the name in use: :class:`~utils.running.paths.RunRefused`) before anything is created,
    :class:`NotebookFailed` when a cell raised, :class:`RunInterrupted` after SIGINT / SIGTERM.
    """
    ctx = make_context(notebook, params, run_name, output_root, group, here=False)  # the machine: in execute_context
    return execute_context(ctx, replace=replace, timeout=timeout, progress=progress, stop=stop, log_output=log_output)


def execute_context(
    ctx: RunContext, replace: bool = False, timeout=None, progress: bool = False, stop=None, log_output: bool = False
) -> Path:
    """:func:`execute` for a context already made (a sweep makes them when it plans its runs). What depends on
    the machine (a visible GPU, the model's files) is checked again here, where the notebook runs."""
    check_params(notebook_parameters(ctx.source), ctx.params, here=True)
    remove_stale_kernel_dirs()
    if stop is not None and stop.is_set():
        raise RunInterrupted(f"{ctx.label}: stopped before it started; nothing was written", None)
    kdir = kernel_dir()
    try:
        claim = claim_run(ctx.final, Path(ctx.root), f"run {ctx.label}", group=ctx.group)
    except BaseException:
        shutil.rmtree(kdir, ignore_errors=True)
        raise
    ctx = ctx.with_stage(claim.stage)
    stage = claim.stage
    args = {
        "source": ctx.source,
        "output": str(stage / f"{ctx.notebook}.ipynb"),
        "parameters": ctx.params,
        "timeout": timeout,
        "progress": progress,
        "log_output": log_output,
        "kernel_dir": str(kdir),
    }
    env = dict(os.environ, **{CONTEXT_ENV: ctx.to_json(), "TSPECTRA_HEADLESS": "1", "PYTHONUNBUFFERED": "1"})
    started = utc_now("milliseconds")
    try:
        with _Supervisor(stop) as sup:
            try:
                if sup.stopped():
                    rc = None
                else:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "utils.running.child", json.dumps(args)],
                        cwd=PROJECT_ROOT,
                        env=env,
                        start_new_session=True,
                    )
                    rc = sup.wait(proc, _ProgressEcho(stage, ctx.label) if progress else None)
            except BaseException:  # the runner itself failed: leave nothing behind
                sup.send(signal.SIGKILL)
                kill_kernel(stage, kdir)
                shutil.rmtree(stage, ignore_errors=True)
                raise
            error = None
            if rc == 0:  # the notebook ran to its end (a signal arriving after that changes only the exit code)
                status = "complete"
            elif sup.signal is not None:
                status = "interrupted"
            else:
                status = "failed"
                try:
                    error = json.loads((stage / CHILD_ERROR).read_text())
                except (OSError, ValueError):
                    error = {"ename": "ExecutionError", "evalue": f"the notebook process exited with code {rc}"}
            if status != "complete":
                kill_kernel(stage, kdir)
            if status == "interrupted" and not (stage / "run.json").is_file():  # no cell of the notebook ran
                shutil.rmtree(stage, ignore_errors=True)
                name = signal.Signals(sup.signal).name
                raise RunInterrupted(
                    f"{ctx.label}: interrupted by {name} before the notebook started; nothing kept", None
                )
            target = _finalize(ctx, status, error, started, replace, sup.signal)
    finally:
        shutil.rmtree(kdir, ignore_errors=True)  # the kernel's IPC sockets, however it ended
        claim.release()
    nb_path = target / f"{ctx.notebook}.ipynb"
    if status == "interrupted":
        raise RunInterrupted(
            f"{ctx.notebook}: interrupted by {signal.Signals(sup.signal).name}; partial run kept in {target}", target
        )
    if status == "failed":
        where = f"cell {error.get('exec_count')} raised " if error.get("exec_count") else ""
        raise NotebookFailed(
            f"{ctx.notebook}: {where}{error.get('ename')}: {error.get('evalue')}\n"
            f"executed notebook kept with the error visible: {nb_path}",
            nb_path,
            target,
        )
    return target


# ----------------------------------------------------------------------------- command line
def _option(params: dict, name: str, value, option: str) -> None:
    """Put an option's value into the parameters; a different value given with -p is refused."""
    if value is None:
        return
    if name in params and str(params[name]) != str(value):
        raise ParameterError(
            f"{option} {value!r} and -p {name} {params[name]!r} disagree: give the {name.replace('_', ' ')} once"
        )
    params[name] = value


USAGE = """\
Run a notebook headless with parameters; its results go to <output root>/<notebook>/<run name>/.

examples:
  python -m utils.run_notebook 01 --model smollm2
  python -m utils.run_notebook notebooks/02_attention_kernels.py --run-name l5 -p layer_idx 5
  python -m utils.run_notebook 02 -f params.yaml -y 'head_idx: 3' --log-output
  python -m utils.run_notebook 01 --list-params

Parameters are set as with papermill: -f reads a YAML file, -y a YAML string, -p one name and value;
a later source overrides an earlier one (-f, then -y, then -p). Each value is converted to the type
the notebook declares and checked against its rule before anything starts (--list-params shows them).
A relative path in a parameter is taken from the project root, whoever runs the notebook.

What you find afterwards:
  <run name>/              the complete run: report.html, report.md, result files, run.json and
                           the executed notebook; it replaces the previous run of that name
  <run name>.failed/       a cell raised: the executed notebook with the error, run.json with it;
                           the last complete run is kept (unless --replace)
  <run name>.interrupted/  Ctrl-C or SIGTERM: what the run wrote until then
  <output root>/index.html every run, newest first (rewritten after each run)

While a cell runs, its progress bar (current item, done/total, time left) is printed here every
few seconds. Exit codes: 0 complete, 1 a cell failed, 2 refused before starting, 130 interrupted.
"""


def _yaml_mapping(text: str, where: str) -> dict:
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ParameterError(f"{where} is not valid YAML ({e}); write one 'name: value' per line") from None
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ParameterError(f"{where} must be a YAML mapping of parameter names to values, e.g. 'layer_idx: 5'")
    return value


def gather_params(files, yamls, pairs) -> dict:
    """The parameters given on the command line, papermill's way: each ``-f`` file, then each ``-y`` string,
    then ``-p`` pairs; a later source overrides an earlier one; one name given twice by ``-p`` is refused."""
    params: dict = {}
    for f in files:
        try:
            text = Path(f).read_text()
        except OSError as e:
            raise ParameterError(f"cannot read the parameters file {f} ({e.strerror or e}); check the path") from None
        params.update(_yaml_mapping(text, f"the parameters file {f}"))
    for y in yamls:
        params.update(_yaml_mapping(y, f"-y {y!r}"))
    seen: dict = {}
    for name, value in pairs:
        if name in seen and seen[name] != value:
            raise ParameterError(f"-p {name} is given twice ({seen[name]!r} and {value!r}); give it once")
        seen[name] = params[name] = value
    return params


def main(argv=None, stop: SignalFlag | None = None) -> int:
    # Until a run's supervisor takes over (and again after it), a SIGINT / SIGTERM is noted by ``stop``: a
    # signal before the run starts stops it from starting, and one during the clean-up cannot kill it halfway.
    stop = stop or SignalFlag().install()
    ap = argparse.ArgumentParser(
        prog="python -m utils.run_notebook", description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("notebook", help="notebooks/NN_name.py, NN_name or NN")
    ap.add_argument("--run-name", default=None, help="name of the run folder (default: default)")
    ap.add_argument(
        "-p",
        "--parameters",
        "--param",
        dest="param",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="set a parameter (repeatable)",
    )
    ap.add_argument(
        "-f",
        "--parameters-file",
        dest="files",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML file of parameters",
    )
    ap.add_argument(
        "-y",
        "--parameters-yaml",
        dest="yamls",
        action="append",
        default=[],
        metavar="YAML",
        help="YAML string of parameters",
    )
    ap.add_argument("--model", default=None, help="set the model parameter (for notebooks that have one)")
    ap.add_argument(
        "--output-root",
        default=None,
        help="where results go (default: $TSPECTRA_OUTPUT, else output/ in the project; relative to the project root)",
    )
    ap.add_argument(
        "--log-output", action="store_true", help="also print every cell's output here as it runs (as papermill does)"
    )
    ap.add_argument(
        "--replace",
        action="store_true",
        help="let a failed or interrupted run replace the last complete run of the same name",
    )
    ap.add_argument("--list-params", action="store_true", help="print the notebook's parameters and exit")
    ap.add_argument("--timeout", type=int, default=None, help="stop a cell that runs longer than this many seconds")
    a = ap.parse_args(argv)
    params: dict = {}
    try:
        if a.list_params:
            rows = [[p["name"], p["type"], repr(p["default"]), p["help"]] for p in list_params(a.notebook)]
            print(md_table(["parameter", "type", "default", "help {rule}"], rows))
            return 0
        params = gather_params(a.files, a.yamls, a.param)
        _option(params, "run_name", a.run_name, "--run-name")
        _option(params, "output_root", a.output_root, "--output-root")
        if a.model is not None:
            if any(p["name"] == "model" for p in list_params(a.notebook)):
                _option(params, "model", a.model, "--model")
            else:
                print(
                    f"note: {find_notebook(a.notebook).stem} takes no `model` parameter; --model ignored",
                    file=sys.stderr,
                )
        run = execute(
            a.notebook,
            params=params,
            replace=a.replace,
            timeout=a.timeout,
            progress=True,
            stop=stop,
            log_output=a.log_output,
        )
    except NotebookFailed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        _write_index(params.get("output_root"))
        return 1
    except RunInterrupted as e:
        for s in (signal.SIGINT, signal.SIGTERM):  # Python resets handlers at exit, but keeps SIG_IGN
            signal.signal(s, signal.SIG_IGN)
        print(f"INTERRUPTED: {e}", file=sys.stderr)
        if e.run_dir is not None:
            _write_index(params.get("output_root"))
        return 130
    except (FileNotFoundError, ValueError, RunRefused) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _write_index(params.get("output_root"))
    if stop.is_set():
        print(f"INTERRUPTED by {stop.name()} after the run completed", file=sys.stderr)
        return 130
    print(f"done: {run}")
    return 0


def _write_index(root) -> None:
    """Refresh ``<output root>/index.html`` (every run, :mod:`utils.running.index`); never fails the run."""
    try:
        write_index_html(resolve_output_root(root))
    except OSError as e:
        print(f"note: could not update the index of runs ({e})", file=sys.stderr)
