"""The router in front of three real `radixserve serve` replicas (embedded model, small KV pools)."""

from __future__ import annotations

import dataclasses

import aiohttp
import pytest

from benchmarks.bench_router_cache import replica_command, run_policy
from benchmarks.bench_serving import BenchConfig, _request_body, make_prompts
from radixserve.router.app import RunningRouter
from radixserve.router.proxy import WORKER_HEADER
from radixserve.router.request_text import routing_text
from radixserve.router.tokenize import RoutedPrompt

from .conftest import MakeRouter, StartWorkerProcesses, wait_until

pytestmark = pytest.mark.slow

# 7 tenants' system prompts of ~290 tokens (with the chat template) do not fit in one replica's
# 1536-token pool, while the ~2-3 tenants that affinity sends to each replica do: prefixes are evicted
# and come back as tenants return (the workload interleaves them).
WORKLOAD = BenchConfig(base_url="", dataset="shared-prefix", num_groups=7, prompts_per_group=5,
                       system_prompt_len=100, question_len=12, output_len=2, ignore_eos=True, max_concurrency=3,
                       disable_tqdm=True)


def _events_in_step(*routers: RunningRouter) -> bool:
    """Every router has a live stream from every worker, at the same sequence number."""
    seqs = []
    for running in routers:
        if running.router.proxy.prompt_tokenizer is None:  # loaded from the workers' model (--tokenizer auto)
            return False
        workers = running.router.workers.all()
        # The router's own count of requests in flight weighs as load too: it drops when the relay
        # of the previous answer has finished, which can be just after its client read the end.
        if any(w.outstanding for w in workers):
            return False
        info = [running.router.worker_info(w)["cache_events"] for w in workers]
        if any(i.get("state") != "live" for i in info):
            return False
        # Idle engines: the load a router weighs comes from heartbeats, and one arriving between the
        # prediction and the request (the previous request's running count dropping to 0) would change
        # the serving router's view but not the predicting one's.
        if any((i.get("engine_load") or {}).get("running", 1) or (i.get("engine_load") or {}).get("waiting", 1)
               for i in info):
            return False
        seqs.append(sorted((i.get("epoch"), i.get("seq"), (i.get("engine_load") or {}).get("kv_usage"))
                           for i in info))
    return all(s == seqs[0] for s in seqs)


async def test_exact_routing_reuses_more_prefix_and_router_replicas_agree(
        worker_processes: StartWorkerProcesses, make_router: MakeRouter, http: aiohttp.ClientSession) -> None:
    # One torch thread each: three replicas on a 2-core machine would otherwise run six (`env` execs the
    # server, so the process is still the one the fixture stops).
    procs = await worker_processes(3, lambda port: ["env", "OMP_NUM_THREADS=1", *replica_command(port, 1536)],
                                   timeout=300)
    urls = [p.url for p in procs]
    # Two router replicas per variant behind a round-robin front, as a Service spreads clients over the
    # router Deployment (2 replicas by default): each approximate tree learns only its half of the traffic,
    # while both exact indexes follow the same engines.
    # Round robin, the baseline both beat, is in benchmarks/bench_router_cache.py; here the comparison
    # that matters: the engines' events against the router's own approximate trees.
    runs = {name: await run_policy(urls, name, dataclasses.replace(WORKLOAD), routers=2)
            for name in ("approximate", "exact")}
    for r in runs.values():
        assert r["completed"] == 35 and r["failed"] == 0, r
        assert sum(r["requests_per_replica"]) == 35 and min(r["requests_per_replica"]) > 0, r
    # The replicas' own counters: routing on the engines' cache events keeps more prefixes cached.
    assert runs["exact"]["replica_cached_tokens"] > runs["approximate"]["replica_cached_tokens"], runs
    assert runs["exact"]["replica_cache_hit_rate"] > 0.5, runs["exact"]

    # Two router replicas on the same event streams make the same choice for each request.
    a = await make_router(worker_urls=urls)
    b = await make_router(worker_urls=list(reversed(urls)))
    cfg = dataclasses.replace(WORKLOAD, num_groups=4, prompts_per_group=3, system_prompt_len=60)
    for i, prompt in enumerate(make_prompts(cfg)):
        await wait_until(lambda: _events_in_step(a, b), 20, what="both routers in step with the engines")
        via, other = (a, b) if i % 2 == 0 else (b, a)
        body = _request_body(cfg, "SmolLM2-135M-Instruct", prompt)  # what the benchmark sends
        predicted = other.router.policy.select(other.router.workers.healthy, routing_text(cfg.endpoint, body),
                                               RoutedPrompt(cfg.endpoint, body, other.router.proxy.prompt_tokenizer))
        assert predicted.matched_tokens is not None  # decided on the engines' events, not the tree
        async with http.post(via.url + cfg.endpoint, json=body) as resp:
            answer = await resp.text()  # read to the end: the request finishes rather than aborts
            assert resp.status == 200, answer
            assert resp.headers[WORKER_HEADER] == predicted.worker.url, f"request {i}: the replicas disagree"
