"""RadixCache and ChunkCache driven through BasePrefixCache only, the way the scheduler drives them."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from radixserve.mem_cache import make_prefix_cache
from radixserve.mem_cache.base_prefix_cache import BasePrefixCache
from radixserve.mem_cache.chunk_cache import ChunkCache
from radixserve.mem_cache.memory_pool import ReqToTokenPool, TokenToKVPool
from radixserve.mem_cache.radix_cache import RadixCache, TreeNode

SIZE = 32


@dataclass
class FakeReq:
    """Satisfies CacheReq."""

    origin_input_ids: list[int]
    output_ids: list[int] = field(default_factory=list)
    fill_ids: list[int] = field(default_factory=list)
    req_pool_idx: int | None = None
    kv_len: int = 0
    prefix_indices: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    last_node: TreeNode | None = None


def held(cache: BasePrefixCache, reqs: list[FakeReq]) -> torch.Tensor:
    rows = cache.req_to_token_pool.req_to_token
    parts = [rows[r.req_pool_idx, cache.req_owned_from(r) : r.kv_len] for r in reqs if r.req_pool_idx is not None]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)


def admit(cache: BasePrefixCache, req: FakeReq, upto: int) -> int:
    """Match, lock, take a row and compute KV for fill_ids[:upto]; returns the matched length."""
    req.fill_ids = req.origin_input_ids[:upto]
    req.prefix_indices, req.last_node = cache.match_prefix(req.fill_ids[:-1])
    if req.last_node is not None:
        cache.inc_lock_ref(req.last_node)
    req.req_pool_idx = cache.req_to_token_pool.alloc()
    assert req.req_pool_idx is not None
    hit = req.prefix_indices.numel()
    cache.req_to_token_pool.req_to_token[req.req_pool_idx, :hit] = req.prefix_indices
    extend(cache, req, upto - hit)
    return hit


def extend(cache: BasePrefixCache, req: FakeReq, n: int) -> None:
    slots = cache.token_to_kv_pool.alloc(n)
    assert slots is not None and req.req_pool_idx is not None
    start = max(req.kv_len, req.prefix_indices.numel())
    cache.req_to_token_pool.req_to_token[req.req_pool_idx, start : start + n] = slots
    req.kv_len = start + n


@pytest.mark.parametrize("shares", [True, False], ids=["radix", "chunk"])
def test_same_operations_through_the_interface(shares: bool) -> None:
    kv = TokenToKVPool(SIZE, torch.float32, num_layers=1, num_kv_heads=1, head_dim=2, device="cpu")
    cache = make_prefix_cache(not shares, ReqToTokenPool(4, SIZE, "cpu"), kv)
    assert cache.shares_prefixes is shares
    live: list[FakeReq] = []

    def check(evictable: int, protected: int) -> None:
        assert (cache.evictable_size(), cache.protected_size()) == (evictable, protected)
        assert cache.total_size() == evictable + protected
        cache.check_integrity(held(cache, live))

    # A: prompt of 8 prefilled in two chunks of 4, then one decoded token.
    a = FakeReq(list(range(1, 9)))
    live.append(a)
    assert admit(cache, a, 4) == 0
    cache.cache_unfinished_req(a)
    assert a.prefix_indices.numel() == 4  # the tree's slots, or (chunk) its own first chunk
    assert cache.req_owned_from(a) == (4 if shares else 0)
    check(0, 4 if shares else 0)
    a.fill_ids = a.origin_input_ids
    extend(cache, a, 4)
    a.output_ids = [100]
    extend(cache, a, 1)
    check(0, 4 if shares else 0)
    cache.cache_finished_req(a)
    live.remove(a)
    assert a.req_pool_idx is None and a.last_node is None and a.prefix_indices.numel() == 0
    check(9 if shares else 0, 0)
    assert kv.available_size() == SIZE - (9 if shares else 0)

    # B shares A's first 6 tokens: a hit only when sharing; the hit is locked while B runs.
    b = FakeReq([1, 2, 3, 4, 5, 6, 50, 51, 52, 53])
    live.append(b)
    hit = admit(cache, b, 10)
    assert hit == (6 if shares else 0)
    cache.record_lookup(len(b.origin_input_ids), hit)
    assert cache.stats.hit_rate == pytest.approx(0.6 if shares else 0.0)
    check(3 if shares else 0, 6 if shares else 0)

    # Eviction takes only A's unlocked tail [7, 8, 100]; the locked prefix survives.
    assert cache.evict(100) == (3 if shares else 0)
    check(0, 6 if shares else 0)
    assert cache.match_prefix([1, 2, 3, 4, 5, 6, 7])[0].numel() == (6 if shares else 0)

    # insert: the caller frees the duplicated leading slots it was told about, keeps the rest.
    value = kv.alloc(3)
    assert value is not None
    dup = cache.insert([1, 2, 9], value)
    assert dup == (2 if shares else 0)
    kv.free(value[:dup])
    if not shares:
        kv.free(value)  # ChunkCache took nothing
    check(1 if shares else 0, 6 if shares else 0)

    cache.cache_finished_req(b)
    live.remove(b)
    check(11 if shares else 0, 0)  # [1..6] + [9] + [50..53]
    assert cache.evict(SIZE) == (11 if shares else 0)
    check(0, 0)
    assert kv.available_size() == SIZE

    cache.reset()
    check(0, 0)
    assert cache.stats.queried_tokens == 10  # statistics survive reset


def test_siblings_of_an_abstract_base() -> None:
    assert issubclass(RadixCache, BasePrefixCache) and issubclass(ChunkCache, BasePrefixCache)
    assert not issubclass(ChunkCache, RadixCache) and not issubclass(RadixCache, ChunkCache)
    with pytest.raises(TypeError):
        BasePrefixCache(ReqToTokenPool(1, 4, "cpu"), TokenToKVPool(4, torch.float32, 1, 1, 2, "cpu"))  # type: ignore[abstract]


def test_chunk_cache_integrity_still_counts_slots() -> None:
    kv = TokenToKVPool(SIZE, torch.float32, num_layers=1, num_kv_heads=1, head_dim=2, device="cpu")
    cache = make_prefix_cache(True, ReqToTokenPool(4, SIZE, "cpu"), kv)
    r = FakeReq(list(range(1, 6)))
    admit(cache, r, 5)
    with pytest.raises(AssertionError, match="slot accounting"):
        cache.check_integrity()  # r's 5 slots are unaccounted for
    with pytest.raises(AssertionError, match="duplicated or lost"):
        cache.check_integrity(torch.cat([held(cache, [r])[:-1], held(cache, [r])[:1]]))
    cache.check_integrity(held(cache, [r]))
