"""Fused elementwise kernels for the GPU decode path: fewer, larger launches.

Under CUDA graphs a decode step of an 8B model is otherwise ~35 small kernels per layer
(RMSNorm alone is eight), each costing a few microseconds whatever its size. Each kernel here
reproduces the rounding of the torch ops it replaces (HF's order of bf16 roundings), so bf16
outputs stay as close to the reference as the reference is to itself.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add_rmsnorm_kernel(X, R, W, Out, ResOut, n_cols, eps, stride_x, stride_r, stride_o, stride_ro,
                        HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RES:
        r = tl.load(R + row * stride_r + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(X.dtype.element_ty)  # the residual add rounds in the input dtype
        tl.store(ResOut + row * stride_ro + cols, x, mask=mask)
    x32 = x.to(tl.float32)
    var = tl.sum(x32 * x32, 0) / n_cols
    normed = (x32 * tl.rsqrt(var + eps)).to(X.dtype.element_ty).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Out + row * stride_o + cols, (w * normed).to(Out.dtype.element_ty), mask=mask)


def add_rmsnorm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (rmsnorm(x + residual) * weight, x + residual); x: [rows, cols]."""
    x = x.contiguous()
    rows, cols = x.shape
    out = torch.empty_like(x)
    res_out = torch.empty_like(x) if residual is not None else x
    res = residual.contiguous() if residual is not None else x
    _add_rmsnorm_kernel[(rows,)](
        x, res, weight, out, res_out, cols, eps, x.stride(0), res.stride(0), out.stride(0), res_out.stride(0),
        HAS_RES=residual is not None, BLOCK=triton.next_power_of_2(cols), num_warps=4 if cols <= 4096 else 8)
    return out, res_out


