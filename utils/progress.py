"""Progress bars that suit where the code runs.

* In JupyterLab (a kernel with a live front end): tqdm's notebook widget, with the current item
  and an ETA (``ipywidgets``, in the ``lab`` extra).
* Headless, under papermill, ``jupytext --execute`` or the project's runner: a plain text bar
  written as a few throttled lines to stdout (one every ``HEADLESS_INTERVAL_S`` seconds and a
  final one), never dozens of stderr blocks in the executed notebook.
* In a terminal: tqdm's usual bar.

Headless is detected from ``TSPECTRA_HEADLESS=1`` (the runner sets it) or from the parent process
of the kernel (papermill, nbclient, nbconvert, jupytext).

Under the runner, a headless bar also keeps one line of state, ``<staging folder>/.progress``
(:data:`PROGRESS_FILE`, rewritten at most every :data:`BEACON_INTERVAL_S` seconds), which the runner
prints in the terminal while the cell runs: ``weight diff 87/211 · blk.14.ffn_up · ETA 0:42``
(description, done/total or percent, the current item, the time left). Papermill's own bar only
counts cells, and sits still for the minutes a long cell takes.
"""

from __future__ import annotations

import functools
import os
import sys

HEADLESS_INTERVAL_S = 30.0
BEACON_INTERVAL_S = 1.0
PROGRESS_FILE = ".progress"
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


def _beacon_path() -> str | None:
    """``<staging folder>/.progress`` when this kernel was started by the runner (its context names the stage)."""
    import json

    text = os.environ.get("TSPECTRA_RUN_CONTEXT", "").strip()
    try:
        stage = json.loads(text).get("stage") if text else None
    except ValueError:
        return None
    return os.path.join(stage, PROGRESS_FILE) if stage and os.path.isdir(stage) else None


def progress_line(bar) -> str:
    """One line of a bar's state: ``desc n/total · current item · ETA m:ss`` (percent for a bar with its own
    format, whose units are not items)."""
    from tqdm import tqdm

    d = bar.format_dict
    n, total, elapsed = d["n"], d["total"], d["elapsed"]
    desc = str(d.get("prefix") or "").strip()
    if total and d.get("bar_format"):  # its own units (bytes, costs): the description says what is done
        line = " · ".join(p for p in (desc, f"{100 * n / total:.0f}%") if p)
    else:
        line = " ".join(p for p in (desc, f"{n}/{total}" if total else (str(n) if n else "")) if p)
    if d.get("postfix"):
        line += f" · {str(d['postfix']).lstrip(', ')}"
    if total and n and elapsed > 0:
        line += f" · ETA {tqdm.format_interval((total - n) * elapsed / n)}"
    elif total:
        line += " · ETA ?"
    return line


def _headless_class():
    from tqdm import tqdm

    class HeadlessBar(tqdm):
        """tqdm's bar as throttled lines, plus the runner's one-line beacon (module docstring)."""

        def __init__(self, *a, **kw):
            self._beacon = _beacon_path()
            self._beacon_t = 0.0
            super().__init__(*a, **kw)
            self._beat(force=True)

        def _beat(self, force: bool = False) -> None:
            import time

            if self._beacon is None or getattr(self, "disable", True):
                return
            now = time.monotonic()
            if not force and now - self._beacon_t < BEACON_INTERVAL_S:
                return
            self._beacon_t = now
            tmp = f"{self._beacon}.{os.getpid()}.tmp"
            try:
                with open(tmp, "w") as f:
                    f.write(progress_line(self))
                os.replace(tmp, self._beacon)
            except OSError:  # the staging folder went away (the run is being stopped): no beacon
                self._beacon = None

        def __iter__(self):  # item by item through update(), so the beacon sees every step
            if self.disable:
                yield from self.iterable
                return
            try:
                for obj in self.iterable:
                    yield obj
                    self.update(1)
            finally:
                self.close()

        def update(self, n=1):
            out = super().update(n)
            self._beat()
            return out

        def set_postfix_str(self, s="", refresh=True):
            super().set_postfix_str(s, refresh=refresh)
            self._beat()

        def set_description_str(self, desc=None, refresh=True):
            super().set_description_str(desc, refresh=refresh)
            self._beat()

        def close(self):
            if not getattr(self, "disable", True) and self._beacon is not None:
                self._beat(force=True)
            super().close()

    return HeadlessBar


def progress_bar(iterable=None, desc: str | None = None, total: int | None = None, **kw):
    """A tqdm progress bar for ``iterable`` suited to the environment (module docstring).

    Keyword arguments go to tqdm (``unit``, ``disable``, ``leave``, ...). Use
    ``bar.set_postfix_str(item)`` to show the current item.
    """
    if headless():
        kw.setdefault("mininterval", HEADLESS_INTERVAL_S)
        kw.setdefault("maxinterval", HEADLESS_INTERVAL_S * 4)
        return _headless_class()(
            iterable, desc=desc, total=total, file=_LineWriter(sys.stdout), ascii=True, ncols=100, **kw
        )
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, **kw)
