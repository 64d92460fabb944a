"""Greedy argmax of a few rows over the whole vocabulary, in one launch that spreads each row
over the GPU (radixserve/sampling/argmax.py says when it is used).

Each program reduces one BLOCK of a row to its candidate (the first index of its maximum, or of
its first NaN), stores it, and counts itself done on the row's counter; the program that finds
itself last reads the row's candidates and writes the answer, then sets the counter back to 0 for
the next call (CUDA's threadfence-reduction pattern). torch.argmax's semantics: the first index of
the maximum, a NaN beats any number, an all -inf row gives 0. The counters are one set per device:
calls on a device must not run at the same time on two streams (the scheduler samples on one).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024  # vocabulary entries per program: 126 programs a row at a 128k vocabulary
MAX_ROWS = 64  # rows the counters serve; more rows are torch.argmax's (sampling/argmax.py)


@triton.jit
def _candidate(v, idx, valid, n):
    """(value, index) of the first NaN among `valid` entries, else of the first maximum; n is the
    index that loses every min()."""
    nan = (v != v) & valid
    best = tl.max(tl.where(nan | ~valid, float("-inf"), v), axis=0)
    first_best = tl.min(tl.where(valid & (v == best), idx, n), axis=0)
    first_nan = tl.min(tl.where(nan, idx, n), axis=0)
    has_nan = first_nan < n
    return tl.where(has_nan, float("nan"), best), tl.where(has_nan, first_nan, first_best)


@triton.jit
def _argmax_kernel(X, PartVal, PartIdx, Count, Out, vocab, stride_x, PARTS: tl.constexpr, BLOCK: tl.constexpr,
                   BLOCK_P: tl.constexpr):
    row = tl.program_id(0)
    part = tl.program_id(1)
    offs = part * BLOCK + tl.arange(0, BLOCK)
    valid = offs < vocab
    x = tl.load(X + row.to(tl.int64) * stride_x + offs, mask=valid, other=float("-inf")).to(tl.float32)
    val, idx = _candidate(x, offs, valid, vocab)
    tl.store(PartVal + row * PARTS + part, val)
    tl.store(PartIdx + row * PARTS + part, idx)
    tl.debug_barrier()  # the candidate is stored before the count says so
    done = tl.atomic_add(Count + row, 1, sem="acq_rel", scope="gpu")
    if done == PARTS - 1:
        p = tl.arange(0, BLOCK_P)
        have = p < PARTS
        # .cg: from L2, where the other programs' stores are, not this SM's L1.
        v = tl.load(PartVal + row * PARTS + p, mask=have, other=float("-inf"), cache_modifier=".cg")
        i = tl.load(PartIdx + row * PARTS + p, mask=have, other=vocab, cache_modifier=".cg")
        _, winner = _candidate(v, i, have, vocab)  # parts in index order: the first part's first
        tl.store(Out + row, winner)
        tl.store(Count + row, 0)


_counts: dict[torch.device, torch.Tensor] = {}


def argmax_split(logits: torch.Tensor) -> torch.Tensor:
    """[rows, vocab] (rows <= MAX_ROWS, last dim contiguous) -> [rows] int64, as logits.argmax(-1)."""
    rows, vocab = logits.shape
    assert rows <= MAX_ROWS and logits.stride(-1) == 1
    counts = _counts.get(logits.device)
    if counts is None:
        counts = _counts[logits.device] = torch.zeros(MAX_ROWS, dtype=torch.int32, device=logits.device)
    parts = triton.cdiv(vocab, BLOCK)
    part_val = torch.empty(rows, parts, dtype=torch.float32, device=logits.device)
    part_idx = torch.empty(rows, parts, dtype=torch.int32, device=logits.device)
    out = torch.empty(rows, dtype=torch.int64, device=logits.device)
    _argmax_kernel[(rows, parts)](logits, part_val, part_idx, counts, out, vocab, logits.stride(0), PARTS=parts,
                                  BLOCK=BLOCK, BLOCK_P=triton.next_power_of_2(parts), num_warps=4)
    return out
