"""Benchmark: the vectorised SA-rescale analysis (utils.rescale.analyze, anchor="best") on a geometry
of 80 layers x 64 heads x 128 singular values, against a plain-loop implementation of the seed's
experiments (1), (2), (2b), (3) (the baseline; same numbers).

    .venv/bin/python bench/bench_rescale.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from utils.rescale import analyze  # noqa: E402

L, H, K = 80, 64, 128


def cos(x, y):
    xn, yn = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    return 0.0 if xn < 1e-20 or yn < 1e-20 else float((x * y).sum() / (xn * yn))


def seed_loops(sigma, ent):
    """The seed's experiments with per-(layer, head) Python loops, anchor = best."""
    nL, nH, _ = sigma.shape
    shape = np.zeros_like(sigma)
    for l in range(nL):
        for h in range(nH):
            mx = sigma[l, h].max()
            shape[l, h] = sigma[l, h] / mx if mx > 1e-20 else sigma[l, h]
    per_head = [
        np.mean([cos(shape[a, h], shape[b, h]) for a in range(nL) for b in range(a + 1, nL)]) for h in range(nH)
    ]
    best, aL = -1.0, nL - 1
    for c in range(nL):
        s = sum(cos(shape[c, h], shape[l, h]) for h in range(nH) for l in range(nL) if l != c)
        if s > best:
            best, aL = s, c
    T = np.zeros((nL, nH))
    R = np.zeros((nL, nH))
    for l in range(nL):
        for h in range(nH):
            x, y = sigma[l, h], sigma[aL, h]
            d = float((y * y).sum())
            if d < 1e-20:
                T[l, h], R[l, h] = 0.0, 1.0
                continue
            T[l, h] = float((x * y).sum() / d)
            xn = float(np.linalg.norm(x))
            R[l, h] = float(np.linalg.norm(x - T[l, h] * y)) / xn if xn > 1e-20 else 0.0
    c1 = np.corrcoef(T.ravel(), ent.ravel())[0, 1]
    c2 = np.corrcoef(sigma.max(-1).ravel(), ent.ravel())[0, 1]
    cross = [np.mean([cos(shape[l, a], shape[l, b]) for a in range(nH) for b in range(a + 1, nH)]) for l in range(nL)]
    return aL, np.array(per_head), T, R, c1, c2, np.array(cross)


def main():
    rng = np.random.default_rng(0)
    base = np.sort(rng.gamma(1.5, 1.0, (H, K)), -1)[:, ::-1]
    sigma = np.sort(base[None] * rng.uniform(0.3, 3, (L, H, 1)) * np.exp(rng.normal(0, 0.3, (L, H, K))), -1)[
        ..., ::-1
    ].copy()
    ent = rng.uniform(0, 3, (L, H))

    analyze(sigma, ent, "best")  # warm-up
    t = time.perf_counter()
    res = analyze(sigma, ent, "best", rank_k_max=0, n_boot=0)
    t_core = time.perf_counter() - t
    t = time.perf_counter()
    analyze(sigma, ent, "best", rank_k_max=4, n_boot=2000)
    t_full = time.perf_counter() - t
    t = time.perf_counter()
    aL, ph, T, R, c1, c2, cross = seed_loops(sigma, ent)
    t_loop = time.perf_counter() - t

    same = (
        aL == res.anchor_layer
        and np.allclose(ph, res.per_head_cos, rtol=1e-10)
        and np.allclose(T, res.T, rtol=1e-10)
        and np.allclose(R, res.resid, rtol=1e-10)
        and np.allclose(cross, res.cross_head_cos, rtol=1e-10)
        and np.isclose(c1, res.corr_T_entropy)
        and np.isclose(c2, res.corr_opnorm_entropy)
    )
    print(f"geometry {L} layers x {H} heads x {K} singular values, anchor=best")
    print(f"{'implementation':<52}{'seconds':>10}{'speed-up':>10}")
    print(f"{'seed loops (baseline): experiments 1, 2, 2b, 3':<52}{t_loop:>10.3f}{1.0:>10.1f}")
    print(f"{'utils.rescale.analyze: experiments 1, 2, 2b, 3':<52}{t_core:>10.3f}{t_loop / t_core:>10.1f}")
    print(f"{'  + rank-k (k<=4) + 2 x 2000-resample bootstrap':<52}{t_full:>10.3f}{t_loop / t_full:>10.1f}")
    print(f"same numbers as the loops: {same}")


if __name__ == "__main__":
    main()
