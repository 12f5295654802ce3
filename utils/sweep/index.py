"""A sweep's index of runs: one CSV row per run (parameters, status, timings, output path).

Written by the driver after every finished run and at the end (atomically, so a reader never sees
half a file):

* ``<output root>/sweeps/<sweep name>/index.csv``: every run of the sweep, with ``sweep.yaml`` (the
  sweep file as run) beside it;
* ``<output root>/<notebook>/<sweep name>/index.csv``: the rows of that notebook, next to its runs.

Columns: ``sweep, notebook, run_key, status`` (complete, failed, interrupted, cancelled, or pending /
queued while the sweep runs), ``executed`` (False: skipped, already complete with the same
parameters), one column per parameter set by the sweep file, ``started_utc, ended_utc, duration_s``,
``worker, host, path`` (the run folder, ``<key>.failed`` for a failed run), ``report`` (its HTML
report or executed notebook), ``timings`` (the run's own step timings, JSON) and ``error``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..files import atomic_write_text

FIXED = ["sweep", "notebook", "run_key", "status", "executed"]
TAIL = ["started_utc", "ended_utc", "duration_s", "worker", "host", "path", "report", "timings", "error"]


def run_files(path: str | Path, notebook: str) -> tuple[str, str]:
    """``(report, timings JSON)`` of a run folder: its report.html (else the executed notebook)."""
    if not path:
        return "", ""
    p = Path(path)
    report = p / "report.html"
    if not report.is_file():
        report = p / f"{notebook}.ipynb"
    try:
        timings = json.dumps(json.loads((p / "run.json").read_text()).get("timings_s") or {})
    except (OSError, ValueError):
        timings = ""
    return (str(report) if report.is_file() else ""), timings


def sweep_frame(rows: list[dict]):
    """The index as a DataFrame (module docstring)."""
    import pandas as pd

    names = list(dict.fromkeys(k for r in rows for k in r.get("params", {})))
    out = []
    for r in rows:
        report, timings = run_files(r.get("path", ""), r["notebook"])
        rec = {k: r.get(k) for k in FIXED}
        for n in names:
            rec[n if n not in FIXED + TAIL else f"param_{n}"] = r.get("params", {}).get(n)
        rec.update({k: r.get(k) for k in TAIL})
        rec.update(report=report, timings=timings, error=(r.get("error") or "").strip())
        out.append(rec)
    return pd.DataFrame(out).convert_dtypes()  # integer parameters stay integers next to empty cells


def write_sweep_index(root: Path, sweep, rows: list[dict]) -> Path:
    """Write the sweep's index CSVs (module docstring); returns the path of the whole index."""
    df = sweep_frame(rows)
    folder = Path(root) / "sweeps" / sweep.name
    atomic_write_text(folder / "index.csv", df.to_csv(index=False))
    if sweep.path is not None and Path(sweep.path).is_file():
        atomic_write_text(folder / "sweep.yaml", Path(sweep.path).read_text())
    for nb, part in df.groupby("notebook", sort=False):
        atomic_write_text(Path(root) / nb / sweep.name / "index.csv", part.to_csv(index=False))
    return folder / "index.csv"


def read_sweep_index(root: Path, name: str):
    """The index of sweep ``name`` under ``root`` (``FileNotFoundError`` naming the sweeps there)."""
    import pandas as pd

    p = Path(root) / "sweeps" / name / "index.csv"
    if not p.is_file():
        known = sorted(d.name for d in (Path(root) / "sweeps").glob("*") if d.is_dir())
        raise FileNotFoundError(f"no sweep {name!r} under {root}" + (f"; sweeps: {', '.join(known)}" if known else ""))
    return pd.read_csv(p)
