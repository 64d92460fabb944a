"""RadixCache: a radix tree over token ids whose nodes own KV slots, for prefix reuse across requests.

Invariants (checked by `check_integrity`):
- every KV slot is either free in the TokenToKVPool, owned by exactly one tree node, or held by
  exactly one running request beyond its matched prefix;
- a node with lock_ref > 0 (and so all its ancestors) is never evicted;
- evictable_size + protected_size == the number of slots the tree owns.

With a `BlockTracker` attached (`track_blocks`, the server's rank 0 does it) every change of the
tree's token paths is also recorded as cache events (radixserve/cache_events/tracker.py).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Sequence

import torch

from radixserve.cache_events.tracker import BlockTracker, tree_blocks
from radixserve.mem_cache.base_prefix_cache import BasePrefixCache, CacheReq
from radixserve.mem_cache.memory_pool import CHECK_SLOTS

_counter = itertools.count()


class TreeNode:
    __slots__ = ("blocks", "children", "depth", "id", "key", "last_access", "lock_ref", "parent", "value")

    def __init__(self, parent: TreeNode | None = None, key: list[int] | None = None,
                 value: torch.Tensor | None = None) -> None:
        self.children: dict[int, TreeNode] = {}
        self.parent = parent
        self.key: list[int] = key or []
        self.value: torch.Tensor = value if value is not None else torch.empty(0, dtype=torch.int64)
        self.lock_ref = 0
        self.last_access = time.monotonic()
        self.id = next(_counter)  # tie-breaker for the eviction heap
        self.depth: int = parent.depth + len(parent.key) if parent is not None else 0  # path position of key[0]
        self.blocks: Sequence[int] = ()  # hashes of the blocks ending inside this node (with a BlockTracker)

    def __lt__(self, other: TreeNode) -> bool:
        return (self.last_access, self.id) < (other.last_access, other.id)


def _common_prefix_len(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class RadixCache(BasePrefixCache):
    shares_prefixes = True
    block_tracker: BlockTracker | None = None

    def reset(self) -> None:
        super().reset()
        self.root = TreeNode()
        self.root.lock_ref = 1  # the root is never evicted
        if self.block_tracker is not None:
            self.block_tracker.on_reset()

    def track_blocks(self, tracker: BlockTracker) -> None:
        """Record block events from now on (what the tree already holds is announced first)."""
        self.block_tracker = tracker
        tracker.on_attach(self.root)

    # ---- lookup and insert -----------------------------------------------------------------
    def match_prefix(self, key: list[int]) -> tuple[torch.Tensor, TreeNode]:
        """A match that ends inside a node splits it, so the returned node covers the match exactly."""
        node = self.root
        now = time.monotonic()
        node.last_access = now
        values: list[torch.Tensor] = []
        pos = 0
        while pos < len(key) and key[pos] in node.children:
            child = node.children[key[pos]]
            n = _common_prefix_len(child.key, key[pos:])
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = now
            values.append(child.value)
            pos += n
            node = child
        indices = torch.cat(values) if values else torch.empty(0, dtype=torch.int64)
        return indices, node

    def insert(self, key: list[int], value: torch.Tensor) -> int:
        assert len(key) == value.numel(), (len(key), value.numel())
        if CHECK_SLOTS and value.numel():
            lo, hi = int(value.min()), int(value.max())
            if lo < 1 or hi > self.token_to_kv_pool.size:
                raise AssertionError(f"inserting KV slots outside [1, {self.token_to_kv_pool.size}]: {lo}..{hi}")
        node = self.root
        now = time.monotonic()
        pos = 0
        while pos < len(key):
            child = node.children.get(key[pos])
            if child is None:
                leaf = TreeNode(node, list(key[pos:]), value[pos:].clone())
                node.children[key[pos]] = leaf
                self._evictable += leaf.value.numel()
                if self.block_tracker is not None:
                    self.block_tracker.on_insert(leaf)
                return pos
            n = _common_prefix_len(child.key, key[pos:])
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = now
            pos += n
            node = child
        return pos

    def _split(self, child: TreeNode, n: int) -> TreeNode:
        """Cut `child` after n tokens; returns the new upper node (which keeps child's locks)."""
        assert child.parent is not None
        upper = TreeNode(child.parent, child.key[:n], child.value[:n])
        upper.lock_ref = child.lock_ref
        upper.last_access = child.last_access
        child.parent.children[child.key[0]] = upper
        child.key = child.key[n:]
        child.value = child.value[n:]
        child.depth += n
        child.parent = upper
        upper.children[child.key[0]] = child
        if self.block_tracker is not None:
            self.block_tracker.on_split(upper, child)
        return upper

    # ---- locks -------------------------------------------------------------------------------
    def inc_lock_ref(self, node: TreeNode) -> None:
        while node is not self.root:
            if node.lock_ref == 0:
                self._evictable -= node.value.numel()
                self._protected += node.value.numel()
            node.lock_ref += 1
            assert node.parent is not None
            node = node.parent

    def dec_lock_ref(self, node: TreeNode) -> None:
        while node is not self.root:
            assert node.lock_ref > 0, "lock_ref underflow"
            if node.lock_ref == 1:
                self._evictable += node.value.numel()
                self._protected -= node.value.numel()
            node.lock_ref -= 1
            assert node.parent is not None
            node = node.parent

    # ---- eviction ----------------------------------------------------------------------------
    def evict(self, num_tokens: int) -> int:
        """Free at least num_tokens slots from unlocked leaves, least recently used first."""
        heap = [n for n in self.nodes() if not n.children and n.lock_ref == 0]
        heapq.heapify(heap)
        freed = 0
        while freed < num_tokens and heap:
            leaf = heapq.heappop(heap)
            assert leaf.parent is not None
            self.token_to_kv_pool.free(leaf.value)
            freed += leaf.value.numel()
            self._evictable -= leaf.value.numel()
            parent = leaf.parent
            del parent.children[leaf.key[0]]
            if self.block_tracker is not None:
                self.block_tracker.on_evict(leaf)
            if parent is not self.root and not parent.children and parent.lock_ref == 0:
                heapq.heappush(heap, parent)
        return freed

    def nodes(self) -> list[TreeNode]:
        out, stack = [], list(self.root.children.values())
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out

    # ---- request hand-off --------------------------------------------------------------------
    def cache_finished_req(self, req: CacheReq) -> None:
        """A request left (finished, aborted or retracted): give its KV to the tree and release it."""
        token_ids = (req.origin_input_ids + req.output_ids)[: req.kv_len]
        assert req.req_pool_idx is not None
        kv = self.req_to_token_pool.req_to_token[req.req_pool_idx, : len(token_ids)].clone()
        cached_before = req.prefix_indices.numel()
        new_prefix = self.insert(token_ids, kv)
        # Slots this request computed for tokens that another request inserted meanwhile.
        self.token_to_kv_pool.free(kv[cached_before:new_prefix])
        self.req_to_token_pool.free(req.req_pool_idx)
        if req.last_node is not None:
            self.dec_lock_ref(req.last_node)
        req.req_pool_idx = None
        req.last_node = None
        req.prefix_indices = torch.empty(0, dtype=torch.int64)

    def cache_unfinished_req(self, req: CacheReq) -> None:
        """After a prefill chunk: insert what is computed so far and lock it for the request."""
        assert req.req_pool_idx is not None
        token_ids = list(req.fill_ids)
        row = self.req_to_token_pool.req_to_token[req.req_pool_idx]
        kv = row[: len(token_ids)].clone()
        cached_before = req.prefix_indices.numel()
        new_prefix = self.insert(token_ids, kv)
        self.token_to_kv_pool.free(kv[cached_before:new_prefix])
        indices, node = self.match_prefix(token_ids)
        row[cached_before : indices.numel()] = indices[cached_before:].to(row.device)
        if req.last_node is not None:
            self.dec_lock_ref(req.last_node)
        self.inc_lock_ref(node)
        req.prefix_indices = indices
        req.last_node = node

    def req_owned_from(self, req: CacheReq) -> int:
        return req.prefix_indices.numel()  # the matched prefix's slots are the tree's

    # ---- checks ------------------------------------------------------------------------------
    def cached_slots(self) -> list[torch.Tensor]:
        return [n.value for n in self.nodes()]

    def check_integrity(self, held_by_requests: torch.Tensor | None = None) -> None:
        super().check_integrity(held_by_requests)
        locked = sum(n.value.numel() for n in self.nodes() if n.lock_ref > 0)
        assert locked == self._protected, (locked, self._protected)
        for n in self.nodes():
            assert n.parent is not None and n.parent.children.get(n.key[0]) is n
            assert n.parent is self.root or n.parent.lock_ref >= n.lock_ref
        if self.block_tracker is not None:
            held = sorted(h for n in self.nodes() for h in n.blocks)
            assert held == sorted(tree_blocks(self.root, self.block_tracker.block_tokens)), \
                "the nodes' block hashes differ from the tree's paths"

