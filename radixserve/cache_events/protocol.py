"""The wire format of cache events, shared by the engine (publisher) and the router (index).

A server's RadixCache is described as a set of *blocks*: block k of a cached token sequence
covers tokens [k*B, (k+1)*B) and exists exactly while the sequence's first (k+1)*B tokens are in
the tree (partial trailing blocks are never announced). A block is named by a chained hash of
its tokens and its parent block's hash, so equal prefixes give equal names on every server and
in the router, which hashes a request's prompt tokens the same way (`prefix_block_hashes`).

Events are batched; each batch carries the server's `epoch` (a random id chosen when the engine
starts: a new epoch means everything the router knew about the worker is void) and a `seq`
that grows by one per batch, so a router that sees a gap knows it missed something and
resynchronises from `Snapshot`. Every batch also carries the server's load as the engine sees it.

The encoding is JSON (msgspec) over HTTP: one object per line (NDJSON) on the event stream,
one object for the snapshot.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator, Sequence

import msgspec

# Tokens per block. Small enough that a request's shared prefix is seen to within 16 tokens,
# large enough that a 32k-token cache is a few thousand hashes.
BLOCK_TOKENS = 16
# Hashes are unsigned 63-bit ints, so that they survive JSON in any language as exact integers
# of a signed 64-bit type.
_HASH_MASK = (1 << 63) - 1
ROOT_HASH = 0  # the parent of a sequence's first block


def block_hash(parent: int, tokens: Sequence[int]) -> int:
    """The name of a block: blake2b over the parent's name and the block's token ids."""
    h = hashlib.blake2b(parent.to_bytes(8, "little"), digest_size=8)
    # One pack of little-endian uint32s: the same bytes as a per-token loop, at half the cost (the
    # engine hashes every block it caches).
    h.update(struct.pack(f"<{len(tokens)}I", *tokens))
    return int.from_bytes(h.digest(), "little") & _HASH_MASK


def iter_block_hashes(tokens: Sequence[int], block_tokens: int = BLOCK_TOKENS,
                      parent: int = ROOT_HASH) -> Iterator[tuple[int, int]]:
    """(parent hash, block hash) of each full block of `tokens`, in order."""
    for start in range(0, len(tokens) - block_tokens + 1, block_tokens):
        h = block_hash(parent, tokens[start:start + block_tokens])
        yield parent, h
        parent = h


def chain_hashes(parent: int, tokens: Sequence[int], block_tokens: int = BLOCK_TOKENS) -> list[int]:
    """The hashes of every full block of `tokens` chained from `parent`: what `iter_block_hashes`
    gives, computed with one pack of all the tokens (the engine's per-insert path)."""
    step = 4 * block_tokens
    data = memoryview(struct.pack(f"<{len(tokens)}I", *tokens))
    out: list[int] = []
    for start in range(0, len(data) - step + 1, step):
        h = hashlib.blake2b(parent.to_bytes(8, "little"), digest_size=8)
        h.update(data[start:start + step])
        parent = int.from_bytes(h.digest(), "little") & _HASH_MASK
        out.append(parent)
    return out


def prefix_block_hashes(tokens: Sequence[int], block_tokens: int = BLOCK_TOKENS) -> list[int]:
    """The chained hashes of every full block of a token sequence (what a router looks up)."""
    return [h for _, h in iter_block_hashes(tokens, block_tokens)]


class StoredBlock(msgspec.Struct, array_like=True, frozen=True):
    """A block now in the cache: its hash, its parent's hash (ROOT_HASH for a first block)."""

    hash: int
    parent: int


class BlocksStored(msgspec.Struct, tag="stored", frozen=True):
    blocks: list[StoredBlock]


class BlocksRemoved(msgspec.Struct, tag="removed", frozen=True):
    """Blocks no longer in the cache (eviction). A removed block's descendants are removed too
    and are listed as well: the router never has to infer them."""

    hashes: list[int]


class AllCleared(msgspec.Struct, tag="cleared", frozen=True):
    """The whole cache was emptied (/flush_cache)."""


CacheEvent = BlocksStored | BlocksRemoved | AllCleared


class EngineLoad(msgspec.Struct, frozen=True):
    """Load as the scheduler sees it, at the time of the batch."""

    waiting: int  # requests queued, not yet prefilled
    running: int  # requests in the running batch
    kv_usage: float  # fraction of KV token slots in use (requests and cache), 0..1
    cached_tokens: int  # tokens held by the RadixCache
    max_running: int  # the server's max running requests


class EventBatch(msgspec.Struct, frozen=True):
    epoch: str
    seq: int
    ts: float  # server wall clock, seconds
    block_tokens: int
    events: list[CacheEvent]
    load: EngineLoad


class Snapshot(msgspec.Struct, frozen=True):
    """Every block in the cache as of batch `seq` of `epoch` (the stream continues at seq+1)."""

    epoch: str
    seq: int
    ts: float
    block_tokens: int
    blocks: list[StoredBlock]
    load: EngineLoad


ENCODER = msgspec.json.Encoder()
BATCH_DECODER = msgspec.json.Decoder(EventBatch)
SNAPSHOT_DECODER = msgspec.json.Decoder(Snapshot)

# HTTP routes on `radixserve serve` (same port and API key as the rest of the server).
EVENTS_PATH = "/v1/cache/events"  # GET, NDJSON stream of EventBatch; `?since=SEQ` replays retained batches
SNAPSHOT_PATH = "/v1/cache/snapshot"  # GET, one Snapshot
