"""Paged attention over the TokenToKVPool in Triton (page size 1).

decode: split-KV. Stage 1 gives each (request, KV head, split) program a slice of the sequence for
all the query heads that share that KV head, and writes partial outputs with their log-sum-exp; stage 2 merges the splits. Splitting keeps the GPU
busy when the batch is small and the context long.
extend: one program per (request, head, block of new tokens) walks the request's KV through
req_to_token (cached prefix and the new tokens, already written to the pool) with a causal mask
offset by the prefix length, so RadixCache hits and chunked prefill run here too. Given this step's
own k and v (`step_kv`), it reads the new tokens' keys from there instead: affine loads in place of
a gather (-14 % on 8 x 1024 prompts, -22 % on one 8k prompt, H200), the cached prefix still from the pool.
Its scores are in base 2 (one multiply-add per score before exp2) and its longest blocks start first:
1.29x on 8 x 1024 prompts and 1.65x on one 8k prompt (H200, 2026-12-03; docs/gpu.md, "Prefill attention").
Grouped-query heads map query head h to KV head h // group. float32 inputs use IEEE dots so that
float32 runs can match a float32 reference exactly enough for greedy parity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from radixserve.kernels.pdl import gdc_launch_dependents, gdc_wait, launch_options

LOG2_E = 1.4426950408889634


@triton.jit
def _decode_stage1_grouped(
    Q, K, V, ReqToToken, ReqPool, SeqLens, MidO, MidLse, Out, sm_scale, v_scale, num_splits,
    stride_qb, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_rt,
    stride_mb, stride_mh, stride_ms, stride_lb, stride_lh, stride_ob, stride_oh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr, IEEE: tl.constexpr, PDL: tl.constexpr, DIRECT: tl.constexpr,
):
    # One program per (request, KV head, split) serves all GROUP query heads of that KV head, so
    # each K/V row is read once instead of GROUP times, and the products run on the tensor cores.
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    s = tl.program_id(2)
    seq_len = tl.load(SeqLens + b)
    pool = tl.load(ReqPool + b).to(tl.int64)
    split_len = tl.cdiv(seq_len, num_splits)
    start = s * split_len
    end = tl.minimum(start + split_len, seq_len)
    offs_h = tl.arange(0, BLOCK_H)
    hmask = offs_h < GROUP
    heads = kvh * GROUP + offs_h
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < HEAD_DIM
    m_i = tl.full([BLOCK_H], -float("inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    first = start
    if PDL:
        # Batch 1: the first block's slots are read before the wait, while the kernel before
        # finishes (3.945 -> 3.897 ms a step of the 8B shape, H200). The lengths and the table were
        # written before the step's first kernel, which had completed before the kernel before this
        # one passed its own wait and let this one start (pdl.py). Only q and the pool's newest
        # rows come from the kernel before.
        offs_n = start + tl.arange(0, BLOCK_N)
        nmask = offs_n < end
        slots = tl.load(ReqToToken + pool * stride_rt + offs_n, mask=nmask, other=0).to(tl.int64)
        gdc_wait()
        gdc_launch_dependents()
        q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                    mask=hmask[:, None] & dmask[None, :], other=0.0)
        # An empty split (start >= end) masks every key: its NaNs stay in acc, l_i and m_i, which
        # `has` below discards.
        kt, v = _slot_kv(K, V, slots, kvh, nmask, offs_d, dmask, stride_kt, stride_kh, stride_vt, stride_vh,
                         MASKED=True, DTYPE=Q.dtype.element_ty)
        acc, l_i, m_i = _softmax_step(acc, l_i, m_i, q, kt, v, nmask[None, :], sm_scale, MASKED=True, IEEE=IEEE,
                                      EXP2=False)
        first = start + BLOCK_N
    else:
        q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                    mask=hmask[:, None] & dmask[None, :], other=0.0)
    # The loop is the one the large batches were measured with. A version that peeled the first
    # block at every batch size and ran this loop through the extend kernel's _pool_kv/_softmax_step
    # made a batch-256 step 4 % slower (12.32 -> 12.84 ms, H200); which of the two cost it was not
    # measured apart.
    for n0 in range(first, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        nmask = offs_n < end
        slots = tl.load(ReqToToken + pool * stride_rt + offs_n, mask=nmask, other=0).to(tl.int64)
        kt = tl.load(K + slots[None, :] * stride_kt + kvh * stride_kh + offs_d[:, None],
                     mask=nmask[None, :] & dmask[:, None], other=0.0).to(Q.dtype.element_ty)
        if IEEE:
            qk = tl.dot(q, kt, input_precision="ieee")
        else:
            qk = tl.dot(q, kt)
        qk = tl.where(nmask[None, :], qk * sm_scale, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp(qk - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        v = tl.load(V + slots[:, None] * stride_vt + kvh * stride_vh + offs_d[None, :],
                    mask=nmask[:, None] & dmask[None, :], other=0.0).to(Q.dtype.element_ty)
        if IEEE:
            pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
    has = end > start
    safe_l = tl.where(l_i > 0, l_i, 1.0)
    out = tl.where(has, acc / safe_l[:, None] * v_scale, 0.0)
    if DIRECT:  # one split: this is the final output, no stage 2 (its launch and the scratch round trip)
        tl.store(Out + b * stride_ob + heads[:, None] * stride_oh + offs_d[None, :], out.to(Out.dtype.element_ty),
                 mask=hmask[:, None] & dmask[None, :])
    else:
        lse = tl.where(has, m_i + tl.log(safe_l), -float("inf"))
        tl.store(MidO + b * stride_mb + heads[:, None] * stride_mh + s * stride_ms + offs_d[None, :], out,
                 mask=hmask[:, None] & dmask[None, :])
        tl.store(MidLse + b * stride_lb + heads * stride_lh + s, lse, mask=hmask)


@triton.jit
def _decode_stage2(
    MidO, MidLse, Out, num_splits,
    stride_mb, stride_mh, stride_ms, stride_lb, stride_lh, stride_ob, stride_oh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, PDL: tl.constexpr,
):
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < HEAD_DIM
    offs_s = tl.arange(0, BLOCK_S)
    smask = offs_s < num_splits
    # All splits in one load (one round trip instead of one per split). Split 0 is never empty
    # (seq_len >= 1), so the max is finite; empty splits have lse -inf and weigh 0.
    lse = tl.load(MidLse + b * stride_lb + h * stride_lh + offs_s, mask=smask, other=-float("inf"))
    o = tl.load(MidO + b * stride_mb + h * stride_mh + offs_s[:, None] * stride_ms + offs_d[None, :],
                mask=smask[:, None] & dmask[None, :], other=0.0)
    w = tl.exp(lse - tl.max(lse, 0))
    acc = tl.sum(w[:, None] * o, 0)
    tl.store(Out + b * stride_ob + h * stride_oh + offs_d, (acc / tl.sum(w, 0)).to(Out.dtype.element_ty), mask=dmask)


def decode_num_splits(max_seq_len: int, bs: int, kv_heads: int, num_sms: int = 132,
                      max_splits: int = 16) -> int:
    """Enough splits to fill the SMs about twice, never slices shorter than 64 tokens."""
    programs = bs * kv_heads  # the query heads of one KV head share a program
    want = max(1, (2 * num_sms + programs - 1) // programs)
    return max(1, min(max_splits, want, (max_seq_len + 63) // 64))


@dataclass(frozen=True)
class DecodeTiles:
    """Launch shape of the decode kernel's stage 1 (None: the defaults chosen in decode_attention).
    `direct`: with one split, stage 1 writes the output itself (False forces the two-stage path)."""

    block_n: int | None = None
    num_warps: int = 4
    num_stages: int | None = None
    direct: bool = True


def decode_attention(
    q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, o: torch.Tensor,
    req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor,
    sm_scale: float, num_splits: int, mid_o: torch.Tensor, mid_lse: torch.Tensor,
    k_scale: float = 1.0, v_scale: float = 1.0, tiles: DecodeTiles | None = None,
) -> None:
    """q, o: [bs, H, D]; k_buf, v_buf: [slots, KVH, D]; mid_o: [bs, H, >=splits, D] f32; mid_lse: [bs, H, >=splits].
    An FP8 pool holds K / k_scale and V / v_scale: the scores take k_scale, the output v_scale."""
    tiles = tiles or DecodeTiles()
    bs, heads, dim = q.shape
    kv_heads = k_buf.shape[1]
    group = heads // kv_heads
    block_d = triton.next_power_of_2(dim)
    # One split (a large batch): each program walks a whole sequence, and 128 keys a block kept the
    # H200 at 98 % of its copy rate against 94 % with 64 (profile_throughput.py, batch 320, ctx ~1150).
    block_n = tiles.block_n or (32 if block_d > 128 else 128 if num_splits == 1 else 64)
    direct = tiles.direct and num_splits == 1
    # Programmatic dependent launch (pdl.py) where it was measured to pay: batch-1 decode (-150 us of
    # a 4.7 ms step without the one-row fusion, -120 us of 4.0 with it, H200); larger batches as before.
    pdl = launch_options(q.device) if bs == 1 else {}
    stages = {} if tiles.num_stages is None else {"num_stages": tiles.num_stages}
    args = (q, k_buf, v_buf, req_to_token, req_pool_indices, seq_lens, mid_o, mid_lse, o, sm_scale * k_scale, v_scale,
            num_splits,
            q.stride(0), q.stride(1), k_buf.stride(0), k_buf.stride(1), v_buf.stride(0), v_buf.stride(1),
            req_to_token.stride(0), mid_o.stride(0), mid_o.stride(1), mid_o.stride(2),
            mid_lse.stride(0), mid_lse.stride(1), o.stride(0), o.stride(1))
    # Without grouping (MHA) the program still runs its one head through the tensor-core path with
    # padded rows: decode attention is memory-bound, and one kernel is simpler than two.
    _decode_stage1_grouped[(bs, kv_heads, num_splits)](
        *args, GROUP=group, HEAD_DIM=dim, BLOCK_D=max(16, block_d), BLOCK_N=block_n,
        BLOCK_H=max(16, triton.next_power_of_2(group)), IEEE=q.dtype == torch.float32, num_warps=tiles.num_warps,
        PDL=bool(pdl), DIRECT=direct, **pdl, **stages)
    if direct:
        return
    _decode_stage2[(bs, heads)](
        mid_o, mid_lse, o, num_splits, mid_o.stride(0), mid_o.stride(1), mid_o.stride(2),
        mid_lse.stride(0), mid_lse.stride(1), o.stride(0), o.stride(1),
        HEAD_DIM=dim, BLOCK_D=block_d, BLOCK_S=triton.next_power_of_2(num_splits), num_warps=1, PDL=bool(pdl), **pdl,
    )


@triton.jit
def _softmax_step(acc, l_i, m_i, q, kt, v, visible, sm_scale, MASKED: tl.constexpr, IEEE: tl.constexpr,
                  EXP2: tl.constexpr):
    """One block of keys (kt: [D, N]) and values (v: [N, D]) into the online softmax; `visible` [M, N]
    masks scores where MASKED (unmasked blocks lie wholly below the causal diagonal, inside the sequence).
    EXP2: sm_scale carries log2(e) and m_i is in base 2, so each score costs one multiply-add before exp2
    (sm_scale > 0, so the max of the scaled scores is the scaled max)."""
    if IEEE:
        qk = tl.dot(q, kt, input_precision="ieee")
    else:
        qk = tl.dot(q, kt)
    if EXP2:
        if MASKED:
            qk = tl.where(visible, qk, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1) * sm_scale)
        p = tl.math.exp2(qk * sm_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
    else:
        qk = qk * sm_scale
        if MASKED:
            qk = tl.where(visible, qk, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp(qk - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
    if IEEE:
        pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
    else:
        pv = tl.dot(p.to(v.dtype), v)
    acc = acc * alpha[:, None] + pv
    l_i = l_i * alpha + tl.sum(p, 1)
    return acc, l_i, m_new


@triton.jit
def _pool_kv(K, V, ReqToToken, row, kvh, offs_n, nmask, offs_d, dmask, stride_kt, stride_kh, stride_vt, stride_vh,
             MASKED: tl.constexpr, DTYPE: tl.constexpr):
    """K (transposed, [D, N]) and V ([N, D]) of key positions offs_n, gathered from the pool through the
    request's req_to_token row (`row` points at it)."""
    if MASKED:
        slots = tl.load(ReqToToken + row + offs_n, mask=nmask, other=0).to(tl.int64)
    else:
        slots = tl.load(ReqToToken + row + offs_n).to(tl.int64)
    return _slot_kv(K, V, slots, kvh, nmask, offs_d, dmask, stride_kt, stride_kh, stride_vt, stride_vh, MASKED, DTYPE)


