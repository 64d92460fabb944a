"""RotaryEmbedding's torch path: q and k rotated together, bitwise as each on its own."""

from __future__ import annotations

import torch

from radixserve.layers.rotary_embedding import RotaryEmbedding


def rotate_apart(rope: RotaryEmbedding, positions: torch.Tensor, q: torch.Tensor,
                 k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook form (HF's apply_rotary_pos_emb): q and k each on their own."""
    cos = rope.cos_cache[positions].unsqueeze(1).to(q.dtype)
    sin = rope.sin_cache[positions].unsqueeze(1).to(q.dtype)
    return q * cos + rope._rotate_half(q) * sin, k * cos + rope._rotate_half(k) * sin


def test_joint_rotation_is_bitwise_the_separate_one() -> None:
    rope = RotaryEmbedding(64, 512, 10000.0)
    qkv = torch.randn(5, 9 * 64 + 2 * 3 * 64)  # q and k as the fused projection's strided views
    q, k = qkv[:, : 9 * 64].view(5, 9, 64), qkv[:, 9 * 64 : 12 * 64].view(5, 3, 64)
    positions = torch.tensor([0, 7, 100, 101, 511])
    got, want = rope(positions, q, k), rotate_apart(rope, positions, q, k)
    assert got[0].shape == (5, 9, 64) and got[1].shape == (5, 3, 64)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    bq, bk = rope(positions, q.bfloat16(), k.bfloat16())  # and in bf16, as on the GPU
    wq, wk = rotate_apart(rope, positions, q.bfloat16(), k.bfloat16())
    assert bq.dtype == torch.bfloat16 and torch.equal(bq, wq) and torch.equal(bk, wk)
