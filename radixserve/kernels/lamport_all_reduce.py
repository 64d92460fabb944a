"""One-kernel all-reduce for small messages over peer memory, with no barrier: the data is its own flag.

At batch 1 a TP step all-reduces a few kilobytes twice a layer, and what costs is latency. NCCL
inside a CUDA graph takes ~8 us for 8 KiB on two H200s; torch's one-shot kernel over symmetric
memory needs a copy into its buffer and a barrier round trip before it reads, and measured slower.
This kernel (the "Lamport" scheme of TensorRT-LLM's small-message all-reduce, written anew here)
does one pass:

  push    each rank stores its input into its own sub-slot of every rank's buffer (NVLink stores);
  reduce  each rank reads the W sub-slots of its own buffer, spinning on an element until it no
          longer holds the sentinel (-0.0's bit pattern), sums them in float32 in rank order (so
          every rank gets the same bits), and writes the sum.

A -0.0 in the input is stored as +0.0 (the sum does not change), so a stored value never equals
the sentinel. The buffer has three slots used in turn; in call j a rank sets the slot of call j-1
back to the sentinel. That is safe without a barrier: a peer writes that slot again in call j+2,
and it can only get there after reading what this rank pushes in call j+1, which this rank does
after the clearing (the kernels of one stream run in order).

Each program owns the same offsets on every rank (a grid-stride loop over a fixed number of
programs) and keeps its own state row: its call counter and how many elements each slot was
written with, so it clears exactly what was written even when sizes change between calls. Every
rank must make the same sequence of calls with the same sizes, as with NCCL; a rank that skipped
one would leave its peers spinning.

`PHASE` splits push from reduce for the CPU interpreter, which runs one program at a time and
would spin forever on a peer that has not run yet; the GPU runs both in one launch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixserve.kernels.pdl import gdc_launch_dependents, gdc_wait, launch_options

PROGRAMS = 132  # fixed grid (each program's counter must see every call); 132 was fastest or equal at every size on one H200
BLOCK = 256  # elements a program moves per pass (33,792 a pass over all programs)
STATE_COLS = 4  # per program: call counter, then the element count each of the 3 slots was written with
SLOTS = 3
PUSH, REDUCE, BOTH = 1, 2, 3


def int_view_dtype(dtype: torch.dtype) -> torch.dtype:
    """The integer type the buffer holds: the element's bits (the sentinel is compared as bits,
    because -0.0 == 0.0 as floats)."""
    if dtype in (torch.bfloat16, torch.float16):
        return torch.int16
    if dtype == torch.float32:
        return torch.int32
    raise ValueError(f"the peer-memory all-reduce takes bf16, fp16 or fp32, not {dtype}")


def sentinel(dtype: torch.dtype) -> int:
    """-0.0's bit pattern, as the signed integer of the element's width."""
    return -(1 << (8 * dtype.itemsize - 1))


@triton.jit
def _clear(mine, n_old, old, pid, stride, cap, elem_int: tl.constexpr, WORLD: tl.constexpr, SENT: tl.constexpr,
           BLOCK: tl.constexpr):
    """This program's offsets of every sub-slot of slot `old` (written with n_old elements) back to the sentinel."""
    fill = tl.full([BLOCK], SENT, elem_int)
    for start in range(pid * BLOCK, n_old, stride):
        offs = start + tl.arange(0, BLOCK)
        m = offs < n_old
        for p in tl.static_range(WORLD):
            tl.store(mine + (old * WORLD + p) * cap + offs, fill, mask=m)


@triton.jit
def _push(X, Peers, n, rank, slot, pid, stride, cap, elem_int: tl.constexpr, WORLD: tl.constexpr,
          SENT: tl.constexpr, BLOCK: tl.constexpr):
    """This program's offsets of the input into this rank's sub-slot of every rank's buffer."""
    for start in range(pid * BLOCK, n, stride):
        offs = start + tl.arange(0, BLOCK)
        m = offs < n
        bits = tl.load(X + offs, mask=m, other=0.0).to(elem_int, bitcast=True)
        bits = tl.where(bits == SENT, 0, bits)  # -0.0 travels as +0.0
        for p in tl.static_range(WORLD):
            peer = tl.load(Peers + p).to(tl.pointer_type(elem_int))
            tl.store(peer + (slot * WORLD + rank) * cap + offs, bits, mask=m)


