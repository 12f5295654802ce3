"""Benchmark: the full weight sweep of the bundled model, loading included.

Baseline (issue 2): read the GGUF with the ``gguf`` package, dequantise every 2-D tensor, then a
plain loop of float32 ``torch.linalg.svdvals`` + effective rank. Ours: ``open_weights`` +
``weight_sweep`` (fast GGUF reader, torch dequantisation, float64 Gram + eigvalsh on two threads).
Both in this one process, same file (already in the page cache), same machine state.
"""

from __future__ import annotations

import time

import torch


def baseline(path):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    t0 = time.perf_counter()
    reader = GGUFReader(str(path))
    mats = {t.name: torch.from_numpy(dequantize(t.data, t.tensor_type)) for t in reader.tensors if len(t.shape) == 2}
    t_load = time.perf_counter() - t0
    ranks = {}
    for name, W in mats.items():
        S = torch.linalg.svdvals(W.float())
        p = S / S.sum()
        p = p[p > 0]
        ranks[name] = float(torch.exp(-(p * p.log()).sum()))
    return t_load, time.perf_counter() - t0 - t_load, ranks


def ours(spec):
    from utils.weight_ranks import weight_sweep
    from utils.weights import open_weights

    t0 = time.perf_counter()
    df = weight_sweep(open_weights(spec), progress=False)
    return time.perf_counter() - t0, dict(zip(df["name"], df["eff_rank"]))


def main():
    from utils.weights import bundled_gguf_path

    path = bundled_gguf_path()
    path.read_bytes()  # page cache warm for both
    ours("smollm2")  # warm-up: imports, thread pools, BLAS initialisation
    t_ours, r_ours = ours("smollm2")
    t_load, t_svd, r_base = baseline(path)
    diff = max(abs(r_ours[k] - r_base[k]) / r_base[k] for k in r_base)
    n = len(r_base)
    print(
        f"bundled model sweep: {n} matrices (all 2-D weights, 49152x576 embedding included), "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"{'':34s}{'load s':>9s}{'compute s':>11s}{'total s':>9s}")
    print(f"{'baseline: gguf + float32 svdvals':34s}{t_load:9.2f}{t_svd:11.2f}{t_load + t_svd:9.2f}")
    print(f"{'ours: open_weights + weight_sweep':34s}{'(overlapped)':>20s}{t_ours:9.2f}")
    print(f"speed-up: {(t_load + t_svd) / t_ours:.2f}x   (target: ours <= 4 s; {'met' if t_ours <= 4 else 'NOT met'})")
    print(f"max relative difference of effective ranks, ours vs baseline: {diff:.2e}")


if __name__ == "__main__":
    main()