@triton.jit
def _slot_kv(K, V, slots, kvh, nmask, offs_d, dmask, stride_kt, stride_kh, stride_vt, stride_vh,
             MASKED: tl.constexpr, DTYPE: tl.constexpr):
    """K (transposed, [D, N]) and V ([N, D]) of the pool's rows `slots` (int64)."""
    if MASKED:
        kmask = nmask[None, :] & dmask[:, None]
        vmask = nmask[:, None] & dmask[None, :]
    else:
        kmask = dmask[:, None]
        vmask = dmask[None, :]
    kt = tl.load(K + slots[None, :] * stride_kt + kvh * stride_kh + offs_d[:, None], mask=kmask, other=0.0)
    v = tl.load(V + slots[:, None] * stride_vt + kvh * stride_vh + offs_d[None, :], mask=vmask, other=0.0)
    return kt.to(DTYPE), v.to(DTYPE)


@triton.jit
def _step_kv(KE, VE, rows, kvh, nmask, offs_d, dmask, stride_ekt, stride_ekh, stride_evt, stride_evh,
             MASKED: tl.constexpr):
    """K ([D, N]) and V ([N, D]) of this step's tokens `rows` (int64), read straight from the step's k, v."""
    if MASKED:
        kmask = nmask[None, :] & dmask[:, None]
        vmask = nmask[:, None] & dmask[None, :]
    else:
        kmask = dmask[:, None]
        vmask = dmask[None, :]
    kt = tl.load(KE + rows[None, :] * stride_ekt + kvh * stride_ekh + offs_d[:, None], mask=kmask, other=0.0)
    v = tl.load(VE + rows[:, None] * stride_evt + kvh * stride_evh + offs_d[None, :], mask=vmask, other=0.0)
    return kt, v


