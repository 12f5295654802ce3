"""The runner's child process: execute one notebook with papermill (see :mod:`utils.running.runner`).

    python -m utils.running.child '{"source": ..., "output": ..., "parameters": {...}, ...}'

Exit code 0 when every cell ran, 3 when a cell raised (details in ``.child-error.json`` next to the
output notebook), 4 for any other failure. When the runner that started it dies (a sweep worker
killed mid-run), the child stops the kernel, removes the staging folder and exits with code 5: a
killed runner leaves no half-written run behind.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..files import atomic_write_json
from .paths import PROJECT_ROOT
from .runner import CHILD_ERROR, KERNELSPEC, kill_kernel, remove_sockets, socket_prefix, to_ipynb

ORPHAN_EXIT = 5
POLL_S = 0.5


def exit_with_parent(stage: Path, poll_s: float = POLL_S) -> threading.Thread:
    """Watch the parent process; once it is gone, stop the kernel, remove ``stage`` and exit."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(poll_s)
        kill_kernel(stage)
        shutil.rmtree(stage, ignore_errors=True)
        os._exit(ORPHAN_EXIT)

    t = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    t.start()
    return t


def _ipc_kernel_manager(prefix: str):
    """A kernel manager that talks to the kernel over local IPC sockets (``<prefix>-<n>``), not TCP ports."""
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kw):
            kw.setdefault("transport", "ipc")
            kw.setdefault("ip", prefix)
            super().__init__(**kw)

    return IPCKernelManager


def main(argv=None) -> int:
    import papermill as pm

    args = json.loads((argv or sys.argv[1:])[0])
    src, out = Path(args["source"]), Path(args["output"])
    err_path = out.parent / CHILD_ERROR
    exit_with_parent(out.parent)
    sockets = args.get("sockets") or socket_prefix()
    try:
        with tempfile.TemporaryDirectory() as td:
            inp = Path(td) / (src.stem + ".ipynb")
            to_ipynb(src, inp)
            pm.execute_notebook(
                str(inp),
                str(out),
                parameters=args["parameters"],
                kernel_name=KERNELSPEC["name"],
                cwd=str(PROJECT_ROOT),
                progress_bar=bool(args.get("progress")),
                execution_timeout=args.get("timeout"),
                kernel_manager_class=_ipc_kernel_manager(sockets),
            )
    except pm.PapermillExecutionError as e:
        atomic_write_json(err_path, {"ename": e.ename, "evalue": str(e.evalue), "exec_count": e.exec_count})
        return 3
    except Exception as e:  # kernel died, bad notebook, ...
        atomic_write_json(err_path, {"ename": type(e).__name__, "evalue": str(e)})
        return 4
    finally:
        remove_sockets(sockets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
