"""The torch decode path reads a lone request's consecutive slots in place, and gets the same answer."""

from __future__ import annotations

import torch

from radixserve.attention.torch_backend import contiguous_run, decode_attention_ref, decode_kv_indices


def test_consecutive_slots_are_read_in_place_with_the_same_result() -> None:
    gen = torch.Generator().manual_seed(0)
    k_buf, v_buf = torch.randn(64, 3, 8, generator=gen), torch.randn(64, 3, 8, generator=gen)
    q = torch.randn(1, 9, 8, generator=gen)  # 9 heads over 3 KV heads
    table = torch.zeros(2, 40, dtype=torch.long)
    table[0, :21] = torch.arange(10, 31)
    idx, mask = decode_kv_indices(table, torch.tensor([0]), torch.tensor([21]), 21)
    assert contiguous_run(idx) == 10
    gathered = decode_attention_ref(q, k_buf, v_buf, idx, mask, 0.35)
    in_place = decode_attention_ref(q, k_buf, v_buf, idx, None, 0.35, first_slot=10)
    torch.testing.assert_close(in_place, gathered)

    table[0, 5] = 50  # one slot elsewhere: gathered, not viewed
    idx, _ = decode_kv_indices(table, torch.tensor([0]), torch.tensor([21]), 21)
    assert contiguous_run(idx) is None
    two, _ = decode_kv_indices(table, torch.tensor([0, 1]), torch.tensor([21, 3]), 21)
    assert contiguous_run(two) is None  # only for a single request


def test_scaled_pools_still_gather() -> None:
    # An FP8 pool's rows need converting and scaling: the in-place view is not taken.
    k_buf = torch.randn(32, 1, 4).to(torch.float8_e4m3fn)
    v_buf = torch.randn(32, 1, 4).to(torch.float8_e4m3fn)
    q = torch.randn(1, 2, 4)
    idx = torch.arange(3, 11)[None]
    ref = decode_attention_ref(q, k_buf, v_buf, idx, None, 0.5, 2.0, 0.5)
    got = decode_attention_ref(q, k_buf, v_buf, idx, None, 0.5, 2.0, 0.5, first_slot=3)
    torch.testing.assert_close(got, ref)
