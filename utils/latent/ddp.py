"""Compressor training on many processes: DDP under ``torch.distributed``, launched by ``torchrun`` or
``accelerate launch`` (one process per GPU; or several CPU processes with the gloo backend).

    torchrun --nproc-per-node 8 -m utils.latent.ddp --out runs/qwen7b --model Qwen/Qwen2.5-7B-Instruct \\
        --device cuda --dtype bfloat16 --hidden_layers 0,14 --salience_steps 3000 --recall_steps 20000 \\
        --qa_steps 20000 --train_batch_size 64
    python -m utils.latent.ddp --out runs/tiny ...      # one process: the same code, world size 1

Every option is a field of :class:`.config.ExperimentConfig` or :class:`.compressor.TrainConfig` under its
notebook-04 parameter name (``--help`` lists them). What the run guarantees:

* **The global batch does not depend on the number of processes.** Every process draws the same batch of
  ``train_batch_size`` items from ``(seed, compressor, step)`` and takes its contiguous share; each loss term
  is a sum over the process's share divided by the *global* count (answer tokens, questions, context tokens),
  so the DDP-averaged gradient is the one-process gradient of the whole batch (to float rounding; the test
  runs two gloo processes against one). Logged losses are summed over processes.
* **Caches built once:** the hidden states the encoders read and the teacher's top-k logits are built by rank
  0 into ``<out>/train_cache.pt`` and memory-mapped by every process (one copy in the page cache).
* **Rank 0 alone** writes checkpoints (``<out>/ckpt_seed<N>/``) and the log (``<out>/train_log.jsonl``).
* **Resume on any number of processes** (``--resume true``): a checkpoint holds the module, its optimiser
  state and the step; batches depend on the step only, so a run stopped on 8 processes continues on 2.
* **bf16 autocast** on GPUs (``--amp auto``; ``bf16`` forces it, also on the CPU; ``off``).

Evaluate the result with notebook 04: ``-p checkpoint <out>/ckpt_seed0 -p model <the same model>``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import torch

from .distributed import Dist


def _options() -> argparse.ArgumentParser:
    from .compressor import TrainConfig
    from .config import ExperimentConfig

    ap = argparse.ArgumentParser(
        prog="python -m utils.latent.ddp",
        description="Train notebook 04's compressors with DDP (see the module docstring).",
    )
    ap.add_argument("--out", required=True, help="run folder: train_cache.pt, ckpt_seed<N>/, train_log.jsonl")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="the reader's weights")
    ap.add_argument("--save_every", type=int, default=50, help="checkpoint every this many steps")
    ap.add_argument(
        "--until_step",
        type=int,
        default=None,
        help="train each compressor only up to this step in this job (a wall-time limit); --resume true goes on",
    )

    def parse_bool(s: str) -> bool:
        if s.lower() not in ("true", "false", "1", "0"):
            raise argparse.ArgumentTypeError(f"{s!r}: use true or false")
        return s.lower() in ("true", "1")

    for cls in (ExperimentConfig, TrainConfig):
        for f in fields(cls):
            if f.name in ("train", "seed") or f.default is MISSING:  # seeds are --seeds
                continue
            kind = {"bool": parse_bool, "int": int, "float": float}.get(str(f.type), str)  # annotations are strings
            ap.add_argument(f"--{f.name}", type=kind, default=f.default, help=f"default {f.default!r}")
    return ap


def main(argv=None) -> int:
    from .config import ExperimentConfig
    from .trainer import train_from_scratch

    args = vars(_options().parse_args(argv))
    out, dtype, save_every, until = (
        Path(args.pop("out")),
        args.pop("dtype"),
        args.pop("save_every"),
        args.pop("until_step"),
    )
    cfg = ExperimentConfig.from_params(args)
    dist, dev = Dist.start(cfg.train.device)
    try:
        train_from_scratch(cfg, out, dist, dev, getattr(torch, dtype), save_every=save_every, until=until)
    finally:
        dist.close()
    if dist.main:
        print(
            f"checkpoints in {out}/ckpt_seed<N>; evaluate with: python -m utils.run_notebook 04 -p checkpoint "
            f"{out}/ckpt_seed{cfg.seed_list[0]} -p model {cfg.model}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
