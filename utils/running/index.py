"""``<output root>/index.html``: every run under the output root, one page that finds runs, readable offline.

:func:`collect_runs` finds every run folder (``<notebook>/<run>/`` and ``<notebook>/<sweep>/<run>/``,
failed and interrupted attempts included) from its ``run.json``; :func:`write_index_html` writes one
self-contained page (inline CSS and a little plain JavaScript; nothing fetched): one table of every run,
newest first, with columns started (UTC), notebook, sweep, run, model (the models the run read, as
given, shortened only as far as they stay unique among the runs on the page: :mod:`.labels`; the
full spec on hover; empty for a run that read no model), the parameters that differ from the
notebook's defaults, status (with the error of a failed run), duration and links: the report, the
executed notebook rendered as HTML (a failed run's too, its error visible), ``run.json`` and the
run's tables (CSV). A click on a column header sorts by it; the selects filter by notebook, model,
sweep and status, the box searches every cell. Written after every run (the runner's, a sweep's, and
a run from Lab, papermill or jupytext when it ends) and by ``python -m utils.sweep --index``.

A run's duration is the one ``run.json`` records (``duration_s``: from its start to its end, see
:mod:`utils.running.record`); a sweep's ``index.csv`` shows the same value.
"""

from __future__ import annotations

import datetime as _dt
import functools
import html
import json
import os
import re
from pathlib import Path

from ..files import atomic_write_text
from ..provenance import seconds_between
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
    """The run's duration: ``run.json``'s ``duration_s`` (older records: from their start and end times)."""
    if rec.get("duration_s") is not None:
        return rec["duration_s"]
    return seconds_between(rec.get("started_utc"), rec.get("ended_utc"))


_EXTERNAL_SCRIPT = re.compile(r"<script[^>]*\ssrc=[\"']https?://[^>]*>\s*</script>", re.I)


def notebook_html(run: Path, notebook: str) -> Path | None:
    """The executed notebook ``<run>/<notebook>.ipynb`` rendered as ``<notebook>.html`` beside it (nbconvert,
    outputs and errors included; scripts from elsewhere left out, so it opens offline), made once and
    again when the notebook is newer; None when there is no notebook or it cannot be read."""
    src, out = run / f"{notebook}.ipynb", run / f"{notebook}.html"
    if not src.is_file():
        return None
    if out.is_file() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    try:
        import nbformat
        from nbconvert import HTMLExporter

        nb = nbformat.read(src, as_version=4)
        body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    except Exception:  # a notebook cut off by a kill, or no notebook at all: no page, never the raw JSON
        return None
    atomic_write_text(out, _EXTERNAL_SCRIPT.sub("", body))
    return out


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
        name = rec.get("notebook") or nb
        report = d / "report.html"
        models = rec["models"] if "models" in rec else ([params["model"]] if params.get("model") else [])
        out.append(
            {
                "notebook": nb,
                "sweep": group or "",
                "run": d.name,
                "model": ", ".join(str(m) for m in models),
                "models": [str(m) for m in models],
                "key_params": key,
                "status": rec.get("status", "?"),
                "started_utc": rec.get("started_utc") or "",
                "duration_s": _duration(rec),
                "path": d,
                "report": report if report.is_file() else None,
                "notebook_html": notebook_html(d, name),
                "tables": sorted(p for p in d.glob("*.csv") if p.is_file()),
                "error": (rec.get("error") or {}).get("evalue", "") if isinstance(rec.get("error"), dict) else "",
            }
        )
    labels = model_labels(m for r in out for m in r["models"])  # each model its label, then a run's joined
    for r in out:
        r["label"] = ", ".join(labels[m.strip()] for m in r["models"])
    out.sort(key=lambda r: r["started_utc"], reverse=True)  # newest first
    return out


