"""The runner's child process: execute one notebook with papermill (see :mod:`utils.running.runner`).

    python -m utils.running.child '{"source": ..., "output": ..., "parameters": {...}, "kernel_dir": ...}'

The run's context reaches the kernel through the environment the runner set (``TSPECTRA_RUN_CONTEXT``).
The kernel talks to papermill over IPC sockets in ``kernel_dir``, a folder of this run alone, which
also holds the kernel's connection file. Exit code 0 when every cell ran, 3 when a cell raised
(details in ``.child-error.json`` next to the output notebook), 4 for any other failure. When the
runner that started it dies (a sweep worker killed mid-run), the child stops the kernel, removes the
staging folder and the kernel folder, and exits with code 5: a killed runner leaves no half-written run
and no socket behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import papermill as pm
from jupyter_client.manager import AsyncKernelManager

from .claim import OWNER
from .paths import PROJECT_ROOT
from .runner import CHILD_ERROR, KERNELSPEC, kill_kernel, to_ipynb

ORPHAN_EXIT = 5
POLL_S = 0.5
INPUT = ".input.ipynb"  # the notebook as papermill reads it, in the staging folder (removed with it)


def exit_with_parent(stage: Path, kernel_dir: Path, poll_s: float = POLL_S) -> threading.Thread:
    """Watch the parent process; once it is gone, stop the kernel, remove ``stage`` and ``kernel_dir``, exit."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(poll_s)
        kill_kernel(stage, kernel_dir)
        shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(kernel_dir, ignore_errors=True)
        os._exit(ORPHAN_EXIT)

    t = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    t.start()
    return t


def _ipc_kernel_manager(kernel_dir: Path):
    """A kernel manager whose kernel listens on IPC sockets ``<kernel_dir>/kernel-<n>``, not TCP ports, and
    writes its connection file into ``kernel_dir``."""

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kw):
            kw.setdefault("transport", "ipc")
            kw.setdefault("ip", str(kernel_dir / "kernel"))
            kw.setdefault("connection_file", str(kernel_dir / "kernel.json"))
            super().__init__(**kw)

    return IPCKernelManager


def _write_in(folder: Path, name: str, obj) -> None:
    """Write a JSON file into ``folder`` if it still exists (never re-creating a staging folder that a clean-up
    has removed meanwhile)."""
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(obj))
        os.replace(tmp, folder / name)
    except FileNotFoundError:
        pass


def record_child(stage: Path) -> None:
    """Add this process to the staging folder's owner record: the stage is in use while it runs, even
    after its runner died (:func:`utils.running.claim.clean_stale_stages`)."""
    try:
        owner = json.loads((stage / OWNER).read_text())
    except (OSError, ValueError):
        owner = {}
    _write_in(stage, OWNER, {**owner, "child": os.getpid()})


def main(argv=None) -> int:
    # a Dask worker may have started this process with SIGINT blocked; the kernel must be interruptible
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    args = json.loads((argv or sys.argv[1:])[0])
    src, out, kdir = Path(args["source"]), Path(args["output"]), Path(args["kernel_dir"])
    stage = out.parent
    record_child(stage)
    exit_with_parent(stage, kdir)
    try:
        inp = stage / INPUT
        to_ipynb(src, inp)
        pm.execute_notebook(
            str(inp),
            str(out),
            parameters=args["parameters"],
            kernel_name=KERNELSPEC["name"],
            cwd=str(PROJECT_ROOT),
            progress_bar=bool(args.get("progress")),
            execution_timeout=args.get("timeout"),
            kernel_manager_class=_ipc_kernel_manager(kdir),
            **({"stdout_file": sys.stdout, "stderr_file": sys.stderr} if args.get("log_output") else {}),
        )
    except pm.PapermillExecutionError as e:
        _write_in(stage, CHILD_ERROR, {"ename": e.ename, "evalue": str(e.evalue), "exec_count": e.exec_count})
        return 3
    except Exception as e:  # kernel died, bad notebook, the staging folder removed under it, ...
        _write_in(stage, CHILD_ERROR, {"ename": type(e).__name__, "evalue": str(e)})
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
