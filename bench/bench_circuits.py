"""Benchmark: Q-, K-, V-composition scores of every head pair of a Qwen2.5-3B-shaped model (L=36, d=2048,
h=16, n_kv=2, d_head=128; random weights), exact factored method vs the dense d x d computation, timed on
a few pairs and extrapolated. Also checks the factored scores against the dense ones on those pairs.

    .venv/bin/python bench/bench_circuits.py [--layers 36] [--dtype float32] [--dense-pairs 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from helpers import RandomAttentionWeights  # noqa: E402

from utils.attention import composition_scores, layer_kernels  # noqa: E402

QWEN25_3B = dict(L=36, d=2048, h=16, n_kv=2, d_head=128)


def dense_pair(src, la, a, lb, b):
    """The three scores of one pair from dense d x d circuits (float64), and the seconds it took."""
    t = time.perf_counter()
    fro = torch.linalg.matrix_norm
    Ba, Ab = layer_kernels(src, la, "ov")[a].dense()[0], layer_kernels(src, lb, "qk")[b].dense()[0]
    Bb = layer_kernels(src, lb, "ov")[b].dense()[0]
    s = {
        "q": (fro(Ba.T @ Ab) / (fro(Ba) * fro(Ab))).item(),
        "k": (fro(Ab @ Ba) / (fro(Ba) * fro(Ab))).item(),
        "v": (fro(Bb @ Ba) / (fro(Ba) * fro(Bb))).item(),
    }
    return s, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=QWEN25_3B["L"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="precision of the big products")
    ap.add_argument("--dense-pairs", type=int, default=3)
    args = ap.parse_args()
    shape = dict(QWEN25_3B, L=args.layers)
    src = RandomAttentionWeights(**shape, seed=0, distinct_layers=4)
    L, h = shape["L"], shape["h"]
    n_pairs = (L * h) ** 2 // 2 - L * h * h // 2
    print(
        f"Qwen2.5-3B-shaped: L={L}, d={shape['d']}, h={h}, n_kv={shape['n_kv']}, d_head={shape['d_head']}; "
        f"{L * h} heads, {n_pairs} pairs in different layers x 3 compositions; torch threads {torch.get_num_threads()}"
    )
    t0, c0 = time.perf_counter(), time.process_time()
    cs = composition_scores(src, progress=False, dtype=getattr(torch, args.dtype))
    t_ours, c_ours = time.perf_counter() - t0, time.process_time() - c0
    rng = np.random.default_rng(0)
    err, t_dense = 0.0, []
    for _ in range(args.dense_pairs):
        la, lb = sorted(rng.choice(L, 2, replace=False))
        a, b = rng.integers(h, size=2)
        s, t = dense_pair(src, la, a, lb, b)
        t_dense.append(t)
        err = max(err, *(abs(cs.scores[c][la * h + a, lb * h + b] - s[c]) / s[c] for c in "qkv"))
    dense_total = float(np.mean(t_dense)) * n_pairs
    print(f"{'method':<52}{'per pair':>12}{'all pairs':>14}")
    dense_name = "dense d x d circuits, float64 (3 products + norms)"
    ours_name = f"exact factored ({cs.route} route, {args.dtype} products)"
    per_pair = float(np.mean(t_dense))
    print(f"{dense_name:<52}{per_pair:>11.3f}s{dense_total / 3600:>13.1f}h  (extrapolated from {len(t_dense)} pairs)")
    print(f"{ours_name:<52}{t_ours / n_pairs * 1e6:>10.1f}us{t_ours:>13.1f}s  (measured, all pairs; CPU {c_ours:.1f}s)")
    print(
        f"speed-up: {dense_total / t_ours:.0f}x; max relative difference factored vs dense on sampled pairs: {err:.1e}"
    )


if __name__ == "__main__":
    main()
