"""ForwardBatch: the model's view of one step (tensors only), built from a ScheduleBatch."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, auto
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from radixserve.attention.base import AttentionBackend
    from radixserve.mem_cache.memory_pool import ReqToTokenPool, TokenToKVPool


# The rows of ForwardBatch.decode_index.
DECODE_INDEX_ROWS = ("req_pool_indices", "positions", "seq_lens", "out_cache_loc")


class ForwardMode(IntEnum):
    EXTEND = auto()  # prefill (possibly a chunk, possibly after a cached prefix)
    DECODE = auto()  # one new token per request

    def is_extend(self) -> bool:
        return self == ForwardMode.EXTEND

    def is_decode(self) -> bool:
        return self == ForwardMode.DECODE


@dataclass
class ForwardBatch:
    forward_mode: ForwardMode
    batch_size: int
    input_ids: torch.Tensor  # [num_tokens]
    positions: torch.Tensor  # [num_tokens]
    req_pool_indices: torch.Tensor  # [bs]
    seq_lens: torch.Tensor  # [bs], lengths including this step's tokens
    out_cache_loc: torch.Tensor  # [num_tokens], KV slots this step writes
    seq_lens_cpu: list[int]
    extend_prefix_lens_cpu: list[int]  # EXTEND: tokens already in the KV pool per request
    extend_seq_lens_cpu: list[int]  # EXTEND: new tokens per request
    req_to_token_pool: ReqToTokenPool
    token_to_kv_pool: TokenToKVPool
    attn_backend: AttentionBackend
    # EXTEND only: the last requests are running requests' one-token decode rows (mixed chunked
    # prefill); an attention backend may serve them with its decode kernel.
    num_decode_rows: int = 0
    # DECODE under a CUDA graph: the float32 [bs, vocab] rows the logits are written into. All the
    # graphs share one such buffer, so a graph's output does not hold its own copy of the pool's
    # memory (the ladder up to batch 512 would otherwise keep ~5 GB of the 8B shape's logits).
    logits_out: torch.Tensor | None = None
    # DECODE: req_pool_indices, positions, seq_lens and out_cache_loc as the rows of one [4, bs]
    # tensor (DECODE_INDEX_ROWS) when the batch built them that way; the CUDA graph runner then
    # takes them into its inputs with one copy.
    decode_index: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    def last_token_indices(self) -> torch.Tensor:
        """Row of each request's last token in the flattened token dimension."""
        if self.forward_mode.is_decode():
            return torch.arange(self.batch_size, device=self.input_ids.device)
        lens = torch.tensor(self.extend_seq_lens_cpu, dtype=torch.int64)
        return (torch.cumsum(lens, 0) - 1).to(self.input_ids.device)