# Pos and Loc are read one int64 per program, so their alignment buys nothing, but Triton would
# compile a variant per 16-byte alignment of each: a prefill's slots are a view of the pool's free
# list, misaligned after any odd number of slots handed out (a 222 ms compile inside a live request,
# found by utils/kernel_compiles.py).
@triton.jit(do_not_specialize_on_alignment=["Pos", "Loc"])
def _rope_kernel(Q, K, V, Pos, Cos, Sin, KBuf, VBuf, Loc, k_inv_scale, v_inv_scale, stride_qt, stride_qh, stride_kt,
                 stride_kh, stride_vt, stride_vh, stride_c, stride_bt, stride_bh, n_qh, n_kh, HALF: tl.constexpr,
                 STORE_KV: tl.constexpr, FP8_KV: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(Pos + t).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    dmask = d < HALF
    # cos/sin rows are cat(freqs, freqs): the first half serves both halves. Cast to the
    # activation dtype first, as HF does.
    c = tl.load(Cos + pos * stride_c + d, mask=dmask, other=0.0).to(Q.dtype.element_ty).to(tl.float32)
    s = tl.load(Sin + pos * stride_c + d, mask=dmask, other=0.0).to(Q.dtype.element_ty).to(tl.float32)
    h = tl.arange(0, BLOCK_H)
    for which in tl.static_range(2):
        if which == 0:
            base = Q + t * stride_qt
            stride_h = stride_qh
            nh = n_qh
        else:
            base = K + t * stride_kt
            stride_h = stride_kh
            nh = n_kh
        m = (h[:, None] < nh) & dmask[None, :]
        p1 = base + h[:, None] * stride_h + d[None, :]
        x1 = tl.load(p1, mask=m, other=0.0).to(tl.float32)
        x2 = tl.load(p1 + HALF, mask=m, other=0.0).to(tl.float32)
        dt = Q.dtype.element_ty
        # x * cos + rotate_half(x) * sin, each product and the sum rounded like the torch ops.
        o1 = ((x1 * c).to(dt).to(tl.float32) + (-x2 * s).to(dt).to(tl.float32)).to(dt)
        o2 = ((x2 * c).to(dt).to(tl.float32) + (x1 * s).to(dt).to(tl.float32)).to(dt)
        tl.store(p1, o1, mask=m)
        tl.store(p1 + HALF, o2, mask=m)
        if STORE_KV and which == 1:
            # The rotated K and this token's V go straight into the pool at its slot: two
            # index_copy launches per layer fewer on the decode path.
            slot = tl.load(Loc + t).to(tl.int64)
            kb = KBuf + slot * stride_bt + h[:, None] * stride_bh + d[None, :]
            pv = V + t * stride_vt + h[:, None] * stride_vh + d[None, :]
            vb = VBuf + slot * stride_bt + h[:, None] * stride_bh + d[None, :]
            v1 = tl.load(pv, mask=m, other=0.0)
            v2 = tl.load(pv + HALF, mask=m, other=0.0)
            if FP8_KV:
                # As memory_pool.to_fp8: the value over its scale, saturated at e4m3's +-448.
                k1 = tl.clamp(o1.to(tl.float32) * k_inv_scale, -448.0, 448.0)
                k2 = tl.clamp(o2.to(tl.float32) * k_inv_scale, -448.0, 448.0)
                v1 = tl.clamp(v1.to(tl.float32) * v_inv_scale, -448.0, 448.0)
                v2 = tl.clamp(v2.to(tl.float32) * v_inv_scale, -448.0, 448.0)
                tl.store(kb, k1.to(KBuf.dtype.element_ty), mask=m)
                tl.store(kb + HALF, k2.to(KBuf.dtype.element_ty), mask=m)
            else:
                tl.store(kb, o1.to(KBuf.dtype.element_ty), mask=m)
                tl.store(kb + HALF, o2.to(KBuf.dtype.element_ty), mask=m)
            tl.store(vb, v1.to(VBuf.dtype.element_ty), mask=m)
            tl.store(vb + HALF, v2.to(VBuf.dtype.element_ty), mask=m)


def rotary_inplace(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
                   sin: torch.Tensor, store: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                   kv_scales: tuple[float, float] = (1.0, 1.0)) -> None:
    """q: [T, H, D], k: [T, KVH, D] (last dim contiguous); rotated in place.

    With `store = (v, k_buf, v_buf, loc)` the rotated k and v of token t are also written to
    k_buf[loc[t]] and v_buf[loc[t]] (pool buffers [slots, KVH, D], contiguous).
    """
    tokens, heads, dim = q.shape
    block_h = triton.next_power_of_2(max(heads, k.shape[1]))
    if store is None:
        v, k_buf, v_buf, loc, store_kv = k, k, k, positions, False
    else:
        (v, k_buf, v_buf, loc), store_kv = store, True
        assert v.stride(-1) == 1 and k_buf.is_contiguous() and v_buf.is_contiguous()
        assert k_buf.shape[1:] == k.shape[1:] and v.shape == k.shape
    fp8 = store_kv and k_buf.dtype == torch.float8_e4m3fn
    _rope_kernel[(tokens,)](
        q, k, v, positions, cos, sin, k_buf, v_buf, loc, 1.0 / kv_scales[0], 1.0 / kv_scales[1],
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), cos.stride(0),
        k_buf.stride(0), k_buf.stride(1), heads, k.shape[1], HALF=dim // 2, STORE_KV=store_kv, FP8_KV=fp8,
        BLOCK_H=block_h, BLOCK_D=triton.next_power_of_2(dim // 2), num_warps=4)


@triton.jit
def _silu_mul_kernel(X, Out, n_cols, stride_x, stride_o, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    start = tl.program_id(1) * BLOCK
    cols = start + tl.arange(0, BLOCK)
    mask = cols < n_cols
    g = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(X + row * stride_x + n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(Out.dtype.element_ty).to(tl.float32)
    tl.store(Out + row * stride_o + cols, (act * u).to(Out.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [rows, 2 * I] = [gate | up] -> silu(gate) * up."""
    rows, two_i = x.shape
    inter = two_i // 2
    out = torch.empty((rows, inter), dtype=x.dtype, device=x.device)
    block = 1024
    _silu_mul_kernel[(rows, triton.cdiv(inter, block))](x, out, inter, x.stride(0), out.stride(0), BLOCK=block,
                                                         num_warps=4)
    return out
