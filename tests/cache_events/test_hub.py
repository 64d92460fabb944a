"""CacheEventHub: numbering, the snapshot, `since` replays, gaps and slow subscribers."""

from __future__ import annotations

import asyncio

import pytest

from radixserve.cache_events.hub import CacheEventHub, GapError, Subscription
from radixserve.cache_events.protocol import (
    BATCH_DECODER,
    ENCODER,
    SNAPSHOT_DECODER,
    AllCleared,
    BlocksRemoved,
    BlocksStored,
    CacheEvent,
    EngineLoad,
    EventBatch,
    StoredBlock,
    iter_block_hashes,
)

LOAD = EngineLoad(waiting=1, running=2, kv_usage=0.25, cached_tokens=64, max_running=8)


def stored(tokens: list[int]) -> BlocksStored:
    return BlocksStored([StoredBlock(h, p) for p, h in iter_block_hashes(tokens)])


def script() -> list[list[CacheEvent]]:
    a, b = stored(list(range(64))), stored(list(range(32)) + [7] * 32)  # 4 blocks each, 2 shared
    return [
        [a],
        [],  # a heartbeat: load only
        [BlocksStored(b.blocks[2:])],
        [BlocksRemoved([blk.hash for blk in a.blocks[2:]])],
        [AllCleared(), b],
    ]


def drain(sub: Subscription) -> list[EventBatch]:
    out = []
    while not sub.queue.empty():
        out.append(BATCH_DECODER.decode(sub.queue.get_nowait()))
    return out


def apply(blocks: dict[int, int], batch: EventBatch) -> None:
    for ev in batch.events:
        if isinstance(ev, BlocksStored):
            blocks.update((blk.hash, blk.parent) for blk in ev.blocks)
        elif isinstance(ev, BlocksRemoved):
            for h in ev.hashes:
                blocks.pop(h)
        else:
            blocks.clear()


def test_snapshot_equals_the_applied_stream_at_every_seq() -> None:
    hub = CacheEventHub(max_running=8)
    sub = hub.subscribe(since=0)
    seen: dict[int, int] = {}
    for i, events in enumerate(script(), start=1):
        hub.publish(events, LOAD, ts=100.0 + i)
        (batch,) = drain(sub)
        assert (batch.epoch, batch.seq, batch.ts, batch.load) == (hub.epoch, i, 100.0 + i, LOAD)
        apply(seen, batch)
        snap = SNAPSHOT_DECODER.decode(ENCODER.encode(hub.snapshot()))  # as /v1/cache/snapshot sends it
        assert snap.seq == i and snap.epoch == hub.epoch and snap.load == LOAD
        assert {blk.hash: blk.parent for blk in snap.blocks} == seen
    assert len(seen) == 4  # b's blocks after the clear


def test_since_replays_the_retained_batches_then_goes_live() -> None:
    hub = CacheEventHub()
    for events in script()[:3]:
        hub.publish(events, LOAD)
    snap = hub.snapshot()
    hub.publish(script()[3], LOAD)  # published after the snapshot, before the client subscribes
    sub = hub.subscribe(since=snap.seq, epoch=hub.epoch)
    hub.publish(script()[4], LOAD)
    batches = drain(sub)
    assert [b.seq for b in batches] == [4, 5]
    blocks = {blk.hash: blk.parent for blk in snap.blocks}
    for b in batches:
        apply(blocks, b)
    assert {blk.hash: blk.parent for blk in hub.snapshot().blocks} == blocks
    assert drain(hub.subscribe(since=hub.seq)) == []  # up to date: nothing to replay


def test_gaps_answer_with_a_resync() -> None:
    hub = CacheEventHub(ring_size=3)
    for _ in range(6):
        hub.publish([], LOAD)
    assert [b.seq for b in drain(hub.subscribe(since=3))] == [4, 5, 6]  # the oldest retained is 4
    with pytest.raises(GapError, match="no longer retained"):
        hub.subscribe(since=2)
    with pytest.raises(GapError, match="ahead"):
        hub.subscribe(since=7)  # e.g. a seq from before a restart
    with pytest.raises(GapError, match="epoch"):
        hub.subscribe(since=5, epoch="another-server-start")
    assert CacheEventHub().epoch != hub.epoch


def test_a_slow_subscriber_is_dropped_and_others_keep_going() -> None:
    async def run() -> tuple[list[int], list[int], bool, int]:
        hub = CacheEventHub(queue_size=4)
        slow, fast = hub.subscribe(), hub.subscribe()
        got_fast: list[int] = []
        fast_lines = fast.lines()
        for _ in range(10):
            hub.publish([], LOAD)
            got_fast.append(BATCH_DECODER.decode(await anext(fast_lines)).seq)
        got_slow = [BATCH_DECODER.decode(line).seq async for line in slow.lines()]  # ends: it was dropped
        return got_slow, got_fast, slow in hub.subscribers, hub.dropped_subscribers

    got_slow, got_fast, still_subscribed, dropped = asyncio.run(run())
    assert got_slow == [1, 2, 3, 4]  # what it had before the drop, contiguous, then the end
    assert got_fast == list(range(1, 11))
    assert not still_subscribed and dropped == 1


def test_a_stream_ends_when_the_server_drains() -> None:
    async def run() -> list[int]:
        hub = CacheEventHub()
        sub = hub.subscribe()
        hub.publish([], LOAD)
        draining = False

        async def read() -> list[int]:
            return [BATCH_DECODER.decode(line).seq async for line in sub.lines(stop=lambda: draining)]

        task = asyncio.create_task(read())
        await asyncio.sleep(0.05)
        draining = True
        return await asyncio.wait_for(task, 5)

    assert asyncio.run(run()) == [1]

