"""Numbers and tables as markdown: the helpers every floor of ``utils`` shares (reports, analysis tables).

:func:`fmt` writes one number for a table (ints as ints, floats with a fixed number of significant
digits, NaN / Inf spelled out); :func:`md_table` and :func:`df_to_md` write GitHub-flavoured tables.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence


def fmt(x, digits: int = 4) -> str:
    """A number for a table: ints as ints, floats with ``digits`` significant digits."""
    if x is None:
        return ""
    if isinstance(x, (bool, int)):
        return str(x)
    try:
        xf = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(xf):
        return "nan"
    if math.isinf(xf):
        return "inf" if xf > 0 else "-inf"
    if xf == int(xf) and abs(xf) < 1e15 and not isinstance(x, float):
        return str(int(xf))
    return f"{xf:.{digits}g}"


def md_table(header: Sequence[str], rows: Iterable[Sequence], digits: int = 4) -> str:
    """A GitHub-flavoured markdown table; cells go through :func:`fmt`."""
    header = [str(h) for h in header]
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        out.append("| " + " | ".join(fmt(c, digits).replace("|", "\\|").replace("\n", " ") for c in r) + " |")
    return "\n".join(out)


def df_to_md(df, digits: int = 4, index: bool = False) -> str:
    """A pandas DataFrame as a markdown table."""
    cols = [str(c) for c in df.columns]
    if index:
        name = df.index.name or ""
        return md_table([name] + cols, ([i] + list(r) for i, r in zip(df.index, df.itertuples(index=False))), digits)
    return md_table(cols, (list(r) for r in df.itertuples(index=False)), digits)


def md_image(path: str, alt: str) -> str:
    return f"![{alt}]({path})"
