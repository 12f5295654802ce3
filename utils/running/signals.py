"""SIGINT and SIGTERM noted, never raised: the command lines stop cleanly whenever a signal comes.

A :class:`SignalFlag` installed at the very start of ``python -m utils.run_notebook`` and ``python -m
utils.sweep`` (before their heavier imports) records each signal; the runner and the sweep look at it
between their steps, so a Ctrl-C or a SIGTERM during start-up stops the run from starting instead of
being lost, and one during a clean-up cannot cut it short. It is a ``threading.Event`` (set by the
first signal), so it also serves as the ``stop`` of :func:`utils.running.runner.execute`.
"""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SignalFlag(threading.Event):
    """Notes SIGINT / SIGTERM (main thread only; elsewhere it stays a plain event)."""

    def __init__(self):
        super().__init__()
        self.signals: list[int] = []
        self._old: dict = {}

    def _note(self, signum, frame) -> None:
        self.signals.append(signum)
        self.set()

    def install(self) -> SignalFlag:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._note)
        return self

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}

    def __enter__(self) -> SignalFlag:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()

    @property
    def signum(self) -> int | None:
        return self.signals[0] if self.signals else None

    @property
    def count(self) -> int:
        return len(self.signals)

    def name(self) -> str:
        return signal.Signals(self.signals[0]).name if self.signals else ""
