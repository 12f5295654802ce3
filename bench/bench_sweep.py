"""Benchmark: the example sweep (sweeps/smollm2-vs-init.yaml: notebooks 01-03 on SmolLM2-135M and its
random: twin, then 06) on the embedded Dask cluster (one worker per core), against the same runs one
after another through the same runner (the baseline). Wall-clock from one run of each, and a check
that both produced the same numbers.

    .venv/bin/python bench/bench_sweep.py [--sweep sweeps/smollm2-vs-init.yaml] [--workers N]

Kernel start-up, model loading and file I/O of one run overlap with the computation of another; on
2 cores the aim is a ratio of at least 1.6.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from utils.running.runner import NotebookFailed, execute  # noqa: E402
from utils.sweep import load_sweep  # noqa: E402
from utils.sweep.execute import run_sweep  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def warm_up() -> None:
    """Read the bundled model once and import the heavy packages once, so neither side pays a cold cache."""
    from utils.weights import bundled_gguf_path

    with open(bundled_gguf_path(), "rb") as f:
        while f.read(1 << 24):
            pass
    subprocess.run([sys.executable, "-c", "import torch, transformers, papermill, distributed"], check=True)


def sequential(sweep, root: Path) -> tuple[float, dict]:
    status, t0 = {}, time.perf_counter()
    for r in sweep.runs:
        try:
            execute(r.notebook, r.key, r.params, root, group=sweep.name)
            status[r.label] = "complete"
        except NotebookFailed as e:
            status[r.label] = f"failed: {e}"
    return time.perf_counter() - t0, status


def same_numbers(a: Path, b: Path) -> tuple[int, float]:
    """CSV files of every run under ``a`` against ``b``: (files compared, largest relative difference)."""
    n, worst = 0, 0.0
    for fa in sorted(a.glob("0[1-5]_*/*/*/*.csv")):
        fb = b / fa.relative_to(a)
        da, db = pd.read_csv(fa), pd.read_csv(fb)
        assert list(da.columns) == list(db.columns) and len(da) == len(db), fa
        num = da.select_dtypes("number").columns
        x, y = da[num].to_numpy(float), db[num].to_numpy(float)
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.any():
            worst = max(worst, float(np.max(np.abs(x[ok] - y[ok]) / np.maximum(np.abs(x[ok]), 1e-12))))
        n += 1
    return n, worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sweep", default=str(ROOT / "sweeps" / "smollm2-vs-init.yaml"))
    ap.add_argument("--workers", type=int, default=None, help="workers of the embedded cluster (default: cores)")
    a = ap.parse_args()
    sweep = load_sweep(a.sweep)
    cores = os.cpu_count() or 1
    warm_up()
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as td:
        seq_root, dask_root = Path(td) / "sequential", Path(td) / "dask"
        t_seq, st_seq = sequential(sweep, seq_root)
        t0 = time.perf_counter()
        res = run_sweep(sweep, dask_root, workers=a.workers, dashboard="127.0.0.1:0", progress=False, html_index=False)
        t_dask = time.perf_counter() - t0
        st_dask = {f"{r['notebook']}/{r['run_key']}": r["status"] for r in res.rows}
        n_csv, worst = same_numbers(seq_root, dask_root)
    runs = len(sweep.runs)
    bad = {k: v for k, v in {**st_seq, **st_dask}.items() if v != "complete"}
    print(f"sweep {sweep.name}: {runs} runs ({', '.join(sweep.notebooks())}), {cores} cores, "
          f"{a.workers or cores} Dask workers")  # fmt: skip
    print(f"{'':40s}{'wall s':>10s}{'ratio':>8s}")
    print(f"{'baseline: the runs one after another':40s}{t_seq:10.1f}{1.0:8.2f}")
    print(f"{'ours: python -m utils.sweep (LocalCluster)':40s}{t_dask:10.1f}{t_seq / t_dask:8.2f}")
    print(f"speed-up {t_seq / t_dask:.2f}x (aim >= 1.6x on 2 cores); cluster start-up included")
    print(f"same numbers: {n_csv} CSV files compared, largest relative difference {worst:.1e}")
    if bad:
        print(f"NOT COMPLETE: {bad}")
        sys.exit(1)


if __name__ == "__main__":
    main()