_CSS = r"""
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1600px;margin:1.2em auto;
padding:0 1em;color:#222;line-height:1.4}h1{margin-bottom:0.2em}.sub{color:#555;margin-top:0}
.filters{display:flex;flex-wrap:wrap;gap:0.6em 1.2em;align-items:center;margin:0.8em 0}
.filters label{font-size:0.9em;color:#444}.filters select,.filters input{font-size:0.95em;margin-left:0.3em}
.filters input[type=search]{width:16em}#shown{color:#555;font-size:0.9em}
table{border-collapse:collapse;width:100%;font-size:0.88em;table-layout:fixed}
th,td{border-bottom:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top;
overflow-wrap:anywhere;word-break:break-word}
th{background:#f3f3f3;position:sticky;top:0;cursor:pointer;user-select:none}th:hover{background:#e8e8e8}
th.asc::after{content:" \25B2";font-size:0.8em}th.desc::after{content:" \25BC";font-size:0.8em}
tr:hover td{background:#fafafa}td.num{text-align:right}
code{background:#f5f5f5;padding:0 3px;border-radius:3px;font-size:0.95em}
.status{font-weight:600}.err{color:#cf222e;font-size:0.85em;font-weight:normal}a{color:#0969da}
.links a{margin-right:0.5em;white-space:nowrap}.links .tables{font-size:0.85em}
"""

COLUMNS = [  # (header, width in percent, sort as)
    ("started (UTC)", 10, "text"),
    ("notebook", 10, "text"),
    ("sweep", 8, "text"),
    ("run", 10, "text"),
    ("model", 11, "text"),
    ("parameters (not default)", 17, "text"),
    ("status", 10, "text"),
    ("duration", 8, "num"),
    ("links", 16, "text"),
]

_SCRIPT = """
(function(){
  var table=document.getElementById('runs'), body=table.tBodies[0];
  var rows=Array.prototype.slice.call(body.rows), heads=table.tHead.rows[0].cells;
  var sel={}; ['notebook','model','sweep','status'].forEach(function(k){sel[k]=document.getElementById('f-'+k);});
  var search=document.getElementById('search'), shown=document.getElementById('shown');
  function key(row,i,kind){var c=row.cells[i],v=c.getAttribute('data-sort');if(v===null)v=c.textContent.trim();
    if(kind==='num'){var x=parseFloat(v);return isNaN(x)?-Infinity:x;}return v.toLowerCase();}
  Array.prototype.forEach.call(heads,function(th,i){th.addEventListener('click',function(){
    var dir=th.classList.contains('asc')?-1:1, kind=th.getAttribute('data-kind');
    Array.prototype.forEach.call(heads,function(h){h.classList.remove('asc','desc');});
    th.classList.add(dir===1?'asc':'desc');
    rows.sort(function(a,b){var x=key(a,i,kind),y=key(b,i,kind);return x<y?-dir:x>y?dir:0;});
    rows.forEach(function(r){body.appendChild(r);});});});
  function apply(){var q=search.value.trim().toLowerCase(),n=0;
    rows.forEach(function(r){var ok=Object.keys(sel).every(function(k){var v=sel[k].value;
        return v===''||(r.getAttribute('data-'+k)||'').split('\\n').indexOf(v)>=0;});
      if(ok&&q)ok=r.textContent.toLowerCase().indexOf(q)>=0;r.hidden=!ok;if(ok)n++;});
    shown.textContent=n+' of '+rows.length+' runs shown';}
  Object.keys(sel).forEach(function(k){sel[k].addEventListener('change',apply);});
  search.addEventListener('input',apply);apply();
})();
"""


def _fmt_duration(s) -> str:
    if s is None:
        return ""
    s = float(s)
    return f"{s:.1f} s" if s < 90 else f"{s / 60:.1f} min"


def _rel(p: Path, root: Path) -> str:
    return html.escape(os.path.relpath(p, root).replace(os.sep, "/"))


