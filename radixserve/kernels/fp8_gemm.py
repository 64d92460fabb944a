"""FP8 kernels: dynamic activation quantization, and the GEMM with block scales.

`quantize_fp8` turns activations [M, K] into e4m3 codes with one scale per row (or per row and
`group` columns) in one pass: each program reads its row (group) once, takes the absolute maximum,
and writes codes and scale. Done with torch ops it is six kernels and several float32 copies, which
cost more than the FP8 product saves (benchmarks/bench_fp8_gemm.py). Divisions are IEEE round-to-
nearest (`div_rn`) and the scale is one float32 multiply, so codes and scales equal
`quantize_activations`' bit for bit.

The GEMM: C = (A * a_scale) (B * b_scale)^T in float32, written as bf16/fp16.

A [M, K] are activation codes with one scale per token and 128-column group ([M, K / gk]); B [N, K]
are weight codes with one scale per (gn x gk) block ([ceil(N / gn), K / gk]), the layout of
DeepSeek-V3 / Qwen3 FP8 checkpoints. The kernel walks K in steps of gk, so each step's partial
product takes exactly one activation scale per row and one weight scale per column: acc +=
dot(a, b^T) * a_scale[:, None] * b_scale[None, :]. The torch reference is
`Fp8Linear.reference_apply` (radixserve/layers/quantization/fp8.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixserve.layers.quantization.fp8 import INV_FP8_MAX


@triton.jit
def _fp8_gemm_kernel(A, AS, B, BS, C, M, N, K, stride_am, stride_bn, stride_cm, stride_asm, stride_bsn,
                     GROUP_N: tl.constexpr, PER_CHANNEL: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    a_ptrs = A + offs_m[:, None] * stride_am + offs_k[None, :]
    b_ptrs = B + offs_n[:, None] * stride_bn + offs_k[None, :]
    as_ptrs = AS + offs_m * stride_asm
    bs_ptrs = BS + (offs_n // GROUP_N) * stride_bsn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BLOCK_K)):
        # K is a multiple of BLOCK_K (the caller checks): only rows and columns need masks.
        a = tl.load(a_ptrs, mask=mask_m[:, None], other=0.0)
        b = tl.load(b_ptrs, mask=mask_n[:, None], other=0.0)
        if PER_CHANNEL:
            acc += tl.dot(a, tl.trans(b))
        else:
            a_s = tl.load(as_ptrs + kb, mask=mask_m, other=0.0)
            b_s = tl.load(bs_ptrs + kb, mask=mask_n, other=0.0)
            acc += tl.dot(a, tl.trans(b)) * a_s[:, None] * b_s[None, :]
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    if PER_CHANNEL:
        a_s = tl.load(as_ptrs, mask=mask_m, other=0.0)
        b_s = tl.load(bs_ptrs, mask=mask_n, other=0.0)
        acc = acc * a_s[:, None] * b_s[None, :]
    c_ptrs = C + offs_m[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, acc.to(C.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _quantize_fp8_kernel(X, Q, S, K, stride_x, stride_q, stride_s, INV_MAX, GROUP: tl.constexpr,
                         BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1)
    cols = tl.arange(0, BLOCK)
    offs = g * GROUP + cols
    mask = (cols < GROUP) & (offs < K)
    x = tl.load(X + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    amax = tl.maximum(tl.max(tl.abs(x), axis=0), 1e-12)
    scale = amax * INV_MAX
    q = tl.clamp(tl.math.div_rn(x, scale), -448.0, 448.0)
    tl.store(Q + row * stride_q + offs, q.to(Q.dtype.element_ty), mask=mask)
    tl.store(S + row * stride_s + g, scale)


def quantize_fp8(x: torch.Tensor, group: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (any float dtype, last axis contiguous) -> (e4m3 codes [M, K], float32 scales [M, K / group])
    with `group` None meaning one group of K columns."""
    m, k = x.shape
    g = k if group is None else group
    if k % g:
        raise ValueError(f"quantize_fp8: {k} columns are not a multiple of groups of {g}")
    if x.stride(1) != 1:
        x = x.contiguous()
    q = torch.empty(m, k, dtype=torch.float8_e4m3fn, device=x.device)
    s = torch.empty(m, k // g, dtype=torch.float32, device=x.device)
    if m:
        block = triton.next_power_of_2(g)
        _quantize_fp8_kernel[(m, k // g)](x, q, s, k, x.stride(0), q.stride(0), s.stride(0), INV_FP8_MAX,
                                          GROUP=g, BLOCK=block, num_warps=4 if block <= 2048 else 8)
    return q, s


def _tiles(m: int, n: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages). Few rows (decode) make the product a weight read:
    narrow column tiles give every SM a program (4096 columns in tiles of 32: 128 programs) and deep
    pipelines keep loads in flight. Many rows are compute-bound: square tiles."""
    if m <= 16:
        return 16, 32 if n <= 8192 else 64, 4, 5
    if m <= 64:
        return 64, 64, 4, 4
    return 128, 128, 8, 3


def _launch(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor, group_n: int,
            per_channel: bool, block_k: int, out_dtype: torch.dtype) -> torch.Tensor:
    m, k = a.shape
    n = b.shape[0]
    if out_dtype not in (torch.bfloat16, torch.float16, torch.float32):
        out_dtype = torch.bfloat16
    c = torch.empty(m, n, dtype=out_dtype, device=a.device)
    bm, bn, warps, stages = _tiles(m, n)
    a_scale, b_scale = a_scale.contiguous(), b_scale.contiguous()  # the kernel steps their last axis by 1
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    _fp8_gemm_kernel[grid](a, a_scale, b, b_scale, c, m, n, k, a.stride(0), b.stride(0), c.stride(0),
                           a_scale.stride(0), b_scale.stride(0), GROUP_N=group_n, PER_CHANNEL=per_channel,
                           BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=block_k, num_warps=warps, num_stages=stages)
    return c


def block_fp8_matmul(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
                     block: tuple[int, int], out_dtype: torch.dtype) -> torch.Tensor:
    """a [M, K] fp8, a_scale [M, K / gk] fp32, b [N, K] fp8, b_scale [ceil(N / gn), K / gk] fp32 -> [M, N]."""
    gn, gk = block
    m, k = a.shape
    n = b.shape[0]
    if k % gk or a_scale.shape != (m, k // gk) or b_scale.shape != (-(-n // gn), k // gk):
        raise ValueError(f"block_fp8_matmul: shapes a {tuple(a.shape)}, a_scale {tuple(a_scale.shape)}, "
                         f"b {tuple(b.shape)}, b_scale {tuple(b_scale.shape)} do not fit blocks {block}")
    return _launch(a, a_scale, b, b_scale, gn, False, gk, out_dtype)


# Rows up to which the Triton kernel runs the per-channel product instead of torch._scaled_mm, whose
# kernels read the weight at 30-60 % of the copy rate for a handful of rows on the H200
# (benchmarks/bench_fp8_gemm.py); from a few hundred rows on the product is compute-bound and
# torch's is the faster.
CHANNEL_TRITON_MAX_ROWS = 64


def channel_fp8_matmul(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
                       out_dtype: torch.dtype) -> torch.Tensor:
    """a [M, K] fp8 with a_scale [M, 1], b [N, K] fp8 with b_scale [1, N] (or [N, 1]) -> [M, N]; K % 128 == 0."""
    m, k = a.shape
    n = b.shape[0]
    if k % 128 or a_scale.numel() != m or b_scale.numel() != n:
        raise ValueError(f"channel_fp8_matmul: shapes a {tuple(a.shape)}, a_scale {tuple(a_scale.shape)}, "
                         f"b {tuple(b.shape)}, b_scale {tuple(b_scale.shape)}")
    return _launch(a, a_scale.reshape(m, 1), b, b_scale.reshape(n, 1), 1, True, 128, out_dtype)
