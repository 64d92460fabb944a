"""Prefix reuse and KV exhaustion on the embedded model."""

from __future__ import annotations

from typing import Any

import pytest

from radixserve import Engine

pytestmark = pytest.mark.slow

SYSTEM = (
    "You are a meticulous assistant for a hardware store. Customers ask about tools, paint, garden "
    "supplies, plumbing parts and electrical fittings. Always answer briefly, name the aisle where the "
    "item is found, mention one safety tip when the item is dangerous, and never invent prices. The "
    "store opens at eight in the morning and closes at nine in the evening on weekdays, and at six on "
    "weekends. Aisles one to four hold tools, five and six paint, seven garden supplies, eight plumbing, "
    "nine electrical, and ten seasonal goods. Returns are accepted within thirty days with a receipt. "
)


def test_shared_prefix_is_reused_and_output_unchanged(smol_engine: Any) -> None:
    tok = smol_engine.tokenizer
    prefix = list(tok(SYSTEM * 2).input_ids)
    assert len(prefix) >= 200
    first = prefix + list(tok("Where is the garden hose?").input_ids)
    second = prefix + list(tok("When do you close on Sunday?").input_ids)
    greedy = {"max_new_tokens": 16, "temperature": 0}
    assert smol_engine.scheduler.flush_cache()
    smol_engine.generate(input_ids=first, sampling_params=greedy)
    hit = smol_engine.generate(input_ids=second, sampling_params=greedy)
    assert hit["meta_info"]["cached_tokens"] >= 200
    assert smol_engine.scheduler.flush_cache()
    cold = smol_engine.generate(input_ids=second, sampling_params=greedy)
    assert cold["meta_info"]["cached_tokens"] == 0
    assert hit["output_ids"] == cold["output_ids"]
    smol_engine.scheduler.check_memory()


def test_kv_exhaustion_retracts_and_finishes_correctly(smol_engine: Any) -> None:
    tok = smol_engine.tokenizer
    prompts = [list(tok(f"Count from {i} to {i + 20}, separated by commas:").input_ids) for i in range(32)]
    params = {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True}
    assert smol_engine.scheduler.flush_cache()
    # One batch: float32 greedy tokens do not depend on the batch (test_64_concurrent_streams_equal_sequential).
    expected = [o["output_ids"] for o in smol_engine.generate(input_ids=prompts[:8], sampling_params=params)]
    # ~32 * (15 + 24) tokens of demand against a 512-token pool: decode must run dry and retract.
    with Engine(max_total_tokens=512, max_running_requests=32, log_level="warning", gguf_dequantize=True) as tiny_pool:
        outs = tiny_pool.generate(input_ids=prompts, sampling_params=params)
        sched = tiny_pool.scheduler
        assert sched.stats.num_retractions > 0
        # Reported with the load, and as the Prometheus counter radixserve:num_retractions_total.
        load = sched.get_load()
        assert load["num_retractions"] == sched.stats.num_retractions
        from prometheus_client import CollectorRegistry

        from radixserve.metrics import SchedulerMetrics

        metrics = SchedulerMetrics("m", CollectorRegistry())
        metrics.update(load)
        metrics.update(load)  # the same total again: no double count
        assert metrics.registry.get_sample_value("radixserve:num_retractions_total",
                                                 {"model_name": "m"}) == sched.stats.num_retractions
        assert all(len(o["output_ids"]) == 24 for o in outs)
        assert [o["output_ids"] for o in outs[:8]] == expected
        sched.check_memory()
        pool = sched.token_to_kv_pool
        assert pool.available_size() + sched.tree_cache.total_size() == pool.size
        assert sched.tree_cache.protected_size() == 0
