"""Greedy argmax over the vocabulary: one launch across the GPU when there are few rows.

torch reduces a few rows of a large vocabulary in a few thread blocks: 26 us a batch-1 decode step
on an H200 for a 128k vocabulary (513 KB of float32 logits: 20 GB/s; benchmarks/bench_argmax.py),
~0.7 % of the step. The Triton kernel (kernels/argmax.py) spreads each row over ~100 programs.
Same answer as torch.argmax: the first index of the maximum, and a NaN wins.
"""

from __future__ import annotations

import torch

SPLIT_MAX_ROWS = 64  # faster than torch.argmax at every batch measured, 1-64 (bench_argmax_h200_20261202.json)


def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """[bs, vocab] -> [bs] int64, as logits.argmax(dim=-1)."""
    if logits.is_cuda and logits.shape[0] <= SPLIT_MAX_ROWS and logits.stride(-1) == 1:
        from radixserve.kernels.argmax import argmax_split

        return argmax_split(logits)
    return logits.argmax(dim=-1)
