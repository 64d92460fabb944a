"""One-row products (batch-1 decode) in Triton, fused with the small kernels around them.

A batch-1 decode step reads every weight once; above those bytes it pays for launches. The
unfused layer is ten kernels: add+RMSNorm, qkv product, rotary+KV store, attention (two),
o product, add+RMSNorm, gate/up product, SiLU-and-mul, down product. Here the products take
their neighbours in, so a layer is six:

- `gemv_residual` (o, down): y = a W^T; x = y + residual (rounded like the residual add); writes
  x and each program's sum of x^2 (`partials`), which is all the next RMSNorm needs of the row.
- `norm_gemv_rope` (qkv): rmsnorm(x) from those partials, the qkv product, rotary on q and k,
  and k, v written into the KV pool at this token's slot; returns q.
- `norm_gemv_silu` (gate/up): rmsnorm(x) from the partials, the [gate | up] product and
  silu(gate) * up.

Each keeps the unfused path's bf16 roundings (the product's output, the residual add, the norm's
two roundings, the rotary and SiLU steps: see fused_ops.py), so the outputs differ from the
unfused path only by the product's summation order. Each program takes whole rows over the
whole K (no split-K: the epilogues need complete sums), multiply-adds on the CUDA cores into a
[rows, BLOCK_K] float32 tile reduced once at the end. The torch references are the
`*_reference` functions below; `tests/kernels/test_gemv.py` runs the kernels in Triton's CPU
interpreter against them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from radixserve.kernels.pdl import gdc_launch_dependents, gdc_wait, launch_options

# (rows per program, BLOCK_K, warps, stages) per product; rows count both halves of a paired
# product (gate and up rows; the two halves of a head for rotary). The best of sweeps on one H200
# at the Llama-3-8B shapes, each product timed in CUDA graphs over rotating weights, without and
# with PDL (benchmarks/profile_decode_breakdown.py, 2026-12-01; microseconds without / with PDL):
# deeper software pipelining (stages 3) measured no faster. A shape these do not tile (K not a
# multiple of BLOCK_K, ...) keeps the layer-by-layer path (`fits`).
Tiles = tuple[int, int, int, int]
TILES: dict[str, Tiles] = {
    "residual": (8, 512, 4, 1),
    "silu": (16, 256, 4, 1),  # gate/up 28672 x 4096: 56.8 / 56.3, bound 55.5-56.8 (cuBLAS alone 57.3-57.7)
    "rope": (16, 512, 4, 1),  # qkv 6144 x 4096: 15.4 / 14.1, bound 11.9-12.2 (cuBLAS alone 16.4-16.9)
}
# Per weight shape (kind, rows, columns), where the sweep found better tiles than the kind's default.
SHAPE_TILES: dict[tuple[str, int, int], Tiles] = {
    ("residual", 4096, 4096): (8, 1024, 4, 1),  # o: 11.2 / 9.7, bound 7.9-8.1 (cuBLAS 13.5-13.7)
    ("residual", 4096, 14336): (8, 1024, 4, 1),  # down: 30.9 / 29.6, bound 27.7-28.4 (cuBLAS 32.1-32.3)
    # The 8B's TP shards, swept in a rank's whole step (benchmarks/bench_tp_shard.py --tiles, one H200,
    # 2026-12-04; ms a step with PDL against the kind's default tiles 2.423 at TP=2, 1.535 at TP=4):
    # fewer rows a program give the qkv shard's smaller grid more programs than the 132 SMs.
    ("rope", 3072, 4096): (4, 1024, 4, 1),  # TP=2 qkv: 2.340 (8 x 1024: 2.348, 8 x 256: 2.522)
    ("residual", 4096, 7168): (8, 1024, 4, 1),  # TP=2 down: 2.315
    ("rope", 1536, 4096): (4, 1024, 4, 1),  # TP=4 qkv: 1.503 (8 x 512: 1.544)
    ("residual", 4096, 3584): (4, 512, 4, 1),  # TP=4 down: 1.521
}


def tiles_for(kind: str, n: int, k: int) -> Tiles:
    return SHAPE_TILES.get((kind, n, k), TILES[kind])


@triton.jit
def _rms_scale(X, Part, n_part, K, eps, FROM_X: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    """1 / rms(x) as the RMSNorm kernel computes it: from the producer's per-program sums of squares,
    or (FROM_X, the first layer) from x itself."""
    if FROM_X:
        cols = tl.arange(0, BLOCK_K)
        ss = tl.zeros([BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            x = tl.load(X + k0 + cols).to(tl.float32)
            ss += x * x
        total = tl.sum(ss, 0)
    else:
        offs = tl.arange(0, BLOCK_P)
        total = tl.sum(tl.load(Part + offs, mask=offs < n_part, other=0.0), 0)
    return tl.rsqrt(total / K + eps)


@triton.jit
def _normed(X, NormW, cols, r):
    """This chunk of rmsnorm(x) * weight, rounded twice like the RMSNorm kernel, in float32."""
    x = tl.load(X + cols, eviction_policy="evict_last")
    n = (x.to(tl.float32) * r).to(X.dtype.element_ty).to(tl.float32)
    w = tl.load(NormW + cols, eviction_policy="evict_last").to(tl.float32)
    return (w * n).to(X.dtype.element_ty).to(tl.float32)


@triton.jit
def _gemv_residual_kernel(A, W, Res, Out, Part, K, stride_w, RESID: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    w_ptrs = W + (pid * BLOCK_N).to(tl.int64) * stride_w + tl.arange(0, BLOCK_N)[:, None] * stride_w + cols[None, :]
    # The first weight tile is loaded before waiting on the kernel before (pdl.py): weights are
    # written by no kernel of the step, and the load's latency overlaps that kernel's tail.
    w = tl.load(w_ptrs, eviction_policy="evict_first")
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    acc = w.to(tl.float32) * tl.load(A + cols, eviction_policy="evict_last").to(tl.float32)[None, :]
    for k0 in range(BLOCK_K, K, BLOCK_K):
        w = tl.load(w_ptrs + k0, eviction_policy="evict_first")
        a = tl.load(A + k0 + cols, eviction_policy="evict_last").to(tl.float32)
        acc += w.to(tl.float32) * a[None, :]
    y = tl.sum(acc, 1).to(A.dtype.element_ty)
    if RESID:
        # The residual add rounds in the activation dtype, as add_rmsnorm does.
        x = (y.to(tl.float32) + tl.load(Res + rows).to(tl.float32)).to(A.dtype.element_ty)
        tl.store(Out + rows, x)
        x32 = x.to(tl.float32)
        tl.store(Part + pid, tl.sum(x32 * x32, 0))
    else:
        tl.store(Out + rows, y)


@triton.jit
def _paired_dot(a_ptrs, b_ptrs, X, Part, n_part, NormW, K, eps, FROM_X: tl.constexpr, BLOCK_K: tl.constexpr,
                BLOCK_P: tl.constexpr, PDL: tl.constexpr):
    """Sums over K of two row tiles times rmsnorm(x) * NormW; the first tiles load before the wait."""
    cols = tl.arange(0, BLOCK_K)
    wa = tl.load(a_ptrs, eviction_policy="evict_first")
    wb = tl.load(b_ptrs, eviction_policy="evict_first")
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    r = _rms_scale(X, Part, n_part, K, eps, FROM_X, BLOCK_P, BLOCK_K)
    xn = _normed(X, NormW, cols, r)
    acc_a = wa.to(tl.float32) * xn[None, :]
    acc_b = wb.to(tl.float32) * xn[None, :]
    for k0 in range(BLOCK_K, K, BLOCK_K):
        wa = tl.load(a_ptrs + k0, eviction_policy="evict_first")
        wb = tl.load(b_ptrs + k0, eviction_policy="evict_first")
        xn = _normed(X, NormW, k0 + cols, r)
        acc_a += wa.to(tl.float32) * xn[None, :]
        acc_b += wb.to(tl.float32) * xn[None, :]
    return tl.sum(acc_a, 1), tl.sum(acc_b, 1)


@triton.jit
def _norm_gemv_silu_kernel(X, Part, n_part, NormW, W, Out, K, up_offset, stride_w, eps, FROM_X: tl.constexpr,
                           HALF_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, PDL: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * HALF_N + tl.arange(0, HALF_N)
    cols = tl.arange(0, BLOCK_K)
    g_ptrs = W + (pid * HALF_N).to(tl.int64) * stride_w + tl.arange(0, HALF_N)[:, None] * stride_w + cols[None, :]
    u_ptrs = g_ptrs + up_offset  # the up rows sit `inter` rows below the gate rows
    g, u = _paired_dot(g_ptrs, u_ptrs, X, Part, n_part, NormW, K, eps, FROM_X, BLOCK_K, BLOCK_P, PDL)
    dt = X.dtype.element_ty
    g = g.to(dt).to(tl.float32)
    u = u.to(dt).to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(dt).to(tl.float32)
    tl.store(Out + rows, (act * u).to(dt))


@triton.jit
def _norm_gemv_rope_kernel(X, Part, n_part, NormW, W, Q, KBuf, VBuf, Loc, Pos, Cos, Sin, K, stride_w, stride_c,
                           stride_bt, stride_bh, eps, n_qh, n_kh, FROM_X: tl.constexpr, HALF: tl.constexpr,
                           HALF_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, PDL: tl.constexpr):
    # Program p takes rows j and j + HALF of one head (j in a run of HALF_N), the pairs rotary mixes.
    pid = tl.program_id(0)
    per_head = HALF // HALF_N
    head = pid // per_head
    j = (pid % per_head) * HALF_N + tl.arange(0, HALF_N)
    cols = tl.arange(0, BLOCK_K)
    row0 = head * 2 * HALF + (pid % per_head) * HALF_N
    a_ptrs = W + row0.to(tl.int64) * stride_w + tl.arange(0, HALF_N)[:, None] * stride_w + cols[None, :]
    b_ptrs = a_ptrs + HALF * stride_w
    y1, y2 = _paired_dot(a_ptrs, b_ptrs, X, Part, n_part, NormW, K, eps, FROM_X, BLOCK_K, BLOCK_P, PDL)
    dt = X.dtype.element_ty
    y1 = y1.to(dt).to(tl.float32)
    y2 = y2.to(dt).to(tl.float32)
    slot = tl.load(Loc).to(tl.int64)
    if head < n_qh + n_kh:
        # Rotary as _rope_kernel: cos/sin cast to the activation dtype, each product and the sum rounded.
        pos = tl.load(Pos).to(tl.int64)
        c = tl.load(Cos + pos * stride_c + j).to(dt).to(tl.float32)
        s = tl.load(Sin + pos * stride_c + j).to(dt).to(tl.float32)
        o1 = ((y1 * c).to(dt).to(tl.float32) + (-y2 * s).to(dt).to(tl.float32)).to(dt)
        o2 = ((y2 * c).to(dt).to(tl.float32) + (y1 * s).to(dt).to(tl.float32)).to(dt)
        if head < n_qh:
            tl.store(Q + head * 2 * HALF + j, o1)
            tl.store(Q + head * 2 * HALF + HALF + j, o2)
        else:
            kb = KBuf + slot * stride_bt + (head - n_qh) * stride_bh + j
            tl.store(kb, o1.to(KBuf.dtype.element_ty))
            tl.store(kb + HALF, o2.to(KBuf.dtype.element_ty))
    else:
        vb = VBuf + slot * stride_bt + (head - n_qh - n_kh) * stride_bh + j
        tl.store(vb, y1.to(VBuf.dtype.element_ty))
        tl.store(vb + HALF, y2.to(VBuf.dtype.element_ty))


def _pdl(device: torch.device) -> dict[str, bool]:
    """The PDL constexpr and, where it is on, the launch option (pdl.py)."""
    opts = launch_options(device)
    return {"PDL": bool(opts), **opts}


def _check_row(t: torch.Tensor, k: int, what: str) -> None:
    if t.dim() != 2 or t.shape[0] != 1 or t.shape[1] != k or t.stride(1) != 1:
        raise ValueError(f"{what}: expected one contiguous row of {k}, got {tuple(t.shape)} strides {t.stride()}")


def _check_weight(w: torch.Tensor, rows_per_program: int, block_k: int, what: str) -> None:
    n, k = w.shape
    if w.stride(1) != 1 or n % rows_per_program or k % block_k:
        raise ValueError(f"{what}: weight {tuple(w.shape)} (strides {w.stride()}) does not tile by "
                         f"{rows_per_program} rows x {block_k} columns")


def fits(kind: str, n: int, k: int, head_dim: int = 0) -> bool:
    """Whether a weight of n rows and k columns tiles for `kind` (the fused path falls back otherwise)."""
    rows, block_k, _, _ = tiles_for(kind, n, k)
    if k % block_k:
        return False
    if kind == "residual":
        return n % rows == 0
    half = rows // 2
    if kind == "silu":
        return n % 2 == 0 and (n // 2) % half == 0
    return head_dim % 2 == 0 and (head_dim // 2) % half == 0 and n % head_dim == 0


def gemv_residual(a: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """a [1, K] @ weight [N, K]^T. With a residual [1, N]: returns (x = y + residual, partials), the
    partials being each program's sum of x^2 (float32, for the next RMSNorm); without: (y, empty)."""
    n, k = weight.shape
    _check_row(a, k, "gemv a")
    rows, block_k, warps, stages = tiles_for("residual", n, k)
    _check_weight(weight, rows, block_k, "gemv")
    out = torch.empty((1, n), dtype=a.dtype, device=a.device)
    programs = n // rows
    part = torch.empty(programs if residual is not None else 0, dtype=torch.float32, device=a.device)
    if residual is not None:
        _check_row(residual, n, "gemv residual")
    # Without a residual the kernel reads neither; valid tensors stand in (an empty one may have no address).
    _gemv_residual_kernel[(programs,)](a, weight, residual if residual is not None else a, out,
                                       part if residual is not None else out, k,
                                       weight.stride(0), RESID=residual is not None, BLOCK_N=rows, BLOCK_K=block_k,
                                       num_warps=warps, num_stages=stages, **_pdl(a.device))
    return out, part


