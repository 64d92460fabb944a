"""Group-quantized 4-bit weights on the GPU: C = X W^T with W read as nibbles and dequantized in
registers (W4A16, bf16/fp16 activations, float32 accumulation).

Layout (made once at load by `Int4TritonWeight`): a weight of `C` code columns (C = K for codes of
up to 4 bits; C = 2K for wider codes split into a high and a low nibble, see
layers/quantization/int4_cpu.py) is stored as bytes [N, C / 2] in which byte b holds code column b in
its low nibble and code column C / 2 + b in its high one, with fp16 scale and zero per 32 code
columns, stored transposed ([C / 32, N], so a group's values for consecutive rows are contiguous):
w = code * scale + zero. One step of the K loop reads BLOCK_K bytes of
each of BLOCK_N rows, which is 2 BLOCK_K columns: the low nibbles pair with X[:, k0 : k0 + BLOCK_K]
and the high ones with X[:, C / 2 + k0 : ...], or, for split codes (SAME_X), with the same slice
of X again, so [x, x] is never materialised. One row (batch-1 decode) runs a GEMV kernel on the
CUDA cores; more rows dequantize a tile to the activation dtype and run tensor-core dots. The torch
reference is `Int4TritonWeight.reference_apply`.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

GROUP = 32


@triton.jit
def _int4_gemm_kernel(X, W, S, Z, C, M, N, KH, K_CHUNK, stride_xm, stride_wn, stride_cm, SAME_X: tl.constexpr,
                      GEMV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      GROUPS_PER_STEP: tl.constexpr, GROUP_SIZE: tl.constexpr):
    """Each inner step takes one group of 32 bytes per row, so its scales and zeros are one value per
    row ([BLOCK_N], contiguous in the transposed [groups, N] layout) broadcast over the group: no
    reshapes. GEMV (one row of X, batch-1 decode): multiply-adds on the CUDA cores, since a tensor-core
    tile would be 15/16 padding. Its grid's first axis splits K (chunks of K_CHUNK bytes, partial sums
    added atomically into a float32 C): one row's programs are too few to keep enough loads in flight
    otherwise. With more rows the dequantized tile goes to tensor-core dots (K_CHUNK = KH)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_j = tl.arange(0, GROUP_SIZE)
    mask_m = offs_m < M
    mask_n = offs_n < N
    hi_groups = (KH // GROUP_SIZE) * N  # the high nibbles' scales start this far into S and Z
    if GEMV:
        # Per-lane partial sums, reduced across the group's columns once at the end: a reduction per
        # step (shuffles between threads) would cost more than the multiply-adds.
        acc_v = tl.zeros((BLOCK_N, GROUP_SIZE), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_start = pid_m * K_CHUNK if GEMV else 0
    for k0 in range(k_start, k_start + K_CHUNK, GROUP_SIZE * GROUPS_PER_STEP):
        for gi in tl.static_range(GROUPS_PER_STEP):
            kb = k0 + gi * GROUP_SIZE
            sz = (kb // GROUP_SIZE) * N + offs_n
            b = tl.load(W + offs_n[:, None] * stride_wn + (kb + offs_j)[None, :], mask=mask_n[:, None], other=0)
            s_lo = tl.load(S + sz, mask=mask_n, other=0.0).to(tl.float32)
            z_lo = tl.load(Z + sz, mask=mask_n, other=0.0).to(tl.float32)
            s_hi = tl.load(S + hi_groups + sz, mask=mask_n, other=0.0).to(tl.float32)
            z_hi = tl.load(Z + hi_groups + sz, mask=mask_n, other=0.0).to(tl.float32)
            w_lo = (b & 0xF).to(tl.float32) * s_lo[:, None] + z_lo[:, None]
            w_hi = (b >> 4).to(tl.float32) * s_hi[:, None] + z_hi[:, None]
            if GEMV:
                x_lo = tl.load(X + kb + offs_j).to(tl.float32)
                x_hi = x_lo if SAME_X else tl.load(X + KH + kb + offs_j).to(tl.float32)
                acc_v += w_lo * x_lo[None, :] + w_hi * x_hi[None, :]
            else:
                x_ptrs = X + offs_m[:, None] * stride_xm + (kb + offs_j)[None, :]
                x_lo = tl.load(x_ptrs, mask=mask_m[:, None], other=0.0)
                x_hi = x_lo if SAME_X else tl.load(x_ptrs + KH, mask=mask_m[:, None], other=0.0)
                acc += tl.dot(x_lo, tl.trans(w_lo.to(x_lo.dtype)))
                acc += tl.dot(x_hi, tl.trans(w_hi.to(x_hi.dtype)))
    if GEMV:
        tl.atomic_add(C + offs_n, tl.sum(acc_v, axis=1), mask=mask_n, sem="relaxed")
    else:
        c_ptrs = C + offs_m[:, None] * stride_cm + offs_n[None, :]
        tl.store(c_ptrs, acc.to(C.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


# (BLOCK_M, BLOCK_N, groups of 32 bytes per K step, warps, stages). BLOCK_M 1 is the GEMV path (one row).
Tiles = tuple[int, int, int, int, int]


def _tiles(m: int, n: int, kh: int) -> Tiles:
    """One row: narrow column tiles put a program on every SM and deep pipelines keep loads in flight.
    Many rows are compute-bound: square tiles."""
    if m == 1:  # best of the sweep at every Llama-3-8B projection (bench_int4_gemm.py, H200)
        return 1, 64, _groups_per_step(kh, 4), 4, 3
    if m <= 16:
        return 16, 32, _groups_per_step(kh, 4), 4, 3
    if m <= 64:
        return 64, 64, _groups_per_step(kh, 2), 4, 3
    return 128, 128, _groups_per_step(kh, 2), 8, 3


@functools.cache
def _sm_count(device: torch.device) -> int:
    return int(torch.cuda.get_device_properties(device).multi_processor_count) if device.type == "cuda" else 4


def _groups_per_step(kh: int, most: int) -> int:
    """The most groups (up to `most`) per K step that divide the packed width's groups."""
    groups = kh // GROUP
    g = most
    while groups % g:
        g //= 2
    return g


def int4_group_gemm(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                    same_x: bool, tiles: Tiles | None = None) -> torch.Tensor:
    """x [M, K] (bf16/fp16), packed uint8 [N, KH], scale/zero fp16 [2 KH / 32, N] -> [M, N] in x's dtype.
    K = 2 KH, or K = KH with `same_x` (codes split into two nibbles of the same column). `tiles`
    overrides the choice by row count (benchmarks sweep it); its BLOCK_M 1 asks for the GEMV kernel."""
    m, k = x.shape
    n, kh = packed.shape
    if kh % GROUP or k != (kh if same_x else 2 * kh) or scale.shape != (2 * kh // GROUP, n) or zero.shape != scale.shape:
        raise ValueError(f"int4_group_gemm: x {tuple(x.shape)}, packed {tuple(packed.shape)}, scale "
                         f"{tuple(scale.shape)} do not fit (same_x={same_x})")
    if x.stride(1) != 1:
        x = x.contiguous()
    c = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return c
    bm, bn, steps, warps, stages = tiles or _tiles(m, n, kh)
    if kh % (GROUP * steps):
        raise ValueError(f"int4_group_gemm: {steps} groups per step do not divide {kh} packed bytes")
    gemv = bm == 1 and m == 1
    if gemv:
        step = GROUP * steps
        n_tiles = triton.cdiv(n, bn)
        # Enough programs for about four per SM, each at least one K step.
        splits = max(1, min(kh // step, -(-4 * _sm_count(x.device) // n_tiles)))
        while (kh // step) % splits:
            splits -= 1
        acc = torch.zeros(1, n, dtype=torch.float32, device=x.device)
        _int4_gemm_kernel[(splits, n_tiles)](x, packed, scale, zero, acc, 1, n, kh, kh // splits, x.stride(0),
                                             packed.stride(0), acc.stride(0), SAME_X=same_x, GEMV=True, BLOCK_M=1,
                                             BLOCK_N=bn, GROUPS_PER_STEP=steps, GROUP_SIZE=GROUP, num_warps=warps,
                                             num_stages=stages)
        return acc.to(x.dtype)
    bm = max(bm, 16)  # tl.dot's smallest tile
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    _int4_gemm_kernel[grid](x, packed, scale, zero, c, m, n, kh, kh, x.stride(0), packed.stride(0), c.stride(0),
                            SAME_X=same_x, GEMV=False, BLOCK_M=bm, BLOCK_N=bn, GROUPS_PER_STEP=steps,
                            GROUP_SIZE=GROUP, num_warps=warps, num_stages=stages)
    return c
