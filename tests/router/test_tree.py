"""PrefixTree: unit tests and property tests against a plain-set reference model."""

from __future__ import annotations

import random
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from radixserve.router.tree import PrefixTree, _common_prefix_len

# A small alphabet makes shared prefixes and edge splits frequent.
texts = st.text(alphabet="abc", min_size=0, max_size=12)


def lcp(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def distinct_prefixes(strings: list[str]) -> int:
    """Characters a compressed trie of `strings` stores: one per distinct non-empty prefix."""
    return len({s[:k] for s in strings for k in range(1, len(s) + 1)})


def test_match_and_insert_basics() -> None:
    tree = PrefixTree()
    assert tree.match("hello") == 0
    assert tree.insert("hello world") == 0
    assert tree.match("hello world") == 11
    assert tree.match("hello there") == 6
    assert tree.match("help") == 3
    assert tree.insert("hello there") == 6  # splits the edge after "hello "
    assert tree.size == len("hello world") + len("there")
    assert tree.insert("hello") == 5  # a prefix of a stored text adds nothing
    assert tree.size == 16
    assert sorted(tree.texts()) == ["hello there", "hello world"]
    tree.check_integrity()


def test_common_prefix_len_binary_search() -> None:
    assert _common_prefix_len("abcdef", 0, "abcdef") == 6
    assert _common_prefix_len("abcdef", 2, "cdxx") == 2
    assert _common_prefix_len("abc", 1, "bcdef") == 2  # text shorter than the label
    assert _common_prefix_len("abc", 0, "xyz") == 0


def test_eviction_removes_least_recently_inserted_first() -> None:
    tree = PrefixTree()
    tree.insert("aaaa")
    tree.insert("bbbb")
    tree.insert("cccc")
    tree.insert("aaaa")  # refresh: now "bbbb" is the oldest
    removed = tree.evict(8)
    assert removed == 4
    assert sorted(tree.texts()) == ["aaaa", "cccc"]
    assert tree.stats().evictions == 1
    tree.check_integrity()


def test_eviction_climbs_into_parents_that_become_leaves() -> None:
    tree = PrefixTree()
    tree.insert("shared-x")
    tree.insert("shared-y")  # "shared-" becomes an inner node
    tree.insert("zzzz")
    tree.evict(4)
    # Both old leaves go, then their parent "shared-" (now a leaf), leaving only "zzzz".
    assert tree.texts() == ["zzzz"]
    assert tree.size == 4
    tree.check_integrity()


def test_evict_to_zero_empties_the_tree() -> None:
    tree = PrefixTree()
    for t in ("abc", "abd", "x"):
        tree.insert(t)
    tree.evict(0)
    assert tree.size == 0 and tree.texts() == [] and tree.match("abc") == 0
    tree.check_integrity()


@settings(max_examples=200, deadline=None)
@given(st.lists(texts, max_size=25), texts)
def test_match_is_longest_common_prefix_with_any_insert(inserted: list[str], query: str) -> None:
    tree = PrefixTree()
    for t in inserted:
        tree.insert(t)
    expected = max((lcp(t, query) for t in inserted), default=0)
    assert tree.match(query) == expected
    assert tree.size == distinct_prefixes(inserted)
    tree.check_integrity()


@settings(max_examples=200, deadline=None)
@given(st.lists(texts, min_size=1, max_size=25), st.integers(min_value=0, max_value=40))
def test_eviction_respects_cap_and_keeps_the_newest(inserted: list[str], cap: int) -> None:
    tree = PrefixTree()
    for t in inserted:
        tree.insert(t)
    before = tree.size
    removed = tree.evict(cap)
    assert tree.size <= cap
    assert removed == before - tree.size
    assert removed == 0 or before > cap
    # Whatever survives is a prefix of something inserted.
    for kept in tree.texts():
        assert any(t.startswith(kept) for t in inserted)
    # LRU: the newest text survives whole whenever it fits.
    if len(inserted[-1]) <= cap:
        assert tree.match(inserted[-1]) == len(inserted[-1])
    tree.check_integrity()


def _run_threads(batches: list[list[str]], tree: PrefixTree, evict_cap: int | None) -> None:
    barrier = threading.Barrier(len(batches) + (1 if evict_cap is not None else 0))
    done = threading.Event()

    def insert(batch: list[str]) -> None:
        barrier.wait()
        for t in batch:
            tree.insert(t)
            tree.match(t)

    def evict() -> None:
        barrier.wait()
        while not done.is_set():
            assert evict_cap is not None
            tree.evict(evict_cap)

    threads = [threading.Thread(target=insert, args=(b,)) for b in batches]
    evictor = threading.Thread(target=evict) if evict_cap is not None else None
    for th in [*threads, *([evictor] if evictor else [])]:
        th.start()
    for th in threads:
        th.join()
    done.set()
    if evictor is not None:
        evictor.join()


def test_concurrent_inserts_from_threads_keep_the_tree_consistent() -> None:
    rng = random.Random(7)
    prefixes = ["system prompt A: ", "system prompt B: ", "other: "]
    batches = [[rng.choice(prefixes) + "".join(rng.choices("xyz", k=rng.randint(0, 30))) for _ in range(400)]
               for _ in range(4)]
    everything = [t for b in batches for t in b]

    tree = PrefixTree()
    _run_threads(batches, tree, evict_cap=None)
    tree.check_integrity()
    assert tree.size == distinct_prefixes(everything)
    assert all(tree.match(t) == len(t) for t in everything)

    # Inserts racing with evictions: still consistent, only prefixes of real inserts survive.
    tree = PrefixTree()
    _run_threads(batches, tree, evict_cap=2_000)
    tree.check_integrity()
    assert all(any(t.startswith(kept) for t in everything) for kept in tree.texts())
    tree.evict(2_000)
    assert tree.size <= 2_000
