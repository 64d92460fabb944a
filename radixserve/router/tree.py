"""Approximate radix tree of the prompts the router sent to one worker.

The router cannot see a replica's real RadixCache (token ids, evictions under memory
pressure), so it remembers the text it routed there and assumes the replica still caches
it. Keys are characters, not tokens: a shared text prefix is a shared token prefix for
any tokenizer, up to the last token boundary, which is all the estimate needs.

Size is counted in characters. Eviction removes least-recently-inserted leaves until the
tree fits its cap, which approximates the replica's own LRU eviction of unlocked leaves.
A "touch" comes from `insert` only: `match` is read-only because the router matches a
prompt against every worker's tree but sends it to one, and only that one's cache gets
warmer.

All methods take a lock so that the tree stays consistent if a caller shares it between
threads (the router itself uses one event loop; the lock is then uncontended and cheap).
"""

from __future__ import annotations

import heapq
import threading
from dataclasses import dataclass


class _Node:
    __slots__ = ("children", "label", "last_access", "parent")

    def __init__(self, label: str, parent: _Node | None, last_access: int) -> None:
        self.label = label
        self.parent = parent
        # Children keyed by the first character of their label: labels of siblings never
        # share a first character, which is what makes this a radix tree.
        self.children: dict[str, _Node] = {}
        self.last_access = last_access


def _common_prefix_len(text: str, start: int, label: str) -> int:
    """Length of the common prefix of `text[start:]` and `label`.

    The full-label case is one C-level `startswith`; otherwise a binary search over
    `startswith` keeps the work in C instead of a Python loop over characters.
    """
    if text.startswith(label, start):
        return len(label)
    lo, hi = 0, min(len(label), len(text) - start)
    while lo < hi:  # invariant: the first `lo` characters match
        mid = (lo + hi + 1) // 2
        if text.startswith(label[:mid], start):
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass(frozen=True)
class TreeStats:
    size_chars: int
    nodes: int
    evictions: int


class PrefixTree:
    """Per-worker approximate prefix cache: `match`, `insert`, `evict`."""

    def __init__(self) -> None:
        self._root = _Node("", None, 0)
        self._clock = 0  # a counter, not wall time: deterministic order and cheap
        self._size = 0
        self._nodes = 0
        self._evictions = 0
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """Characters stored (sum of edge label lengths)."""
        return self._size

    def stats(self) -> TreeStats:
        return TreeStats(self._size, self._nodes, self._evictions)

    def match(self, text: str) -> int:
        """Number of leading characters of `text` that the tree holds."""
        with self._lock:
            node = self._root
            pos = 0
            n = len(text)
            while pos < n:
                child = node.children.get(text[pos])
                if child is None:
                    break
                common = _common_prefix_len(text, pos, child.label)
                pos += common
                if common < len(child.label):
                    break
                node = child
            return pos

    def insert(self, text: str) -> int:
        """Add `text`, refresh the recency of its path; returns the characters it already held."""
        with self._lock:
            self._clock += 1
            now = self._clock
            node = self._root
            pos = 0
            n = len(text)
            while pos < n:
                child = node.children.get(text[pos])
                if child is None:
                    leaf = _Node(text[pos:], node, now)
                    node.children[text[pos]] = leaf
                    self._size += n - pos
                    self._nodes += 1
                    return pos
                common = _common_prefix_len(text, pos, child.label)
                if common < len(child.label):
                    # Split the edge: the shared part becomes a new inner node.
                    inner = _Node(child.label[:common], node, now)
                    node.children[text[pos]] = inner
                    child.label = child.label[common:]
                    child.parent = inner
                    inner.children[child.label[0]] = child
                    self._nodes += 1
                    child = inner
                child.last_access = now
                pos += common
                node = child
            return pos

    def evict(self, max_size: int) -> int:
        """Drop least-recently-inserted leaves until the tree holds at most `max_size` chars.

        Returns the number of characters removed. An inner node whose last child goes
        becomes a leaf and a candidate in turn, so whole cold branches disappear.
        """
        with self._lock:
            if self._size <= max_size:
                return 0
            removed = 0
            # Heap of (last_access, tiebreak, node) over current leaves; built per call,
            # since eviction runs on a timer and not per request.
            heap: list[tuple[int, int, _Node]] = []
            stack = [self._root]
            while stack:
                cur = stack.pop()
                if cur.children:
                    stack.extend(cur.children.values())
                elif cur is not self._root:
                    heap.append((cur.last_access, id(cur), cur))
            heapq.heapify(heap)
            while heap and self._size > max_size:
                _, _, leaf = heapq.heappop(heap)
                parent = leaf.parent
                assert parent is not None
                del parent.children[leaf.label[0]]
                self._size -= len(leaf.label)
                removed += len(leaf.label)
                self._nodes -= 1
                self._evictions += 1
                if not parent.children and parent is not self._root:
                    heapq.heappush(heap, (parent.last_access, id(parent), parent))
            return removed

    def clear(self) -> None:
        with self._lock:
            self._root = _Node("", None, 0)
            self._size = 0
            self._nodes = 0

    def check_integrity(self) -> None:
        """Raise AssertionError if the structure is inconsistent (for tests and debugging)."""
        with self._lock:
            size = 0
            nodes = 0
            stack = [self._root]
            while stack:
                cur = stack.pop()
                for first, child in cur.children.items():
                    assert child.label, "empty edge label"
                    assert child.label[0] == first, "child keyed by the wrong character"
                    assert child.parent is cur, "broken parent link"
                    assert child.last_access >= 0
                    size += len(child.label)
                    nodes += 1
                    stack.append(child)
            assert size == self._size, f"size {self._size} != counted {size}"
            assert nodes == self._nodes, f"nodes {self._nodes} != counted {nodes}"

    def texts(self) -> list[str]:
        """Every root-to-leaf string (for tests: the tree is a set of prefixes of these)."""
        with self._lock:
            out: list[str] = []
            stack: list[tuple[_Node, str]] = [(self._root, "")]
            while stack:
                cur, prefix = stack.pop()
                if not cur.children and cur is not self._root:
                    out.append(prefix)
                for child in cur.children.values():
                    stack.append((child, prefix + child.label))
            return out
