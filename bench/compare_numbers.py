"""Compare every number of two run folders (CSV and JSON files), e.g. before and after a refactor.

    python bench/compare_numbers.py OUTPUT_A OUTPUT_B [--rtol 1e-9]

OUTPUT_A / OUTPUT_B are run folders, or output roots holding ``<notebook>/<run>/`` folders (matched
by notebook). Prints, per file, the number of values compared and the largest relative
difference; lists files, columns and keys present on one side only, and every value that differs
beyond ``rtol``. Exit code 0 when everything agrees.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

SKIP_JSON = {"run.json"}  # timings, versions and dates differ by nature
SKIP_KEYS = {"seconds", "examples_per_s", "elapsed_s", "created_utc", "hidden_cache_s", "train_s_total", "step_s"}


def run_folders(root: Path) -> dict[str, Path]:
    if (root / "run.json").is_file():
        return {root.parent.name: root}
    return {d.parent.name: d for d in sorted(root.glob("*/*")) if (d / "run.json").is_file()}


def _rel(a: float, b: float) -> float:
    if a == b or (math.isnan(a) and math.isnan(b)):
        return 0.0
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def compare_json(a, b, path: str, out: list, diffs: list, rtol: float) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in SKIP_KEYS:
                continue
            if k not in a or k not in b:
                diffs.append(f"{path}.{k}: only in {'B' if k not in a else 'A'}")
                continue
            compare_json(a[k], b[k], f"{path}.{k}", out, diffs, rtol)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            diffs.append(f"{path}: length {len(a)} vs {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            compare_json(x, y, f"{path}[{i}]", out, diffs, rtol)
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        r = _rel(float(a), float(b))
        out.append(r)
        if r > rtol:
            diffs.append(f"{path}: {a!r} vs {b!r} (rel {r:.2e})")
    elif a != b:
        diffs.append(f"{path}: {a!r} vs {b!r}")


def compare_csv(pa: Path, pb: Path, out: list, diffs: list, rtol: float) -> None:
    a, b = pd.read_csv(pa), pd.read_csv(pb)
    for c in sorted(set(a.columns) ^ set(b.columns)):
        diffs.append(f"{pa.name}: column {c!r} only in {'A' if c in a.columns else 'B'}")
    if len(a) != len(b):
        diffs.append(f"{pa.name}: {len(a)} vs {len(b)} rows")
        return
    for c in [c for c in a.columns if c in b.columns]:
        x, y = a[c], b[c]
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
            xv, yv = x.to_numpy(float), y.to_numpy(float)
            both_nan = np.isnan(xv) & np.isnan(yv)
            with np.errstate(invalid="ignore", divide="ignore"):
                rel = np.where(
                    both_nan | (xv == yv), 0.0, np.abs(xv - yv) / np.maximum(np.maximum(np.abs(xv), np.abs(yv)), 1e-300)
                )
            out.extend(rel.tolist())
            for i in np.flatnonzero(rel > rtol)[:5]:
                diffs.append(f"{pa.name}[{i}, {c}]: {xv[i]!r} vs {yv[i]!r} (rel {rel[i]:.2e})")
        elif not (x.astype(str) == y.astype(str)).all():
            i = int(np.flatnonzero(~(x.astype(str) == y.astype(str)).to_numpy())[0])
            diffs.append(f"{pa.name}[{i}, {c}]: {x[i]!r} vs {y[i]!r}")


def compare_folders(a: Path, b: Path, rtol: float) -> tuple[list[str], list[str]]:
    lines, diffs = [], []
    kinds = (".csv", ".json", ".jsonl")
    fa = {p.name for p in a.iterdir() if p.suffix in kinds and p.name not in SKIP_JSON}
    fb = {p.name for p in b.iterdir() if p.suffix in kinds and p.name not in SKIP_JSON}
    for n in sorted(fa ^ fb):
        diffs.append(f"{n}: only in {'A' if n in fa else 'B'}")
    for n in sorted(fa & fb):
        rels: list[float] = []
        before = len(diffs)
        if n.endswith(".csv"):
            compare_csv(a / n, b / n, rels, diffs, rtol)
        else:
            load = (
                (lambda p: [json.loads(x) for x in p.read_text().splitlines() if x.strip()])
                if n.endswith(".jsonl")
                else (lambda p: json.loads(p.read_text()))
            )
            compare_json(load(a / n), load(b / n), n, rels, diffs, rtol)
        worst = max(rels) if rels else 0.0
        lines.append(
            f"  {n:<34} {len(rels):>8} values  max rel diff {worst:.1e}  "
            f"{'DIFFERS' if any('only in' not in d for d in diffs[before:]) else 'OK'}"
        )
    return lines, diffs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--rtol", type=float, default=1e-9)
    args = ap.parse_args(argv)
    ra, rb = run_folders(args.a), run_folders(args.b)
    bad = 0
    for nb in sorted(set(ra) | set(rb)):
        if nb not in ra or nb not in rb:
            print(f"{nb}: only in {'A' if nb in ra else 'B'}")
            bad += 1
            continue
        lines, diffs = compare_folders(ra[nb], rb[nb], args.rtol)
        print(f"{nb}: {ra[nb]}  vs  {rb[nb]}")
        print("\n".join(lines))
        added = [d for d in diffs if "only in" in d]
        for d in [d for d in diffs if d not in added]:
            print(f"    - {d}")
        if added:  # a key, column or file present on one side only: reported, not a disagreement of numbers
            print(f"    ({len(added)} keys/columns/files present on one side only, e.g. {added[0]})")
        bad += len(added) < len(diffs)
    print("ALL NUMBERS AGREE" if not bad else f"{bad} notebook(s) differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
