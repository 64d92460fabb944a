from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from radixserve.layers.rotary_embedding import RotaryEmbedding
    from radixserve.model_executor.forward_batch import ForwardBatch


class RadixAttention(nn.Module):
    """One layer's attention over the paged KV pool; the math lives in the step's attention backend."""

    def __init__(self, layer_id: int, num_heads: int, num_kv_heads: int, head_dim: int, scaling: float) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scaling = scaling

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                rotary: RotaryEmbedding, forward_batch: ForwardBatch) -> torch.Tensor:
        """q, k before rotary: the backend rotates them and stores k, v in the KV pool as it sees fit."""
        return forward_batch.attn_backend.forward(q, k, v, positions, rotary, self, forward_batch)
