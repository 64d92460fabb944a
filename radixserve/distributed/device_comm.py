"""All-reduce of activations across the TP ranks of one host, fast at decode sizes.

A TP decode step all-reduces a [batch, hidden] tensor twice per layer: at batch 1 on a 4096-wide
model that is 8 KiB, where NCCL's ring/tree setup, not bandwidth, sets the time. Over NVLink
every GPU can load its peers' memory directly, so messages of the sizes where it measured faster go through torch's
symmetric memory kernels instead (AllReducePlan holds the measured ranges):

  lamport    one kernel: each rank stores its input into every peer's buffer and sums its own as
             the elements arrive, no barrier (kernels/lamport_all_reduce.py; off until measured
             on two GPUs: RADIXSERVE_ALLREDUCE_LAMPORT_MAX turns it on)
  one-shot   each rank reads every peer's buffer and sums (one pass, latency-bound sizes)
  two-shot   reduce-scatter then all-gather through peer memory (mid sizes)
  NCCL       the rest: inside a CUDA graph its small-message latency is already low, and for
             prefill-sized messages its bandwidth is as good and it needs no staging

The peer buffer is allocated once (torch.distributed._symmetric_memory, IPC handles exchanged
at rendezvous) and every call copies its input there first, so the kernels can be captured in
CUDA graphs like NCCL. NVLink multicast (NVLS) stays off: the lent machines forbid it, and the
one-shot/two-shot kernels need only peer loads and stores. Where symmetric memory is missing
(older torch, no peer access, CPU) every call goes to NCCL/gloo unchanged.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

# Set in every process that may touch NCCL or symmetric memory (the lent machines forbid NVLS).
NO_MULTICAST_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}

KiB = 1 << 10
MiB = 1 << 20


def disable_multicast() -> None:
    for k, v in NO_MULTICAST_ENV.items():
        os.environ.setdefault(k, v)


@dataclass(frozen=True)
class AllReducePlan:
    """Which implementation serves a message of a given size (bytes), from measurements.

    Two H200s over NVLink (benchmarks/results/allreduce_*_h200x2.json, inside CUDA graphs): NCCL
    is fastest up to 512 KiB (7.7 us at 8 KiB against 8.6 for one-shot), two-shot from 1 to
    8 MiB (18.4 against 28.8 us at 2 MiB, the 256-request decode step of an 8B model), NCCL
    again above. World sizes not measured yet use NCCL throughout."""

    lamport_max: int = 0  # messages up to this many bytes: the one-kernel all-reduce (0: never)
    one_shot_max: int = 0  # messages up to this many bytes: one-shot (0: never)
    two_shot_min: int = 1 << 62  # two-shot for sizes in (two_shot_min, two_shot_max]
    two_shot_max: int = 0

    @classmethod
    def measured(cls, world_size: int) -> AllReducePlan:
        lamport = lamport_max_from_env()
        if world_size == 2:
            return cls(lamport_max=lamport, one_shot_max=0, two_shot_min=512 * KiB, two_shot_max=8 * MiB)
        return cls(lamport_max=lamport)

    @property
    def staging_bytes(self) -> int:
        return max(self.one_shot_max, self.two_shot_max)

    def choose(self, nbytes: int, buffer_bytes: int, lamport_bytes: int = 0) -> str:
        if nbytes <= min(self.lamport_max, lamport_bytes):
            return "lamport"
        if nbytes > buffer_bytes:
            return "nccl"
        if nbytes <= self.one_shot_max:
            return "one_shot"
        if self.two_shot_min < nbytes <= self.two_shot_max:
            return "two_shot"
        return "nccl"


LAMPORT_ENV = "RADIXSERVE_ALLREDUCE_LAMPORT_MAX"


def lamport_max_from_env() -> int:
    """Bytes up to which the one-kernel all-reduce serves, from RADIXSERVE_ALLREDUCE_LAMPORT_MAX
    (a byte count, with an optional K or M suffix; unset or 0: never)."""
    raw = os.environ.get(LAMPORT_ENV, "").strip()
    if not raw:
        return 0
    scale = {"K": KiB, "M": MiB}.get(raw[-1].upper(), 1)
    digits = raw[:-1] if scale > 1 else raw
    if not digits.isdigit():
        raise ValueError(f"{LAMPORT_ENV}={raw!r}: expected a byte count such as 65536, 64K or 1M")
    return int(digits) * scale


def peer_access(device: torch.device, size: int) -> bool:
    """Whether this GPU can load from every other GPU of the group (NVLink or PCIe P2P)."""
    me = device.index if device.index is not None else torch.cuda.current_device()
    return all(torch.cuda.can_device_access_peer(me, other) for other in range(size) if other != me)


class DeviceAllReduce:
    def __init__(self, group: Any, device: torch.device, dtype: torch.dtype,
                 plan: AllReducePlan | None = None) -> None:
        self.group = group
        self.dtype = dtype
        self.size = dist.get_world_size(group)
        self.plan = plan or AllReducePlan.measured(self.size)
        self.buf: torch.Tensor | None = None
        self.lamport: LamportBuffers | None = None
        self.group_name = ""
        self.reason = ""
        elems = self.plan.staging_bytes // dtype.itemsize  # the largest message worth staging
        try:
            if elems == 0 and self.plan.lamport_max == 0:
                raise RuntimeError(f"no size is faster than NCCL on {self.size} ranks as measured")
            if device.type != "cuda":
                raise RuntimeError("not a CUDA device")
            if not peer_access(device, self.size):
                raise RuntimeError("the GPUs cannot access each other's memory")
            import torch.distributed._symmetric_memory as symm_mem

            if elems:
                buf = symm_mem.empty(elems, dtype=dtype, device=device)
                symm_mem.rendezvous(buf, group.group_name)
                self.buf = buf
            if self.plan.lamport_max:
                self.lamport = LamportBuffers(group, device, dtype, self.plan.lamport_max // dtype.itemsize)
            self.group_name = group.group_name
        except Exception as e:  # a missing feature means NCCL for everything, never a failed start
            self.reason = f"{type(e).__name__}: {e}"
            self.buf = self.lamport = None
            logger.info("peer-memory all-reduce off (%s); NCCL serves every size", self.reason)

    @property
    def buffer_bytes(self) -> int:
        return 0 if self.buf is None else self.buf.numel() * self.buf.element_size()

    @property
    def lamport_bytes(self) -> int:
        return 0 if self.lamport is None else self.lamport.cap * self.dtype.itemsize

    def can_use(self, x: torch.Tensor) -> bool:
        return (self.buf is not None or self.lamport is not None) and x.dtype == self.dtype and x.is_cuda and \
            x.numel() * x.element_size() <= max(self.buffer_bytes, self.lamport_bytes)

    def describe(self) -> dict[str, Any]:
        return {"enabled": self.buf is not None or self.lamport is not None, "reason": self.reason,
                "buffer_bytes": self.buffer_bytes, "lamport_bytes": self.lamport_bytes,
                "lamport_max": self.plan.lamport_max, "one_shot_max": self.plan.one_shot_max,
                "two_shot_min": self.plan.two_shot_min, "two_shot_max": self.plan.two_shot_max}

    def all_reduce(self, x: torch.Tensor, force: str | None = None) -> torch.Tensor:
        """The sum over the group, as a new tensor or `x` reduced in place (NCCL)."""
        nbytes = x.numel() * x.element_size()
        mode = force or (self.plan.choose(nbytes, self.buffer_bytes, self.lamport_bytes) if self.can_use(x)
                         else "nccl")
        if mode == "lamport" and self.lamport is not None:
            return self.lamport.all_reduce(x)
        if mode == "nccl" or mode == "lamport" or self.buf is None:
            dist.all_reduce(x, group=self.group)
            return x
        staged = self.buf[: x.numel()]
        staged.copy_(x.reshape(-1))
        if mode == "one_shot":
            out: torch.Tensor = torch.ops.symm_mem.one_shot_all_reduce(staged, "sum", self.group_name)
            return out.view(x.shape)
        torch.ops.symm_mem.two_shot_all_reduce_(staged, "sum", self.group_name)
        # The staging buffer is reused by the next call: hand back a copy (a layer may keep it
        # as its residual).
        return x.copy_(staged.view(x.shape))


class LamportBuffers:
    """This rank's share of the one-kernel all-reduce: a symmetric-memory buffer of three slots (every
    peer maps it), the table of every rank's buffer address, and the kernel's per-program state."""

    def __init__(self, group: Any, device: torch.device, dtype: torch.dtype, cap: int) -> None:
        import torch.distributed._symmetric_memory as symm_mem

        from radixserve.kernels import lamport_all_reduce as kernel

        self.rank, self.size, self.cap = dist.get_rank(group), dist.get_world_size(group), cap
        self.buf = symm_mem.empty(kernel.buffer_elements(self.size, cap), dtype=kernel.int_view_dtype(dtype),
                                  device=device)
        self.buf.fill_(kernel.sentinel(dtype))
        handle = symm_mem.rendezvous(self.buf, group.group_name)
        self.peers = torch.tensor(list(handle.buffer_ptrs), dtype=torch.int64, device=device)
        self.state = kernel.new_state(device)
        kernel.warm_up(self.peers, self.size, cap, dtype)
        self._reduce = kernel.lamport_all_reduce
        # No rank may push into a buffer before its owner has filled it with the sentinel.
        torch.cuda.synchronize(device)
        dist.barrier(group)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        out = self._reduce(x.reshape(-1), self.peers, self.state, self.rank, self.size, self.cap)
        return out.view(x.shape)
