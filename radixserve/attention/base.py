"""The attention backend interface the model calls; it reads and writes the paged KV pool."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from radixserve.layers.radix_attention import RadixAttention
    from radixserve.layers.rotary_embedding import RotaryEmbedding
    from radixserve.model_executor.forward_batch import ForwardBatch


class AttentionBackend(ABC):
    @abstractmethod
    def init_forward_metadata(self, forward_batch: ForwardBatch) -> None:
        """Precompute what every layer of this step shares (indices, masks)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                rotary: RotaryEmbedding, layer: RadixAttention, forward_batch: ForwardBatch) -> torch.Tensor:
        """q: [tokens, heads, d]; k, v: [tokens, kv_heads, d] of this step's tokens -> [tokens, heads, d].

        Rotates q and k (given unrotated), writes k and v into the pool at forward_batch.out_cache_loc,
        then attends over each request's whole sequence (cached prefix plus new tokens).
        """
        q = self.rotate_and_store(q, k, v, positions, rotary, layer, forward_batch)
        if forward_batch.forward_mode.is_decode():
            return self.forward_decode(q, layer, forward_batch)
        return self.forward_extend(q, layer, forward_batch)

    def rotate_and_store(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                         rotary: RotaryEmbedding, layer: RadixAttention, forward_batch: ForwardBatch) -> torch.Tensor:
        """Applies rotary to q and k and writes k, v into the pool; returns the rotated q."""
        q, k = rotary(positions, q, k)
        forward_batch.token_to_kv_pool.set_kv_buffer(layer.layer_id, forward_batch.out_cache_loc, k, v)
        return q

    @abstractmethod
    def forward_extend(self, q: torch.Tensor, layer: RadixAttention, forward_batch: ForwardBatch) -> torch.Tensor:
        ...

    @abstractmethod
    def forward_decode(self, q: torch.Tensor, layer: RadixAttention, forward_batch: ForwardBatch) -> torch.Tensor:
        ...
