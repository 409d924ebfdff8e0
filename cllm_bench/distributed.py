"""Several evaluation processes (``accelerate launch`` / ``torchrun``): who does what.

Samples are sharded round-robin by their position in the task (the same shard for every
decoder, so each process holds the ``ar`` reference of its own samples). Each process
appends to its own ``samples.rank<R>.jsonl``; at the end process 0 merges them into one
``samples.jsonl`` in single-process order and writes ``summary.json``. The process group
(gloo) is only used for barriers, so it works on CPU and GPU machines alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place: ``rank`` of ``world`` (``local_rank`` picks the GPU)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "ProcessGroup":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list[T]) -> list[T]:
        """This process's items: positions rank, rank + world, ..."""
        return items[self.rank :: self.world]

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def device(self, requested: str) -> str:
        """One GPU per process: ``auto``/``cuda`` become ``cuda:<local_rank>`` when several run."""
        if self.world > 1 and requested in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return requested
