"""Group-quantized 4-bit weights on the GPU: C = X W^T with W read as nibbles and dequantized in
registers (W4A16, bf16/fp16 activations, float32 accumulation).

Layout (made once at load by `Int4TritonWeight`): a weight of `C` code columns (C = K for codes of
up to 4 bits; C = 2K for wider codes split into a high and a low nibble, see
layers/quantization/int4_cpu.py) is stored as bytes [N, C / 2] in which byte b holds code column b in
its low nibble and code column C / 2 + b in its high one, with fp16 scale and zero per 32 code
columns, [N, C / 32] each: w = code * scale + zero. One step of the K loop reads BLOCK_K bytes of
each of BLOCK_N rows, which is 2 BLOCK_K columns: the low nibbles pair with X[:, k0 : k0 + BLOCK_K]
and the high ones with X[:, C / 2 + k0 : ...], or, for split codes (SAME_X), with the same slice
of X again, so [x, x] is never materialised. One row (batch-1 decode) runs a GEMV kernel on the
CUDA cores; more rows dequantize a tile to the activation dtype and run tensor-core dots. The torch
reference is `Int4TritonWeight.reference_apply`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

GROUP = 32


@triton.jit
def _dequant_tile(W, S, Z, offs_n, mask_n, k0, KH, stride_wn, stride_sn, BLOCK_K: tl.constexpr,
                  GROUP_SIZE: tl.constexpr):
    """Bytes [BLOCK_N, BLOCK_K] from byte column k0 -> (low-nibble weights, high-nibble weights) in
    float32. Scales and zeros are loaded per column (cache hits after the first of each group),
    which keeps every tile two-dimensional: no reshapes, no layout conversions."""
    offs_k = k0 + tl.arange(0, BLOCK_K)
    b = tl.load(W + offs_n[:, None] * stride_wn + offs_k[None, :], mask=mask_n[:, None], other=0)
    g = offs_n[:, None] * stride_sn + (offs_k // GROUP_SIZE)[None, :]
    hi_g = g + KH // GROUP_SIZE
    s_lo = tl.load(S + g, mask=mask_n[:, None], other=0.0).to(tl.float32)
    z_lo = tl.load(Z + g, mask=mask_n[:, None], other=0.0).to(tl.float32)
    s_hi = tl.load(S + hi_g, mask=mask_n[:, None], other=0.0).to(tl.float32)
    z_hi = tl.load(Z + hi_g, mask=mask_n[:, None], other=0.0).to(tl.float32)
    w_lo = (b & 0xF).to(tl.float32) * s_lo + z_lo
    w_hi = (b >> 4).to(tl.float32) * s_hi + z_hi
    return w_lo, w_hi


@triton.jit
def _int4_gemv_kernel(X, W, S, Z, C, N, KH, stride_wn, stride_sn, SAME_X: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, GROUP_SIZE: tl.constexpr):
    """One row of X (batch-1 decode): a weight read with multiply-adds on the CUDA cores; a tensor-core
    tile would be 15/16 padding."""
    pid_n = tl.program_id(0)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, KH, BLOCK_K):
        w_lo, w_hi = _dequant_tile(W, S, Z, offs_n, mask_n, k0, KH, stride_wn, stride_sn, BLOCK_K, GROUP_SIZE)
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x_lo = tl.load(X + offs_k).to(tl.float32)
        x_hi = x_lo if SAME_X else tl.load(X + KH + offs_k).to(tl.float32)
        acc += tl.sum(w_lo * x_lo[None, :] + w_hi * x_hi[None, :], axis=1)
    tl.store(C + offs_n, acc.to(C.dtype.element_ty), mask=mask_n)


@triton.jit
def _int4_gemm_kernel(X, W, S, Z, C, M, N, KH, stride_xm, stride_wn, stride_sn, stride_cm,
                      SAME_X: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      GROUP_SIZE: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, KH, BLOCK_K):
        # KH is a multiple of BLOCK_K (the caller checks): only rows and columns need masks.
        w_lo, w_hi = _dequant_tile(W, S, Z, offs_n, mask_n, k0, KH, stride_wn, stride_sn, BLOCK_K, GROUP_SIZE)
        x_ptrs = X + offs_m[:, None] * stride_xm + (k0 + tl.arange(0, BLOCK_K))[None, :]
        x_lo = tl.load(x_ptrs, mask=mask_m[:, None], other=0.0)
        x_hi = x_lo if SAME_X else tl.load(x_ptrs + KH, mask=mask_m[:, None], other=0.0)
        acc += tl.dot(x_lo, tl.trans(w_lo.to(x_lo.dtype)))
        acc += tl.dot(x_hi, tl.trans(w_hi.to(x_hi.dtype)))
    c_ptrs = C + offs_m[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, acc.to(C.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


# (BLOCK_M, BLOCK_N, BLOCK_K bytes, warps, stages). BLOCK_M 1 is the GEMV kernel (one row).
Tiles = tuple[int, int, int, int, int]


def _tiles(m: int, n: int, kh: int) -> Tiles:
    """One row: narrow column tiles put a program on every SM and deep pipelines keep loads in flight.
    Many rows are compute-bound: square tiles, K steps small enough for shared memory."""
    if m == 1:
        return 1, 16, _widest_k(kh, 256), 4, 4
    if m <= 16:
        return 16, 32, _widest_k(kh, 128), 4, 4
    if m <= 64:
        return 64, 64, _widest_k(kh, 64), 4, 3
    return 128, 128, _widest_k(kh, 64), 8, 3


def _widest_k(kh: int, most: int) -> int:
    """The widest K step (bytes) up to `most` that divides the packed width (at least one group)."""
    bk = most
    while bk > GROUP:
        if kh % bk == 0:
            return bk
        bk //= 2
    if kh % GROUP:
        raise ValueError(f"int4 GEMM: {kh} packed bytes per row are not a multiple of {GROUP}")
    return GROUP


def int4_group_gemm(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                    same_x: bool, tiles: Tiles | None = None) -> torch.Tensor:
    """x [M, K] (bf16/fp16), packed uint8 [N, KH], scale/zero fp16 [N, 2 KH / 32] -> [M, N] in x's dtype.
    K = 2 KH, or K = KH with `same_x` (codes split into two nibbles of the same column). `tiles`
    overrides the choice by row count (benchmarks sweep it); its BLOCK_M 1 asks for the GEMV kernel."""
    m, k = x.shape
    n, kh = packed.shape
    if k != (kh if same_x else 2 * kh) or scale.shape != (n, 2 * kh // GROUP) or zero.shape != scale.shape:
        raise ValueError(f"int4_group_gemm: x {tuple(x.shape)}, packed {tuple(packed.shape)}, scale "
                         f"{tuple(scale.shape)} do not fit (same_x={same_x})")
    if x.stride(1) != 1:
        x = x.contiguous()
    c = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return c
    bm, bn, bk, warps, stages = tiles or _tiles(m, n, kh)
    if kh % bk:
        raise ValueError(f"int4_group_gemm: K step {bk} does not divide {kh} packed bytes")
    if bm == 1 and m == 1:
        _int4_gemv_kernel[(triton.cdiv(n, bn),)](x, packed, scale, zero, c, n, kh, packed.stride(0), scale.stride(0),
                                                 SAME_X=same_x, BLOCK_N=bn, BLOCK_K=bk, GROUP_SIZE=GROUP,
                                                 num_warps=warps, num_stages=stages)
        return c
    bm = max(bm, 16)  # tl.dot's smallest tile
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    _int4_gemm_kernel[grid](x, packed, scale, zero, c, m, n, kh, x.stride(0), packed.stride(0), scale.stride(0),
                            c.stride(0), SAME_X=same_x, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_SIZE=GROUP,
                            num_warps=warps, num_stages=stages)
    return c
