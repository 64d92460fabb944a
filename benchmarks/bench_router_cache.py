"""Prefix-cache reuse behind the router: real `radixserve serve` replicas, one routing variant at a time.

Starts --replicas servers of the embedded model (or --model-path) with small KV pools
(--max-total-tokens) so that eviction matters, then for each --policies entry: flushes every
replica's cache, starts the router with that variant, runs bench_serving's shared-prefix workload
(many tenants' system prompts, more than the pools hold: tenants' prefixes are evicted and come
back) through it, stops the router, and reads the replicas' own Prometheus counters
(`radixserve:prompt_tokens_total`, `radixserve:cached_tokens_total`). Variants:

  exact          cache_aware on the engines' cache events (docs/router.md, "Cache events")
  approximate    cache_aware on the router's own approximate tree (--cache-events off)
  round_robin, power_of_two, random
  sglang-router  `python -m sglang_router.launch_router --policy cache_aware` (its defaults), when
                 the sglang_router module is installed in this environment (pip install sglang-router)

Reports, per variant: cache hit rate (cached / prompt tokens summed over replicas), request and
token throughput, TTFT p50/p99, and how requests spread over the replicas; ratios of exact over
each other variant. The bound: the cached tokens of one replica with an unbounded cache that
had seen every earlier request of the trace (each prompt's longest common token prefix with any
earlier prompt, in sending order, tokenized as the server does); every variant is reported as a
fraction of it.

    python benchmarks/bench_router_cache.py --replicas 3 --num-groups 8 --prompts-per-group 12

Writes benchmarks/results/router_cache_<time>.json (or --output).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._common import machine_info, write_results  # noqa: E402
from benchmarks.bench_serving import BenchConfig, _request_body, make_prompts, run_benchmark  # noqa: E402

POLICIES = ("exact", "approximate", "round_robin", "power_of_two", "random", "sglang-router")
# variant -> (radixserve router policy, cache events on)
VARIANTS = {"exact": ("cache_aware", True), "approximate": ("cache_aware", False),
            "round_robin": ("round_robin", False), "power_of_two": ("power_of_two", False),
            "random": ("random", False)}
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


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


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


def _saved_tokenizer() -> str:
    """The replicas' tokenizer as a directory sglang-router can read (it would otherwise try to fetch one
    by the model's name, and nothing here can be downloaded)."""
    from radixserve.model_loader.default_model import default_model_path
    from radixserve.model_loader.tokenizer import load_tokenizer

    path = tempfile.mkdtemp(prefix="bench-router-cache-tok-")
    load_tokenizer(default_model_path()).save_pretrained(path)
    return path


def cache_bound_tokens(token_lists: Sequence[Sequence[int]]) -> int:
    """Cached prompt tokens if one unbounded cache had served the trace in order: each prompt's
    longest common prefix with any earlier prompt (no routing can cache more)."""
    total = 0
    for i, ids in enumerate(token_lists):
        best = 0
        for earlier in token_lists[:i]:
            n = 0
            for a, b in zip(ids, earlier, strict=False):
                if a != b:
                    break
                n += 1
            best = max(best, n)
        total += min(best, len(ids) - 1)  # an engine recomputes at least the last prompt token
    return total


def trace_bound(cfg: BenchConfig, tokenizer_dir: str) -> dict[str, int]:
    from radixserve.router.tokenize import PromptTokenizer

    tok = PromptTokenizer.load(tokenizer_dir)
    lists = [tok.chat(_request_body(cfg, "m", p)) for p in make_prompts(cfg)]
    return {"trace_prompt_tokens": sum(len(ids) for ids in lists), "cache_bound_tokens": cache_bound_tokens(lists)}


@contextlib.asynccontextmanager
async def _sglang_router(worker_urls: list[str]) -> AsyncIterator[str]:
    """sglang-router in cache_aware mode with its own defaults, as a subprocess on a free port."""
    port = free_port()
    cmd = [sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1", "--port", str(port),
           "--policy", "cache_aware", "--log-level", "error", "--tokenizer-path", _saved_tokenizer(),
           "--prometheus-port", str(free_port()),  # its default 29000 would collide between two replicas
           "--worker-urls", *worker_urls]
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below, after the process
    # No proxy may leak it onto the network (a blackhole proxy, as bench_router.py does).
    env = {**os.environ, "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        # Healthy and its workers registered (it adds them in the background after it starts listening).
        while not (await asyncio.to_thread(_healthy, url) and await asyncio.to_thread(_answers, url + "/v1/models")):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"sglang-router did not start (exit {proc.poll()}): "
                                   f"{log.read().decode(errors='replace')[-1500:]}")
            await asyncio.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextlib.asynccontextmanager
async def _our_router(worker_urls: list[str], variant: str) -> AsyncIterator[str]:
    from radixserve.router.app import start_router, stop_router
    from radixserve.router.config import RouterConfig

    policy, events = VARIANTS[variant]
    running = await start_router(RouterConfig(host="127.0.0.1", port=0, worker_urls=worker_urls, policy=policy,
                                              cache_events=events, seed=0, health_check_interval_s=1.0))
    try:
        deadline = time.monotonic() + 30
        while len(running.router.workers.healthy) < len(worker_urls) or (events and not _events_live(running)) \
                or (events and running.router.proxy.prompt_tokenizer is None):
            if time.monotonic() > deadline:
                raise RuntimeError("router did not see every replica healthy (and its cache events live, "
                                   "its tokenizer loaded)")
            await asyncio.sleep(0.1)
        yield running.url
    finally:
        await stop_router(running)


