"""A fake worker that publishes cache events (testing tooling): the exact router's test target.

`FakeCacheEngine` is a `FakeWorker` (radixserve/testing/fake_worker.py) whose prefix cache is a
small model of an engine's RadixCache at block granularity: a request's prompt tokens are cut
into blocks (protocol.BLOCK_TOKENS), leading blocks already cached are hits, the rest are
inserted, and least-recently-used leaf blocks are evicted while the cache is over its capacity,
as a RadixCache evicts unlocked leaves. Every change is published the way `radixserve serve`
publishes it (radixserve/cache_events/protocol.py): one `EventBatch` per request, with the
epoch, a seq that grows by one, and the engine load. `GET /v1/cache/events?since=SEQ&epoch=E`
streams NDJSON, replaying the retained batches after SEQ (410 when they are gone or E is not
this engine's epoch); `GET /v1/cache/snapshot` gives the whole cache.

Prompts are token ids: `input_ids` of /generate as given, otherwise the prompt text through
the `tokenize` callable given to the engine (the router must tokenize the same way for blocks
to match), or whitespace-split words mapped to stable ids when none is given. Hits are counted
by the block cache (`hit_tokens`, `prompt_token_total`); the responses' `usage` still comes
from the base class's word trie.

Fault injection for tests: `heartbeat()` (a batch with load only), `restart()` (new epoch,
empty cache, open streams end), `flush()` (an `AllCleared` event), `lose_next_batch()` (a seq
the stream never carries: a gap), `cut_streams()` (every open event stream ends),
`events_failing = True` (503 on the event routes) and `events_enabled = False` (404 on them,
like any OpenAI server).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from radixserve.cache_events.protocol import (
    BLOCK_TOKENS,
    ENCODER,
    EVENTS_PATH,
    ROOT_HASH,
    SNAPSHOT_PATH,
    AllCleared,
    BlocksRemoved,
    BlocksStored,
    CacheEvent,
    EngineLoad,
    EventBatch,
    Snapshot,
    StoredBlock,
    iter_block_hashes,
)
from radixserve.testing.fake_worker import FakeWorker, FakeWorkerConfig, _error, _prompt_text

TokenizeBody = Callable[[str, dict[str, Any]], "list[int] | None"]


def word_ids(text: str) -> list[int]:
    """Whitespace words as stable ids (a stand-in tokenizer when no real one is given)."""
    return [int.from_bytes(hashlib.blake2b(w.encode(), digest_size=3).digest(), "little") for w in text.split()]


class BlockCache:
    """An engine's prefix cache at block granularity: LRU eviction of leaf blocks."""

    def __init__(self, capacity_blocks: int, block_tokens: int = BLOCK_TOKENS) -> None:
        self.capacity = capacity_blocks
        self.block_tokens = block_tokens
        self.parent: dict[int, int] = {}
        self.children: dict[int, int] = {}  # hash -> number of cached children
        self._lru: OrderedDict[int, None] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        return len(self.parent)

    def blocks(self) -> list[StoredBlock]:
        return [StoredBlock(h, p) for h, p in self.parent.items()]

    def match_and_insert(self, tokens: Sequence[int]) -> tuple[int, list[CacheEvent]]:
        """Cached leading tokens of the prompt, and the events of inserting the rest and evicting."""
        matched = 0
        stored: list[StoredBlock] = []
        path: list[int] = []
        hit = True
        for parent, h in iter_block_hashes(tokens, self.block_tokens):
            path.append(h)
            if h in self.parent:
                if hit:
                    matched += self.block_tokens
            else:
                hit = False
                self.parent[h] = parent
                self.children[h] = 0
                if parent != ROOT_HASH:
                    self.children[parent] += 1
                stored.append(StoredBlock(h, parent))
            self._lru[h] = None
            self._lru.move_to_end(h)
        events: list[CacheEvent] = []
        if stored:
            events.append(BlocksStored(stored))
        removed = self._evict(locked=set(path))
        if removed:
            events.append(BlocksRemoved(removed))
        return matched, events

    def _evict(self, locked: set[int]) -> list[int]:
        removed: list[int] = []
        while len(self.parent) > self.capacity:
            victim = next((h for h in self._lru if self.children[h] == 0 and h not in locked), None)
            if victim is None:
                break  # everything left is the running request's path
            parent = self.parent.pop(victim)
            del self.children[victim]
            del self._lru[victim]
            if parent != ROOT_HASH:
                self.children[parent] -= 1
            removed.append(victim)
        return removed

    def clear(self) -> None:
        self.parent.clear()
        self.children.clear()
        self._lru.clear()


@dataclass
class FakeCacheConfig(FakeWorkerConfig):
    cache_blocks: int = 64  # capacity of the block cache
    block_tokens: int = BLOCK_TOKENS
    retain_batches: int = 256  # batches kept for `?since=` replays
    max_running: int = 8
    # What /get_server_info reports as model_path, like `radixserve serve` (None: the embedded model).
    model_path: str | None = "fake-model"


