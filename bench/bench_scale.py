"""Benchmark: an 8B and a 3B checkpoint on one CPU box, peak memory measured, beside the naive path.

Needs the random-weight fixtures with the exact layout of Llama-3.1-8B and Qwen2.5-3B
(``make fixtures``, ~22 GB outside the repository, see :mod:`utils.weights.fixtures`); without them
it prints how to create them and exits 0.

* 8B fixture: our weight sweep (``open_weights`` + ``weight_sweep``, float64 Gram) and attention
  sweep (``sweep_attention``, every QK and OV head): matrices, wall time, peak RSS, the largest
  single matrix. Aim (issue 13): weight-sweep peak RSS <= 4 GB.
* 3B fixture, in this one run: ours (float64, and the float32 fast path) against the path a user
  would take, ``transformers.AutoModelForCausalLM.from_pretrained`` (weights as stored, bf16) then
  a loop of ``torch.linalg.svdvals`` (float32) over the 2-D parameters; ratios of time and of peak
  RSS, and the effective-rank error of each against our float64 result. The fast path's error is
  also measured on the bundled SmolLM2-135M (real, trained weights).

Each measured path runs in its own child process (this script with ``--child``): its peak resident
memory is the child's own ``ru_maxrss`` (``os.wait4``), imports included; the child's resident
memory right after its imports is printed as the fixed overhead. The shards are read once before
the 3B runs so that both paths find them in the page cache. Takes about an hour on 2 cores.

    python bench/bench_scale.py [--only 8b|3b] [--no-naive]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GB = 1e9


def _rss_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def child(kind: str, model: str, out: str, precision: str, device: str) -> None:
    """One measured path in this process; writes its figures to ``out`` (JSON)."""
    import numpy as np
    import torch

    from utils.attention import sweep_attention
    from utils.spectral import effective_rank
    from utils.weight_ranks import weight_sweep
    from utils.weights import open_weights

    if kind in ("naive", "naive_sample"):
        from transformers import AutoModelForCausalLM  # imported before the clock starts, like ours
    res: dict = {"base_rss": _rss_now()}
    t0 = time.perf_counter()
    if kind == "sweep":
        src = open_weights(model)
        df = weight_sweep(src, device=device, precision=precision, progress=False)
        res["eff_rank"] = dict(zip(df["name"], df["eff_rank"].astype(float)))
    elif kind == "attention":
        from utils.attention import circuits_of

        src = open_weights(model)
        sw = sweep_attention(src, circuits=circuits_of(src), device=device, progress=False)
        res["heads"] = int(sw.L * sw.h)
        res["qk_eff_rank_mean"] = float(sw.eff_rank("qk").mean())
    elif kind == "naive":
        m = AutoModelForCausalLM.from_pretrained(model, dtype="auto")
        res["eff_rank"] = {}
        for name, p in m.named_parameters():
            if p.ndim == 2:
                S = torch.linalg.svdvals(p.detach().float())
                res["eff_rank"][name] = float(effective_rank(S.double().numpy()))
    elif kind == "naive_sample":  # the naive path, its SVD loop timed on one matrix per shape and extrapolated
        m = AutoModelForCausalLM.from_pretrained(model, dtype="auto")
        res["load_s"] = time.perf_counter() - t0
        counts: dict[tuple, list] = {}
        for _, p in m.named_parameters():
            if p.ndim >= 2:  # a 3-D expert tensor is one matrix per expert
                mats = p.detach().reshape(-1, *p.shape[-2:])
                counts.setdefault(tuple(mats.shape[-2:]), [mats[0], 0])[1] += mats.shape[0]
        svd_s = 0.0
        for W, n in counts.values():
            t = time.perf_counter()
            torch.linalg.svdvals(W.float())
            svd_s += (time.perf_counter() - t) * n
        res["svd_s_extrapolated"] = svd_s
        res["matrices"] = sum(n for _, n in counts.values())
        res["threads"] = torch.get_num_threads()
        res["wall_s"] = res["load_s"] + svd_s
        Path(out).write_text(json.dumps(res))
        return
    else:
        raise ValueError(kind)
    res["wall_s"] = time.perf_counter() - t0
    res["threads"] = torch.get_num_threads()
    Path(out).write_text(json.dumps(res, default=lambda x: float(np.asarray(x))))


def measure(kind: str, model: Path, precision: str = "auto", device: str = "cpu") -> dict:
    """Run one path in a child process; its figures plus ``peak_rss`` (bytes, the child's own maximum)."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "result.json"
        cmd = [sys.executable, __file__, "--child", kind, str(model), str(out), precision, device]
        env = {**os.environ, "TSPECTRA_HEADLESS": "1"}
        p = subprocess.Popen(cmd, env=env)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            raise SystemExit(f"bench_scale: the {kind} run on {model} failed (exit {p.returncode})")
        res = json.loads(out.read_text())
    res["peak_rss"] = ru.ru_maxrss * 1024  # Linux: KiB
    return res


def warm(folder: Path) -> None:
    """Read every shard once (page cache), through a small buffer."""
    buf = bytearray(64 << 20)
    for f in sorted(folder.glob("*.safetensors")):
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass


def rel_err(a: dict, b: dict, rename=lambda k: k) -> tuple[float, float]:
    """Max and mean of |a - b| / b over the keys of ``b`` (``a`` keyed by ``rename(key of b)``)."""
    import numpy as np

    e = np.array([abs(a[rename(k)] - v) / v for k, v in b.items()])
    return float(e.max()), float(e.mean())


def bench_8b(folder: Path) -> None:
    from utils.weights import open_weights

    src = open_weights(folder)
    refs = src.matrices()
    big = max(refs, key=lambda r: r.shape[0] * r.shape[1])
    n_big = big.shape[0] * big.shape[1]
    print(f"\n8B fixture ({folder}): Llama-3.1-8B layout, random bf16 weights, {len(refs)} matrices")
    print(
        f"largest single matrix: {big.name} {big.shape[0]} x {big.shape[1]} = {n_big / 1e6:.0f}M values: "
        f"{2 * n_big / GB:.2f} GB as stored (bf16), {8 * n_big / GB:.2f} GB if materialised in float64"
    )
    sw = measure("sweep", folder)
    at = measure("attention", folder)
    print(f"{'':38s}{'wall s':>9s}{'peak RSS GB':>13s}{'after imports GB':>18s}")
    print(f"{'weight sweep (float64 Gram, 2 workers)':38s}{sw['wall_s']:9.0f}{sw['peak_rss'] / GB:13.2f}", end="")
    print(f"{sw['base_rss'] / GB:18.2f}")
    print(f"{'attention sweep (QK + OV, ' + str(at['heads']) + ' heads)':38s}{at['wall_s']:9.0f}", end="")
    print(f"{at['peak_rss'] / GB:13.2f}{at['base_rss'] / GB:18.2f}")
    peak = sw["peak_rss"] / GB
    print(f"aim: 8B weight sweep peak RSS <= 4 GB on the CPU: {'met' if peak <= 4 else 'NOT met'} ({peak:.2f} GB)")
    print(
        f"peak RSS / largest matrix as stored: {sw['peak_rss'] / (2 * n_big):.2f}x with the imports, "
        f"{(sw['peak_rss'] - sw['base_rss']) / (2 * n_big):.2f}x above them"
    )
    _gpu_note(folder)


def _gpu_note(folder: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        print("GPU: none on this machine; CPU figures only (the CUDA paths are not measured here)")
        return
    g = measure("sweep", folder, device="cuda")
    print(f"GPU ({torch.cuda.get_device_name(0)}): weight sweep, batched float32 SVD: {g['wall_s']:.0f} s")


def bench_3b(folder: Path, naive: bool) -> None:
    from utils.weights import open_weights

    src = open_weights(folder)
    print(f"\n3B fixture ({folder}): Qwen2.5-3B layout, random bf16 weights, {len(src.matrices())} matrices")
    warm(folder)
    ours = measure("sweep", folder, "float64")
    fast = measure("sweep", folder, "float32")
    rows = [("ours: weight_sweep, float64 Gram", ours), ("ours: weight_sweep, float32 Gram", fast)]
    base = measure("naive", folder) if naive else None
    if base is not None:
        rows.append((f"naive: from_pretrained + svdvals ({base['threads']} thr)", base))
    print(f"{'':46s}{'wall s':>9s}{'peak RSS GB':>13s}{'eff. rank error vs ours':>26s}")
    for label, r in rows:
        mx, mean = rel_err(r["eff_rank"], ours["eff_rank"])
        err = "(reference)" if r is ours else f"max {mx:.1e}, mean {mean:.1e}"
        print(f"{label:46s}{r['wall_s']:9.0f}{r['peak_rss'] / GB:13.2f}{err:>26s}")
    if base is not None:
        print(
            f"naive / ours (float64): time {base['wall_s'] / ours['wall_s']:.2f}x, "
            f"peak RSS {base['peak_rss'] / ours['peak_rss']:.2f}x"
        )
    print(f"float32 fast path / float64: time {fast['wall_s'] / ours['wall_s']:.2f}x")
    _fast_path_on_real_weights()


def _fast_path_on_real_weights() -> None:
    from utils.weight_ranks import weight_sweep
    from utils.weights import open_weights

    src = open_weights("smollm2")
    t0 = time.perf_counter()
    exact = weight_sweep(src, device="cpu", progress=False)
    t1 = time.perf_counter()
    fast = weight_sweep(src, device="cpu", progress=False, precision="float32")
    t2 = time.perf_counter()
    mx, mean = rel_err(dict(zip(fast["name"], fast["eff_rank"])), dict(zip(exact["name"], exact["eff_rank"])))
    print(
        f"float32 fast path on real weights (bundled SmolLM2-135M, {len(exact)} matrices): effective-rank error "
        f"max {mx:.1e}, mean {mean:.1e}; time {t2 - t1:.1f} s vs {t1 - t0:.1f} s"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["8b", "3b"])
    ap.add_argument("--no-naive", action="store_true", help="skip the transformers baseline (3B)")
    ap.add_argument("--child", nargs=5, metavar=("KIND", "MODEL", "OUT", "PRECISION", "DEVICE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    from utils.weights.fixtures import fixture_dir, fixture_ready

    want = {"8b": "llama-3.1-8b", "3b": "qwen2.5-3b"}
    names = [want[args.only]] if args.only else list(want.values())
    missing = [n for n in names if not fixture_ready(fixture_dir(n))]
    if missing:
        print(
            f"bench_scale: skipped: fixture(s) {', '.join(missing)} absent under {fixture_dir(missing[0]).parent}. "
            "Create them once with `make fixtures` (python -m utils.weights.fixtures; ~22 GB of disk, a few "
            "minutes; TSPECTRA_FIXTURES picks another folder)."
        )
        return 0
    import torch

    print(f"bench_scale: CPU, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; about an hour")
    if "llama-3.1-8b" in names:
        bench_8b(fixture_dir("llama-3.1-8b"))
    if "qwen2.5-3b" in names:
        bench_3b(fixture_dir("qwen2.5-3b"), naive=not args.no_naive)
    return 0


if __name__ == "__main__":
    sys.exit(main())
