"""Progress bars that suit where the code runs.

* In JupyterLab (a kernel with a live front end): tqdm's notebook widget, with the current item
  and an ETA (``ipywidgets``, in the ``lab`` extra).
* Headless, under papermill, ``jupytext --execute`` or the project's runner: a plain text bar
  written as a few throttled lines to stdout (one every ``HEADLESS_INTERVAL_S`` seconds and a
  final one), never dozens of stderr blocks in the executed notebook.
* In a terminal: tqdm's usual bar.

Headless is detected from ``TSPECTRA_HEADLESS=1`` (the runner sets it) or from the parent process
of the kernel (papermill, nbclient, nbconvert, jupytext).
"""

from __future__ import annotations

import functools
import os
import sys

HEADLESS_INTERVAL_S = 30.0
_HEADLESS_PARENTS = ("papermill", "nbclient", "nbconvert", "jupytext", "utils.run_notebook", "utils.sweep")


def _parent_cmdline() -> str:
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


@functools.lru_cache(maxsize=1)
def _in_kernel() -> bool:
    if "IPython" not in sys.modules:  # a kernel has imported IPython before any user code runs
        return False
    try:
        from IPython import get_ipython

        ip = get_ipython()
    except ImportError:
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def headless() -> bool:
    """True when no live front end will show a progress widget (see module docstring)."""
    env = os.environ.get("TSPECTRA_HEADLESS", "").strip().lower()
    if env in ("1", "true", "yes"):
        return True
    if env in ("0", "false", "no"):
        return False
    return _in_kernel() and any(p in _parent_cmdline() for p in _HEADLESS_PARENTS)


def quiet_libraries() -> None:
    """Headless: no progress bars from transformers / huggingface_hub (dozens of stderr blocks in an
    executed notebook) and no warning that the notebook widget is missing."""
    if not headless():
        return
    import warnings

    warnings.filterwarnings("ignore", message="IProgress not found")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


class _LineWriter:
    """A file for tqdm that turns carriage-return redraws into whole lines."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, s: str) -> None:
        s = s.replace("\r", "").strip("\n")
        if s.strip():
            self.stream.write(s + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable=None, desc: str | None = None, total: int | None = None, **kw):
    """A tqdm progress bar for ``iterable`` suited to the environment (module docstring).

    Keyword arguments go to tqdm (``unit``, ``disable``, ``leave``, ...). Use
    ``bar.set_postfix_str(item)`` to show the current item.
    """
    if headless():
        from tqdm import tqdm

        kw.setdefault("mininterval", HEADLESS_INTERVAL_S)
        kw.setdefault("maxinterval", HEADLESS_INTERVAL_S * 4)
        return tqdm(iterable, desc=desc, total=total, file=_LineWriter(sys.stdout), ascii=True, ncols=100, **kw)
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, **kw)
