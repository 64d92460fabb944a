"""The RadixCache's side of cache events: which token blocks the tree holds, as it changes.

Block k of a cached path covers tokens [k*B, (k+1)*B) and exists while the path's first (k+1)*B
tokens are in the tree, so a block "ends" at path position (k+1)*B. Each tree node keeps the
hashes of the blocks that end inside it (positions (start, end] of the node), which makes every
change cheap:

- insert of a new leaf covering [s, e): the blocks ending in (s, e] are new. Their hashes chain
  from the block ending at the last boundary b = s - s % B (held by an ancestor, found by walking
  up at most B - 1 tokens) over the tokens [b, s) taken from those ancestors: O(e - s + B).
- eviction of a leaf: exactly its own hashes are removed (no re-hashing).
- a split moves hashes between the two halves and announces nothing (the set of blocks is the same).
- reset: everything is cleared; events not yet sent are void and dropped.

The tracker only appends to `pending`; the scheduler drains it once per step (`drain`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from radixserve.cache_events.protocol import (
    BLOCK_TOKENS,
    ROOT_HASH,
    AllCleared,
    BlocksRemoved,
    BlocksStored,
    CacheEvent,
    StoredBlock,
    block_hash,
    chain_hashes,
)

if TYPE_CHECKING:
    from radixserve.mem_cache.radix_cache import TreeNode


class BlockTracker:
    """Keeps `TreeNode.blocks` up to date and records the block events of a RadixCache."""

    def __init__(self, block_tokens: int = BLOCK_TOKENS) -> None:
        self.block_tokens = block_tokens
        self.pending: list[CacheEvent] = []

    def drain(self) -> list[CacheEvent]:
        """The events since the last drain, oldest first."""
        out, self.pending = self.pending, []
        return out

    # ---- tree changes ------------------------------------------------------------------------
    def on_insert(self, leaf: TreeNode) -> None:
        """`leaf` was just added under an existing node: announce the blocks that end inside it."""
        assert leaf.parent is not None
        s, B = leaf.depth, self.block_tokens
        b = s - s % B
        head, parent_hash = self._since_boundary(leaf.parent, s - b, b)
        hashes = chain_hashes(parent_hash, head + leaf.key if head else leaf.key, B)
        if hashes:
            leaf.blocks = hashes
            parents = [parent_hash, *hashes[:-1]]
            self.pending.append(BlocksStored([StoredBlock(h, p) for h, p in zip(hashes, parents, strict=True)]))

    def on_split(self, upper: TreeNode, lower: TreeNode) -> None:
        """`upper` took the first tokens of `lower` (whose depth and key are already cut)."""
        blocks = lower.blocks
        if not blocks:
            return
        B = self.block_tokens
        in_upper = lower.depth // B - upper.depth // B  # block ends in (upper.depth, lower.depth]
        upper.blocks, lower.blocks = blocks[:in_upper], blocks[in_upper:]

    def on_evict(self, leaf: TreeNode) -> None:
        if leaf.blocks:
            self.pending.append(BlocksRemoved(list(leaf.blocks)))

    def on_reset(self) -> None:
        # Whatever was not sent yet describes blocks that no longer exist.
        self.pending = [AllCleared()]

    def on_attach(self, root: TreeNode) -> None:
        """Start tracking a tree that may already hold paths: hash them all and announce them."""
        self.pending = [AllCleared()]
        stack = list(root.children.values())
        while stack:
            node = stack.pop()
            node.blocks = ()
            self.on_insert(node)
            stack.extend(node.children.values())

    # ---- helpers -----------------------------------------------------------------------------
    def _since_boundary(self, node: TreeNode, need: int, boundary: int) -> tuple[list[int], int]:
        """The `need` tokens that end where `node` ends (path positions [boundary, node end)), and
        the hash of the block that ends at `boundary` (ROOT_HASH at 0)."""
        parts: list[list[int]] = []
        x = node
        while need > 0:
            key = x.key
            take = min(need, len(key))
            parts.append(key[len(key) - take:])
            need -= take
            if need:
                assert x.parent is not None
                x = x.parent
        if boundary == 0:
            return _concat_reversed(parts), ROOT_HASH
        # `x` holds position `boundary` (or, with nothing to take, ends there): the block ending at
        # `boundary` ends inside x unless x starts exactly there, then inside its parent; either
        # way it is that node's last block.
        holder = x if x.depth < boundary else x.parent
        assert holder is not None and holder.blocks, "block tracking started on a non-empty tree"
        return _concat_reversed(parts), holder.blocks[-1]


def _concat_reversed(parts: list[list[int]]) -> list[int]:
    out: list[int] = []
    for p in reversed(parts):
        out.extend(p)
    return out


def tree_blocks(root: TreeNode, block_tokens: int = BLOCK_TOKENS) -> dict[int, int]:
    """Every block of the tree computed from scratch (hash -> parent hash): the reference that
    applying the events must reproduce (tests, and `check_integrity` with tracking on)."""
    out: dict[int, int] = {}
    stack: list[tuple[TreeNode, list[int]]] = [(child, []) for child in root.children.values()]
    while stack:
        node, prefix = stack.pop()
        path = prefix + node.key
        parent = ROOT_HASH
        B = block_tokens
        for start in range(0, len(path) - B + 1, B):
            h = block_hash(parent, path[start:start + B])
            out[h] = parent
            parent = h
        stack.extend((child, path) for child in node.children.values())
    return out
