"""RotaryEmbedding's torch path: q and k rotated together, cos and sin gathered once per step."""

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
    bq, bk = rope(positions, q.bfloat16(), k.bfloat16())  # a second dtype at the same positions
    wq, wk = rotate_apart(rope, positions, q.bfloat16(), k.bfloat16())
    assert bq.dtype == torch.bfloat16 and torch.equal(bq, wq) and torch.equal(bk, wk)


def test_cos_and_sin_are_gathered_once_per_positions_tensor_and_follow_in_place_writes() -> None:
    rope = RotaryEmbedding(32, 256, 10000.0)
    q, k = torch.randn(2, 4, 32), torch.randn(2, 2, 32)
    positions = torch.tensor([3, 4])
    rope(positions, q, k)
    assert rope._rows is not None
    first = rope._rows[3]
    for _ in range(2):  # the other layers of the step reuse the rows
        rope(positions, q, k)
        assert rope._rows[3] is first
    positions.add_(10)  # the same tensor written in place (as a graph runner's static buffer is): gathered anew
    got = rope(positions, q, k)
    assert rope._rows[3] is not first
    want = rotate_apart(rope, positions, q, k)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_inference_mode_positions_are_gathered_every_time() -> None:
    # They keep no version counter: an in-place write could not be seen, so nothing is cached for them.
    rope = RotaryEmbedding(32, 256, 10000.0)
    q, k = torch.randn(1, 4, 32), torch.randn(1, 2, 32)
    with torch.inference_mode():
        positions = torch.tensor([5])
        rope(positions, q, k)
        assert rope._rows is None
        positions.add_(1)
        got = rope(positions, q, k)
    want = rotate_apart(rope, torch.tensor([6]), q, k)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
