"""BlockTracker on a real RadixCache: applying the emitted events always gives the tree's blocks."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from radixserve.cache_events.protocol import (
    ROOT_HASH,
    AllCleared,
    BlocksRemoved,
    BlocksStored,
    CacheEvent,
    chain_hashes,
    iter_block_hashes,
    prefix_block_hashes,
)
from radixserve.cache_events.tracker import BlockTracker, tree_blocks
from radixserve.mem_cache.memory_pool import ReqToTokenPool, TokenToKVPool
from radixserve.mem_cache.radix_cache import RadixCache


def make_cache(block_tokens: int, size: int = 96) -> tuple[RadixCache, BlockTracker]:
    kv = TokenToKVPool(size, torch.float32, num_layers=1, num_kv_heads=1, head_dim=2, device="cpu")
    cache = RadixCache(ReqToTokenPool(4, 64, "cpu"), kv)
    tracker = BlockTracker(block_tokens)
    cache.track_blocks(tracker)
    return cache, tracker


def put(cache: RadixCache, key: list[int]) -> None:
    """Insert like a finished request: reuse the cached prefix, compute the rest, free duplicates."""
    prefix, _ = cache.match_prefix(key)
    need = len(key) - prefix.numel()
    if cache.token_to_kv_pool.available_size() < need:
        cache.evict(need - cache.token_to_kv_pool.available_size())
    new = cache.token_to_kv_pool.alloc(need)
    assert new is not None
    value = torch.cat([prefix, new])
    dup = cache.insert(key, value)
    cache.token_to_kv_pool.free(value[prefix.numel() : dup])


class Applied:
    """A subscriber's view: the block set obtained by applying events, checked as they come."""

    def __init__(self) -> None:
        self.blocks: dict[int, int] = {}

    def apply(self, events: list[CacheEvent]) -> None:
        for ev in events:
            if isinstance(ev, BlocksStored):
                for b in ev.blocks:
                    assert b.hash not in self.blocks, "a block announced twice"
                    assert b.parent == ROOT_HASH or b.parent in self.blocks, "a block before its parent"
                    self.blocks[b.hash] = b.parent
            elif isinstance(ev, BlocksRemoved):
                for h in ev.hashes:
                    assert h in self.blocks, "removal of an unknown block"
                    del self.blocks[h]
            elif isinstance(ev, AllCleared):
                self.blocks.clear()


# Keys are prefixes of a few long paths, cut anywhere, plus short tails over a tiny alphabet: many
# shared prefixes, extensions of cached paths, splits at every offset (mid-block and on a block
# boundary), duplicates.
BASES = [list(range(1, 41)), [1, 2, 3] + [9] * 37, [5] * 40]
cuts = st.one_of(st.integers(1, 40), st.sampled_from([3, 4, 6, 8, 9, 12, 16]))  # often on a boundary
keys = st.builds(lambda base, cut, tail: base[:cut] + tail, st.sampled_from(BASES), cuts,
                 st.lists(st.integers(1, 3), max_size=4))