def _row_html(r: dict, root: Path) -> str:
    e = html.escape
    params = " ".join(f"<code>{e(str(k))}={e(repr(v))}</code>" for k, v in r["key_params"].items())
    colour = STATUS_COLOURS.get(r["status"], "#555")
    links = []
    if r["report"] is not None:
        links.append(f'<a href="{_rel(r["report"], root)}">report</a>')
    if r["notebook_html"] is not None:
        links.append(f'<a href="{_rel(r["notebook_html"], root)}">notebook</a>')
    links.append(f'<a href="{_rel(r["path"] / "run.json", root)}">run.json</a>')
    if r["tables"]:
        tables = " ".join(f'<a href="{_rel(t, root)}">{e(t.name)}</a>' for t in r["tables"])
        links.append(f'<div class="tables">tables: {tables}</div>')
    models = [m.strip() for m in r["model"].split(",") if m.strip()]
    model = f"<code title='{e(r['model'])}'>{e(r['label'])}</code>" if r["model"] else ""
    err = f'<div class="err">{e(r["error"][:200])}</div>' if r["error"] else ""
    started = r["started_utc"].replace("+00:00", "Z")
    data = {"notebook": r["notebook"], "model": "\n".join(models), "sweep": r["sweep"], "status": r["status"]}
    attrs = " ".join(f'data-{k}="{e(v)}"' for k, v in data.items())
    dur = "" if r["duration_s"] is None else f"{float(r['duration_s']):.3f}"
    return (
        f"<tr {attrs}><td class='num' data-sort='{e(r['started_utc'])}'>{e(started[:19].replace('T', ' '))}</td>"
        f"<td>{e(r['notebook'])}</td><td>{e(r['sweep'])}</td><td>{e(r['run'])}</td><td>{model}</td>"
        f"<td>{params}</td><td class='status' style='color:{colour}'>{e(r['status'])}{err}</td>"
        f"<td class='num' data-sort='{dur}'>{_fmt_duration(r['duration_s'])}</td>"
        f"<td class='links'>{' '.join(links)}</td></tr>"
    )


def _select(key: str, label: str, values) -> str:
    opts = "".join(f'<option value="{html.escape(v)}">{html.escape(v or "(none)")}</option>' for v in values)
    return f'<label>{label}<select id="f-{key}"><option value="">all</option>{opts}</select></label>'


def index_html(root=None) -> str:
    """The page (module docstring) for the runs under ``root``."""
    root = output_root(root) if not isinstance(root, Path) else root
    runs = collect_runs(root)
    counts: dict = {}
    for r in runs:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no runs yet"
    models = sorted({m.strip() for r in runs for m in r["model"].split(",") if m.strip()})
    filters = [
        _select("notebook", "notebook", sorted({r["notebook"] for r in runs})),
        _select("model", "model", models),
        _select("sweep", "sweep", sorted({r["sweep"] for r in runs})),
        _select("status", "status", sorted(counts)),
        '<label>search<input type="search" id="search" placeholder="any text in a row"></label>',
        '<span id="shown"></span>',
    ]
    cols = "<colgroup>" + "".join(f"<col style='width:{w}%'>" for _, w, _ in COLUMNS) + "</colgroup>"
    head = "".join(f"<th data-kind='{k}' title='sort by {html.escape(h)}'>{html.escape(h)}</th>" for h, _, k in COLUMNS)
    parts = [
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>transformer-spectra runs</title><style>{_CSS}</style></head><body>",
        "<h1>transformer-spectra runs</h1>",
        f"<p class='sub'>{len(runs)} runs ({html.escape(summary)}) under <code>{html.escape(str(root))}</code>; "
        f"generated {now}; newest first. Click a column header to sort.</p>",
        f"<div class='filters'>{''.join(filters)}</div>",
        f"<table id='runs'>{cols}<thead><tr>{head}</tr></thead><tbody>",
        "\n".join(_row_html(r, root) for r in runs),
        "</tbody></table>",
        f"<script>{_SCRIPT}</script>",
        "</body></html>\n",
    ]
    return "\n".join(parts)


def write_index_html(root=None) -> Path:
    """Write ``<root>/index.html`` (atomically); returns its path."""
    root = output_root(root) if not isinstance(root, Path) else root
    root.mkdir(parents=True, exist_ok=True)
    path = root / "index.html"
    atomic_write_text(path, index_html(root))
    return path