class FakeCacheEngine(FakeWorker):
    def __init__(self, config: FakeCacheConfig, tokenize: TokenizeBody | None = None) -> None:
        self.cache_config = config
        self.tokenize = tokenize
        self.blocks = BlockCache(config.cache_blocks, config.block_tokens)
        self.epoch = uuid.uuid4().hex[:12]
        self.seq = 0
        self.events_enabled = True
        self.events_failing = False  # 503 on the event routes: a stream that cannot be re-established
        self.listeners: list[Callable[[EventBatch], None]] = []  # in-process subscribers (tests)
        self.hit_tokens = 0
        self.prompt_token_total = 0
        self._retained: deque[EventBatch] = deque(maxlen=config.retain_batches)
        self._subscribers: set[asyncio.Queue[EventBatch | None]] = set()
        self._lose_next = False
        super().__init__(config)

    def _build_app(self) -> web.Application:
        app = super()._build_app()
        app.router.add_get(EVENTS_PATH, self.events)
        app.router.add_get(SNAPSHOT_PATH, self.snapshot_route)
        return app

    # --- the cache model ---

    def prompt_tokens(self, body: dict[str, Any], path: str) -> list[int]:
        ids = body.get("input_ids") if path == "/generate" else None
        if ids is None and path == "/v1/completions" and isinstance(body.get("prompt"), list):
            ids = body["prompt"]
        if isinstance(ids, list) and all(isinstance(t, int) for t in ids):
            return ids
        if self.tokenize is not None:
            tokens = self.tokenize(path, body)
            if tokens is not None:
                return tokens
        return word_ids(_prompt_text(body, path))

    def serve_prompt(self, tokens: Sequence[int]) -> int:
        """Run a prompt through the cache: returns its cached tokens and publishes the changes."""
        matched, events = self.blocks.match_and_insert(tokens)
        self.hit_tokens += matched
        self.prompt_token_total += len(tokens)
        self.publish(events)
        return matched

    def load(self) -> EngineLoad:
        cap = max(1, self.blocks.capacity)
        return EngineLoad(waiting=0, running=self.stats.active, kv_usage=min(1.0, len(self.blocks) / cap),
                          cached_tokens=len(self.blocks) * self.blocks.block_tokens,
                          max_running=self.cache_config.max_running)

    def publish(self, events: list[CacheEvent]) -> EventBatch:
        self.seq += 1
        batch = EventBatch(self.epoch, self.seq, time.time(), self.blocks.block_tokens, events, self.load())
        if self._lose_next:  # neither retained nor sent: the router sees a gap
            self._lose_next = False
            self._retained.clear()  # and cannot replay across it
            return batch
        self._retained.append(batch)
        for listener in self.listeners:
            listener(batch)
        for q in self._subscribers:
            q.put_nowait(batch)
        return batch

    def heartbeat(self) -> EventBatch:
        """A batch without events: the engine's load, and proof that nothing was missed before it."""
        return self.publish([])

    def snapshot(self) -> Snapshot:
        return Snapshot(self.epoch, self.seq, time.time(), self.blocks.block_tokens, self.blocks.blocks(), self.load())

    def cache_hashes(self) -> set[int]:
        return set(self.blocks.parent)

    # --- fault injection ---

    def restart(self) -> None:
        """A new engine process: new epoch, empty cache, seq from 0; open streams end."""
        self.cut_streams()
        self.blocks.clear()
        self._retained.clear()
        self.epoch = uuid.uuid4().hex[:12]
        self.seq = 0

    def flush(self) -> None:
        self.blocks.clear()
        self.publish([AllCleared()])

    def lose_next_batch(self) -> None:
        self._lose_next = True

    def cut_streams(self) -> None:
        for q in self._subscribers:
            q.put_nowait(None)

    # --- HTTP ---

    async def generate(self, request: web.Request) -> web.StreamResponse:
        # The base class answers with its word trie's count; this engine counts by its block cache.
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "body is not JSON", "invalid_request_error")
        if isinstance(body, dict):
            self.serve_prompt(self.prompt_tokens(body, request.path))
        return await super().generate(request)

    async def server_info(self, request: web.Request) -> web.Response:
        return web.json_response({"worker_id": self.config.worker_id, "model_path": self.cache_config.model_path,
                                  "tokenizer_path": None})

    async def snapshot_route(self, request: web.Request) -> web.Response:
        if not self.events_enabled:
            return _error(404, "not found", "not_found_error")
        if self.events_failing:
            return _error(503, "cache events unavailable", "service_unavailable")
        return web.Response(body=ENCODER.encode(self.snapshot()), content_type="application/json")

    async def events(self, request: web.Request) -> web.StreamResponse:
        if not self.events_enabled:
            return _error(404, "not found", "not_found_error")
        if self.events_failing:
            return _error(503, "cache events unavailable", "service_unavailable")
        replay: list[EventBatch] = []
        since = request.query.get("since")
        if since is not None:
            try:
                after = int(since)
            except ValueError:
                return _error(400, "since must be an integer", "invalid_request_error")
            oldest = self._retained[0].seq if self._retained else self.seq + 1
            epoch = request.query.get("epoch")
            if after < oldest - 1 or after > self.seq or (epoch is not None and epoch != self.epoch):
                return _error(410, f"batches after {after} of epoch {epoch} are not retained", "gone")
            replay = [b for b in self._retained if b.seq > after]
        queue: asyncio.Queue[EventBatch | None] = asyncio.Queue()
        self._subscribers.add(queue)
        try:
            resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await resp.prepare(request)
            for batch in replay:
                await resp.write(ENCODER.encode(batch) + b"\n")
            while (item := await queue.get()) is not None:
                await resp.write(ENCODER.encode(item) + b"\n")
            return resp
        finally:
            self._subscribers.discard(queue)


async def start_fake_cache_engine(config: FakeCacheConfig, tokenize: TokenizeBody | None = None,
                                  ) -> tuple[FakeCacheEngine, web.AppRunner, int]:
    """Start a fake cache engine inside the running event loop; returns (engine, runner, port)."""
    engine = FakeCacheEngine(config, tokenize)
    runner = web.AppRunner(engine.app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, reuse_address=True)
    await site.start()
    port = int(runner.addresses[0][1])
    engine.set_port(port)
    return engine, runner, port
