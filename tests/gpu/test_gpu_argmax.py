"""On a GPU the sampler's split argmax answers as torch.argmax (ties, NaN, banned rows)."""

from __future__ import annotations

import pytest
import torch

from radixserve.sampling.argmax import SPLIT_MAX_ROWS, argmax_rows, vocab_parts

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("vocab", [128256, 151936, 49152])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_argmax_equals_torch_on_the_gpu(vocab: int, dtype: torch.dtype) -> None:
    g = torch.Generator(device="cuda").manual_seed(1)
    parts = vocab_parts(vocab)
    assert parts is not None
    piece = vocab // parts
    for bs in range(1, SPLIT_MAX_ROWS + 2):
        logits = torch.randn(bs, vocab, device="cuda", generator=g).to(dtype)
        logits[0, 2 * piece + 5] = logits[0, (parts - 1) * piece] = 40.0  # a tie across parts
        if bs > 1:
            logits[1] = float("-inf")
        if bs > 2:
            logits[2, piece + 9] = float("nan")
        expected = logits.argmax(dim=-1)
        assert torch.equal(argmax_rows(logits), expected)
        assert argmax_rows(logits)[0].item() == 2 * piece + 5
