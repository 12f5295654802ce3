"""Benchmark: the full QK effective-rank heatmap (singular values and eigenvalues, every head of every
layer) of a model shaped like Qwen2.5-3B, exact factored method vs the research seed's dense per-head
approach (dense d x d ``svdvals`` and ``eigvals`` in float32), timed on a few heads and extrapolated.

    .venv/bin/python bench/bench_attention.py [--dense-heads 2] [--layers 36]

Random Gaussian weights (timing does not depend on the values); a few distinct layers are drawn and
reused so the benchmark needs little memory. Weight generation is not timed. Wall-clock and process
CPU time are both printed: on a shared machine the wall time also counts other people's work.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from helpers import RandomAttentionWeights  # noqa: E402

from utils.attention import dense_kernel_spectra, qk_kernels, sweep_attention  # noqa: E402

QWEN25_3B = dict(L=36, d=2048, h=16, n_kv=2, d_head=128)
TARGET_S = 10.0


def timed(fn):
    """(result, wall seconds, process CPU seconds)."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dense-heads", type=int, default=2, help="heads timed with the dense approach")
    ap.add_argument(
        "--dense-budget",
        type=float,
        default=45.0,
        help="stop timing dense heads after this many seconds (at least one head is timed)",
    )
    ap.add_argument("--layers", type=int, default=QWEN25_3B["L"], help="layers in the factored sweep")
    ap.add_argument("--with-ov", action="store_true", help="also time the sweep with the OV circuits")
    args = ap.parse_args()
    shape = dict(QWEN25_3B, L=args.layers)
    L, d, h, n_kv, r = shape["L"], shape["d"], shape["h"], shape["n_kv"], shape["d_head"]
    n_heads_total = L * h
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"model shape: Qwen2.5-3B-like, L={L}, d={d}, h={h} query heads, n_kv={n_kv}, d_head={r} "
        f"({n_heads_total} heads); torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, load average {load:.1f}"
    )
    src = RandomAttentionWeights(**shape, seed=0, distinct_layers=4)

    # exact factored method: whole heatmap, singular values + eigenvalues (QK, as the seed's heatmap)
    sw, t_fact, c_fact = timed(lambda: sweep_attention(src, circuits=("qk",), progress=False))
    er = sw.eff_rank("qk")
    if args.with_ov:
        _, t_both, c_both = timed(lambda: sweep_attention(src, circuits=("qk", "ov"), progress=False))

    # the seed's dense approach: form the d x d kernel, svdvals and eigvals (float32 like its .float()).
    # Run single-threaded, like the factored method: 2 MKL threads were several times *slower* on this
    # shared 2-core machine, so this is the dense approach's better case and the ratio is conservative.
    Wq, Wk = src.layer_weight(0, "q"), src.layer_weight(0, "k")
    K = qk_kernels(Wq, Wk, h, n_kv, r)
    X, Y, kv = K.X, K.Y, K.index
    t_sv, t_eig, c_dense, max_err = [], [], 0.0, 0.0
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    try:
        for i in range(max(1, args.dense_heads)):
            if i and time.perf_counter() - t_start > args.dense_budget:
                break
            A = (X[i] @ Y[kv[i]]).float()
            S, t1, c1 = timed(lambda A=A: torch.linalg.svdvals(A))
            _, t2, c2 = timed(lambda A=A: torch.linalg.eigvals(A))
            t_sv.append(t1)
            t_eig.append(t2)
            c_dense += c1 + c2
            max_err = max(max_err, float(np.abs(S.double().numpy()[:r] - sw.sv["qk"][0, i]).max() / S[0].item()))
    finally:
        torch.set_num_threads(n_threads)
    n_dense = len(t_sv)
    sv_h, eig_h = float(np.mean(t_sv)), float(np.mean(t_eig))
    dense_total = (sv_h + eig_h) * n_heads_total
    dense_cpu_total = c_dense / n_dense * n_heads_total

    # sanity: factored == float64 dense oracle on one head
    o = dense_kernel_spectra(X[0], Y[kv[0]])
    err64 = float(np.abs(o["sv"][:r] - sw.sv["qk"][0, 0]).max() / o["sv"][0])

    print()
    print(f"{'method':<50}{'per head':>11}{'whole heatmap':>15}{'CPU time':>11}")
    print(
        f"{'dense d x d svdvals (seed, float32)':<50}{sv_h:>10.3f}s{sv_h * n_heads_total:>14.1f}s"
        f"{'':>11}  (extrapolated from {n_dense} heads)"
    )
    print(
        f"{'dense d x d eigvals (seed, float32)':<50}{eig_h:>10.3f}s{eig_h * n_heads_total:>14.1f}s"
        f"{'':>11}  (extrapolated)"
    )
    print(
        f"{'dense total (svdvals + eigvals)':<50}{sv_h + eig_h:>10.3f}s{dense_total:>14.1f}s{dense_cpu_total:>10.1f}s"
    )
    print(
        f"{'factored exact QK (svdvals + eigvals, float64)':<50}{t_fact / n_heads_total:>10.4f}s"
        f"{t_fact:>14.2f}s{c_fact:>10.2f}s  (measured, all heads)"
    )
    if args.with_ov:
        print(
            f"{'factored exact QK + OV (float64)':<50}{t_both / n_heads_total:>10.4f}s{t_both:>14.2f}s"
            f"{c_both:>10.2f}s  (measured)"
        )
    print()
    print(
        f"speed-up factored vs dense, QK heatmap with eigenvalues: {dense_total / t_fact:.0f}x wall-clock, "
        f"{dense_cpu_total / c_fact:.0f}x CPU time"
    )
    print(
        f"target: whole heatmap with eigenvalues <= {TARGET_S:.0f} s wall -> "
        f"{'met' if t_fact <= TARGET_S else 'NOT met'} ({t_fact:.2f} s wall, {c_fact:.2f} s CPU; "
        "wall > CPU means other processes held the cores)"
    )
    print(f"heatmap eff rank: mean {er.mean():.2f}, min {er.min():.2f}, max {er.max():.2f} (of d_head={r})")
    print(
        f"max |sigma_factored - sigma_dense| / sigma_max: {max_err:.1e} vs float32 dense, "
        f"{err64:.1e} vs float64 dense oracle"
    )


if __name__ == "__main__":
    main()
