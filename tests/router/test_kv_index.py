"""The router's block index against fake engines that publish cache events (no HTTP: the wire
format is still exercised, every batch and snapshot is encoded and decoded)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from radixserve.cache_events.protocol import (
    BATCH_DECODER,
    ENCODER,
    SNAPSHOT_DECODER,
    BlocksStored,
    EngineLoad,
    EventBatch,
    StoredBlock,
    prefix_block_hashes,
)
from radixserve.router.kv_index import Applied, KvIndex, WorkerIndex
from radixserve.testing.fake_cache_engine import FakeCacheConfig, FakeCacheEngine

B = 4  # small blocks so that short random prompts span several


def _engine(capacity: int) -> FakeCacheEngine:
    return FakeCacheEngine(FakeCacheConfig(cache_blocks=capacity, block_tokens=B))


class Router:
    """What event_stream.py does, minus HTTP: apply each delivered batch; a gap, a new epoch or a
    broken stream (engine restart) means a snapshot, after which the stream continues."""

    def __init__(self, engine: FakeCacheEngine) -> None:
        self.engine = engine
        self.index = WorkerIndex("http://w")
        self.resync()
        engine.listeners.append(self.deliver)

    def resync(self) -> None:
        self.index.load_snapshot(SNAPSHOT_DECODER.decode(ENCODER.encode(self.engine.snapshot())))

    def deliver(self, batch: EventBatch) -> None:
        decoded = BATCH_DECODER.decode(ENCODER.encode(batch))
        if self.index.apply(decoded) is Applied.RESYNC:
            self.resync()  # the snapshot is taken after the batch: it includes it


prompt = st.tuples(st.integers(0, 3), st.lists(st.integers(0, 5), min_size=0, max_size=14))
op = st.one_of(
    st.tuples(st.just("request"), prompt),
    st.tuples(st.just("flush"), st.none()),
    st.tuples(st.just("restart"), st.none()),
    st.tuples(st.just("lose"), st.none()),
)
PREFIXES = [[100 + t] * 6 for t in range(4)]  # tenants: shared leading tokens


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(op, max_size=40), capacity=st.integers(1, 12))
def test_index_equals_engine_cache_after_stream_and_after_snapshot(ops: list[tuple[str, Any]],
                                                                   capacity: int) -> None:
    engine = _engine(capacity)
    router = Router(engine)
    lost = False
    for kind, arg in ops:
        if kind == "request":
            tenant, rest = arg
            tokens = PREFIXES[tenant] + rest
            in_step = not lost and router.index.seq == engine.seq and router.index.epoch == engine.epoch
            predicted = router.index.matched_blocks(prefix_block_hashes(tokens, B)) * B
            cached = engine.serve_prompt(tokens)
            if in_step:  # the index predicts the engine's own hit exactly
                assert predicted == cached
            lost = False
        elif kind == "flush":
            engine.flush()
            lost = False
        elif kind == "restart":
            engine.restart()
            router.resync()  # the stream broke with the old process: event_stream takes a snapshot
        else:
            engine.lose_next_batch()
            lost = True
    engine.heartbeat()  # lost itself if the last op was "lose"
    engine.heartbeat()  # any batch after a lost one reveals the gap
    assert router.index.epoch == engine.epoch and router.index.seq == engine.seq
    assert set(router.index.blocks) == engine.cache_hashes()
    assert router.index.blocks == engine.blocks.parent  # parents too
    fresh = WorkerIndex("http://w")
    fresh.load_snapshot(SNAPSHOT_DECODER.decode(ENCODER.encode(engine.snapshot())))
    assert fresh.blocks == router.index.blocks


def _batch(epoch: str, seq: int, blocks: list[tuple[int, int]]) -> EventBatch:
    load = EngineLoad(waiting=0, running=0, kv_usage=0.0, cached_tokens=0, max_running=8)
    return EventBatch(epoch, seq, 0.0, B, [BlocksStored([StoredBlock(h, p) for h, p in blocks])], load)


def test_gap_new_epoch_and_replays_are_told_apart() -> None:
    index = WorkerIndex("http://w")
    engine = _engine(8)
    index.load_snapshot(engine.snapshot())
    epoch = engine.epoch
    assert index.apply(_batch(epoch, 1, [(11, 0)])) is Applied.OK
    assert index.apply(_batch(epoch, 1, [(12, 0)])) is Applied.STALE  # replayed: ignored
    assert 12 not in index.blocks
    assert index.apply(_batch(epoch, 3, [(13, 0)])) is Applied.RESYNC  # seq 2 never came
    assert index.apply(_batch("other", 2, [(14, 0)])) is Applied.RESYNC  # the engine restarted
    assert (index.seq, set(index.blocks)) == (1, {11})  # nothing applied past the problem


def test_lookup_counts_leading_blocks_per_live_worker() -> None:
    kv = KvIndex()
    tokens = list(range(4 * B))
    hashes = prefix_block_hashes(tokens, B)
    a, b, c = kv.worker("http://a"), kv.worker("http://b"), kv.worker("http://c")
    for idx in (a, b, c):
        idx.set_state(idx.state.LIVE)
    a.blocks = {h: 0 for h in hashes[:3]}
    b.blocks = {hashes[0]: 0, hashes[2]: 0}  # block 1 missing: the match stops at it
    c.set_state(c.state.RESYNCING)
    assert kv.lookup(hashes, ["http://a", "http://b", "http://c"]) == {"http://a": 3, "http://b": 1}
    assert c.fallbacks == 1
