"""``<output root>/index.html``: every run under the output root, one page, readable offline.

:func:`collect_runs` finds every run folder (``<notebook>/<run>/`` and ``<notebook>/<sweep>/<run>/``,
failed and interrupted attempts included) from its ``run.json``; :func:`write_index_html` writes a
self-contained page (no script, no external file) with one table per notebook: sweep, run, model
(the spec the run recorded, shortened only as far as it stays unique among the runs on the page:
:mod:`.labels`; the full spec shows on hover), the parameters that differ from the notebook's
defaults, status, start, duration, and a relative link to the run's ``report.html`` (or, for a run
without one, its executed notebook). Written after every run of the runner, every sweep, and by
``python -m utils.sweep --index``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import html
import json
import os
from pathlib import Path

from ..files import atomic_write_text
from .labels import model_labels
from .params import ParameterError, notebook_parameters
from .paths import notebook_source, output_root

SKIP = ("run_name", "output_root", "model")
STATUS_COLOURS = {"complete": "#1a7f37", "failed": "#cf222e", "interrupted": "#9a6700", "running": "#0969da"}


@functools.lru_cache(maxsize=64)
def _defaults(notebook: str) -> dict:
    try:
        return {p.name: p.default for p in notebook_parameters(notebook_source(notebook))}
    except (FileNotFoundError, ParameterError):
        return {}


def _duration(rec: dict):
    try:
        a = _dt.datetime.fromisoformat(rec["started_utc"])
        b = _dt.datetime.fromisoformat(rec["ended_utc"])
        return (b - a).total_seconds()
    except (KeyError, TypeError, ValueError):
        return rec.get("elapsed_s")


def _run_folders(root: Path):
    for nb in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for d in sorted(p for p in nb.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if (d / "run.json").is_file():
                yield nb.name, None, d
                continue
            for e in sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if (e / "run.json").is_file():
                    yield nb.name, d.name, e


def collect_runs(root=None) -> list[dict]:
    """Every run folder under the output root (module docstring), as dicts."""
    root = output_root(root) if not isinstance(root, Path) else root
    if not root.is_dir():
        return []
    out = []
    for nb, group, d in _run_folders(root):
        try:
            rec = json.loads((d / "run.json").read_text())
        except (OSError, ValueError):
            continue
        params = rec.get("params") or {}
        defaults = _defaults(rec.get("notebook") or nb)
        key = {k: v for k, v in params.items() if k not in SKIP and (k not in defaults or defaults[k] != v)}
        report = d / "report.html"
        if not report.is_file():
            report = d / f"{rec.get('notebook') or nb}.ipynb"
        out.append(
            {
                "notebook": nb,
                "sweep": group or "",
                "run": d.name,
                "model": str(params.get("model", "") or ""),
                "key_params": key,
                "status": rec.get("status", "?"),
                "started_utc": rec.get("started_utc") or "",
                "duration_s": _duration(rec),
                "path": d,
                "report": report if report.is_file() else None,
                "error": (rec.get("error") or {}).get("evalue", "") if isinstance(rec.get("error"), dict) else "",
            }
        )
    labels = model_labels(r["model"] for r in out)
    for r in out:
        r["label"] = labels[r["model"].strip()]
    return out


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1400px;margin:1.5em auto;
padding:0 1.2em;color:#222;line-height:1.45}h1{margin-bottom:0.2em}.sub{color:#555;margin-top:0}
table{border-collapse:collapse;width:100%;font-size:0.9em;margin:0.6em 0 1.6em;table-layout:fixed}
td code{word-break:break-all}
th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3;position:sticky;top:0}tr:hover td{background:#fafafa}
td.num{text-align:right;white-space:nowrap}code{background:#f5f5f5;padding:0 3px;border-radius:3px;font-size:0.95em}
.status{font-weight:600;white-space:nowrap}.err{color:#cf222e;font-size:0.85em}a{color:#0969da}
"""


def _fmt_duration(s) -> str:
    if s is None:
        return ""
    s = float(s)
    return f"{s:.1f} s" if s < 90 else f"{s / 60:.1f} min"


def _row_html(r: dict, root: Path) -> str:
    e = html.escape
    params = " ".join(f"<code>{e(str(k))}={e(repr(v))}</code>" for k, v in r["key_params"].items())
    colour = STATUS_COLOURS.get(r["status"], "#555")
    link = ""
    if r["report"] is not None:
        rel = os.path.relpath(r["report"], root).replace(os.sep, "/")
        label = "report" if r["report"].suffix == ".html" else "notebook"
        link = f'<a href="{e(rel)}">{label}</a>'
    model = f"<code title='{e(r['model'])}'>{e(r['label'])}</code>" if r["model"] else ""
    err = f'<div class="err">{e(r["error"][:200])}</div>' if r["error"] else ""
    return (
        f"<tr><td>{e(r['sweep'])}</td><td>{e(r['run'])}</td><td>{model}</td>"
        f"<td>{params}</td><td class='status' style='color:{colour}'>{e(r['status'])}{err}</td>"
        f"<td class='num'>{e(r['started_utc'].replace('+00:00', 'Z'))}</td>"
        f"<td class='num'>{_fmt_duration(r['duration_s'])}</td><td>{link}</td></tr>"
    )


def index_html(root=None) -> str:
    """The page (module docstring) for the runs under ``root``."""
    root = output_root(root) if not isinstance(root, Path) else root
    runs = collect_runs(root)
    counts: dict = {}
    for r in runs:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no runs yet"
    parts = [
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>transformer-spectra runs</title><style>{_CSS}</style></head><body>",
        "<h1>transformer-spectra runs</h1>",
        f"<p class='sub'>{len(runs)} runs ({html.escape(summary)}) under <code>{html.escape(str(root))}</code>; "
        f"generated {now}. Links open each run's self-contained HTML report.</p>",
    ]
    widths = (10, 14, 17, 25, 12, 11, 6, 5)  # percent, one per column
    header = "<colgroup>" + "".join(f"<col style='width:{w}%'>" for w in widths) + "</colgroup>"
    header += "<tr><th>sweep</th><th>run</th><th>model</th><th>parameters (not default)</th><th>status</th>"
    header += "<th>started (UTC)</th><th>duration</th><th>report</th></tr>"
    for nb in sorted({r["notebook"] for r in runs}):
        rows = [r for r in runs if r["notebook"] == nb]
        parts.append(f"<h2 id='{html.escape(nb)}'>{html.escape(nb)}</h2>")
        parts.append(f"<table>{header}" + "".join(_row_html(r, root) for r in rows) + "</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_index_html(root=None) -> Path:
    """Write ``<root>/index.html`` (atomically); returns its path."""
    root = output_root(root) if not isinstance(root, Path) else root
    root.mkdir(parents=True, exist_ok=True)
    path = root / "index.html"
    atomic_write_text(path, index_html(root))
    return path
