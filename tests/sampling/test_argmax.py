"""The split argmax answers as torch.argmax: first index of the maximum, NaN wins, any vocabulary."""

from __future__ import annotations

import pytest
import torch

from radixserve.sampling.argmax import argmax_rows, split_argmax, vocab_parts


@pytest.mark.parametrize("vocab", [128256, 151936, 32000, 49152, 50257])
def test_vocab_parts_divide_into_pieces_of_at_least_256(vocab: int) -> None:
    parts = vocab_parts(vocab)
    assert parts is not None and vocab % parts == 0 and vocab // parts >= 256 and 16 <= parts <= 256


def test_a_vocabulary_without_a_divisor_is_reduced_whole() -> None:
    assert vocab_parts(65521) is None  # prime
    logits = torch.randn(1, 65521)
    assert torch.equal(argmax_rows(logits), logits.argmax(dim=-1))


def test_split_argmax_equals_torch_argmax() -> None:
    g = torch.Generator().manual_seed(0)
    vocab, parts = 128256, 256
    logits = torch.randn(4, vocab, generator=g)
    piece = vocab // parts
    logits[1, 3 * piece + 7] = logits[1, 200 * piece + 1] = 50.0  # a tie across parts: the first part's
    logits[2, 9 * piece + 3] = logits[2, 9 * piece + 100] = 50.0  # a tie inside one part
    logits[2, 9 * piece + 200] = 49.0
    logits[3] = float("-inf")  # every token banned: index 0, as torch
    for dtype in (torch.float32, torch.bfloat16):
        x = logits.to(dtype)
        assert torch.equal(split_argmax(x, parts), x.argmax(dim=-1))
    assert split_argmax(logits, parts).tolist()[1:] == [3 * piece + 7, 9 * piece + 3, 0]


def test_nan_wins_as_in_torch() -> None:
    logits = torch.randn(2, 32000)
    logits[0, 31000] = float("nan")
    logits[1, 500] = logits[1, 20000] = float("nan")
    got = split_argmax(logits, 125)
    assert got[0].item() == 31000 and got[1].item() in (500, 20000)
    assert got.tolist() == logits.argmax(dim=-1).tolist()
