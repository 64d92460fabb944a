"""Pure-torch attention over the paged KV pool: the CPU path and the reference for GPU kernels."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from radixserve.attention.base import AttentionBackend

if TYPE_CHECKING:
    from radixserve.layers.radix_attention import RadixAttention
    from radixserve.model_executor.forward_batch import ForwardBatch


class TorchAttnBackend(AttentionBackend):
    def __init__(self) -> None:
        self._kv_indices: torch.Tensor | None = None  # DECODE: [bs, max_len] slots, padded with 0
        self._mask: torch.Tensor | None = None  # DECODE: [bs, 1, 1, max_len] True where valid
        self._extend_rows: list[torch.Tensor] = []  # EXTEND: per request, its slots

    def init_forward_metadata(self, fb: ForwardBatch) -> None:
        table = fb.req_to_token_pool.req_to_token
        if fb.forward_mode.is_decode():
            max_len = max(fb.seq_lens_cpu)
            idx = table[fb.req_pool_indices, :max_len]
            valid = torch.arange(max_len, device=idx.device)[None, :] < fb.seq_lens[:, None]
            self._kv_indices = torch.where(valid, idx, torch.zeros_like(idx))
            self._mask = valid[:, None, None, :]
        else:
            pools = fb.req_pool_indices.tolist()
            self._extend_rows = [table[p, :n] for p, n in zip(pools, fb.seq_lens_cpu, strict=True)]

    def forward_extend(self, q: torch.Tensor, layer: RadixAttention, fb: ForwardBatch) -> torch.Tensor:
        k_buf, v_buf = fb.token_to_kv_pool.get_kv_buffer(layer.layer_id)
        out = torch.empty_like(q)
        start = 0
        for rows, prefix, ext in zip(self._extend_rows, fb.extend_prefix_lens_cpu, fb.extend_seq_lens_cpu,
                                     strict=True):
            qi = q[start : start + ext].transpose(0, 1).unsqueeze(0)  # [1, h, ext, d]
            ki = k_buf[rows].transpose(0, 1).unsqueeze(0).to(q.dtype)  # [1, kvh, seq, d]
            vi = v_buf[rows].transpose(0, 1).unsqueeze(0).to(q.dtype)
            if prefix == 0:
                o = F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, scale=layer.scaling,
                                                   enable_gqa=True)
            else:
                # Query j sits at absolute position prefix + j and sees keys 0..prefix + j.
                qpos = torch.arange(prefix, prefix + ext, device=q.device)[:, None]
                kpos = torch.arange(prefix + ext, device=q.device)[None, :]
                o = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=kpos <= qpos, scale=layer.scaling,
                                                   enable_gqa=True)
            out[start : start + ext] = o.squeeze(0).transpose(0, 1)
            start += ext
        return out

    def forward_decode(self, q: torch.Tensor, layer: RadixAttention, fb: ForwardBatch) -> torch.Tensor:
        assert self._kv_indices is not None and self._mask is not None
        k_buf, v_buf = fb.token_to_kv_pool.get_kv_buffer(layer.layer_id)
        k = k_buf[self._kv_indices].to(q.dtype)  # [bs, L, kvh, d]
        v = v_buf[self._kv_indices].to(q.dtype)
        o = F.scaled_dot_product_attention(
            q.unsqueeze(2),  # [bs, h, 1, d]
            k.transpose(1, 2), v.transpose(1, 2), attn_mask=self._mask, scale=layer.scaling, enable_gqa=True,
        )
        return o.squeeze(2)