@triton.jit
def _reduce(Out, mine, n, slot, pid, stride, cap, WORLD: tl.constexpr, SENT: tl.constexpr, BLOCK: tl.constexpr):
    """This program's offsets of the sum, each sub-slot's element read once it is no longer the sentinel."""
    for start in range(pid * BLOCK, n, stride):
        offs = start + tl.arange(0, BLOCK)
        m = offs < n
        acc = tl.zeros([BLOCK], tl.float32)
        for p in tl.static_range(WORLD):  # rank order: every rank adds in the same order
            ptr = mine + (slot * WORLD + p) * cap + offs
            v = tl.load(ptr, mask=m, other=0, volatile=True)
            while tl.sum((v == SENT).to(tl.int32), axis=0) > 0:
                v = tl.load(ptr, mask=m, other=0, volatile=True)
            acc += v.to(Out.dtype.element_ty, bitcast=True).to(tl.float32)
        tl.store(Out + offs, acc.to(Out.dtype.element_ty), mask=m)


# One compiled variant serves every rank and size: a variant compiled (and its module loaded) while a
# peer's kernel spins in the same context could wait on that kernel (CUDA's lazy loading warns of
# exactly this), so warm_up() loads it first and nothing later may need another.
@triton.jit(do_not_specialize=["n", "rank"])
def _lamport_kernel(X, Out, Peers, State, n, rank, cap, WORLD: tl.constexpr, SENT: tl.constexpr,
                    BLOCK: tl.constexpr, PHASE: tl.constexpr, PDL: tl.constexpr):
    pid = tl.program_id(0)
    stride = tl.num_programs(0) * BLOCK
    row = State + pid * 4
    elem_int: tl.constexpr = tl.int16 if X.dtype.element_ty.primitive_bitwidth == 16 else tl.int32
    mine = tl.load(Peers + rank).to(tl.pointer_type(elem_int))
    if PDL:
        # Everything below waits, the state and the clearing too: with a call launched right after
        # another (no kernel between), this one may start while the last still reads the slot it
        # clears and has not yet counted itself.
        gdc_wait()
    call = tl.load(row)
    slot = call % 3
    if PHASE != 1:
        # The slot of the call before this one (the module docstring says why that is free).
        old = (call + 2) % 3
        _clear(mine, tl.load(row + 1 + old), old, pid, stride, cap, elem_int, WORLD, SENT, BLOCK)
    if PHASE != 2:
        _push(X, Peers, n, rank, slot, pid, stride, cap, elem_int, WORLD, SENT, BLOCK)
    if PDL:
        gdc_launch_dependents()
    if PHASE != 1:
        _reduce(Out, mine, n, slot, pid, stride, cap, WORLD, SENT, BLOCK)
        tl.store(row + 1 + slot, n)
        tl.store(row, call + 1)


def buffer_elements(world: int, cap: int) -> int:
    """Elements of the buffer each rank holds: three slots of `world` sub-slots of `cap` each."""
    return SLOTS * world * cap


def new_buffer(world: int, cap: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """A rank's buffer in this process's own device memory, every element the sentinel: for ranks that
    share one process (the tests, the one-GPU benchmarks). Across processes it is symmetric memory
    (distributed/device_comm.LamportBuffers)."""
    return torch.full((buffer_elements(world, cap),), sentinel(dtype), dtype=int_view_dtype(dtype), device=device)


def new_state(device: torch.device | str, programs: int = PROGRAMS) -> torch.Tensor:
    """A rank's kernel state: one row per program (the grid is the number of rows, fixed for its life)."""
    return torch.zeros(programs, STATE_COLS, dtype=torch.int32, device=device)


def warm_up(peers: torch.Tensor, world: int, cap: int, dtype: torch.dtype) -> None:
    """Compile and load the kernel for these buffers without touching them (no elements, a scratch state):
    call it on every rank before the first real call."""
    x = torch.empty(0, dtype=dtype, device=peers.device)
    lamport_all_reduce(x, peers, new_state(peers.device), 0, world, cap)


def lamport_all_reduce(x: torch.Tensor, peers: torch.Tensor, state: torch.Tensor, rank: int, world: int, cap: int,
                       out: torch.Tensor | None = None, phase: int = BOTH) -> torch.Tensor:
    """The sum of `x` over the ranks whose buffers `peers` holds (int64 addresses, one per rank, each
    buffer `buffer_elements(world, cap)` elements of `int_view_dtype(x.dtype)`, filled with the
    sentinel before first use). `x` must be contiguous with at most `cap` elements."""
    n = x.numel()
    if n > cap:
        raise ValueError(f"{n} elements do not fit the peer buffer's {cap}")
    if not x.is_contiguous():
        raise ValueError("the peer-memory all-reduce needs a contiguous input")
    if out is None:
        out = torch.empty_like(x)
    opts = launch_options(x.device) if phase == BOTH else {}
    _lamport_kernel[(state.shape[0],)](x, out, peers, state, n, rank, cap, WORLD=world,
                                 SENT=sentinel(x.dtype), BLOCK=BLOCK, PHASE=phase, PDL=bool(opts), **opts)
    return out
