"""Scheduler behaviour on a tiny random Llama (fast): chunking, batching, aborts, limits, stops."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from radixserve import Engine
from radixserve.managers.io_struct import TokenizedGenerateReqInput
from radixserve.sampling.sampling_params import SamplingParams

GREEDY = {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}
PROMPTS = [[100 + (i * 7 + j) % 900 for j in range(n)] for i, n in enumerate([3, 17, 40, 1, 64, 9, 33, 120])]


@pytest.fixture(scope="module")
def engine(tiny_models: dict[str, Path]) -> Iterator[Engine]:
    with Engine(model_path=str(tiny_models["llama"]), max_total_tokens=4096, log_level="warning") as e:
        yield e


@pytest.fixture(scope="module")
def reference(engine: Engine) -> list[list[int]]:
    outs = []
    for p in PROMPTS:
        engine.scheduler.flush_cache()
        outs.append(engine.generate(input_ids=p, sampling_params=GREEDY)["output_ids"])
    return outs


def _req(rid: str, ids: list[int], params: dict[str, Any]) -> TokenizedGenerateReqInput:
    return TokenizedGenerateReqInput(rid=rid, input_ids=ids, sampling_params=SamplingParams.from_dict(params))


def _ids(outs: Any) -> list[list[int]]:
    return [o["output_ids"] for o in outs]


def test_batch_equals_one_at_a_time(engine: Engine, reference: list[list[int]]) -> None:
    engine.scheduler.flush_cache()
    assert _ids(engine.generate(input_ids=PROMPTS, sampling_params=GREEDY)) == reference
    engine.scheduler.check_memory()


@pytest.mark.parametrize("chunk", [1, 7, 16])
def test_chunked_prefill_matches(tiny_models: dict[str, Path], reference: list[list[int]], chunk: int) -> None:
    with Engine(model_path=str(tiny_models["llama"]), max_total_tokens=4096, chunked_prefill_size=chunk,
                log_level="warning") as e:
        assert _ids(e.generate(input_ids=PROMPTS, sampling_params=GREEDY)) == reference
        e.scheduler.check_memory()


def test_disable_radix_cache_matches_and_reports_no_hits(tiny_models: dict[str, Path],
                                                         reference: list[list[int]]) -> None:
    with Engine(model_path=str(tiny_models["llama"]), max_total_tokens=4096, disable_radix_cache=True,
                log_level="warning") as e:
        for _ in range(2):
            outs = e.generate(input_ids=PROMPTS, sampling_params=GREEDY)
            assert _ids(outs) == reference
            assert all(o["meta_info"]["cached_tokens"] == 0 for o in outs)
        e.scheduler.check_memory()
        assert e.scheduler.token_to_kv_pool.available_size() == e.scheduler.token_to_kv_pool.size


def test_cache_hits_on_repeat_and_fcfs_policy(tiny_models: dict[str, Path], reference: list[list[int]]) -> None:
    with Engine(model_path=str(tiny_models["llama"]), max_total_tokens=4096, schedule_policy="fcfs",
                log_level="warning") as e:
        e.generate(input_ids=PROMPTS, sampling_params=GREEDY)
        outs = e.generate(input_ids=PROMPTS, sampling_params=GREEDY)
        assert _ids(outs) == reference
        assert [o["meta_info"]["cached_tokens"] for o in outs] == [len(p) - 1 for p in PROMPTS]


def test_lpm_admits_longest_cached_prefix_first(engine: Engine) -> None:
    sched = engine.scheduler
    sched.flush_cache()
    shared = list(range(200, 260))
    engine.generate(input_ids=[*shared, 1], sampling_params={"max_new_tokens": 1})
    for rid, ids in [("cold", list(range(600, 660))), ("warm", [*shared, 2])]:
        sched.add_request(_req(rid, ids, {"max_new_tokens": 2}))
    sched.step()  # one prefill of both, in admission order; both run on
    assert [r.rid for r in sched.running_batch.reqs] == ["warm", "cold"]  # arrived second, admitted first
    while sched.has_work():
        sched.step()


def test_max_running_requests_is_respected(tiny_models: dict[str, Path], reference: list[list[int]]) -> None:
    with Engine(model_path=str(tiny_models["llama"]), max_total_tokens=4096, max_running_requests=2,
                log_level="warning") as e:
        sched = e.scheduler
        for i, p in enumerate(PROMPTS):
            sched.add_request(_req(str(i), p, GREEDY))
        peak, outs = 0, dict[str, list[int]]()
        while sched.has_work():
            out = sched.step()
            peak = max(peak, len(sched.running_batch.reqs))
            for rid, ids in zip(out.rids if out else [], out.new_token_ids if out else [], strict=True):
                outs.setdefault(rid, []).extend(ids)
        assert peak == 2
        assert [outs[str(i)] for i in range(len(PROMPTS))] == reference


def test_abort_running_and_waiting(engine: Engine) -> None:
    sched = engine.scheduler
    sched.flush_cache()
    for rid in ("a", "b"):
        sched.add_request(_req(rid, PROMPTS[4], {"max_new_tokens": 50, "ignore_eos": True}))
    sched.step()  # both prefilled, now running
    sched.add_request(_req("c", PROMPTS[2], GREEDY))
    sched.abort_request("a")
    sched.abort_request("c")
    reasons = {}
    while sched.has_work():
        out = sched.step()
        for rid, reason in zip(out.rids if out else [], out.finished_reasons if out else [], strict=True):
            if reason is not None:
                reasons[rid] = reason
    assert reasons["a"].type == "abort" and reasons["c"].type == "abort"
    assert reasons["b"].type == "length"
    sched.check_memory()
    assert sched.tree_cache.protected_size() == 0


def test_stop_token_ids_min_new_tokens_and_stop_strings(engine: Engine, reference: list[list[int]]) -> None:
    ref = reference[5]
    stop_at = ref[3]
    first = ref.index(stop_at)
    out: Any = engine.generate(input_ids=PROMPTS[5], sampling_params={**GREEDY, "stop_token_ids": [stop_at]})
    assert out["output_ids"] == ref[: first + 1]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop_at}
    later: Any = engine.generate(input_ids=PROMPTS[5], sampling_params={
        **GREEDY, "stop_token_ids": [stop_at], "min_new_tokens": first + 2})
    assert len(later["output_ids"]) > first + 1
    # A stop string taken from the greedy text ends generation and is cut from the text.
    full = engine.tokenizer.decode(ref, skip_special_tokens=True)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    if stop.strip():
        cut: Any = engine.generate(input_ids=PROMPTS[5], sampling_params={**GREEDY, "stop": stop})
        assert cut["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
        assert stop not in cut["text"] and full.startswith(cut["text"])


def test_eos_stops_unless_ignored(engine: Engine, reference: list[list[int]]) -> None:
    eos_id = reference[1][2]
    sched = engine.scheduler
    sched.eos_token_ids = frozenset({eos_id})
    try:
        out: Any = engine.generate(input_ids=PROMPTS[1], sampling_params={"max_new_tokens": 12, "temperature": 0})
        assert out["output_ids"][-1] == eos_id and len(out["output_ids"]) == reference[1].index(eos_id) + 1
        out = engine.generate(input_ids=PROMPTS[1], sampling_params=GREEDY)
        assert out["output_ids"] == reference[1]
    finally:
        sched.eos_token_ids = frozenset(engine.model_runner.config.eos_token_ids)


def test_requests_sharing_a_prefix_in_one_batch_reuse_it(engine: Engine) -> None:
    engine.scheduler.flush_cache()
    shared = list(range(300, 364))
    outs: Any = engine.generate(input_ids=[[*shared, 1000 + i] for i in range(8)], sampling_params=GREEDY)
    cached = sorted(o["meta_info"]["cached_tokens"] for o in outs)
    assert cached == [0] + [64] * 7  # the first computes the prefix, the rest wait one round and reuse it


def test_admission_counts_locked_prefixes_as_unevictable(tiny_models: dict[str, Path]) -> None:
    """Cached prefixes that admitted requests lock cannot be evicted to make room for the batch.

    Two cached 100-token prompts fill most of a 256-slot pool; two requests extending them by
    60 tokens each arrive together. Only one fits once its prefix is locked; the other waits,
    and both finish (a stale evictable count used to admit both and run the pool dry).
    """
    with Engine(model_path=str(tiny_models["llama"]), max_total_tokens=256, log_level="warning") as e:
        a = [100 + j for j in range(100)]
        b = [300 + j for j in range(100)]
        one = {"max_new_tokens": 1, "temperature": 0, "ignore_eos": True}
        e.generate(input_ids=[a, b], sampling_params=one)
        assert e.scheduler.tree_cache.evictable_size() >= 200
        outs = e.generate(input_ids=[a + list(range(500, 560)), b + list(range(600, 660))], sampling_params=one)
        assert [o["meta_info"]["completion_tokens"] for o in outs] == [1, 1]
        assert max(o["meta_info"]["cached_tokens"] for o in outs) >= 100
        e.scheduler.check_memory()


def test_chunked_request_waits_for_kv_room(tiny_models: dict[str, Path], reference: list[list[int]]) -> None:
    with Engine(model_path=str(tiny_models["llama"]), max_total_tokens=160, chunked_prefill_size=16,
                log_level="warning") as e:
        outs = e.generate(input_ids=PROMPTS, sampling_params=GREEDY)
        assert _ids(outs) == reference
        e.scheduler.check_memory()


def test_integrity_report_catches_a_slot_counted_twice(tiny_models: dict[str, Path]) -> None:
    """What GET /check_kv_integrity reports: ok on a sound pool, the broken invariant otherwise."""
    with Engine(model_path=str(tiny_models["llama"]), max_total_tokens=256, log_level="warning") as e:
        e.generate(input_ids=PROMPTS[1], sampling_params=GREEDY)
        sound = e.scheduler.check_memory_report()
        assert sound.ok and sound.pool_slots == 256
        cached = e.scheduler.tree_cache.cached_slots()[0][:1]
        e.scheduler.token_to_kv_pool.free(cached.clone())  # a slot the tree owns is now also free
        broken = e.scheduler.check_memory_report()
        assert not broken.ok and "257 counted, pool has 256" in broken.message


@pytest.mark.parametrize(("chunk", "overlap"), [(7, "off"), (64, "on")])
def test_mixed_chunk_matches_and_decodes_during_prefill(tiny_models: dict[str, Path], reference: list[list[int]],
                                                        chunk: int, overlap: str) -> None:
    """--enable-mixed-chunk: running requests decode inside prefill batches (as one-token extend
    rows over their KV); greedy outputs stay those of one request at a time."""
    with Engine(model_path=str(tiny_models["llama"]), max_total_tokens=4096, chunked_prefill_size=chunk,
                enable_mixed_chunk=True, overlap_schedule=overlap, log_level="warning") as e:
        # Arrivals spread over steps, so later prompts prefill while earlier ones decode.
        sched = e.scheduler
        outs: dict[str, list[int]] = {}

        def collect(out: Any) -> None:
            for rid, ids in zip(out.rids, out.new_token_ids, strict=True) if out is not None else []:
                outs.setdefault(rid, []).extend(ids)

        for i, p in enumerate(PROMPTS):
            sched.handle(_req(f"m{i}", p, GREEDY))
            collect(sched.step())
        while sched.has_work():
            collect(sched.step())
        assert sched.stats.num_mixed_decode_tokens > 0
        sched.check_memory()
    assert [outs[f"m{i}"] for i in range(len(PROMPTS))] == reference
