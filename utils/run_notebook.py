"""``python -m utils.run_notebook``: the headless runner (see :mod:`utils.running.runner`)."""

import sys

from .running.runner import main

if __name__ == "__main__":
    sys.exit(main())
