"""Group-quantized 4-bit weights on the GPU: C = X W^T with W read as nibbles and dequantized in
registers (W4A16, bf16/fp16 activations, float32 accumulation).

Layout (made once at load by `Int4TritonWeight`): a weight of `C` code columns (C = K for codes of
up to 4 bits; C = 2K for wider codes split into a high and a low nibble, see
layers/quantization/int4_cpu.py) is stored as bytes [N, C / 2] in which byte b holds code column b in
its low nibble and code column C / 2 + b in its high one, with fp16 scale and zero per 32 code
columns, [N, C / 32] each: w = code * scale + zero. One step of the K loop reads BLOCK_K bytes of
each of BLOCK_N rows, which is 2 BLOCK_K columns: the low nibbles pair with X[:, k0 : k0 + BLOCK_K]
and the high ones with X[:, C / 2 + k0 : ...], or, for split codes (SAME_X), with the same slice
of X again, so [x, x] is never materialised. The torch reference is
`Int4TritonWeight.reference_apply`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

GROUP = 32


@triton.jit
def _int4_gemm_kernel(X, W, S, Z, C, M, N, KH, stride_xm, stride_wn, stride_sn, stride_cm,
                      SAME_X: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      GROUP_SIZE: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    offs_g = tl.arange(0, BLOCK_K // GROUP_SIZE)
    mask_m = offs_m < M
    mask_n = offs_n < N
    x_lo_ptrs = X + offs_m[:, None] * stride_xm + offs_k[None, :]
    x_hi_ptrs = x_lo_ptrs if SAME_X else x_lo_ptrs + KH
    w_ptrs = W + offs_n[:, None] * stride_wn + offs_k[None, :]
    groups_half = KH // GROUP_SIZE
    s_lo_ptrs = S + offs_n[:, None] * stride_sn + offs_g[None, :]
    z_lo_ptrs = Z + offs_n[:, None] * stride_sn + offs_g[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(0, KH // BLOCK_K):
        # KH is a multiple of BLOCK_K (the caller checks): only rows and columns need masks.
        b = tl.load(w_ptrs, mask=mask_n[:, None], other=0)
        s_lo = tl.load(s_lo_ptrs, mask=mask_n[:, None], other=0.0).to(tl.float32)
        z_lo = tl.load(z_lo_ptrs, mask=mask_n[:, None], other=0.0).to(tl.float32)
        s_hi = tl.load(s_lo_ptrs + groups_half, mask=mask_n[:, None], other=0.0).to(tl.float32)
        z_hi = tl.load(z_lo_ptrs + groups_half, mask=mask_n[:, None], other=0.0).to(tl.float32)
        lo = tl.reshape((b & 0xF).to(tl.float32), (BLOCK_N, BLOCK_K // GROUP_SIZE, GROUP_SIZE))
        hi = tl.reshape((b >> 4).to(tl.float32), (BLOCK_N, BLOCK_K // GROUP_SIZE, GROUP_SIZE))
        w_lo = tl.reshape(lo * s_lo[:, :, None] + z_lo[:, :, None], (BLOCK_N, BLOCK_K))
        w_hi = tl.reshape(hi * s_hi[:, :, None] + z_hi[:, :, None], (BLOCK_N, BLOCK_K))
        x_lo = tl.load(x_lo_ptrs, mask=mask_m[:, None], other=0.0)
        x_hi = tl.load(x_hi_ptrs, mask=mask_m[:, None], other=0.0)
        acc += tl.dot(x_lo, tl.trans(w_lo.to(x_lo.dtype)))
        acc += tl.dot(x_hi, tl.trans(w_hi.to(x_hi.dtype)))
        # Rebound, not incremented in place: with SAME_X both X pointers start as one tensor.
        w_ptrs = w_ptrs + BLOCK_K
        x_lo_ptrs = x_lo_ptrs + BLOCK_K
        x_hi_ptrs = x_hi_ptrs + BLOCK_K
        s_lo_ptrs = s_lo_ptrs + BLOCK_K // GROUP_SIZE
        z_lo_ptrs = z_lo_ptrs + BLOCK_K // GROUP_SIZE
    c_ptrs = C + offs_m[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, acc.to(C.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def block_k_for(kh: int) -> int:
    """The widest K step (bytes) that divides the packed width: 128, 64 or 32."""
    for bk in (128, 64, 32):
        if kh % bk == 0:
            return bk
    raise ValueError(f"int4 GEMM: {kh} packed bytes per row are not a multiple of {GROUP}")


def _tiles(m: int, n: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages): as the FP8 kernel's. Few rows (decode) read the
    weight once: narrow column tiles put a program on every SM and deep pipelines keep loads in flight."""
    if m <= 16:
        return 16, 32 if n <= 8192 else 64, 4, 4
    if m <= 64:
        return 64, 64, 4, 3
    return 128, 128, 8, 3


def int4_group_gemm(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                    same_x: bool, tiles: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """x [M, K] (bf16/fp16), packed uint8 [N, KH], scale/zero fp16 [N, 2 KH / 32] -> [M, N] in x's dtype.
    K = 2 KH, or K = KH with `same_x` (codes split into two nibbles of the same column). `tiles`
    (BLOCK_M, BLOCK_N, warps, stages) overrides the choice by row count (benchmarks sweep it)."""
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
    bm, bn, warps, stages = tiles or _tiles(m, n)
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    _int4_gemm_kernel[grid](x, packed, scale, zero, c, m, n, kh, x.stride(0), packed.stride(0), scale.stride(0),
                            c.stride(0), SAME_X=same_x, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=block_k_for(kh),
                            GROUP_SIZE=GROUP, num_warps=warps, num_stages=stages)
    return c
