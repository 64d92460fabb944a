"""Shared by the CPU interpreter run and the GPU test: the Triton fused MoE against the torch reference."""

from __future__ import annotations

import torch

from radixserve.kernels.fused_moe import GemmConfig, fused_experts, moe_align_block_size, pick_config
from radixserve.layers.moe import fused_experts_reference, quantize_experts_fp8, select_experts

# Tolerances on the output: float32 runs IEEE dots (same sums, another order); bf16 rounds the
# two GEMM outputs and the activation like the reference, but accumulates in another order.
TOLERANCE = {torch.float32: (2e-5, 1e-4), torch.bfloat16: (2e-2, 2e-2), torch.float16: (5e-3, 5e-3)}


def moe_inputs(tokens: int, experts: int, top_k: int, hidden: int, inter: int, dtype: torch.dtype, device: str,
               gen: torch.Generator, renormalize: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    def rand(*shape: int, scale: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)

    x = rand(tokens, hidden, scale=1.0)
    w13 = rand(experts, 2 * inter, hidden, scale=hidden ** -0.5)
    w2 = rand(experts, hidden, inter, scale=inter ** -0.5)
    logits = rand(tokens, experts, scale=2.0)
    weights, ids = select_experts(logits, top_k, renormalize)
    return x, w13, w2, weights, ids


def check_alignment(ids: torch.Tensor, experts: int, block_m: int) -> None:
    align = moe_align_block_size(ids, experts, block_m)
    flat = ids.reshape(-1).cpu()
    pairs = flat.numel()
    sorted_pairs = align.sorted_pairs.cpu()
    used = int(align.num_padded.item())
    assert used % block_m == 0 and used <= sorted_pairs.numel()
    real = sorted_pairs[sorted_pairs < pairs]
    assert sorted(real.tolist()) == list(range(pairs)), "every (token, k) pair exactly once"
    assert bool((sorted_pairs[used:] == pairs).all()), "nothing past the padded runs"
    block_expert = align.block_expert.cpu()
    for b in range(used // block_m):
        members = sorted_pairs[b * block_m:(b + 1) * block_m]
        members = members[members < pairs]
        assert members.numel() > 0, "no block is pure padding"
        assert bool((flat[members.long()] == block_expert[b]).all()), f"block {b} mixes experts"


def check_fused_moe(device: str, dtype: torch.dtype, gen: torch.Generator,
                    cases: list[tuple[int, int, int, int, int]], configs: list[GemmConfig | None]) -> None:
    """cases: (tokens, experts, top_k, hidden, inter); each under each GEMM config (None: the default pick)."""
    atol, rtol = TOLERANCE[dtype]
    for tokens, experts, top_k, hidden, inter in cases:
        x, w13, w2, weights, ids = moe_inputs(tokens, experts, top_k, hidden, inter, dtype, device, gen)
        ref = fused_experts_reference(x, w13, w2, weights, ids)
        for cfg in configs:
            check_alignment(ids, experts, (cfg or pick_config(tokens * top_k, experts, dtype)).block_m)
            got = fused_experts(x, w13, w2, weights, ids, cfg)
            assert got.shape == ref.shape and got.dtype == ref.dtype
            case = (tokens, experts, top_k, hidden, inter, cfg)
            try:
                torch.testing.assert_close(got.float(), ref.float(), atol=atol, rtol=rtol)
            except AssertionError as e:
                raise AssertionError(f"{case}: {e}") from None


def check_fused_moe_fp8(device: str, dtype: torch.dtype, gen: torch.Generator,
                        cases: list[tuple[int, int, int, int, int]], configs: list[GemmConfig | None],
                        block: int | None) -> None:
    """FP8 experts: the kernel against the reference on the same codes and scales (the reference
    dequantizes them to `dtype`, the kernel scales its float32 partial sums: the bf16 bound holds)."""
    atol, rtol = TOLERANCE[dtype]
    for tokens, experts, top_k, hidden, inter in cases:
        x, w13, w2, weights, ids = moe_inputs(tokens, experts, top_k, hidden, inter, dtype, device, gen)
        q13, q2 = quantize_experts_fp8(w13, block), quantize_experts_fp8(w2, block)
        ref = fused_experts_reference(x, q13, q2, weights, ids)
        for cfg in configs:
            got = fused_experts(x, q13, q2, weights, ids, cfg)
            case = (tokens, experts, top_k, hidden, inter, cfg, block)
            try:
                torch.testing.assert_close(got.float(), ref.float(), atol=atol, rtol=rtol)
            except AssertionError as e:
                raise AssertionError(f"{case}: {e}") from None
