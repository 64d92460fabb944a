"""Cases for the split argmax kernel against torch.argmax; shared by the GPU test and the CPU interpreter run."""

from __future__ import annotations

import torch


def check_argmax(device: str, gen: torch.Generator) -> None:
    from radixserve.kernels.argmax import BLOCK, argmax_split

    for rows, vocab in ((1, 128256), (3, 151936), (2, 5000), (4, 1000)):
        for dtype in (torch.float32, torch.bfloat16):
            logits = torch.randn(rows, vocab, generator=gen).to(dtype)
            logits[0, min(2 * BLOCK + 5, vocab // 2)] = logits[0, vocab - 3] = 40.0  # a tie (across parts): the first
            if rows > 1:
                logits[1] = float("-inf")  # every token banned: index 0
            if rows > 2:
                logits[2, min(BLOCK + 9, vocab // 2)] = logits[2, 3] = 60.0  # ties inside a part and across
                logits[2, vocab - 1] = float("nan")  # a NaN beats them
            got = argmax_split(logits.to(device))
            want = logits.float().argmax(dim=-1)
            assert got.tolist() == want.tolist(), (rows, vocab, dtype, got.tolist(), want.tolist())
            assert got.dtype == torch.int64
    # A strided row view (the sampler's rows of a larger logits buffer), called again: the counters reset.
    big = torch.randn(6, 3000, generator=gen)
    for _ in range(3):
        assert argmax_split(big[::2].to(device)).tolist() == big[::2].argmax(dim=-1).tolist()
