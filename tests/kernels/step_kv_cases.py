"""The extend kernel reading this step's K/V from the step's own k, v (extend_attention's `step_kv`)
instead of through the pool: cases shared by the GPU test and the CPU interpreter run."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from tests.kernels.kernel_cases import PagedCase, reference

if TYPE_CHECKING:
    from radixserve.kernels.triton_attention import ExtendTiles


def step_kv_of(case: PagedCase) -> tuple[torch.Tensor, torch.Tensor]:
    """This step's k and v as the model hands them over: strided views into one [tokens, q | k | v]
    buffer (the qkv product), holding the pool's rows of each request's extend tokens."""
    table = case.req_to_token.cpu()
    slots = torch.cat([table[int(p), pre:pre + n] for p, pre, n in
                       zip(case.pool_idx.tolist(), case.prefix_lens, case.extend_lens, strict=True)])
    slots = slots.to(case.k_buf.device)
    tokens, (kv_heads, dim) = slots.numel(), case.k_buf.shape[1:]
    qkv = torch.full((tokens, (3 * kv_heads) * dim), float("nan"), dtype=case.k_buf.dtype, device=case.k_buf.device)
    k = qkv[:, kv_heads * dim:2 * kv_heads * dim].view(tokens, kv_heads, dim)
    v = qkv[:, 2 * kv_heads * dim:].view(tokens, kv_heads, dim)
    k.copy_(case.k_buf[slots])
    v.copy_(case.v_buf[slots])
    return k, v


def run_step_kv(case: PagedCase, tiles: ExtendTiles | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(extend output with step_kv, float64 reference)."""
    from radixserve.kernels.triton_attention import extend_attention

    dev = case.q_extend.device
    lens = torch.tensor(case.extend_lens)
    out = torch.full_like(case.q_extend, float("nan"))  # poisoned: every element must be written
    extend_attention(case.q_extend, case.k_buf, case.v_buf, out, case.req_to_token, case.pool_idx,
                     torch.tensor(case.prefix_lens, device=dev), lens.to(dev), (torch.cumsum(lens, 0) - lens).to(dev),
                     max(case.extend_lens), case.scale, tiles=tiles, step_kv=step_kv_of(case))
    return out, reference(case)[1]

