"""Prefix-cache reuse behind the router: real `radixserve serve` replicas, one policy at a time.

Starts --replicas servers of the embedded model (or --model-path) with small KV pools
(--max-total-tokens) so that eviction matters, then for each --policies entry: flushes every
replica's cache, starts the router in process with that policy, runs bench_serving's
shared-prefix workload through it, stops the router, and reads the replicas' own Prometheus
counters (`radixserve:prompt_tokens_total`, `radixserve:cached_tokens_total`). Reports, per
policy: cache hit rate (cached / prompt tokens summed over replicas), request and token
throughput, TTFT p50/p99, and how requests spread over the replicas.

    python benchmarks/bench_router_cache.py --replicas 3 --num-groups 8 --prompts-per-group 12

Writes benchmarks/results/router_cache_<time>.json (or --output).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._common import machine_info, write_results  # noqa: E402
from benchmarks.bench_serving import BenchConfig, run_benchmark  # noqa: E402

POLICIES = ("cache_aware", "round_robin", "power_of_two", "random")
COUNTERS = ("radixserve:prompt_tokens_total", "radixserve:cached_tokens_total", "radixserve:num_requests_total")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def replica_command(port: int, max_total_tokens: int, model_path: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "radixserve.server", "--port", str(port), "--max-total-tokens",
           str(max_total_tokens), "--log-level", "warning"]
    return cmd + (["--model-path", model_path] if model_path else [])


@dataclass
class Replica:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_replicas(n: int, max_total_tokens: int, model_path: str | None, timeout_s: float = 600) -> list[Replica]:
    replicas = []
    for _ in range(n):
        port = free_port()
        proc = subprocess.Popen(replica_command(port, max_total_tokens, model_path), cwd=REPO_ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        replicas.append(Replica(port, proc))
    deadline = time.monotonic() + timeout_s
    for r in replicas:
        while not _healthy(r.url):
            if r.proc.poll() is not None or time.monotonic() > deadline:
                stop_replicas(replicas)
                raise RuntimeError(f"replica on port {r.port} did not start")
            time.sleep(0.5)
    return replicas


def stop_replicas(replicas: Sequence[Replica]) -> None:
    for r in replicas:
        if r.proc.poll() is None:
            r.proc.send_signal(signal.SIGTERM)
    for r in replicas:
        try:
            r.proc.wait(30)
        except subprocess.TimeoutExpired:
            r.proc.kill()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def replica_counters(url: str) -> dict[str, float]:
    """The replica's cumulative prompt, cached-prompt and finished-request counts."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = dict.fromkeys(COUNTERS, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in out:
            out[name] += float(line.rsplit(" ", 1)[1])
    return out


