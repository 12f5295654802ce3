"""The sweep command line: run a sweep file, or rebuild the HTML index of runs.

    python -m utils.sweep sweeps/smollm2-vs-init.yaml                # embedded Dask cluster, one worker per core
    python -m utils.sweep sweeps/x.yaml --scheduler tcp://host:8786   # an existing Dask cluster
    python -m utils.sweep sweeps/x.yaml --dry-run                     # the runs, and which are already complete
    python -m utils.sweep --index                                     # rewrite output/index.html

Runs go to ``<output root>/<notebook>/<sweep name>/<run key>/``; the sweep's index of runs to
``<output root>/sweeps/<sweep name>/index.csv``; ``<output root>/index.html`` lists every run.
A sweep file of more than 200 runs (``MAX_RUNS``) is refused unless ``--max-runs N`` or ``--yes``
says otherwise. Exit code 0 when every run is complete, 1 when a run failed, 2 for a bad sweep file
or a sweep that cannot start (already running, a name a single run has, an unusable output root),
130 after Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import sys

from ..markdown import md_table
from ..running.index import write_index_html
from ..running.labels import model_labels
from ..running.paths import RunRefused, output_root
from ..running.signals import SignalFlag
from .execute import plan, run_sweep
from .spec import MAX_RUNS, SweepError, load_sweep


def _print_plan(sweep, root) -> None:
    """The runs, their models (labelled as in the index and the comparison), and what would execute."""
    planned = plan(sweep, root)
    labels = model_labels(p.ctx.params.get("model", "") for p in planned)
    rows = [
        [p.spec.notebook, p.spec.key, labels[str(p.ctx.params.get("model", "")).strip()],
         "run" if p.execute else "skip (complete)", "GPU" if p.spec.gpu else ""]
        for p in planned
    ]  # fmt: skip
    print(md_table(["notebook", "run key", "model", "action", "needs"], rows))


def main(argv=None, stop: SignalFlag | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m utils.sweep",
        description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    ap.add_argument("--max-runs", type=int, default=MAX_RUNS, help=f"refuse a sweep of more runs (default {MAX_RUNS})")
    ap.add_argument("--yes", action="store_true", help="run a sweep of any size (no --max-runs limit)")
    ap.add_argument("--index", action="store_true", help="rewrite <output root>/index.html (alone: nothing else)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    limit = None if a.yes else a.max_runs
    try:
        root = output_root(a.output_root)
        if a.sweep is None:
            if not a.index:
                ap.error("give a sweep file, or --index")
            print(f"index: {write_index_html(root)}")
            return 0
        sweep = load_sweep(a.sweep, max_runs=limit)
        if a.dry_run:
            _print_plan(sweep, root)
            return 0
        res = run_sweep(sweep, root, a.scheduler, a.workers, a.gpus, a.dashboard, progress=not a.no_progress,
                        max_runs=limit, signals=stop)  # fmt: skip
    except (SweepError, RunRefused) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the output root turned out unwritable while writing the index
        print(f"error: cannot write under the output root {output_root(a.output_root)}: {e}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{n} {s}" for s, n in res.counts().items())
    print(f"sweep {sweep.name}: {counts}")
    for r in res.rows:
        if r["status"] not in ("complete",) and r.get("error"):
            print(f"  {r['notebook']}/{r['run_key']}: {r['status']}: {r['error'].splitlines()[0]}", file=sys.stderr)
    print(f"index: {res.index_csv}\nruns:  {res.index_html}")
    if res.interrupted:
        print(f"INTERRUPTED by {res.signal}", file=sys.stderr)
        return 130
    return 0 if res.ok else 1
