"""The router's exact index of what each worker's RadixCache holds, built from its cache events.

Per worker: the set of cached blocks (chained hashes, see radixserve/cache_events/protocol.py)
with their parents, the `epoch` and `seq` of the last batch applied, and the engine's load as
of that batch. A batch is applied only if it is the next one (`seq == last + 1`) of the same
epoch; anything else means the router missed something (a gap) or the engine restarted (a new
epoch), and the worker's index must be replaced by a snapshot before it is trusted again.

`lookup` answers, for a request's prefix block hashes, how many leading blocks each worker
holds: blocks are chained, so block k is present only if its whole path is, and the walk stops
at the first miss. That count is the longest real match on that worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from radixserve.cache_events.protocol import (
    AllCleared,
    BlocksRemoved,
    BlocksStored,
    EngineLoad,
    EventBatch,
    Snapshot,
)


class EventsState(StrEnum):
    CONNECTING = "connecting"  # subscribed, no snapshot yet: the approximate tree is used
    LIVE = "live"  # index in step with the stream: exact matching
    RESYNCING = "resyncing"  # gap, new epoch or stream lost: the tree is used until a snapshot lands
    NONE = "none"  # the worker serves no cache events (any OpenAI server): the tree, always


class Applied(StrEnum):
    OK = "ok"  # the batch was the next one and is applied
    STALE = "stale"  # already applied (a replay overlapping what we have): ignored
    RESYNC = "resync"  # gap or new epoch: the index is void until a snapshot


@dataclass
class WorkerIndex:
    """One worker's cached blocks as the router knows them."""

    url: str
    state: EventsState = EventsState.CONNECTING
    epoch: str | None = None
    seq: int = -1
    block_tokens: int = 0
    blocks: dict[int, int] = field(default_factory=dict)  # block hash -> parent hash
    load: EngineLoad | None = None
    events_applied: int = 0
    resyncs: int = 0  # snapshots loaded after the first
    fallbacks: int = 0  # times the worker left LIVE for the approximate tree
    snapshots: int = 0

    @property
    def live(self) -> bool:
        return self.state is EventsState.LIVE

    def set_state(self, state: EventsState) -> None:
        if self.state is EventsState.LIVE and state is not EventsState.LIVE:
            self.fallbacks += 1
        self.state = state

    def load_snapshot(self, snap: Snapshot) -> None:
        """Replace everything known with the snapshot; the stream continues at `snap.seq + 1`."""
        self.blocks = {b.hash: b.parent for b in snap.blocks}
        if self.snapshots:
            self.resyncs += 1
        self.snapshots += 1
        self.epoch, self.seq, self.block_tokens, self.load = snap.epoch, snap.seq, snap.block_tokens, snap.load

    def apply(self, batch: EventBatch) -> Applied:
        if batch.epoch != self.epoch or batch.seq > self.seq + 1:
            return Applied.RESYNC
        if batch.seq <= self.seq:
            return Applied.STALE
        for event in batch.events:
            if isinstance(event, BlocksStored):
                for b in event.blocks:
                    self.blocks[b.hash] = b.parent
            elif isinstance(event, BlocksRemoved):
                for h in event.hashes:
                    self.blocks.pop(h, None)
            elif isinstance(event, AllCleared):
                self.blocks.clear()
            self.events_applied += 1
        self.seq = batch.seq
        self.block_tokens = batch.block_tokens
        self.load = batch.load
        return Applied.OK

    def matched_blocks(self, hashes: Sequence[int]) -> int:
        """Leading blocks of `hashes` present here (a chained hash present implies its path)."""
        blocks = self.blocks
        n = 0
        for h in hashes:
            if h not in blocks:
                break
            n += 1
        return n

    def to_dict(self) -> dict[str, Any]:
        load = self.load
        return {
            "state": self.state.value,
            "epoch": self.epoch,
            "seq": self.seq,
            "blocks_indexed": len(self.blocks),
            "block_tokens": self.block_tokens,
            "events_applied": self.events_applied,
            "resyncs": self.resyncs,
            "fallbacks": self.fallbacks,
            "engine_load": None if load is None else {
                "waiting": load.waiting, "running": load.running, "kv_usage": load.kv_usage,
                "cached_tokens": load.cached_tokens, "max_running": load.max_running},
        }


class KvIndex:
    """Every worker's `WorkerIndex`, by URL."""

    def __init__(self) -> None:
        self._workers: dict[str, WorkerIndex] = {}

    def worker(self, url: str) -> WorkerIndex:
        index = self._workers.get(url)
        if index is None:
            index = self._workers[url] = WorkerIndex(url)
        return index

    def get(self, url: str) -> WorkerIndex | None:
        return self._workers.get(url)

    def remove(self, url: str) -> None:
        self._workers.pop(url, None)

    def all(self) -> list[WorkerIndex]:
        return list(self._workers.values())

    def live(self, urls: Iterable[str]) -> list[WorkerIndex]:
        out = []
        for url in urls:
            index = self._workers.get(url)
            if index is not None and index.state is EventsState.LIVE:
                out.append(index)
        return out

    def lookup(self, hashes: Sequence[int], urls: Iterable[str]) -> dict[str, int]:
        """Per live worker among `urls`, the number of leading blocks of `hashes` it holds."""
        return {w.url: w.matched_blocks(hashes) for w in self.live(urls)}