def flush_cache(url: str) -> None:
    req = urllib.request.Request(url + "/flush_cache", method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()


async def run_policy(worker_urls: list[str], policy: str, cfg: BenchConfig) -> dict[str, Any]:
    """One policy on fresh caches; the result has the replicas' own counts under `replicas`."""
    from radixserve.router.app import start_router, stop_router
    from radixserve.router.config import RouterConfig

    for url in worker_urls:
        await asyncio.to_thread(flush_cache, url)
    before = [await asyncio.to_thread(replica_counters, u) for u in worker_urls]
    running = await start_router(RouterConfig(host="127.0.0.1", port=0, worker_urls=worker_urls, policy=policy,
                                              seed=0, health_check_interval_s=1.0))
    try:
        deadline = time.monotonic() + 30
        while len(running.router.workers.healthy) < len(worker_urls):
            if time.monotonic() > deadline:
                raise RuntimeError("router did not see every replica healthy")
            await asyncio.sleep(0.1)
        cfg.base_url = running.url
        result = await run_benchmark(cfg)
    finally:
        await stop_router(running)
    after = [await asyncio.to_thread(replica_counters, u) for u in worker_urls]
    per = [{k: after[i][k] - before[i][k] for k in COUNTERS} for i in range(len(worker_urls))]
    prompt = sum(p["radixserve:prompt_tokens_total"] for p in per)
    cached = sum(p["radixserve:cached_tokens_total"] for p in per)
    return {
        "policy": policy,
        "replica_prompt_tokens": prompt,
        "replica_cached_tokens": cached,
        "replica_cache_hit_rate": round(cached / prompt, 4) if prompt else None,
        "requests_per_replica": [p["radixserve:num_requests_total"] for p in per],
        "completed": result["completed"],
        "failed": result["failed"],
        "request_throughput": result["request_throughput"],
        "output_token_throughput": result["output_token_throughput"],
        "total_token_throughput": result["total_token_throughput"],
        "ttft_ms": result["ttft_ms"],
        "e2e_latency_ms": result["e2e_latency_ms"],
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicas", type=int, default=3, help="radixserve serve replicas to start")
    p.add_argument("--model-path", default=None, help="model of the replicas (default: the embedded SmolLM2)")
    p.add_argument("--max-total-tokens", type=int, default=2048, help="KV pool of each replica, in tokens")
    p.add_argument("--policies", nargs="+", choices=POLICIES, default=["cache_aware", "round_robin", "power_of_two"],
                   help="router policies to compare, in this order")
    p.add_argument("--num-groups", type=int, default=8, help="distinct system prompts")
    p.add_argument("--prompts-per-group", type=int, default=12, help="questions per system prompt")
    p.add_argument("--system-prompt-len", type=int, default=120, help="system prompt length in words (~2.7 tokens each)")
    p.add_argument("--question-len", type=int, default=16, help="question length in words")
    p.add_argument("--output-len", type=int, default=8, help="max_tokens of each request")
    p.add_argument("--max-concurrency", type=int, default=6, help="requests in flight")
    p.add_argument("--output", default=None, help="JSON path (default benchmarks/results/router_cache_<time>.json)")
    p.add_argument("--disable-tqdm", action="store_true", help="no progress bars")
    return p


def workload(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(base_url="", dataset="shared-prefix", num_groups=args.num_groups,
                       prompts_per_group=args.prompts_per_group, system_prompt_len=args.system_prompt_len,
                       question_len=args.question_len, output_len=args.output_len, ignore_eos=True,
                       max_concurrency=args.max_concurrency, disable_tqdm=args.disable_tqdm)


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    replicas = await asyncio.to_thread(start_replicas, args.replicas, args.max_total_tokens, args.model_path)
    try:
        results = [await run_policy([r.url for r in replicas], policy, workload(args)) for policy in args.policies]
    finally:
        stop_replicas(replicas)
    base = {r["policy"]: r for r in results}
    ratios = {}
    if "cache_aware" in base:
        for other in base:
            if other != "cache_aware" and base[other]["replica_cached_tokens"]:
                ratios[f"cached_tokens_cache_aware_over_{other}"] = round(
                    base["cache_aware"]["replica_cached_tokens"] / base[other]["replica_cached_tokens"], 2)
                ratios[f"throughput_cache_aware_over_{other}"] = round(
                    base["cache_aware"]["request_throughput"] / base[other]["request_throughput"], 2)
    return {"benchmark": "router_cache", "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
            "config": {k: v for k, v in vars(args).items() if k != "output"},
            "machine": machine_info(("radixserve", "torch", "aiohttp")), "policies": results, "ratios": ratios}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = asyncio.run(_main(args))
    path = write_results("router_cache", out, args.output)
    for r in out["policies"]:
        print(f"{r['policy']:>13}: hit rate {r['replica_cache_hit_rate']}, {r['request_throughput']} req/s, "
              f"TTFT p50 {r['ttft_ms']['p50']} ms p99 {r['ttft_ms']['p99']} ms, per replica {r['requests_per_replica']}")
    print(out["ratios"])
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
