"""The tensor-parallel group a model is built for.

Passed explicitly to every parallel layer (no global), so two engines with different
parallel setups can live in one process and tests can build TP-sharded layers directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ParallelGroup:
    rank: int = 0
    size: int = 1
    group: Any = None  # a torch.distributed ProcessGroup when size > 1 (gloo on CPU, NCCL on CUDA)
    cpu_group: Any = None  # a gloo group for control messages (the schedule), whatever the device

    def broadcast_bytes(self, items: list[bytes] | None) -> list[bytes]:
        """Rank 0's list of messages, on every rank (the others pass None)."""
        if self.size == 1:
            return items or []
        box: list[Any] = [items if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, group=self.cpu_group)
        return list(box[0] or [])

    def all_reduce_min(self, value: int) -> int:
        """The smallest `value` over the ranks (pool sizes must agree or schedules diverge)."""
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.cpu_group)
        return int(t.item())

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            dist.all_reduce(x, group=self.group)
        return x

    def all_gather_last_dim(self, x: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)


SINGLE = ParallelGroup()


def init_tp_group(rank: int, size: int, store_path: str, device: torch.device) -> ParallelGroup:
    """Join the tensor-parallel group of one server through a file store in its private ipc
    directory: no TCP port to pick, so several servers on one machine never collide."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method=f"file://{store_path}", rank=rank, world_size=size)
    cpu_group = dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD
    return ParallelGroup(rank=rank, size=size, group=dist.group.WORLD, cpu_group=cpu_group)


def divide(numerator: int, denominator: int, what: str) -> int:
    if numerator % denominator != 0:
        raise ValueError(f"{what} ({numerator}) is not divisible by the tensor-parallel size ({denominator})")
    return numerator // denominator
