"""Scheduler.cache_events on a tiny random Llama: what the server's scheduler process sends."""

from __future__ import annotations

from pathlib import Path

from radixserve import Engine
from radixserve.cache_events.protocol import AllCleared, BlocksRemoved, BlocksStored
from radixserve.cache_events.tracker import tree_blocks
from radixserve.managers.io_struct import CacheEventsOut, TokenizedGenerateReqInput
from radixserve.mem_cache import RadixCache
from radixserve.sampling.sampling_params import SamplingParams

STEM = [11 + (i * 13) % 400 for i in range(40)]


def request(rid: str, ids: list[int]) -> TokenizedGenerateReqInput:
    return TokenizedGenerateReqInput(rid, ids, SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True))


def test_events_follow_the_tree_through_chunks_evictions_and_a_flush(tiny_models: dict[str, Path]) -> None:
    # A small pool and small chunks: prompts are cached chunk by chunk, and later ones evict.
    with Engine(model_path=str(tiny_models["llama"]), max_total_tokens=192, chunked_prefill_size=24,
                log_level="warning") as engine:
        s = engine.scheduler
        s.enable_cache_events()
        blocks: dict[int, int] = {}
        kinds: set[type] = set()
        now = 0.0

        def collect() -> None:
            nonlocal now
            now += 0.01  # never a heartbeat: only batches with events
            out = s.cache_events(now)
            if out is None:
                return
            assert isinstance(out, CacheEventsOut) and out.events
            for ev in out.events:
                kinds.add(type(ev))
                if isinstance(ev, BlocksStored):
                    blocks.update((b.hash, b.parent) for b in ev.blocks)
                elif isinstance(ev, BlocksRemoved):
                    for h in ev.hashes:
                        del blocks[h]
                else:
                    blocks.clear()

        for wave in range(3):
            for i in range(3):
                tail = [500 + 7 * wave + i] * (10 + 9 * i)
                s.handle(request(f"w{wave}-{i}", STEM[: 20 + 10 * i] + tail))
            while s.has_work():
                s.step()
                collect()
            assert isinstance(s.tree_cache, RadixCache)
            assert blocks == tree_blocks(s.tree_cache.root)
            s.check_memory()  # the nodes' own hashes against their paths, too
        assert {BlocksStored, BlocksRemoved} <= kinds
        assert s.flush_cache()
        collect()
        assert blocks == {} and AllCleared in kinds


def test_without_a_radix_cache_only_the_load_is_sent(tiny_models: dict[str, Path]) -> None:
    with Engine(model_path=str(tiny_models["llama"]), max_total_tokens=512, disable_radix_cache=True,
                log_level="warning") as engine:
        s = engine.scheduler
        assert s.cache_events(100.0) is None  # not enabled: the offline Engine never publishes
        s.enable_cache_events()
        first = s.cache_events(100.0)
        assert first is not None and first.events == [] and first.load.max_running == s.max_running_requests
        assert s.cache_events(100.5) is None  # nothing changed, heartbeat not due
        s.handle(request("a", STEM))
        s.step()
        out = s.cache_events(101.0)  # a prefill, but no tree: the heartbeat only
        assert out is not None and out.events == []
        assert (out.load.running, out.load.waiting, out.load.cached_tokens) == (1, 0, 0)
        assert 0.0 < out.load.kv_usage <= 1.0
        while s.has_work():
            s.step()
