"""The parallel groups a model is built for: tensor-parallel ranks within a pipeline stage,
pipeline stages, and the world of all scheduler processes of one server.

Passed explicitly to every parallel layer (no global), so two engines with different
parallel setups can live in one process and tests can build TP-sharded layers directly.
World rank = pp_rank * tp_size + tp_rank; world rank 0 owns the sockets and decides schedules.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

import msgspec
import torch
import torch.distributed as dist

# torch's own default for gloo and NCCL; `radixserve serve --dist-timeout` sets it per server.
DEFAULT_TIMEOUT_S = 1800.0
# How long the ranks of several nodes wait for each other at the rendezvous (node 0's TCP store).
JOIN_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class ParallelGroup:
    rank: int = 0
    size: int = 1
    group: Any = None  # a torch.distributed ProcessGroup when size > 1 (gloo on CPU, NCCL on CUDA)
    cpu_group: Any = None  # a gloo group for control messages (the schedule), whatever the device
    # A DeviceAllReduce (peer-memory kernels for small messages) once the ModelRunner knows the
    # dtype; None: every all-reduce goes to `group`.
    device_comm: Any = None

    def broadcast_bytes(self, items: list[bytes] | None) -> list[bytes]:
        """Rank 0's list of messages, on every rank (the others pass None). World groups only:
        `src` is a global rank."""
        if self.size == 1:
            return items or []
        # A length first, then the bytes only when there are any: most steps bring no input, and
        # then the ranks exchange one 8-byte message instead of pickled objects in two.
        payload = msgspec.msgpack.encode(items) if self.rank == 0 and items else b""
        length = torch.tensor([len(payload)], dtype=torch.int64)
        dist.broadcast(length, src=0, group=self.cpu_group)
        n = int(length.item())
        if n == 0:
            return []
        buf = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if self.rank == 0 else \
            torch.empty(n, dtype=torch.uint8)
        dist.broadcast(buf, src=0, group=self.cpu_group)
        return msgspec.msgpack.decode(buf.numpy().tobytes(), type=list[bytes])

    def all_reduce_min(self, value: int) -> int:
        """The smallest `value` over the ranks (pool sizes must agree or schedules diverge)."""
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.cpu_group)
        return int(t.item())

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum over the group: `x` reduced in place, or a new tensor (use the return value)."""
        if self.size == 1:
            return x
        if self.device_comm is not None:
            return self.device_comm.all_reduce(x)  # type: ignore[no-any-return]
        dist.all_reduce(x, group=self.group)
        return x

    def all_gather_last_dim(self, x: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)


SINGLE = ParallelGroup()


@dataclass(frozen=True)
class PipelineGroup:
    """This process's pipeline stage. Stages run their share of the layers one after another:
    each stage's TP rank t receives hidden states from rank t of the stage before and sends
    them to rank t of the stage after (point-to-point over the world group)."""

    rank: int = 0
    size: int = 1
    tp_rank: int = 0
    tp_size: int = 1
    cpu_group: Any = None  # the world's gloo group: sampled tokens go from the last stage to all

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    @property
    def is_last(self) -> bool:
        return self.rank == self.size - 1

    def world_rank(self, stage: int) -> int:
        return stage * self.tp_size + self.tp_rank

    def layer_range(self, num_layers: int) -> tuple[int, int]:
        """Layers [start, end) of this stage: an even split, earlier stages taking the remainder."""
        if num_layers < self.size:
            raise ValueError(f"the model has {num_layers} layers, fewer than the {self.size} pipeline stages")
        base, extra = divmod(num_layers, self.size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def send_next(self, tensors: list[torch.Tensor]) -> None:
        for t in tensors:
            dist.send(t.contiguous(), dst=self.world_rank(self.rank + 1))

    def recv_prev(self, shapes: list[tuple[int, ...]], dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
        out = []
        for shape in shapes:
            t = torch.empty(shape, dtype=dtype, device=device)
            dist.recv(t, src=self.world_rank(self.rank - 1))
            out.append(t)
        return out

    def broadcast_from_last(self, obj: Any) -> Any:
        """The last stage's (TP rank 0's) object, on every rank of the world."""
        if self.size == 1:
            return obj
        box = [obj if self.is_last and self.tp_rank == 0 else None]
        dist.broadcast_object_list(box, src=(self.size - 1) * self.tp_size, group=self.cpu_group)
        return box[0]


NO_PIPELINE = PipelineGroup()


@dataclass(frozen=True)
class DistGroups:
    tp: ParallelGroup
    pp: PipelineGroup
    world: ParallelGroup  # every scheduler process: schedules and pool sizes are agreed here


ONE_PROCESS = DistGroups(tp=SINGLE, pp=NO_PIPELINE, world=SINGLE)


def init_distributed(world_rank: int, tp_size: int, pp_size: int, store_path: str,
                     device: torch.device, init_addr: str | None = None,
                     timeout_s: float = DEFAULT_TIMEOUT_S) -> DistGroups:
    """Join the process groups of one server.

    On one node through a file store in its private ipc directory: no TCP port to pick, so
    several servers on one machine never collide. Across nodes (`init_addr`, node 0's
    HOST:PORT) through a TCP store that world rank 0 serves there. `timeout_s` bounds how long
    a rank waits at the rendezvous and in any one collective, so a peer that vanished without
    closing its sockets ends the server instead of hanging it (a peer that exits is noticed at
    once: its connections close). Joining the TCP store waits up to JOIN_TIMEOUT_S (or
    `timeout_s` if longer)."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    world_size = tp_size * pp_size
    timeout = datetime.timedelta(seconds=timeout_s)
    if init_addr:
        host, _, port = init_addr.rpartition(":")
        # Joining gets its own, longer wait: the nodes' processes may start minutes apart (an image
        # pull, a model copy), which is no sign of a dead peer.
        store = dist.TCPStore(host, int(port), world_size, is_master=world_rank == 0,
                              timeout=datetime.timedelta(seconds=max(timeout_s, JOIN_TIMEOUT_S)))
        dist.init_process_group(backend=backend, store=store, rank=world_rank, world_size=world_size,
                                timeout=timeout)
    else:
        dist.init_process_group(backend=backend, init_method=f"file://{store_path}", rank=world_rank,
                                world_size=world_size, timeout=timeout)
    world_cpu = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else dist.group.WORLD
    pp_rank, tp_rank = divmod(world_rank, tp_size)
    tp_group: Any = dist.group.WORLD
    if pp_size > 1:
        # Every rank creates every stage's group, in the same order (a collective call).
        for stage in range(pp_size):
            g = dist.new_group(ranks=list(range(stage * tp_size, (stage + 1) * tp_size)), backend=backend,
                               timeout=timeout)
            if stage == pp_rank:
                tp_group = g
    tp = ParallelGroup(rank=tp_rank, size=tp_size, group=tp_group)
    pp = PipelineGroup(rank=pp_rank, size=pp_size, tp_rank=tp_rank, tp_size=tp_size, cpu_group=world_cpu)
    world = ParallelGroup(rank=world_rank, size=world_size, group=dist.group.WORLD, cpu_group=world_cpu)
    return DistGroups(tp=tp, pp=pp, world=world)


def divide(numerator: int, denominator: int, what: str) -> int:
    if numerator % denominator != 0:
        raise ValueError(f"{what} ({numerator}) is not divisible by the tensor-parallel size ({denominator})")
    return numerator // denominator
