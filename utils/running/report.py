"""Reports: the report assembled from a notebook's own cells, and its HTML (number and table helpers:
:mod:`utils.markdown`).

One narrative. A notebook's markdown cells say what each section asks and how to read it; its code
cells put results on screen with :meth:`utils.running.Run.show`. The report is assembled from the
same two things: every markdown cell of the notebook source, in order, with the outputs shown by
the code cell that follows it. Nothing is written twice, so the notebook and the report cannot
drift apart. ``report.md`` embeds figures as PNG files of the run folder; ``report.html`` is a
self-contained rendering (figures inlined) readable without the repository.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Iterable

from ..markdown import df_to_md, fmt, md_image, md_table

__all__ = ["assemble", "df_to_md", "fmt", "markdown_to_html", "md_image", "md_table", "normalize_code", "source_cells"]


# ----------------------------------------------------------------------------- assembly
def normalize_code(src: str) -> str:
    return "\n".join(line.rstrip() for line in src.strip().splitlines())


def source_cells(path: str | Path) -> list[tuple[str, str]]:
    """``(cell_type, source)`` of every cell of a jupytext ``.py`` notebook (the parameters cell excluded)."""
    import jupytext

    nb = jupytext.read(Path(path))
    return [(c.cell_type, c.source) for c in nb.cells if "parameters" not in c.metadata.get("tags", [])]


def assemble(cells: list[tuple[str, str]], outputs: dict[int, list[str]], extra: Iterable[str] = ()) -> str:
    """The report: markdown cells verbatim and, after each code cell, the outputs it showed.

    ``outputs`` maps a cell's position in ``cells`` to its markdown snippets; the key ``-1``
    collects outputs of code that matched no source cell (placed at the end).
    """
    parts = []
    for i, (kind, src) in enumerate(cells):
        if kind == "markdown":
            parts.append(src.strip())
        parts.extend(outputs.get(i, []))
    parts.extend(outputs.get(-1, []))
    parts.extend(extra)
    return "\n\n".join(p for p in parts if p.strip()) + "\n"


# ----------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1.2em;line-height:1.5;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.88em;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%;height:auto}
code{background:#f5f5f5;padding:0 3px;border-radius:3px}pre{background:#f5f5f5;padding:0.8em;overflow-x:auto}
details{margin:0.8em 0}.caption{font-style:italic;color:#555}
nav.top{font-size:0.9em;color:#555}nav.toc{border:1px solid #ddd;border-radius:4px;padding:0.4em 1em;margin:1em 0;
font-size:0.92em}nav.toc ul{margin:0.2em 0;padding-left:1.2em}nav.toc li.h3{margin-left:1.2em;list-style:circle}
"""


# a table cell holding one number (signed, decimal, exponent, %, or an interval like 0.1-0.2): right-aligned
_NUM_CELL = re.compile(
    r"<td>\s*([-+−]?(?:\d[\d,]*\.?\d*|\.\d+)(?:e[-+]?\d+)?%?(?:\s*[-–]\s*[\d.]+)?|nan|inf|-inf)\s*</td>"
)


def _slug(text: str, seen: set) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", html.unescape(re.sub(r"<[^>]+>", "", text)).lower()).strip("-") or "section"
    slug, n = base, 1
    while slug in seen:
        n += 1
        slug = f"{base}-{n}"
    seen.add(slug)
    return slug


def _table_of_contents(body: str) -> tuple[str, str]:
    """``body`` with an ``id`` on every h2 / h3, and a table of contents linking them (empty without headings)."""
    seen: set = set()
    entries = []

    def anchor(m):
        level, inner = m.group(1), m.group(2)
        slug = _slug(inner, seen)
        entries.append((level, slug, re.sub(r"<[^>]+>", "", inner)))
        return f'<h{level} id="{slug}">{inner}</h{level}>'

    body = re.sub(r"<h([23])>(.*?)</h\1>", anchor, body, flags=re.S)
    if not entries:
        return body, ""
    items = "".join(f'<li class="h{lv}"><a href="#{slug}">{text}</a></li>' for lv, slug, text in entries)
    return body, f'<nav class="toc"><strong>Contents</strong><ul>{items}</ul></nav>'


def markdown_to_html(markdown: str, base_dir: str | Path, title: str = "report", index_href: str | None = None) -> str:
    """A self-contained HTML page for ``markdown``: local images inlined as base64 PNG data, a table of contents
    of its sections after the title, and (``index_href``: a relative link) a link back to the index of runs."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": True}).enable("table")
    body = md.render(markdown)
    base = Path(base_dir)

    def inline(m):
        src = html.unescape(m.group(2))
        p = base / src
        if src.startswith(("data:", "http:", "https:")) or not p.is_file():
            return m.group(0)
        mime = "image/png" if p.suffix.lower() == ".png" else "image/" + p.suffix.lower().lstrip(".")
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        return f'{m.group(1)}"data:{mime};base64,{data}"'

    body = re.sub(r'(<img[^>]*?src=)"([^"]+)"', inline, body)
    body = _NUM_CELL.sub(r'<td class="num">\1</td>', body)
    body, toc = _table_of_contents(body)
    if toc:  # after the title (the first h1), else at the top
        m = re.search(r"</h1>", body)
        body = body[: m.end()] + "\n" + toc + body[m.end() :] if m else toc + body
    if index_href:
        body = f'<nav class="top"><a href="{html.escape(index_href)}">&larr; all runs (index)</a></nav>\n' + body
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n"
    )
