"""One process's place in a distributed run (:class:`Dist`): the process group ``torchrun`` describes, this
process's share of a global batch, the DDP wrapper, sums over processes. World size 1 without ``torchrun``, so
the one-process path is the same code. The command that trains under DDP is :mod:`.ddp`.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

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
            backend = "nccl" if dev.type == "cuda" else "gloo"
            # rank 0 may build the training features for a long while before the others read them
            tdist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(hours=6))
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
        """The module as DDP sees it (a no-op on one process); every parameter of it must take part in the loss."""
        if not self.active:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if next(module.parameters()).is_cuda else None
        return DistributedDataParallel(module, device_ids=ids)

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
