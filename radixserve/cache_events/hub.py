"""The main process's side of cache events: the current block set, recent batches, subscribers.

The scheduler sends its raw events and load (`CacheEventsOut`); the hub numbers them into
`EventBatch`es of this server's epoch, applies them to its copy of the block set (so a snapshot
is consistent with `seq` without asking the scheduler), keeps the last `ring_size` batches for
`?since=` replays, and fans each batch out to the subscribers' queues, encoded once. A subscriber
whose queue is full is dropped (its stream ends after what it already has), never waited for.
Everything runs on the server's event loop, so no locks are needed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable

from radixserve.cache_events.protocol import (
    BLOCK_TOKENS,
    ENCODER,
    AllCleared,
    BlocksRemoved,
    BlocksStored,
    CacheEvent,
    EngineLoad,
    EventBatch,
    Snapshot,
    StoredBlock,
)

RING_BATCHES = 4096  # ~1 h of idle heartbeats, or a few minutes of busy steps
SUBSCRIBER_QUEUE = 1024  # batches a subscriber may lag behind before it is dropped
IDLE_CHECK_S = 1.0  # how often a waiting stream checks whether it should end


class GapError(Exception):
    """`since` cannot be served from the retained batches: the client must take a snapshot."""

    def __init__(self, message: str, param: str = "since") -> None:
        super().__init__(message)
        self.param = param  # the query parameter at fault


class Subscription:
    """One stream's queue of encoded NDJSON lines."""

    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize)
        self.dropped = False

    async def lines(self, stop: Callable[[], bool] = lambda: False) -> AsyncIterator[bytes]:
        """The lines until the subscription is dropped or `stop()` turns true (server draining)."""
        while True:
            if self.queue.empty() and (self.dropped or stop()):
                return
            try:
                yield await asyncio.wait_for(self.queue.get(), IDLE_CHECK_S)
            except TimeoutError:
                continue


class CacheEventHub:
    def __init__(self, max_running: int = 0, block_tokens: int = BLOCK_TOKENS, ring_size: int = RING_BATCHES,
                 queue_size: int = SUBSCRIBER_QUEUE) -> None:
        self.epoch = uuid.uuid4().hex  # new per server start: a router drops what it knew on a change
        self.block_tokens = block_tokens
        self.seq = 0  # the last published batch (0: none yet)
        self.blocks: dict[int, int] = {}  # hash -> parent hash
        self.load = EngineLoad(waiting=0, running=0, kv_usage=0.0, cached_tokens=0, max_running=max_running)
        self.ts = time.time()
        self.ring: deque[tuple[int, bytes]] = deque(maxlen=ring_size)  # (seq, NDJSON line)
        self.queue_size = queue_size
        self.subscribers: set[Subscription] = set()
        self.dropped_subscribers = 0

    def publish(self, events: list[CacheEvent], load: EngineLoad, ts: float | None = None) -> EventBatch:
        """Number, apply, retain and fan out one batch from the scheduler."""
        self.seq += 1
        self.ts = time.time() if ts is None else ts
        self.load = load
        batch = EventBatch(self.epoch, self.seq, self.ts, self.block_tokens, events, load)
        self._apply(events)
        line = ENCODER.encode(batch) + b"\n"
        self.ring.append((self.seq, line))
        for sub in list(self.subscribers):
            try:
                sub.queue.put_nowait(line)
            except asyncio.QueueFull:
                self._drop(sub)
        return batch

    def _apply(self, events: list[CacheEvent]) -> None:
        blocks = self.blocks
        for ev in events:
            if isinstance(ev, BlocksStored):
                for blk in ev.blocks:
                    blocks[blk.hash] = blk.parent
            elif isinstance(ev, BlocksRemoved):
                for h in ev.hashes:
                    blocks.pop(h, None)
            elif isinstance(ev, AllCleared):
                blocks.clear()

    def snapshot(self) -> Snapshot:
        return Snapshot(self.epoch, self.seq, self.ts, self.block_tokens,
                        [StoredBlock(h, p) for h, p in self.blocks.items()], self.load)

    def subscribe(self, since: int | None = None, epoch: str | None = None) -> Subscription:
        """A live subscription; with `since`, first the retained batches after it.

        Raises GapError when `epoch` is not this server's, or batches after `since` are no longer
        retained (or `since` is ahead of this server): the client resynchronises from a snapshot.
        """
        if epoch is not None and epoch != self.epoch:
            raise GapError(f"epoch {epoch!r} is not this server's ({self.epoch!r}): it restarted; "
                           "take a snapshot", param="epoch")
        replay: list[bytes] = []
        if since is not None:
            oldest = self.ring[0][0] if self.ring else self.seq + 1
            if since > self.seq:
                raise GapError(f"since={since} is ahead of this server's last batch ({self.seq}); take a snapshot")
            if since + 1 < oldest:
                raise GapError(f"batches after {since} are no longer retained (oldest kept: {oldest}); "
                               "take a snapshot")
            replay = [line for seq, line in self.ring if seq > since]
        sub = Subscription(max(self.queue_size, len(replay) + 1))
        for line in replay:
            sub.queue.put_nowait(line)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscribers.discard(sub)

    def close(self) -> None:
        """End every stream (after what each has queued)."""
        for sub in list(self.subscribers):
            sub.dropped = True
        self.subscribers.clear()

    def _drop(self, sub: Subscription) -> None:
        sub.dropped = True
        self.subscribers.discard(sub)
        self.dropped_subscribers += 1
