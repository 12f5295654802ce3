"""Which runs to compare: every run of a sweep, or a list of run folders, with a short label per model
(the spec each run recorded, shortened only as far as it stays unique among the runs compared:
:mod:`utils.running.labels`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from ..running.labels import RANDOM_PREFIX, base_label, model_labels
from ..running.params import ParameterError
from ..running.paths import PROJECT_ROOT

COMPARE_NOTEBOOK = "06_compare"
COLUMNS = ["notebook", "run", "sweep", "status", "model", "label", "params", "path"]


def _record(d: Path, sweep: str = "") -> dict | None:
    try:
        rec = json.loads((d / "run.json").read_text())
    except (OSError, ValueError):
        return None
    params = rec.get("params") or {}
    return {
        "notebook": rec.get("notebook") or d.parent.name,
        "run": d.name,
        "sweep": rec.get("group") or sweep,
        "status": rec.get("status", "?"),
        "model": params.get("model", ""),
        "params": params,
        "path": d,
    }


def _resolve(item: str, root: Path) -> Path:
    p = Path(item).expanduser()
    for cand in [p] if p.is_absolute() else [root / p, PROJECT_ROOT / p, Path.cwd() / p]:
        if (cand / "run.json").is_file():
            return cand.resolve()
    raise FileNotFoundError(
        f"run folder {item!r} not found (no run.json there, nor under the output root {root}); "
        "pass run folders such as 01_weight_ranks/default or an absolute path"
    )


def find_runs(root: Path, sweep: str = "", runs: str = "", run_name: str = "") -> pd.DataFrame:
    """The runs to compare, one row each (columns :data:`COLUMNS`), complete or not.

    ``sweep``: every run under ``<root>/<notebook>/<sweep>/`` (the comparison notebook's own runs
    excluded); ``runs``: comma- or newline-separated run folders (absolute, or relative to the output
    root). Both may be given. With neither, every single run named ``run_name`` (``<root>/<notebook>/
    <run_name>/``, as ``make run`` writes them).
    """
    root = Path(root)
    if not sweep.strip() and not runs.strip():
        if not run_name:
            raise ParameterError("give a sweep name (sweep) or a comma-separated list of run folders (runs)")
        found = sorted(root.glob(f"[0-9]*/{run_name}/run.json"))
        runs = ",".join(str(p.parent) for p in found if p.parent.parent.name != COMPARE_NOTEBOOK)
        if not runs:
            raise FileNotFoundError(
                f"no runs named {run_name!r} under {root}: set sweep (a sweep name) or runs (run folders)"
            )
    recs = []
    if sweep.strip():
        for nb in sorted(p for p in root.iterdir() if p.is_dir() and p.name != COMPARE_NOTEBOOK):
            group = nb / sweep.strip()
            for d in sorted(group.glob("*")) if group.is_dir() else []:
                if d.is_dir() and not d.name.startswith("."):
                    r = _record(d, sweep.strip())
                    if r:
                        recs.append(r)
        if not recs:
            raise FileNotFoundError(
                f"no runs of sweep {sweep!r} under {root} (looked for <notebook>/{sweep}/<run>/run.json)"
            )
    for item in (x.strip() for x in re.split(r"[,\n]", runs) if x.strip()):
        r = _record(_resolve(item, root))
        if r:
            recs.append(r)
    df = pd.DataFrame(recs, columns=[c for c in COLUMNS if c != "label"]).drop_duplicates("path")
    labels = model_labels(df["model"])
    df.insert(5, "label", [labels[str(m or "").strip()] for m in df["model"]])
    rank = {m: i for i, m in enumerate(model_order(df["label"]))}
    df = df.assign(_r=df["label"].map(rank)).sort_values(["notebook", "_r"], kind="stable").drop(columns="_r")
    return df.reset_index(drop=True)


def model_order(labels) -> list[str]:
    """Model labels in display order: each model (in order of appearance) followed by its ``random:`` twins."""
    labels = list(dict.fromkeys(labels))
    bases = list(dict.fromkeys(base_label(m) for m in sorted(labels, key=lambda m: m.startswith(RANDOM_PREFIX))))
    return sorted(labels, key=lambda m: (bases.index(base_label(m)), m.startswith(RANDOM_PREFIX), m))


def runs_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs as a report table: notebook, run, model, status, the grid-like parameters, folder."""
    rows = []
    for r in runs.itertuples():
        rows.append([r.notebook, r.run, r.label, r.status, str(Path(r.path).parent.name) + "/" + r.run])
    return pd.DataFrame(rows, columns=["notebook", "run", "model", "status", "folder"])


def complete(runs: pd.DataFrame, notebook_prefix: str) -> pd.DataFrame:
    """The complete runs of the notebook whose name starts with ``notebook_prefix`` (e.g. ``01``)."""
    return runs[(runs.status == "complete") & runs.notebook.str.startswith(notebook_prefix)]
