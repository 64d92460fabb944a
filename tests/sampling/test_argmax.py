"""argmax_rows: the split kernel for a few rows on CUDA, torch.argmax everywhere else."""

from __future__ import annotations

import torch

from radixserve.sampling.argmax import argmax_rows


def test_on_the_cpu_it_is_torch_argmax() -> None:
    logits = torch.randn(3, 4000)
    logits[1, 7] = logits[1, 3000] = 50.0
    logits[2, 11] = float("nan")
    assert argmax_rows(logits).tolist() == logits.argmax(dim=-1).tolist()
    assert argmax_rows(logits)[1:].tolist() == [7, 11]
