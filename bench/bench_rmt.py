"""Benchmark: the full random-matrix sweep of the bundled model against WeightWatcher 0.7.7.

Ours: ``open_weights`` + ``rmt_sweep`` (every 2-D weight, 49152x576 embedding included: singular values,
ESD, Marchenko-Pastur fit and spikes, power-law fit with the KS cutoff scan over every candidate, and
the permuted-entry null with its own spectrum and fits). Baseline: ``WeightWatcher(model).analyze()``
with its defaults on the same model built by ``utils.weights.load_model`` (its load time shown apart),
in the same process, and ``analyze(randomize=True, mp_fit=True)``, which adds its own randomized null
and MP fit, the work ours does. WeightWatcher is a bench-only dependency (``pip install -e '.[bench]'``); without
it the baseline is skipped with a message. Then alpha is compared: with WeightWatcher's own cutoff
policy (``policy="ww"``), at WeightWatcher's chosen cutoff, and with our default (CSN) policy.
"""

from __future__ import annotations

import argparse
import re
import time
import warnings

import numpy as np
import pandas as pd

ROLE = {"q_proj": "W_Q", "k_proj": "W_K", "v_proj": "W_V", "o_proj": "W_O"}
ROLE.update({"gate_proj": "W_gate", "up_proj": "W_up", "down_proj": "W_down", "embed_tokens": "W_embed"})


def ours(spec, n_boot):
    from utils.weight_ranks import rmt_sweep
    from utils.weights import open_weights

    t0 = time.perf_counter()
    df, spectra, _ = rmt_sweep(open_weights(spec), null=True, n_boot=n_boot, progress=False)
    return time.perf_counter() - t0, df, spectra


def weightwatcher_run(spec):
    try:
        import weightwatcher  # noqa: F401
    except ImportError:
        print("WeightWatcher not installed: baseline skipped (install it with `.venv/bin/pip install -e '.[bench]'`)")
        return None
    import logging

    import weightwatcher as ww

    from utils.weights import load_model

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    model, _ = load_model(spec)
    t_load = time.perf_counter() - t0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        details = ww.WeightWatcher(model=model).analyze()
        t_ww = time.perf_counter() - t0
        t0 = time.perf_counter()  # the same diagnostics as ours: its own randomized null and MP fit too
        ww.WeightWatcher(model=model).analyze(randomize=True, mp_fit=True)
        t_same = time.perf_counter() - t0
    return t_load, t_ww, t_same, details


def key(longname: str):
    m = re.search(r"layers\.(\d+)\.\w+\.(\w+)$", longname)
    if m:
        return int(m.group(1)), ROLE.get(m.group(2))
    return (-1, "W_embed") if longname.endswith("embed_tokens") else None


def compare_alpha(df, spectra, details):
    from utils.spectral import rmt

    ww = details.assign(k=details.longname.map(key)).dropna(subset=["k"])
    ours_ = df.assign(k=list(zip(df.layer_idx, df.weight_type))).set_index("k")
    rows = []
    for _, w in ww.iterrows():
        if w.k not in ours_.index:
            continue
        o = ours_.loc[[w.k]].iloc[0]
        lam = rmt.esd(spectra[o["name"]], (int(o.rows), int(o.cols)))
        same = rmt.powerlaw_fit(lam, policy="ww")
        # WW's lambda is sigma^2, ours sigma^2 / N: its cutoff is our eigenvalue nearest xmin / N (not a float compare)
        at_xmin = rmt.alpha_mle(lam, lam[np.argmin(np.abs(lam - w.xmin / max(o.rows, o.cols)))])
        rows.append((w.k, w.alpha, same.alpha, at_xmin, o.alpha, w.num_pl_spikes, o.n_tail, o.credible))
    c = pd.DataFrame(
        rows, columns=["k", "ww", "ours_ww_policy", "ours_at_ww_xmin", "ours_csn", "ww_tail", "csn_tail", "ok"]
    )
    rel = lambda a, b: np.abs(a - b) / np.abs(b)  # noqa: E731
    print(f"\nalpha on {len(c)} matched matrices (WeightWatcher's lm_head is the tied embedding: not matched twice)")
    for col, what in (
        ("ours_ww_policy", "our fit, WeightWatcher's cutoff policy"),
        ("ours_at_ww_xmin", "our MLE at WeightWatcher's cutoff"),
    ):
        r = rel(c[col], c.ww)
        print(f"  {what:<45s} max rel diff {r.max():.1e}, within 1e-4: {(r < 1e-4).sum()}/{len(c)}")
    r = rel(c.ours_csn, c.ww)
    diff = c[r > 0.05]
    print(f"  {'our default (CSN, tails >= 10, two-sided KS)':<45s} within 5%: {(r <= 0.05).sum()}/{len(c)}")
    if len(diff):
        print(
            f"  where they differ by > 5% ({len(diff)}): WeightWatcher's tail median {diff.ww_tail.median():.0f} pts, "
            f"ours {diff.csn_tail.median():.0f}; WeightWatcher alpha > 6 on {(diff.ww > 6).sum()} of them, "
            f"ours not credible on {(~diff.ok.astype(bool)).sum()}"
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boot", type=int, default=0, help="bootstrap replicates in our sweep (notebook 01 uses 30)")
    args = ap.parse_args()
    import torch

    from utils.weights import bundled_gguf_path

    bundled_gguf_path().read_bytes()  # page cache warm for both
    t_ours, df, spectra = ours("smollm2", args.boot)
    print(
        f"bundled model: {len(df)} matrices (every 2-D weight, 49152x576 embedding included), torch threads "
        f"{torch.get_num_threads()}; ours: ESD + MP + spikes + alpha (cutoff scan, {args.boot} bootstrap) + null"
    )
    print(f"ours: open_weights + rmt_sweep                {t_ours:8.2f} s (loading overlapped)")
    base = weightwatcher_run("smollm2")
    if base is None:
        return
    t_load, t_ww, t_same, details = base
    print(f"WeightWatcher 0.7.7: load_model (apart)          {t_load:8.2f} s")
    print(f"WeightWatcher 0.7.7: analyze() ({len(details)} layers) {t_ww:13.2f} s")
    print(
        f"speed-up analyze()/ours: {t_ww / t_ours:.1f}x (aim >= 20x: {'met' if t_ww >= 20 * t_ours else 'NOT met'}) "
        f"with its load: {(t_ww + t_load) / t_ours:.1f}x"
    )
    print(f"WeightWatcher 0.7.7: analyze(randomize=True, mp_fit=True) {t_same:8.2f} s (its null and MP fit, as ours)")
    print(f"speed-up, same diagnostics: {t_same / t_ours:.1f}x")
    compare_alpha(df, spectra, details)


if __name__ == "__main__":
    main()
