"""ChunkCache: the prefix cache with sharing off (`--disable-radix-cache`)."""

from __future__ import annotations

import torch

from radixserve.mem_cache.base_prefix_cache import BasePrefixCache, CacheReq


class ChunkCache(BasePrefixCache):
    """Caches nothing: every match is empty, and a request keeps its own KV until it leaves, then it is freed."""

    shares_prefixes = False

    def match_prefix(self, key: list[int]) -> tuple[torch.Tensor, None]:
        return torch.empty(0, dtype=torch.int64), None  # nothing to lock

    def insert(self, key: list[int], value: torch.Tensor) -> int:
        return 0  # the caller keeps value

    def evict(self, num_tokens: int) -> int:
        return 0

    def inc_lock_ref(self, node: object) -> None:
        pass

    def dec_lock_ref(self, node: object) -> None:
        pass

    def cached_slots(self) -> list[torch.Tensor]:
        return []

    def req_owned_from(self, req: CacheReq) -> int:
        return 0  # prefix_indices are the request's own earlier chunks

    def cache_finished_req(self, req: CacheReq) -> None:
        assert req.req_pool_idx is not None
        n = min(req.kv_len, len(req.origin_input_ids) + len(req.output_ids))
        self.token_to_kv_pool.free(self.req_to_token_pool.req_to_token[req.req_pool_idx, :n].clone())
        self.req_to_token_pool.free(req.req_pool_idx)
        req.req_pool_idx = None
        req.last_node = None
        req.prefix_indices = torch.empty(0, dtype=torch.int64)

    def cache_unfinished_req(self, req: CacheReq) -> None:
        # The request keeps its slots; later chunks attend to them as its own prefix.
        assert req.req_pool_idx is not None
        req.prefix_indices = self.req_to_token_pool.req_to_token[req.req_pool_idx, : len(req.fill_ids)].clone()