@triton.jit
def _extend_kernel(
    Q, K, V, KE, VE, Out, ReqToToken, ReqPool, PrefixLens, ExtendLens, ExtendStart, sm_scale, v_scale,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ekt, stride_ekh, stride_evt, stride_evh,
    stride_ot, stride_oh, stride_rt,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr, STEP_KV: tl.constexpr,
    EXP2: tl.constexpr, HEAVY_FIRST: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    if HEAVY_FIRST:
        # The GPU starts programs in grid order, and a causal block's work grows with its index: the last
        # blocks of a long prompt, started first, leave the cheap ones to fill the tail of the launch.
        mblk = tl.num_programs(2) - 1 - tl.program_id(2)
    else:
        mblk = tl.program_id(2)
    ext_len = tl.load(ExtendLens + b)
    if mblk * BLOCK_M >= ext_len:
        return
    prefix = tl.load(PrefixLens + b)
    q_start = tl.load(ExtendStart + b).to(tl.int64)
    row = tl.load(ReqPool + b).to(tl.int64) * stride_rt
    kvh = h // GROUP
    offs_m = mblk * BLOCK_M + tl.arange(0, BLOCK_M)
    mmask = offs_m < ext_len
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < HEAD_DIM
    q = tl.load(Q + (q_start + offs_m)[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
                mask=mmask[:, None] & dmask[None, :], other=0.0)
    m_i = tl.full([BLOCK_M], -float("inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    dtype = Q.dtype.element_ty
    arange_n = tl.arange(0, BLOCK_N)
    if STEP_KV:
        # The cached prefix from the pool; this step's keys straight from its k and v (rows of the
        # qkv product): affine addresses instead of a gather through req_to_token. Every prefix key
        # is visible to every row, so only the prefix's last partial block needs a (bounds) mask.
        full = prefix // BLOCK_N * BLOCK_N
        for n0 in range(0, full, BLOCK_N):
            offs_n = n0 + arange_n
            kt, v = _pool_kv(K, V, ReqToToken, row, kvh, offs_n, offs_n < prefix, offs_d, dmask, stride_kt, stride_kh,
                             stride_vt, stride_vh, MASKED=False, DTYPE=dtype)
            acc, l_i, m_i = _softmax_step(acc, l_i, m_i, q, kt, v, None, sm_scale, MASKED=False, IEEE=IEEE, EXP2=EXP2)
        for n0 in range(full, prefix, BLOCK_N):
            offs_n = n0 + arange_n
            nmask = offs_n < prefix
            kt, v = _pool_kv(K, V, ReqToToken, row, kvh, offs_n, nmask, offs_d, dmask, stride_kt, stride_kh,
                             stride_vt, stride_vh, MASKED=True, DTYPE=dtype)
            acc, l_i, m_i = _softmax_step(acc, l_i, m_i, q, kt, v, nmask[None, :], sm_scale, MASKED=True, IEEE=IEEE,
                                          EXP2=EXP2)
        # This step's keys j (0-based in the extend part): j < mblk * BLOCK_M is visible to all rows.
        ext_end = tl.minimum((mblk + 1) * BLOCK_M, ext_len)
        unmasked = mblk * BLOCK_M // BLOCK_N * BLOCK_N
        for j0 in range(0, unmasked, BLOCK_N):
            offs_j = j0 + arange_n
            kt, v = _step_kv(KE, VE, q_start + offs_j, kvh, offs_j < ext_end, offs_d, dmask, stride_ekt, stride_ekh,
                             stride_evt, stride_evh, MASKED=False)
            acc, l_i, m_i = _softmax_step(acc, l_i, m_i, q, kt, v, None, sm_scale, MASKED=False, IEEE=IEEE, EXP2=EXP2)
        for j0 in range(unmasked, ext_end, BLOCK_N):
            offs_j = j0 + arange_n
            jmask = offs_j < ext_end
            kt, v = _step_kv(KE, VE, q_start + offs_j, kvh, jmask, offs_d, dmask, stride_ekt, stride_ekh,
                             stride_evt, stride_evh, MASKED=True)
            visible = (offs_j[None, :] <= offs_m[:, None]) & jmask[None, :]
            acc, l_i, m_i = _softmax_step(acc, l_i, m_i, q, kt, v, visible, sm_scale, MASKED=True, IEEE=IEEE, EXP2=EXP2)
    else:
        q_pos = prefix + offs_m
        kv_end = prefix + tl.minimum((mblk + 1) * BLOCK_M, ext_len)
        # Keys before the block's first query position are visible to all its rows: whole blocks of
        # them skip the mask, and only the diagonal's blocks pay for it (-16 % time on an 8k prompt).
        masked_from = (prefix + mblk * BLOCK_M) // BLOCK_N * BLOCK_N
        for n0 in range(0, masked_from, BLOCK_N):
            offs_n = n0 + arange_n
            kt, v = _pool_kv(K, V, ReqToToken, row, kvh, offs_n, offs_n < kv_end, offs_d, dmask, stride_kt,
                             stride_kh, stride_vt, stride_vh, MASKED=False, DTYPE=dtype)
            acc, l_i, m_i = _softmax_step(acc, l_i, m_i, q, kt, v, None, sm_scale, MASKED=False, IEEE=IEEE, EXP2=EXP2)
        for n0 in range(masked_from, kv_end, BLOCK_N):
            offs_n = n0 + arange_n
            nmask = offs_n < kv_end
            kt, v = _pool_kv(K, V, ReqToToken, row, kvh, offs_n, nmask, offs_d, dmask, stride_kt, stride_kh,
                             stride_vt, stride_vh, MASKED=True, DTYPE=dtype)
            # Key 0 is visible to every query, so each row has a finite max after the first block.
            visible = (offs_n[None, :] <= q_pos[:, None]) & nmask[None, :]
            acc, l_i, m_i = _softmax_step(acc, l_i, m_i, q, kt, v, visible, sm_scale, MASKED=True, IEEE=IEEE, EXP2=EXP2)
    out = acc / l_i[:, None] * v_scale
    tl.store(Out + (q_start + offs_m)[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
             out.to(Out.dtype.element_ty), mask=mmask[:, None] & dmask[None, :])


@dataclass(frozen=True)
class ExtendTiles:
    """Launch shape of the extend kernel (None: the defaults chosen in extend_attention; the launch
    shapes measured are in benchmarks/profile_throughput.py)."""

    block_m: int | None = None
    block_n: int | None = None
    num_warps: int | None = None
    num_stages: int | None = None
    exp2: bool = True  # scores in base 2 (_softmax_step's EXP2)
    heavy_first: bool = True  # the blocks with the most keys start first


def extend_attention(
    q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, o: torch.Tensor,
    req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, prefix_lens: torch.Tensor,
    extend_lens: torch.Tensor, extend_start: torch.Tensor, max_extend_len: int, sm_scale: float,
    k_scale: float = 1.0, v_scale: float = 1.0, tiles: ExtendTiles | None = None,
    step_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """q, o: [tokens, H, D] (requests' new tokens back to back); K/V of those tokens already in the pool.

    `step_kv` = (k, v), [tokens, KVH, D] each (last dim unit-stride): this step's keys and values as
    the pool holds them (a float pool: scales 1), read from there instead of through the pool."""
    tiles = tiles or ExtendTiles()
    heads, dim = q.shape[1], q.shape[2]
    group = heads // k_buf.shape[1]
    block_d = max(16, triton.next_power_of_2(dim))
    fp32 = q.dtype == torch.float32
    small = fp32 or block_d > 128
    block_m = tiles.block_m or (32 if small else 64)
    block_n = tiles.block_n or (32 if small else 64)
    if step_kv is not None:
        assert k_scale == v_scale == 1.0 and step_kv[0].dtype == q.dtype, "step K/V need a float pool of q's dtype"
    ke, ve = step_kv if step_kv is not None else (k_buf, v_buf)
    grid = (req_pool_indices.shape[0], heads, triton.cdiv(max_extend_len, block_m))
    scale = sm_scale * k_scale * (LOG2_E if tiles.exp2 else 1.0)
    _extend_kernel[grid](
        q, k_buf, v_buf, ke, ve, o, req_to_token, req_pool_indices, prefix_lens, extend_lens, extend_start,
        scale, v_scale, q.stride(0), q.stride(1), k_buf.stride(0), k_buf.stride(1),
        v_buf.stride(0), v_buf.stride(1), ke.stride(0), ke.stride(1), ve.stride(0), ve.stride(1),
        o.stride(0), o.stride(1), req_to_token.stride(0),
        GROUP=group, HEAD_DIM=dim, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n, IEEE=fp32,
        STEP_KV=step_kv is not None, EXP2=tiles.exp2, HEAVY_FIRST=tiles.heavy_first,
        # 3 stages: loads two blocks ahead of the products (-8 % on 8 x 1024, -18 % on one 8k prompt
        # against 2 on the H200). With exp2 and heavy-first, 64 x 64 on 4 warps is the fastest tile on fresh
        # prompts (128 x 128 on 8 warps: +13 % on 8 x 1024; -8 % only on 8k new tokens after an 8k prefix).
        num_warps=tiles.num_warps or 4, num_stages=tiles.num_stages or 3,
    )