ops = st.lists(st.one_of(
    st.tuples(st.just("insert"), keys),
    st.tuples(st.just("extend"), st.lists(st.integers(1, 3), min_size=1, max_size=5)),  # the last key, longer
    st.tuples(st.just("match"), keys),  # a match splits the node it ends in
    st.tuples(st.just("evict"), st.integers(1, 40)),
    st.tuples(st.just("reset"), st.none()),
), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(ops=ops, block_tokens=st.sampled_from([2, 3, 4]))
def test_applied_events_equal_the_trees_blocks(ops: list[tuple[str, object]], block_tokens: int) -> None:
    cache, tracker = make_cache(block_tokens)
    view = Applied()
    last: list[int] = []
    for op, arg in ops:
        if op in ("insert", "extend"):
            assert isinstance(arg, list)
            last = arg if op == "insert" else last + arg
            put(cache, last)
        elif op == "match":
            assert isinstance(arg, list)
            cache.match_prefix(arg)
        elif op == "evict":
            assert isinstance(arg, int)
            cache.evict(arg)
        else:
            cache.reset()
            cache.token_to_kv_pool.clear()
        view.apply(tracker.drain())
        assert view.blocks == tree_blocks(cache.root, block_tokens)
    cache.check_integrity()  # also checks the nodes' own block lists against the paths


def test_a_paths_blocks_are_the_routers_prefix_hashes() -> None:
    cache, tracker = make_cache(block_tokens=16, size=256)
    prompt = list(range(100, 150))  # 3 full blocks and 2 tokens
    put(cache, prompt)
    put(cache, prompt[:20] + [7] * 30)  # splits mid-block 1: shares block 0 only
    view = Applied()
    view.apply(tracker.drain())
    assert set(prefix_block_hashes(prompt)) <= set(view.blocks)
    assert set(prefix_block_hashes(prompt[:20] + [7] * 30)) <= set(view.blocks)
    assert len(view.blocks) == 3 + 2
    cache.match_prefix(prompt[:5])  # a split announces nothing
    assert tracker.drain() == []


def test_insert_below_a_node_that_starts_on_a_block_boundary() -> None:
    cache, tracker = make_cache(block_tokens=4)
    put(cache, [1, 2, 3, 4])
    put(cache, [1, 2, 3, 4, 5, 6])  # a node [4, 6): starts on a boundary, holds no block end
    put(cache, [1, 2, 3, 4, 5, 6, 7, 8, 9])  # chains from the block ending at 4, two nodes up
    view = Applied()
    view.apply(tracker.drain())
    assert view.blocks == tree_blocks(cache.root, 4)
    assert set(view.blocks) == set(prefix_block_hashes([1, 2, 3, 4, 5, 6, 7, 8, 9], 4))


def test_eviction_removes_exactly_the_leafs_blocks() -> None:
    cache, tracker = make_cache(block_tokens=4)
    put(cache, [1] * 10)  # blocks end at 4 and 8
    put(cache, [1] * 6 + [2] * 6)  # split at 6: the new leaf [6, 12) holds the blocks ending at 8, 12
    tracker.drain()
    _, node = cache.match_prefix([1] * 10)
    cache.inc_lock_ref(node)  # keep the first path
    cache.evict(6)
    (removed,) = tracker.drain()
    assert isinstance(removed, BlocksRemoved)
    assert removed.hashes == prefix_block_hashes([1] * 6 + [2] * 6, 4)[1:]


def test_attach_to_a_filled_tree_announces_it_and_reset_voids_pending() -> None:
    kv = TokenToKVPool(64, torch.float32, num_layers=1, num_kv_heads=1, head_dim=2, device="cpu")
    cache = RadixCache(ReqToTokenPool(4, 64, "cpu"), kv)
    put(cache, list(range(1, 20)))
    put(cache, list(range(1, 10)) + [50] * 9)
    tracker = BlockTracker(4)
    cache.track_blocks(tracker)
    view = Applied()
    events = tracker.drain()
    assert isinstance(events[0], AllCleared)
    view.apply(events)
    assert view.blocks == tree_blocks(cache.root, 4) and len(view.blocks) == 4 + 2
    put(cache, [9] * 8)
    cache.reset()
    assert tracker.drain() == [AllCleared()]  # the insert before the reset is never sent


@settings(max_examples=50, deadline=None)
@given(tokens=st.lists(st.integers(0, 2**32 - 1), max_size=70), parent=st.integers(0, 2**63 - 1),
       block_tokens=st.sampled_from([1, 4, 16]))
def test_the_engines_fast_chain_equals_the_protocols_reference(tokens: list[int], parent: int,
                                                                block_tokens: int) -> None:
    assert chain_hashes(parent, tokens, block_tokens) == [
        h for _, h in iter_block_hashes(tokens, block_tokens, parent)]
