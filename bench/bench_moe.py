"""Benchmark: a Mixtral-shaped and a DeepSeek-V3-shaped checkpoint (a few blocks, every matrix at its real
size) through the weight sweep and the attention sweep, peak memory measured, beside the naive path.

Needs the fixtures ``mixtral-8x7b-2l`` and ``deepseek-v3-2l`` (``python -m utils.weights.fixtures
mixtral-8x7b-2l deepseek-v3-2l``, ~13 GB outside the repository, see :mod:`utils.weights.fixtures`); without
them it prints how to create them and exits 0.

Per fixture, each path in its own child process (peak RSS = the child's ``ru_maxrss``, imports included):

* ours: ``open_weights`` + ``weight_sweep`` (float32 Gram, 2 workers; every expert its own matrix, read as
  one slice of the fused 3-D tensor) and ``sweep_attention`` (every head's QK and OV kernels; DeepSeek: the
  exact products through the latent projections and the decoupled rotary kernel);
* naive: ``transformers.AutoModelForCausalLM.from_pretrained`` (weights as stored, bf16), then
  ``torch.linalg.svdvals`` (float32) on every matrix (each expert of a 3-D tensor): the load is measured,
  the SVD loop is timed on one matrix of each shape and extrapolated by the number of matrices of that
  shape (the whole loop would take about an hour on 2 cores); its peak RSS is the load's, a lower bound.

    python bench/bench_moe.py                    # both fixtures
    python bench/bench_moe.py deepseek-v3-2l     # one of them
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import GB, measure, warm  # noqa: E402

FIXTURES = ("mixtral-8x7b-2l", "deepseek-v3-2l")


def bench(name: str) -> None:
    from utils.weights import open_weights
    from utils.weights.fixtures import MODELS, fixture_dir

    folder = fixture_dir(name)
    src = open_weights(folder)
    refs = src.matrices()
    big = max(refs, key=lambda r: r.shape[0] * r.shape[1])
    print(f"\n{name} ({MODELS[name]}): {len(refs)} matrices, {src.dims.n_experts} experts per mixture block")
    n_big = big.shape[0] * big.shape[1]
    print(f"largest single matrix: {big.name} {big.shape[0]} x {big.shape[1]} ({2 * n_big / GB:.2f} GB bf16)")
    warm(folder)
    sw = measure("sweep", folder, "float32")
    at = measure("attention", folder)
    nv = measure("naive_sample", folder)
    print(f"{'':52s}{'wall s':>9s}{'peak RSS GB':>13s}")
    print(f"{'ours: weight sweep (float32 Gram, 2 workers)':52s}{sw['wall_s']:9.0f}{sw['peak_rss'] / GB:13.2f}")
    print(f"{'ours: attention sweep (' + str(at['heads']) + ' heads, every kernel)':52s}{at['wall_s']:9.0f}", end="")
    print(f"{at['peak_rss'] / GB:13.2f}")
    label = f"naive: from_pretrained {nv['load_s']:.0f} s + svdvals loop (extrapolated)"
    print(f"{label:52s}{nv['wall_s']:9.0f}{nv['peak_rss'] / GB:13.2f}")
    print(
        f"naive / ours (weight sweep): time {nv['wall_s'] / sw['wall_s']:.2f}x, "
        f"peak RSS {nv['peak_rss'] / sw['peak_rss']:.2f}x (the naive RSS is a lower bound); "
        f"matrices {nv['matrices']} vs ours {len(refs)}"
    )


def main(argv: list[str]) -> int:
    from utils.weights.fixtures import fixture_dir, fixture_ready

    names = argv or list(FIXTURES)
    unknown = [n for n in names if n not in FIXTURES]
    if unknown:
        print(f"bench_moe: unknown fixture {', '.join(unknown)}; choose from {', '.join(FIXTURES)}")
        return 2
    missing = [n for n in names if not fixture_ready(fixture_dir(n))]
    if missing:
        print(
            f"bench_moe: skipped: fixture(s) {', '.join(missing)} absent under {fixture_dir(missing[0]).parent}. "
            f"Create them once with `python -m utils.weights.fixtures {' '.join(FIXTURES)}` (~13 GB of disk)."
        )
        return 0
    import torch

    print(f"bench_moe: CPU, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    for name in names:
        bench(name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
