"""Subscribing to every worker's cache events: one asyncio task per worker keeps its index in step.

Per worker the task loops:
  1. no trusted index (start, gap, new epoch, 410): GET /v1/cache/snapshot and load it;
  2. GET /v1/cache/events?since=SEQ&epoch=EPOCH and apply each NDJSON batch as it arrives. The
     server replays what it retained after SEQ, so nothing between the snapshot (or a dropped
     connection) and the new subscription is lost; when it no longer has those batches, or it
     is not the engine of EPOCH any more (a restart), it answers 410 and we go back to 1.
A batch out of order (a gap) or of another epoch (the engine restarted) also sends us back to 1.
While the index is not in step the worker is not LIVE and the policy uses the approximate
tree for it; a 404 on either route marks the worker NONE (a server without events, e.g. any
OpenAI-compatible one), checked again every `recheck_s`. Connection failures retry with
exponential backoff.

`radixserve serve` sends a load-only batch at least every second, so a stream silent for
`idle_timeout_s` is suspect: it is reconnected with `since` without leaving LIVE (the index is
exact as of SEQ and the replay fills in anything missed). A stream that breaks (connection
error, EOF, server draining) leaves LIVE until the resubscription is answered: with the replay
when the same engine still holds the batches, else through 410 and a snapshot.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiohttp
import msgspec

from radixserve.cache_events.protocol import BATCH_DECODER, EVENTS_PATH, SNAPSHOT_DECODER, SNAPSHOT_PATH
from radixserve.router.kv_index import Applied, EventsState, KvIndex, WorkerIndex
from radixserve.router.workers import Worker, WorkerRegistry
from radixserve.utils.tasks import cancel_and_wait

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EventStreamConfig:
    connect_timeout_s: float = 5.0
    snapshot_timeout_s: float = 30.0
    # Reconnect a silent stream after this long (the server sends load at least every second).
    idle_timeout_s: float = 10.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 10.0
    recheck_s: float = 60.0  # how often a worker without events is asked again


class _Resync(Exception):
    """The index must be replaced by a snapshot (gap, new epoch, 410)."""


class _NoEvents(Exception):
    """The worker serves no cache events (404)."""


class _StreamEnded(Exception):
    """The stream closed or broke."""


class _Idle(Exception):
    """The stream was silent for idle_timeout_s."""


class EventSubscriber:
    """One task per worker of the registry, started and stopped as workers come and go."""

    def __init__(self, registry: WorkerRegistry, index: KvIndex, config: EventStreamConfig | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.registry = registry
        self.index = index
        self.config = config or EventStreamConfig()
        self._headers = headers or {}
        self._session: aiohttp.ClientSession | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout_s),
        )
        for worker in self.registry.all():
            self.add(worker)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        await cancel_and_wait(tasks)
        if self._session is not None:
            await self._session.close()

    def add(self, worker: Worker) -> None:
        if self._session is None or worker.url in self._tasks:
            return
        self.index.worker(worker.url)
        self._tasks[worker.url] = asyncio.create_task(self._run(worker.url), name=f"cache-events {worker.url}")

    def remove(self, worker: Worker) -> None:
        task = self._tasks.pop(worker.url, None)
        if task is not None:
            task.cancel()
        self.index.remove(worker.url)

    async def _run(self, url: str) -> None:
        idx = self.index.worker(url)
        initial = self.config.backoff_initial_s
        backoff = initial
        need_snapshot = True
        while True:
            applied = idx.events_applied
            try:
                if need_snapshot:
                    await self._snapshot(url, idx)
                    need_snapshot = False
                await self._follow(url, idx)
            except _Idle:
                continue  # resubscribe at once, still LIVE
            except _Resync as exc:
                log.info("cache events of %s: resync (%s)", url, exc)
                idx.set_state(EventsState.RESYNCING)
                need_snapshot = True
                if idx.events_applied > applied:
                    backoff = initial  # the stream worked before it broke: a snapshot at once
                    continue
                # Refused straight after a snapshot: do not hammer a server that keeps refusing.
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.config.backoff_max_s)
                continue
            except _NoEvents:
                if idx.state is not EventsState.NONE:
                    log.info("worker %s serves no cache events: approximate tree for it", url)
                idx.set_state(EventsState.NONE)
                need_snapshot = True
                await asyncio.sleep(self.config.recheck_s)
                continue
            except (_StreamEnded, aiohttp.ClientError, TimeoutError, msgspec.DecodeError, ValueError) as exc:
                if idx.live:
                    backoff = initial  # it was working: retry soon
                if idx.state is not EventsState.RESYNCING:
                    log.info("cache events of %s interrupted (%s): approximate tree until resynced",
                             url, exc or type(exc).__name__)
                if idx.state is not EventsState.NONE:
                    idx.set_state(EventsState.RESYNCING if idx.epoch is not None else EventsState.CONNECTING)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.config.backoff_max_s)

    async def _snapshot(self, url: str, idx: WorkerIndex) -> None:
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=self.config.snapshot_timeout_s)
        async with self._session.get(url + SNAPSHOT_PATH, timeout=timeout) as resp:
            if resp.status == 404:
                raise _NoEvents
            if resp.status != 200:
                raise _StreamEnded(f"snapshot returned {resp.status}")
            snap = SNAPSHOT_DECODER.decode(await resp.read())
        idx.load_snapshot(snap)

    async def _follow(self, url: str, idx: WorkerIndex) -> None:
        """Subscribe after idx.seq and apply batches until the stream ends or needs a resync."""
        assert self._session is not None
        params = {"since": str(idx.seq), "epoch": idx.epoch or ""}
        async with self._session.get(url + EVENTS_PATH, params=params) as resp:
            if resp.status == 404:
                raise _NoEvents
            if resp.status == 410:
                raise _Resync("the server no longer retains the batches after our seq")
            if resp.status != 200:
                raise _StreamEnded(f"events returned {resp.status}")
            # Subscribed with everything since our seq coming: the index is exact from here on.
            if not idx.live:
                log.info("cache events of %s live at epoch %s seq %d (%d blocks)", url, idx.epoch, idx.seq,
                         len(idx.blocks))
            idx.set_state(EventsState.LIVE)
            buf = b""
            while True:
                try:
                    chunk = await asyncio.wait_for(resp.content.readany(), self.config.idle_timeout_s)
                except TimeoutError:
                    raise _Idle from None
                if not chunk:
                    raise _StreamEnded("the event stream ended")
                buf += chunk
                # Lines may be larger than aiohttp's readline limit (a big batch): split ourselves.
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    if idx.apply(BATCH_DECODER.decode(line)) is Applied.RESYNC:
                        raise _Resync("a gap in the sequence or a new epoch")
