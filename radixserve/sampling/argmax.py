"""Greedy argmax over the vocabulary, split across the GPU when there are few rows.

torch reduces one row of a 128k vocabulary in one thread block: 27 us a batch-1 decode step on an
H200 (19 GB/s for 513 KB of float32 logits; docs/gpu.md), ~0.7 % of the step. Split into parts,
the first pass runs one block per part, and a second picks the best part. Same answer as
`torch.argmax`: the first index of the maximum (each part keeps its first, and the best part is the
first among equals), and a NaN wins as in torch (it is each reduction's maximum).
"""

from __future__ import annotations

from functools import cache

import torch

SPLIT_MAX_ROWS = 4  # from here on the rows alone give the GPU enough blocks


@cache
def vocab_parts(vocab: int) -> int | None:
    """The most parts (at most 256) that divide the vocabulary into pieces of at least 256 entries;
    None when it has no divisor in [16, 256] (the rows are then reduced whole)."""
    for parts in range(256, 15, -1):
        if vocab % parts == 0 and vocab // parts >= 256:
            return parts
    return None


def split_argmax(logits: torch.Tensor, parts: int) -> torch.Tensor:
    bs, vocab = logits.shape
    best, where = logits.view(bs, parts, vocab // parts).max(dim=-1)
    part = best.argmax(dim=-1, keepdim=True)
    return (part * (vocab // parts) + where.gather(1, part)).squeeze(1)


def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """[bs, vocab] -> [bs] int64, as logits.argmax(dim=-1)."""
    bs, vocab = logits.shape
    parts = vocab_parts(vocab) if logits.is_cuda and bs <= SPLIT_MAX_ROWS and logits.is_contiguous() else None
    return logits.argmax(dim=-1) if parts is None else split_argmax(logits, parts)
