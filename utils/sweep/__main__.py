"""``python -m utils.sweep``: the sweep command line (see :mod:`utils.sweep.cli`).

SIGINT and SIGTERM are noted from the first moment (before the sweep's imports), so a Ctrl-C during
start-up, cluster start included, stops the sweep cleanly."""

import sys

from ..running.signals import SignalFlag

if __name__ == "__main__":
    stop = SignalFlag().install()
    from .cli import main

    sys.exit(main(stop=stop))