def _events_live(running: Any) -> bool:
    info = [running.router.worker_info(w).get("cache_events") or {} for w in running.router.workers.all()]
    return all(i.get("state") == "live" for i in info)


@contextlib.asynccontextmanager
async def _routers(worker_urls: list[str], variant: str, n: int) -> AsyncIterator[str]:
    """`n` router replicas of one variant behind a round-robin front (what a Kubernetes Service in front
    of a router Deployment does: each replica sees only its share of the requests); one router: itself."""
    async with contextlib.AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(
            _sglang_router(worker_urls) if variant == "sglang-router" else _our_router(worker_urls, variant))
            for _ in range(n)]
        if n == 1:
            yield urls[0]
            return
        front = await stack.enter_async_context(_our_router(urls, "round_robin"))
        yield front


async def run_policy(worker_urls: list[str], policy: str, cfg: BenchConfig, routers: int = 1) -> dict[str, Any]:
    """One variant on fresh caches, through `routers` router replicas; the result has the replicas' own
    counts."""
    for url in worker_urls:
        await asyncio.to_thread(flush_cache, url)
    before = [await asyncio.to_thread(replica_counters, u) for u in worker_urls]
    async with _routers(worker_urls, policy, routers) as url:
        cfg.base_url = url
        result = await run_benchmark(cfg)
    after = [await asyncio.to_thread(replica_counters, u) for u in worker_urls]
    per = [{k: after[i][k] - before[i][k] for k in COUNTERS} for i in range(len(worker_urls))]
    prompt = sum(p["radixserve:prompt_tokens_total"] for p in per)
    cached = sum(p["radixserve:cached_tokens_total"] for p in per)
    return {
        "policy": policy,
        "router_replicas": routers,
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
        "errors": (result.get("errors") or [])[:5],  # the first few, when requests failed
        "e2e_latency_ms": result["e2e_latency_ms"],
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicas", type=int, default=3, help="radixserve serve replicas to start")
    p.add_argument("--model-path", default=None, help="model of the replicas (default: the embedded SmolLM2)")
    p.add_argument("--max-total-tokens", type=int, default=2048, help="KV pool of each replica, in tokens")
    p.add_argument("--policies", nargs="+", choices=POLICIES,
                   default=["exact", "approximate", "round_robin", "sglang-router"],
                   help="router policies to compare, in this order")
    p.add_argument("--routers", type=int, default=2,
                   help="router replicas per variant, behind a round-robin front as a Service spreads clients over "
                        "a router Deployment (the operator renders 2 by default); 1: a single router")
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
    results: list[dict[str, Any]] = []
    try:
        for policy in args.policies:
            if policy == "sglang-router" and importlib.util.find_spec("sglang_router") is None:
                results.append({"policy": policy, "skipped": "sglang_router is not installed in this environment "
                                                             "(pip install sglang-router)"})
                continue
            try:
                results.append(await run_policy([r.url for r in replicas], policy, workload(args), args.routers))
            except RuntimeError as e:  # a peer that would not start: say so, keep the other variants
                results.append({"policy": policy, "skipped": str(e)})
    finally:
        stop_replicas(replicas)
    base = {r["policy"]: r for r in results if "skipped" not in r}
    tok_dir = await asyncio.to_thread(_saved_tokenizer)
    bound = await asyncio.to_thread(trace_bound, workload(args), tok_dir)
    for r in base.values():
        r["fraction_of_cache_bound"] = round(r["replica_cached_tokens"] / bound["cache_bound_tokens"], 4)
    ratios: dict[str, float] = {}
    if "exact" in base:
        for other in base:
            if other != "exact" and base[other]["replica_cached_tokens"]:
                ratios[f"cached_tokens_exact_over_{other}"] = round(
                    base["exact"]["replica_cached_tokens"] / base[other]["replica_cached_tokens"], 3)
                ratios[f"throughput_exact_over_{other}"] = round(
                    base["exact"]["request_throughput"] / base[other]["request_throughput"], 3)
    return {"benchmark": "router_cache", "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
            "config": {k: v for k, v in vars(args).items() if k != "output"},
            "machine": machine_info(("radixserve", "torch", "aiohttp")), "bound": bound, "policies": results,
            "ratios": ratios}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = asyncio.run(_main(args))
    path = write_results("router_cache", out, args.output)
    for r in out["policies"]:
        if "skipped" in r:
            print(f"{r['policy']:>13}: skipped, {r['skipped']}")
            continue
        print(f"{r['policy']:>13}: hit rate {r['replica_cache_hit_rate']}, "
              f"{r.get('fraction_of_cache_bound')} of the bound, {r['request_throughput']} req/s, "
              f"TTFT p50 {r['ttft_ms']['p50']} ms p99 {r['ttft_ms']['p99']} ms, per replica {r['requests_per_replica']}")
    print(out["bound"], out["ratios"])
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
