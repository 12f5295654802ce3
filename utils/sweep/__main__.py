"""Run a sweep file, or rebuild the HTML index of runs.

    python -m utils.sweep sweeps/smollm2-vs-init.yaml                # embedded Dask cluster, one worker per core
    python -m utils.sweep sweeps/x.yaml --scheduler tcp://host:8786   # an existing Dask cluster
    python -m utils.sweep sweeps/x.yaml --dry-run                     # the runs, and which are already complete
    python -m utils.sweep --index                                     # rewrite output/index.html

Runs go to ``<output root>/<notebook>/<sweep name>/<run key>/``; the sweep's index of runs to
``<output root>/sweeps/<sweep name>/index.csv``; ``<output root>/index.html`` lists every run.
Exit code 0 when every run is complete, 1 when a run failed, 2 for a bad sweep file, 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys

from .spec import SweepError, load_sweep


def _print_plan(sweep, root) -> None:
    from ..running.report import md_table
    from .execute import plan

    rows = [
        [p.spec.notebook, p.spec.key, "run" if p.execute else "skip (complete)", "GPU" if p.spec.gpu else ""]
        for p in plan(sweep, root)
    ]
    print(md_table(["notebook", "run key", "action", "needs"], rows))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m utils.sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("sweep", nargs="?", help="the sweep file (YAML), e.g. sweeps/smollm2-vs-init.yaml")
    ap.add_argument("--output-root", default=None, help="results root (default: $TSPECTRA_OUTPUT or <project>/output)")
    ap.add_argument(
        "--scheduler",
        default=None,
        help="address of an existing Dask scheduler (default: $TSPECTRA_DASK_SCHEDULER, else an embedded LocalCluster)",
    )
    ap.add_argument("--workers", type=int, default=None, help="CPU workers of the embedded cluster (default: cores)")
    ap.add_argument(
        "--gpus", type=int, default=None, help="GPU workers of the embedded cluster (default: CUDA devices, if needed)"
    )
    ap.add_argument("--dashboard", default="127.0.0.1:8787", help="dashboard address of the embedded cluster")
    ap.add_argument("--dry-run", action="store_true", help="print the runs and what would execute, run nothing")
    ap.add_argument("--index", action="store_true", help="rewrite <output root>/index.html (alone: nothing else)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    from ..running.index import write_index_html
    from ..running.paths import output_root

    root = output_root(a.output_root)
    if a.sweep is None:
        if not a.index:
            ap.error("give a sweep file, or --index")
        print(f"index: {write_index_html(root)}")
        return 0
    try:
        sweep = load_sweep(a.sweep)
        if a.dry_run:
            _print_plan(sweep, root)
            return 0
        from .execute import run_sweep

        res = run_sweep(sweep, root, a.scheduler, a.workers, a.gpus, a.dashboard, progress=not a.no_progress)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{n} {s}" for s, n in res.counts().items())
    print(f"sweep {sweep.name}: {counts}")
    for r in res.rows:
        if r["status"] not in ("complete",) and r.get("error"):
            print(f"  {r['notebook']}/{r['run_key']}: {r['status']}: {r['error'].splitlines()[0]}", file=sys.stderr)
    print(f"index: {res.index_csv}\nruns:  {res.index_html}")
    if res.interrupted:
        return 130
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
