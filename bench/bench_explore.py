"""Benchmark: an explorer's redraw after a control changes, against recomputing what it shows (issue 23).

Runs notebooks 01 and 02 on the bundled model into a temporary output root (or reads ``--runs ROOT`` holding
``01_weight_ranks/<run>`` and ``02_attention_kernels/<run>``), then changes each explorer's controls as a
user would (headless, the Agg canvas) and times each redraw. The baseline is the computation a user re-runs
today to see the same thing after editing a parameter: for a head, its layer's exact QK / OV spectra
(``sweep_attention`` on that one layer, eigenvalues included); for a matrix, the weight sweep with its RMT
columns and permuted null restricted to that one layer. The baseline is a lower bound: a notebook cell also
re-renders its figures.

    .venv/bin/python bench/bench_explore.py [--runs output] [--changes 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")


def runs_in(root: Path | None) -> dict[str, Path]:
    if root is not None:
        found = {nb: sorted((root / nb).glob("*/run.json")) for nb in ("01_weight_ranks", "02_attention_kernels")}
        if all(found.values()):
            return {nb: found[nb][0].parent for nb in found}
        print(f"{root} holds no finished run of 01 and 02: running them here")
    from utils.running.runner import execute

    tmp = Path(tempfile.mkdtemp(prefix="bench-explore-"))
    t = time.perf_counter()
    out = {
        "01_weight_ranks": execute("01_weight_ranks", "bench", {"n_boot": 0}, tmp, progress=False),
        "02_attention_kernels": execute("02_attention_kernels", "bench", {}, tmp, progress=False),
    }
    print(f"notebooks 01 and 02 on the bundled model: {time.perf_counter() - t:.0f} s (into {tmp})")
    return out


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, default=None, help="an output root with runs of 01 and 02")
    ap.add_argument("--changes", type=int, default=8, help="control changes timed per explorer")
    a = ap.parse_args()

    from utils import attention, explore
    from utils.weight_ranks import rmt_sweep
    from utils.weights import open_weights

    runs = runs_in(a.runs)
    heads = explore.open(runs["02_attention_kernels"])
    weights = explore.open(runs["01_weight_ranks"])
    src = open_weights(heads.results.params.get("model", "smollm2"))
    L, h = heads.sv["qk"].shape[:2]
    picks = [(i * 7 % L, i * 3 % h) for i in range(1, a.changes + 1)]

    redraw_h = [timed(lambda p=p: heads.select(layer=p[0], head=p[1])) / 2 for p in picks]  # two controls
    layers = sorted({p[0] for p in picks})[:3]
    recompute_h = [
        timed(lambda lay=lay: attention.sweep_attention(src, layers=[lay], progress=False)) for lay in layers
    ]
    types = list(weights.controls["weight_type"].options)
    wl = int(weights.controls["layer"].max)
    wpicks = [(types[i % len(types)], i * 5 % (wl + 1)) for i in range(1, a.changes + 1)]
    redraw_w = [timed(lambda p=p: weights.select(weight_type=p[0], layer=p[1])) / 2 for p in wpicks]

    class OneLayer:  # the sweep restricted to one layer's matrices (what re-running for one matrix costs)
        def __init__(self, src, layer):
            self.src, self.layer = src, layer

        def __getattr__(self, k):
            return getattr(self.src, k)

        def matrices(self):
            return [r for r in self.src.matrices() if r.layer == self.layer]

    def one_layer_sweep(lay):
        rmt_sweep(OneLayer(src, lay), null=True, progress=False, device="cpu", include_model_level=False)

    recompute_w = [timed(lambda lay=lay: one_layer_sweep(lay)) for lay in layers]

    def row(label, red, rec):
        r, c = statistics.median(red), statistics.median(rec)
        print(f"{label:34s}{r * 1e3:12.0f}{c * 1e3:14.0f}{c / r:10.1f}x")

    print(f"\nbundled model ({src.name}): {L} layers x {h} heads; median of {a.changes} control changes")
    print(f"{'explorer':34s}{'redraw ms':>12s}{'recompute ms':>14s}{'ratio':>11s}")
    row("heads (02): layer, head", redraw_h, recompute_h)
    row("weights (01): weight type, layer", redraw_w, recompute_w)
    print("recompute: one layer's exact head spectra (02) / one layer's weight sweep with RMT columns and null (01)")


if __name__ == "__main__":
    main()
