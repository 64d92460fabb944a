"""RadixCache: unit tests and a hypothesis property test against a naive reference."""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from radixserve.mem_cache.base_prefix_cache import BasePrefixCache
from radixserve.mem_cache.chunk_cache import ChunkCache
from radixserve.mem_cache.memory_pool import ReqToTokenPool, TokenToKVPool
from radixserve.mem_cache.radix_cache import RadixCache, TreeNode


def pools(size: int = 64) -> tuple[ReqToTokenPool, TokenToKVPool]:
    kv = TokenToKVPool(size, torch.float32, num_layers=1, num_kv_heads=1, head_dim=2, device="cpu")
    return ReqToTokenPool(4, 32, "cpu"), kv


def make_cache(size: int = 64) -> RadixCache:
    return RadixCache(*pools(size))


def put(cache: BasePrefixCache, key: list[int]) -> torch.Tensor:
    """Insert key the way a request does: reuse the cached prefix, compute the rest, free duplicates."""
    prefix, _ = cache.match_prefix(key)
    new = cache.token_to_kv_pool.alloc(len(key) - prefix.numel())
    assert new is not None
    value = torch.cat([prefix, new])
    dup = cache.insert(key, value)
    cache.token_to_kv_pool.free(value[prefix.numel() : dup])
    return value


def test_match_insert_split_and_sizes() -> None:
    cache = make_cache()
    v1 = put(cache, [1, 2, 3, 4])
    v2 = put(cache, [1, 2, 5])
    assert torch.equal(v2[:2], v1[:2])  # shared prefix reuses the same slots
    idx, node = cache.match_prefix([1, 2, 3, 9])
    assert torch.equal(idx, v1[:3])
    assert node.key == [3]  # [3, 4] was split at the match end
    assert cache.total_size() == 5 and cache.evictable_size() == 5 and cache.protected_size() == 0
    cache.check_integrity()


def test_locked_nodes_survive_eviction_and_lru_order() -> None:
    cache = make_cache()
    put(cache, [1, 1, 1])
    put(cache, [2, 2, 2])
    put(cache, [3, 3, 3])
    _, node = cache.match_prefix([1, 1, 1])
    cache.inc_lock_ref(node)
    cache.match_prefix([3, 3, 3])  # touch: now [2,2,2] is least recently used
    assert cache.evict(3) == 3
    assert cache.match_prefix([2, 2, 2])[0].numel() == 0
    assert cache.match_prefix([3, 3, 3])[0].numel() == 3
    assert cache.evict(100) == 3  # only [3,3,3] is evictable
    assert cache.match_prefix([1, 1, 1])[0].numel() == 3
    assert cache.protected_size() == 3
    cache.dec_lock_ref(node)
    assert cache.evict(100) == 3 and cache.total_size() == 0
    cache.check_integrity()


def test_eviction_frees_parents_that_become_leaves() -> None:
    cache = make_cache()
    put(cache, [1, 2, 3])
    put(cache, [1, 2, 4])
    assert cache.evict(5) == 4  # both leaves, then their shared parent [1, 2]
    assert cache.total_size() == 0
    assert cache.token_to_kv_pool.available_size() == 64


def test_chunk_cache_shares_nothing() -> None:
    cache = ChunkCache(*pools())
    value = cache.token_to_kv_pool.alloc(3)
    assert value is not None
    assert cache.insert([1, 2, 3], value) == 0
    assert cache.match_prefix([1, 2, 3])[0].numel() == 0
    assert cache.evict(10) == 0


# ---- property test --------------------------------------------------------------------------
keys = st.lists(st.integers(0, 3), min_size=1, max_size=8)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), keys),
        st.tuples(st.just("lock"), keys),
        st.tuples(st.just("unlock"), st.integers(0, 100)),
        st.tuples(st.just("evict"), st.integers(1, 10)),
        st.tuples(st.just("match"), keys),
    ),
    max_size=60,
)


class Reference:
    """A RadixCache next to a naive model of it: every cached token prefix -> its slot."""

    def __init__(self, size: int) -> None:
        self.cache = make_cache(size)
        self.ref: dict[tuple[int, ...], int] = {}
        self.locks: list[tuple[TreeNode, tuple[int, ...]]] = []  # (node, locked key)

    def match(self, key: list[int]) -> list[int]:
        out = []
        for i in range(len(key)):
            slot = self.ref.get(tuple(key[: i + 1]))
            if slot is None:
                break
            out.append(slot)
        return out

    def op_insert(self, key: list[int]) -> None:
        pool = self.cache.token_to_kv_pool
        need = len(key) - self.cache.match_prefix(key)[0].numel()
        if pool.available_size() < need:
            self._forget_evicted(self.cache.evict(need - pool.available_size()))
        if pool.available_size() < need:
            return
        value = put(self.cache, key)
        for i in range(len(key)):
            self.ref.setdefault(tuple(key[: i + 1]), int(value[i]))

    def op_lock(self, key: list[int]) -> None:
        idx, node = self.cache.match_prefix(key)
        if idx.numel():
            self.cache.inc_lock_ref(node)
            self.locks.append((node, tuple(key[: idx.numel()])))

    def op_unlock(self, i: int) -> None:
        if self.locks:
            self.cache.dec_lock_ref(self.locks.pop(i % len(self.locks))[0])

    def _forget_evicted(self, freed: int) -> None:
        # Evicted prefixes leave the reference too; their slots are free and may be handed out again.
        free = set(self.cache.token_to_kv_pool.free_slots().tolist())
        before = len(self.ref)
        self.ref = {k: v for k, v in self.ref.items() if v not in free}
        assert before - len(self.ref) == freed

    def op_evict(self, n: int) -> None:
        self._forget_evicted(self.cache.evict(n))

    def op_match(self, key: list[int]) -> None:
        assert self.cache.match_prefix(key)[0].tolist() == self.match(key)

    def check(self) -> None:
        self.cache.check_integrity()
        assert self.cache.total_size() == len(self.ref)
        assert all(tuple(k[:-1]) in self.ref for k in self.ref if len(k) > 1), "reference lost prefix-closure"
        for _, locked_key in self.locks:
            assert len(self.match(list(locked_key))) == len(locked_key), "a locked prefix was evicted"


@settings(max_examples=150, deadline=None)
@given(ops)
def test_against_naive_reference(operations: list[tuple[str, Any]]) -> None:
    model = Reference(40)
    for op, arg in operations:
        getattr(model, f"op_{op}")(arg)
        model.check()  # invariants after every operation
