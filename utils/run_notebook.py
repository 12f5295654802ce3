"""``python -m utils.run_notebook``: the headless runner (see :mod:`utils.running.runner`).

SIGINT and SIGTERM are noted from the first moment (before the runner's imports), so a Ctrl-C during
start-up stops the run from starting."""

import sys

from .running.signals import SignalFlag

if __name__ == "__main__":
    stop = SignalFlag().install()
    from .running.runner import main

    sys.exit(main(stop=stop))
