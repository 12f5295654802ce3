"""Command line: ``python -m utils.dynamics.store merge OUT RUN1.h5 ...`` or ``verify FILE [INPUTS...]``."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .merge import MergeMismatchError, merge_runs
from .verify import verify_spectral_file


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m utils.dynamics.store merge OUT RUN1.h5 RUN2.h5 ...`` or ``verify FILE [INPUTS...]``."""
    ap = argparse.ArgumentParser(
        prog="python -m utils.dynamics.store", description="Merge or verify spectral store files."
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge", help="merge per-run files into one, then verify it")
    m.add_argument("out")
    m.add_argument("runs", nargs="+")
    m.add_argument("--overwrite", action="store_true")
    v = sub.add_parser("verify", help="verify a merged or per-run file")
    v.add_argument("file")
    v.add_argument("inputs", nargs="*", help="the per-run files it was merged from (size ratio)")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "merge":
            merge_runs(a.runs, a.out, overwrite=a.overwrite)
            rep = verify_spectral_file(a.out, inputs=a.runs)
        else:
            rep = verify_spectral_file(a.file, inputs=a.inputs or None)
    except (MergeMismatchError, FileExistsError, FileNotFoundError, IsADirectoryError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(rep.summary())
    return 0 if rep.ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
