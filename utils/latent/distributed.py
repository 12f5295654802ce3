"""Compressor training on many processes: DDP under ``torch.distributed``, launched by ``torchrun`` or
``accelerate launch`` (one process per GPU; or several CPU processes with the gloo backend).

    torchrun --nproc-per-node 8 -m utils.latent.distributed --out runs/qwen7b --model Qwen/Qwen2.5-7B-Instruct \\
        --device cuda --dtype bfloat16 --hidden_layers 0,14 --salience_steps 3000 --recall_steps 20000 \\
        --qa_steps 20000 --train_batch_size 64
    python -m utils.latent.distributed --out runs/tiny ...      # one process: the same code, world size 1

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
import os
import sys
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import torch
import torch.distributed as tdist


@dataclass
class Dist:
    """This process's place in a distributed run (world size 1 without ``torchrun``)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @classmethod
    def start(cls, device: str = "cpu") -> tuple["Dist", torch.device]:
        """Join the process group ``torchrun`` describes in the environment (gloo on the CPU, nccl on GPUs);
        returns this process's :class:`Dist` and its device (its own GPU)."""
        from ..device import local_device

        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        dev = local_device(device, local)
        if world > 1 and not tdist.is_initialized():
            tdist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
        return cls(rank, world, local), dev

    def share(self, n: int) -> slice:
        """This process's contiguous share of ``n`` items (the global batch), near-equal across processes."""
        if n < self.world:
            raise ValueError(
                f"a global batch of {n} cannot be split over {self.world} processes: use train_batch_size >= "
                f"{self.world} (it does not change with the number of processes)"
            )
        return slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module as DDP sees it (a no-op on one process)."""
        if not self.active:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if next(module.parameters()).is_cuda else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)

    def total(self, values: torch.Tensor) -> torch.Tensor:
        """The sum of ``values`` over processes."""
        if self.active:
            values = values.clone()
            tdist.all_reduce(values)
        return values

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()

    def close(self) -> None:
        if self.active and tdist.is_initialized():
            tdist.destroy_process_group()


# ----------------------------------------------------------------------------- command line
def _options() -> argparse.ArgumentParser:
    from .compressor import TrainConfig
    from .config import ExperimentConfig

    ap = argparse.ArgumentParser(
        prog="python -m utils.latent.distributed",
        description="Train notebook 04's compressors with DDP (see the module docstring).",
    )
    ap.add_argument("--out", required=True, help="run folder: train_cache.pt, ckpt_seed<N>/, train_log.jsonl")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="the reader's weights")
    ap.add_argument("--save_every", type=int, default=50, help="checkpoint every this many steps")

    def parse_bool(s: str) -> bool:
        if s.lower() not in ("true", "false", "1", "0"):
            raise argparse.ArgumentTypeError(f"{s!r}: use true or false")
        return s.lower() in ("true", "1")

    for cls in (ExperimentConfig, TrainConfig):
        for f in fields(cls):
            if f.name == "train" or f.default is MISSING:
                continue
            kind = {"bool": parse_bool, "int": int, "float": float}.get(str(f.type), str)  # annotations are strings
            ap.add_argument(f"--{f.name}", type=kind, default=f.default, help=f"default {f.default!r}")
    return ap


def main(argv=None) -> int:
    from .config import ExperimentConfig
    from .experiment import train_from_scratch

    args = vars(_options().parse_args(argv))
    out, dtype, save_every = Path(args.pop("out")), args.pop("dtype"), args.pop("save_every")
    cfg = ExperimentConfig.from_params(args)
    dist, dev = Dist.start(cfg.train.device)
    try:
        train_from_scratch(cfg, out, dist, dev, getattr(torch, dtype), save_every=save_every)
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
