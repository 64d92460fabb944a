"""Fused mixture-of-experts for the GPU: the experts of one layer as two grouped GEMM launches.

Reference: radixserve.layers.moe.fused_experts_reference (the same math, one expert at a time).

1. Align (`moe_align_block_size`, torch ops, no host sync): the T * top_k (token, k) pairs are
   sorted by expert and each expert's run padded to a multiple of BLOCK_M, so every BLOCK_M-row
   block of the sorted order belongs to one expert. Padding slots hold the sentinel T * top_k.
2. gate_up: one launch over (block, N tile) computes rows x[pair // top_k] @ w13[e]^T into a
   [T * top_k, 2I] buffer, each program reading only its block's expert's weights.
3. silu(gate) * up with the existing fused kernel (kernels/fused_ops.py).
4. down: the same kernel, rows act[pair] @ w2[e]^T, scaled by the pair's routing weight in the
   epilogue, written to [T * top_k, H]; the top-k sum is one torch reduction over k (fp32 accumulate).

FP8 experts (`layers.moe.Fp8Experts`): B holds e4m3 codes; each K tile is widened to A's dtype for
the product and its float32 partial sum scaled by the tile's scales (one per output channel, or per
128x128 block: a K tile never straddles two scale blocks, BLOCK_K divides the block width).

Shapes are fixed by T, top_k and E alone (the grid covers the worst-case number of blocks, and
blocks past the real count return at once), so the whole path can be captured in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from radixserve.kernels.fused_ops import silu_and_mul
from radixserve.layers.moe import ExpertStack, Fp8Experts


@dataclass(frozen=True)
class MoeAlignment:
    sorted_pairs: torch.Tensor  # [max_padded] int32: (token * top_k + k) indices grouped by expert; pad = T * top_k
    block_expert: torch.Tensor  # [max_padded // block_m] int32: the expert of each block (E past the end)
    num_padded: torch.Tensor  # [1] int64: rows actually used (the sum of padded runs), on the device
    block_m: int


def moe_align_block_size(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> MoeAlignment:
    """Group the (token, k) pairs of `topk_ids` [T, k] by expert, each run padded to `block_m` rows."""
    if topk_ids.shape[0] == 1:
        return _one_token_alignment(topk_ids, block_m)
    pairs = topk_ids.numel()
    flat = topk_ids.reshape(-1).to(torch.int64)
    dev = topk_ids.device
    # At most min(E, pairs) experts are non-empty, each wasting < block_m rows of padding: a bound
    # known from shapes alone, so nothing here waits for the device.
    max_padded = triton.cdiv(pairs + min(num_experts, pairs) * (block_m - 1), block_m) * block_m
    counts = torch.zeros(num_experts, dtype=torch.int64, device=dev).scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    ends = torch.cumsum(padded, 0)
    order = torch.argsort(flat, stable=True)
    expert_of = flat[order]
    # Pair i of the sorted order is number (i - first[e]) of its expert e; it goes to start[e] + that.
    first = torch.cumsum(counts, 0) - counts
    dest = (ends - padded)[expert_of] + torch.arange(pairs, device=dev) - first[expert_of]
    sorted_pairs = torch.full((max_padded,), pairs, dtype=torch.int32, device=dev)
    sorted_pairs.scatter_(0, dest, order.to(torch.int32))
    block_starts = torch.arange(0, max_padded, block_m, device=dev)
    block_expert = torch.searchsorted(ends, block_starts, right=True).to(torch.int32)
    return MoeAlignment(sorted_pairs, block_expert, ends[-1:], block_m)


def _one_token_alignment(topk_ids: torch.Tensor, block_m: int) -> MoeAlignment:
    """Batch-1 decode: one token's k experts are distinct, so each pair is its own block and nothing
    needs sorting: five small kernels instead of the general path's twenty (a decode step of a
    48-layer MoE runs this 48 times)."""
    k = topk_ids.shape[1]
    dev = topk_ids.device
    sorted_pairs = torch.full((k * block_m,), k, dtype=torch.int32, device=dev)
    sorted_pairs[::block_m] = torch.arange(k, dtype=torch.int32, device=dev)
    block_expert = topk_ids.reshape(-1).to(torch.int32)
    num_padded = torch.full((1,), k * block_m, dtype=torch.int64, device=dev)
    return MoeAlignment(sorted_pairs, block_expert, num_padded, block_m)


@triton.jit
def _moe_gemm_kernel(A, B, C, SortedPairs, BlockExpert, NumPadded, TopkWeights, Scale, N, K, num_pairs,
                     stride_am, stride_be, stride_bn, stride_bk, stride_cm, stride_se, stride_sn, stride_sk,
                     ROWS_PER_A: tl.constexpr, MUL_WEIGHT: tl.constexpr, IEEE: tl.constexpr,
                     FP8: tl.constexpr, SCALE_BN: tl.constexpr, SCALE_BK: tl.constexpr, TRANS_B: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """C[pair, n] = sum_k A[pair // ROWS_PER_A, k] * B[expert, n, k] (* weight[pair]) over one block;
    with FP8, B[expert, n, k] is codes[expert, n, k] * Scale[expert, n // SCALE_BN, k // SCALE_BK]."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    if pid_m * BLOCK_M >= tl.load(NumPadded):
        return  # a block past the padded runs: the grid covers the worst case
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(SortedPairs + offs_m)
    mmask = pair < num_pairs
    expert = tl.load(BlockExpert + pid_m).to(tl.int64)
    rows = (pair // ROWS_PER_A).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = A + rows[:, None] * stride_am + offs_k[None, :]
    # A [BLOCK_K, BLOCK_N] tile of B[expert]^T: the expert's weights are [N, K], row-major. TRANS_B loads
    # it as the [BLOCK_N, BLOCK_K] tile it is in memory and transposes in registers (a variant measured
    # by benchmarks/bench_moe.py --sweep for FP8 codes, which are widened before the product).
    if TRANS_B:
        b_ptrs = B + expert * stride_be + offs_n[:, None].to(tl.int64) * stride_bn + offs_k[None, :] * stride_bk
    else:
        b_ptrs = B + expert * stride_be + offs_n[None, :].to(tl.int64) * stride_bn + offs_k[:, None] * stride_bk
    s_ptrs = Scale + expert * stride_se + (offs_n // SCALE_BN) * stride_sn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kmask = offs_k < K - k0
        a = tl.load(a_ptrs, mask=mmask[:, None] & kmask[None, :], other=0.0)
        if TRANS_B:
            b = tl.trans(tl.load(b_ptrs, mask=nmask[:, None] & kmask[None, :], other=0.0).to(a.dtype))
        else:
            b = tl.load(b_ptrs, mask=kmask[:, None] & nmask[None, :], other=0.0)
            if FP8:
                b = b.to(a.dtype)
        if IEEE:
            part = tl.dot(a, b, input_precision="ieee")
        else:
            part = tl.dot(a, b)
        if FP8:
            s = tl.load(s_ptrs + (k0 // SCALE_BK) * stride_sk, mask=nmask, other=0.0)
            acc += part * s[None, :]
        else:
            acc += part
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K * stride_bk
    if MUL_WEIGHT:
        w = tl.load(TopkWeights + pair, mask=mmask, other=0.0)
        acc = acc * w[:, None]
    c_ptrs = C + pair[:, None].to(tl.int64) * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, acc.to(C.dtype.element_ty), mask=mmask[:, None] & nmask[None, :])


@dataclass(frozen=True)
class GemmConfig:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    trans_b: bool = False  # load weight tiles [N, K] and transpose in registers (see the kernel)


def pick_config(pairs: int, num_experts: int, dtype: torch.dtype) -> GemmConfig:
    """Small blocks when each expert sees few rows (decode), larger ones for prefill. Untuned: a
    starting point the benchmark (benchmarks/bench_moe.py) measures."""
    wide = dtype == torch.float32  # 4-byte elements: halve K so a stage fits the same shared memory
    if pairs / num_experts >= 32:
        return GemmConfig(64, 128, 32 if wide else 64, 8)
    return GemmConfig(16, 64, 64 if wide else 128, 4)


def _moe_gemm(a: torch.Tensor, w: ExpertStack, out: torch.Tensor, align: MoeAlignment, rows_per_a: int,
              topk_weights: torch.Tensor | None, cfg: GemmConfig) -> None:
    fp8 = isinstance(w, Fp8Experts)
    codes = w.codes if isinstance(w, Fp8Experts) else w
    n, k = codes.shape[1], codes.shape[2]
    assert a.stride(-1) == 1 and codes.is_contiguous() and out.is_contiguous() and a.shape[-1] == k
    block_k = cfg.block_k
    if isinstance(w, Fp8Experts):
        scale, (scale_bn, scale_bk) = w.scale, w.block
        while scale_bk < k and scale_bk % block_k:  # a K tile within one scale block (per channel: bk = K)
            block_k //= 2
        strides = (scale.stride(0), scale.stride(1), scale.stride(2))
    else:
        scale, scale_bn, scale_bk, strides = out, 1, 1, (0, 0, 0)  # unread without FP8
    grid = (align.sorted_pairs.numel() // align.block_m, triton.cdiv(n, cfg.block_n))
    weights = topk_weights if topk_weights is not None else out  # unread when MUL_WEIGHT is off
    _moe_gemm_kernel[grid](
        a, codes, out, align.sorted_pairs, align.block_expert, align.num_padded, weights, scale, n, k, out.shape[0],
        a.stride(0), codes.stride(0), codes.stride(1), codes.stride(2), out.stride(0), *strides,
        ROWS_PER_A=rows_per_a, MUL_WEIGHT=topk_weights is not None, IEEE=a.dtype == torch.float32,
        FP8=fp8, SCALE_BN=scale_bn, SCALE_BK=scale_bk, TRANS_B=cfg.trans_b,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=block_k, num_warps=cfg.num_warps)


def fused_experts(x: torch.Tensor, w13: ExpertStack, w2: ExpertStack, topk_weights: torch.Tensor,
                  topk_ids: torch.Tensor, config: GemmConfig | None = None) -> torch.Tensor:
    """sum_k topk_weights[t, k] * expert_{topk_ids[t, k]}(x[t]); x [T, H], w13 [E, 2I, H], w2 [E, H, I]
    (either may be FP8 experts)."""
    tokens, hidden = x.shape
    num_experts, two_i, _ = w13.shape
    top_k = topk_ids.shape[1]
    pairs = tokens * top_k
    cfg = config or pick_config(pairs, num_experts, x.dtype)
    x = x.contiguous()
    align = moe_align_block_size(topk_ids, num_experts, cfg.block_m)
    gate_up = torch.empty((pairs, two_i), dtype=x.dtype, device=x.device)
    _moe_gemm(x, w13, gate_up, align, top_k, None, cfg)
    act = silu_and_mul(gate_up)
    down = torch.empty((pairs, hidden), dtype=x.dtype, device=x.device)
    _moe_gemm(act, w2, down, align, 1, topk_weights.reshape(-1).to(torch.float32).contiguous(), cfg)
    return down.view(tokens, top_k, hidden).sum(dim=1)
