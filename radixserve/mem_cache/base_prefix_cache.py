"""BasePrefixCache: how the scheduler reuses KV across requests. Implementations: RadixCache (shares
prefixes) and ChunkCache (no sharing, `--disable-radix-cache`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

import torch

from radixserve.mem_cache.memory_pool import ReqToTokenPool, TokenToKVPool

if TYPE_CHECKING:
    from radixserve.mem_cache.radix_cache import TreeNode


class CacheReq(Protocol):
    """What the cache needs of a request (managers.schedule_batch.Req satisfies it)."""

    req_pool_idx: int | None
    origin_input_ids: list[int]
    output_ids: list[int]
    fill_ids: list[int]
    kv_len: int  # leading tokens of origin_input_ids + output_ids whose KV is in req_to_token
    prefix_indices: torch.Tensor
    last_node: TreeNode | None


@dataclass
class CacheStats:
    queried_tokens: int = 0
    hit_tokens: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0


class BasePrefixCache(ABC):
    """Every KV slot is free in the TokenToKVPool, owned by the cache, or held by exactly one running
    request (its row from `req_owned_from(req)` to `req.kv_len`); check_integrity verifies it.
    """

    shares_prefixes: ClassVar[bool]  # False: no match ever hits, so waiting for one never pays off

    def __init__(self, req_to_token_pool: ReqToTokenPool, token_to_kv_pool: TokenToKVPool) -> None:
        self.req_to_token_pool = req_to_token_pool
        self.token_to_kv_pool = token_to_kv_pool
        self.stats = CacheStats()
        self.reset()

    def reset(self) -> None:
        """Forget everything cached (the caller clears the pools)."""
        self._evictable = 0  # owned slots that evict may free
        self._protected = 0  # owned slots that are locked

    @abstractmethod
    def match_prefix(self, key: list[int]) -> tuple[torch.Tensor, TreeNode | None]:
        """Longest cached prefix of `key`: (its KV slots, the handle that locks them, if any)."""

    @abstractmethod
    def insert(self, key: list[int], value: torch.Tensor) -> int:
        """Offer key -> value slots; returns n: value[:n] duplicates cached slots, the caller frees them."""

    @abstractmethod
    def evict(self, num_tokens: int) -> int:
        """Free at least num_tokens unlocked owned slots where possible; returns how many were freed."""

    @abstractmethod
    def inc_lock_ref(self, node: TreeNode) -> None:
        """Protect the prefix ending at `node` from eviction."""

    @abstractmethod
    def dec_lock_ref(self, node: TreeNode) -> None:
        """Undo one inc_lock_ref."""

    def evictable_size(self) -> int:
        return self._evictable

    def protected_size(self) -> int:
        return self._protected

    def total_size(self) -> int:
        return self._evictable + self._protected

    @abstractmethod
    def cache_finished_req(self, req: CacheReq) -> None:
        """A request left (finished, aborted or retracted): take or free its KV, release its row."""

    @abstractmethod
    def cache_unfinished_req(self, req: CacheReq) -> None:
        """After a prefill chunk: the KV computed so far becomes the request's prefix."""

    @abstractmethod
    def req_owned_from(self, req: CacheReq) -> int:
        """Position in req's row from which the request itself, not the cache, holds the slots."""

    @abstractmethod
    def cached_slots(self) -> list[torch.Tensor]:
        """The slots the cache owns (for check_integrity)."""

    def record_lookup(self, queried: int, hit: int) -> None:
        self.stats.queried_tokens += queried
        self.stats.hit_tokens += hit

    def check_integrity(self, held_by_requests: torch.Tensor | None = None) -> None:
        """Every slot is free, owned by the cache, or held by a request, exactly once."""
        owned = self.cached_slots()
        parts = [self.token_to_kv_pool.free_slots(), *[t.cpu() for t in owned]]
        if held_by_requests is not None:
            parts.append(held_by_requests.cpu())
        allslots = torch.cat(parts)
        size = self.token_to_kv_pool.size
        assert allslots.numel() == size, f"slot accounting: {allslots.numel()} counted, pool has {size}"
        assert torch.equal(torch.sort(allslots).values, torch.arange(1, size + 1)), "a slot is duplicated or lost"
        assert sum(t.numel() for t in owned) == self.total_size()
