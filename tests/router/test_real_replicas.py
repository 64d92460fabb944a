"""The router in front of three real `radixserve serve` replicas (embedded model, small KV pools)."""

from __future__ import annotations

import dataclasses

import aiohttp
import pytest

from benchmarks.bench_router_cache import replica_command, run_policy
from benchmarks.bench_serving import BenchConfig, run_benchmark
from radixserve.router.workers import WorkerState

from .conftest import MakeRouter, StartWorkerProcesses, wait_until

pytestmark = pytest.mark.slow

# 7 system prompts of ~290 tokens (with the chat template) do not fit in one replica's 1536-token
# pool, while the ~2-3 groups that cache_aware sends to each replica do.
WORKLOAD = BenchConfig(base_url="", dataset="shared-prefix", num_groups=7, prompts_per_group=5,
                       system_prompt_len=100, question_len=12, output_len=2, ignore_eos=True, max_concurrency=3,
                       disable_tqdm=True)


async def test_cache_aware_reuses_more_prefix_than_round_robin(worker_processes: StartWorkerProcesses,
                                                               make_router: MakeRouter,
                                                               http: aiohttp.ClientSession) -> None:
    procs = await worker_processes(3, lambda port: replica_command(port, 1536), timeout=300)
    urls = [p.url for p in procs]
    rr = await run_policy(urls, "round_robin", dataclasses.replace(WORKLOAD))
    ca = await run_policy(urls, "cache_aware", dataclasses.replace(WORKLOAD))
    for r in (rr, ca):
        assert r["completed"] == 35 and r["failed"] == 0, r
        assert sum(r["requests_per_replica"]) == 35 and min(r["requests_per_replica"]) > 0, r
    # The replicas' own counters: cache_aware keeps each system prompt on one replica.
    assert ca["replica_cached_tokens"] >= 1.5 * rr["replica_cached_tokens"], (ca, rr)
    assert ca["replica_cache_hit_rate"] > 0.5, ca

    # A replica killed behind the router: requests keep being served; it is ejected, then re-admitted.
    running = await make_router(worker_urls=urls, policy="cache_aware", health_check_interval_s=0.5,
                                health_failure_threshold=2, health_success_threshold=1)
    victim = procs[0]
    victim.kill()
    cfg = dataclasses.replace(WORKLOAD, base_url=running.url, num_groups=3, prompts_per_group=4)
    result = await run_benchmark(cfg)
    assert result["completed"] == 12 and result["failed"] == 0, result["errors"]
    worker = running.router.workers.get(victim.url)
    assert worker is not None
    await wait_until(lambda: worker.state is WorkerState.UNHEALTHY, 10, what="ejection")
    victim.start()
    await victim.wait_healthy(http, 300)
    await wait_until(lambda: worker.state is WorkerState.HEALTHY, 20, what="re-admission")