def _norm_args(x: torch.Tensor, partials: torch.Tensor | None) -> tuple[torch.Tensor, int, bool, int]:
    if partials is None:
        return x, 0, True, 1
    n = partials.numel()
    return partials, n, False, triton.next_power_of_2(max(n, 1))


def norm_gemv_silu(x: torch.Tensor, partials: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
                   weight: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of rmsnorm(x) * norm_weight @ weight^T, weight = [gate | up] ([2 I, K]); x [1, K].
    `partials`: gemv_residual's sums of squares of x (None: computed here from x)."""
    two_i, k = weight.shape
    inter = two_i // 2
    _check_row(x, k, "norm_gemv_silu x")
    rows, block_k, warps, stages = tiles_for("silu", two_i, k)
    half = rows // 2
    if two_i % 2 or inter % half or k % block_k:
        raise ValueError(f"norm_gemv_silu: weight {tuple(weight.shape)} does not tile by {half} x {block_k}")
    out = torch.empty((1, inter), dtype=x.dtype, device=x.device)
    part, n_part, from_x, block_p = _norm_args(x, partials)
    _norm_gemv_silu_kernel[(inter // half,)](x, part, n_part, norm_weight, weight, out, k, inter * weight.stride(0),
                                              weight.stride(0),
                                              eps, FROM_X=from_x, HALF_N=half, BLOCK_K=block_k, BLOCK_P=block_p,
                                              num_warps=warps, num_stages=stages, **_pdl(x.device))
    return out


def norm_gemv_rope(x: torch.Tensor, partials: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
                   weight: torch.Tensor, num_heads: int, num_kv_heads: int, positions: torch.Tensor,
                   cos: torch.Tensor, sin: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor,
                   loc: torch.Tensor) -> torch.Tensor:
    """rmsnorm(x) * norm_weight @ weight^T for fused [q | k | v] rows, rotary on q and k at positions[0],
    k and v written to k_buf[loc[0]] and v_buf[loc[0]] ([slots, KVH, D], contiguous). Returns q [1, H, D]."""
    n, k = weight.shape
    dim = k_buf.shape[2]
    _check_row(x, k, "norm_gemv_rope x")
    rows, block_k, warps, stages = tiles_for("rope", n, k)
    half_n = rows // 2
    if (n != (num_heads + 2 * num_kv_heads) * dim or dim % 2 or (dim // 2) % half_n or k % block_k
            or not (k_buf.is_contiguous() and v_buf.is_contiguous()) or k_buf.shape[1] != num_kv_heads):
        raise ValueError(f"norm_gemv_rope: weight {tuple(weight.shape)}, {num_heads}/{num_kv_heads} heads, "
                         f"pool {tuple(k_buf.shape)} do not fit tiles of {half_n} x {block_k}")
    q = torch.empty((1, num_heads, dim), dtype=x.dtype, device=x.device)
    part, n_part, from_x, block_p = _norm_args(x, partials)
    programs = (num_heads + 2 * num_kv_heads) * (dim // 2 // half_n)
    _norm_gemv_rope_kernel[(programs,)](
        x, part, n_part, norm_weight, weight, q, k_buf, v_buf, loc, positions, cos, sin, k, weight.stride(0),
        cos.stride(0), k_buf.stride(0), k_buf.stride(1), eps, num_heads, num_kv_heads, FROM_X=from_x,
        HALF=dim // 2, HALF_N=half_n, BLOCK_K=block_k, BLOCK_P=block_p, num_warps=warps, num_stages=stages,
        **_pdl(x.device))
    return q


# ---- torch references (the unfused layers' arithmetic) -------------------------------------------

def rmsnorm_reference(x: torch.Tensor, norm_weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm.plain's arithmetic."""
    x32 = x.float()
    return norm_weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def gemv_residual_reference(a: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, sum of x^2): x = a W^T + residual (or a W^T), the sum as one float32 scalar."""
    y = F.linear(a, weight)
    x = y + residual if residual is not None else y
    return x, x.float().pow(2).sum()


def norm_gemv_silu_reference(x: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                             weight: torch.Tensor) -> torch.Tensor:
    gate, up = F.linear(rmsnorm_reference(x, norm_weight, eps), weight).chunk(2, dim=-1)
    return F.silu(gate) * up


def norm_gemv_rope_reference(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, weight: torch.Tensor,
                             num_heads: int, num_kv_heads: int, positions: torch.Tensor, cos: torch.Tensor,
                             sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, k, v) of one token, q and k rotated (RotaryEmbedding.forward's arithmetic): [1, heads, D]."""
    dim = weight.shape[0] // (num_heads + 2 * num_kv_heads)
    qkv = F.linear(rmsnorm_reference(x, norm_weight, eps), weight)
    q, k, v = qkv.split([num_heads * dim, num_kv_heads * dim, num_kv_heads * dim], dim=-1)
    q, k, v = q.reshape(1, num_heads, dim), k.reshape(1, num_kv_heads, dim), v.reshape(1, num_kv_heads, dim)
    c = cos[positions].unsqueeze(1).to(q.dtype)
    s = sin[positions].unsqueeze(1).to(q.dtype)

    def rotate(t: torch.Tensor) -> torch.Tensor:
        h = t.shape[-1] // 2
        return t * c + torch.cat((-t[..., h:], t[..., :h]), dim=-1) * s

    return rotate(q), rotate(k), v
