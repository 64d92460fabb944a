"""The router's event subscriber against fake engines over HTTP: live sync, gaps, restarts,
broken streams (fallback to the tree, then recovery), idle reconnects and servers without events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from aiohttp import web

from radixserve.router.event_stream import EventStreamConfig, EventSubscriber
from radixserve.router.kv_index import EventsState, KvIndex, WorkerIndex
from radixserve.router.policies import CacheAwarePolicy
from radixserve.router.tokenize import RoutedPrompt
from radixserve.router.workers import WorkerRegistry, WorkerSource, WorkerState
from radixserve.testing.fake_cache_engine import FakeCacheConfig, FakeCacheEngine, start_fake_cache_engine
from tests.router.conftest import wait_until

FAST = EventStreamConfig(backoff_initial_s=0.02, backoff_max_s=0.1, recheck_s=0.2, idle_timeout_s=5.0)


@dataclass
class Setup:
    engine: FakeCacheEngine
    url: str
    registry: WorkerRegistry
    index: KvIndex
    subscriber: EventSubscriber

    @property
    def idx(self) -> WorkerIndex:
        idx = self.index.get(self.url)
        assert idx is not None
        return idx

    def in_step(self) -> bool:
        idx, e = self.idx, self.engine
        return idx.live and idx.epoch == e.epoch and idx.seq == e.seq and set(idx.blocks) == e.cache_hashes()


Start = Callable[..., Awaitable[Setup]]


@pytest.fixture
async def subscribed() -> AsyncIterator[Start]:
    cleanup: list[tuple[web.AppRunner, EventSubscriber]] = []

    async def start(config: EventStreamConfig = FAST, **engine: object) -> Setup:
        e, runner, port = await start_fake_cache_engine(FakeCacheConfig(**engine))  # type: ignore[arg-type]
        registry, index = WorkerRegistry(), KvIndex()
        sub = EventSubscriber(registry, index, config)
        registry.subscribe(on_added=sub.add, on_removed=sub.remove)
        await sub.start()
        url = f"http://127.0.0.1:{port}"
        registry.add(url, WorkerSource.STATIC, WorkerState.HEALTHY)
        cleanup.append((runner, sub))
        return Setup(e, url, registry, index, sub)

    yield start
    for runner, sub in cleanup:
        await sub.stop()
        await runner.cleanup()


def _serve(engine: FakeCacheEngine, n: int, tenant: int = 0) -> None:
    for i in range(n):
        engine.serve_prompt([tenant] * 32 + [1000 + i] * 16)


async def test_index_follows_the_stream_and_is_exact(subscribed: Start) -> None:
    s = await subscribed(cache_blocks=6)
    _serve(s.engine, 2)  # before the first snapshot or after: either way it must arrive
    await wait_until(s.in_step, 5, what="live and in step")
    _serve(s.engine, 5, tenant=1)  # evicts: removed events
    await wait_until(s.in_step, 5, what="in step after evictions")
    assert s.idx.resyncs == 0 and s.idx.fallbacks == 0
    assert s.idx.load is not None and s.idx.load.kv_usage == 1.0


async def test_gap_triggers_a_resync_from_snapshot(subscribed: Start) -> None:
    s = await subscribed()
    await wait_until(s.in_step, 5, what="live")
    s.engine.lose_next_batch()
    _serve(s.engine, 3)
    await wait_until(lambda: s.idx.resyncs == 1 and s.in_step(), 5, what="resynced after the gap")


async def test_restart_replaces_the_index(subscribed: Start) -> None:
    s = await subscribed()
    _serve(s.engine, 3)
    await wait_until(s.in_step, 5, what="live")
    old_epoch, old_blocks = s.idx.epoch, set(s.idx.blocks)
    s.engine.restart()  # new epoch, empty cache, the stream ends with the old process
    _serve(s.engine, 1, tenant=7)
    await wait_until(s.in_step, 5, what="in step with the restarted engine")
    assert s.idx.epoch != old_epoch and not old_blocks & set(s.idx.blocks)
    assert s.idx.resyncs == 1  # `since` with the old epoch was refused (410): a snapshot


async def test_dead_stream_falls_back_to_the_tree_then_recovers(subscribed: Start) -> None:
    s = await subscribed()
    _serve(s.engine, 2)
    await wait_until(s.in_step, 5, what="live")
    policy = CacheAwarePolicy(index=s.index)
    worker = s.registry.get(s.url)
    assert worker is not None
    body = {"input_ids": [0] * 32 + [5] * 16}
    exact = policy.select([worker], None, RoutedPrompt("/generate", body, None))
    assert exact.matched_tokens == 32  # the engine holds tenant 0's two leading blocks

    s.engine.events_failing = True
    s.engine.cut_streams()
    await wait_until(lambda: s.idx.state is EventsState.RESYNCING, 5, what="fallback")
    assert s.idx.fallbacks == 1
    tree = policy.select([worker], None, RoutedPrompt("/generate", body, None))
    assert tree.matched_tokens is None  # routed by the approximate tree meanwhile

    _serve(s.engine, 2, tenant=3)  # missed while the stream was down
    s.engine.events_failing = False
    await wait_until(s.in_step, 5, what="recovered")
    assert s.idx.resyncs == 0  # the same engine replayed what was missed: no snapshot needed
    assert policy.select([worker], None, RoutedPrompt("/generate", body, None)).matched_tokens == 32


async def test_idle_stream_reconnects_without_leaving_live(subscribed: Start) -> None:
    s = await subscribed(EventStreamConfig(idle_timeout_s=0.1, backoff_initial_s=0.02))
    await wait_until(s.in_step, 5, what="live")
    snapshots = s.idx.snapshots
    await asyncio.sleep(0.4)  # several idle timeouts
    _serve(s.engine, 2)
    await wait_until(s.in_step, 5, what="in step after idle reconnects")
    assert s.idx.fallbacks == 0 and s.idx.snapshots == snapshots  # `since` replays, no snapshot


async def test_worker_without_events_uses_the_tree_and_removal_stops_following(subscribed: Start) -> None:
    s = await subscribed()
    s.engine.events_enabled = False  # any OpenAI server: 404
    await wait_until(lambda: s.idx.state is EventsState.NONE, 5, what="marked without events")
    s.engine.events_enabled = True  # e.g. upgraded in place: picked up at the next recheck
    await wait_until(s.in_step, 5, what="live after recheck")
    s.registry.remove(s.url)
    assert s.index.get(s.url) is None
