"""The attention backend interface the model calls; it reads and writes the paged KV pool."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from radixserve.layers.radix_attention import RadixAttention
    from radixserve.model_executor.forward_batch import ForwardBatch


class AttentionBackend(ABC):
    @abstractmethod
    def init_forward_metadata(self, forward_batch: ForwardBatch) -> None:
        """Precompute what every layer of this step shares (indices, masks)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: RadixAttention,
                forward_batch: ForwardBatch, save_kv: bool = True) -> torch.Tensor:
        """q: [tokens, heads, d]; k, v: [tokens, kv_heads, d] of this step's tokens. Returns [tokens, heads, d].

        Writes k and v into the pool at forward_batch.out_cache_loc (unless the caller already
        did), then attends over each request's whole sequence (cached prefix plus new tokens).
        """
        if save_kv:
            forward_batch.token_to_kv_pool.set_kv_buffer(layer.layer_id, forward_batch.out_cache_loc, k, v)
        if forward_batch.forward_mode.is_decode():
            return self.forward_decode(q, layer, forward_batch)
        return self.forward_extend(q, layer, forward_batch)

    @abstractmethod
    def forward_extend(self, q: torch.Tensor, layer: RadixAttention, forward_batch: ForwardBatch) -> torch.Tensor:
        ...

    @abstractmethod
    def forward_decode(self, q: torch.Tensor, layer: RadixAttention, forward_batch: ForwardBatch) -> torch.Tensor:
        ...
