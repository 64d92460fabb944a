"""Load generator for any OpenAI-compatible endpoint (a radixserve replica, the router, others).

Workloads:
  random         --num-prompts N prompts of --random-input-len words, pairwise distinct in their
                 first 32 words (benchmarks/workloads.py), each asking for --output-len tokens
  sharegpt       --num-prompts N prompts with ShareGPT-like input and output lengths
                 (benchmarks/workloads.py: log-normal, means matched to a published ShareGPT run);
                 input lengths in words, each request's max_tokens its own output length
  shared-prefix  --num-groups G system prompts of --system-prompt-len words, each followed by
                 --prompts-per-group questions of --question-len words (requests of all groups
                 interleaved): the workload where prefix caching and cache-aware routing pay off
Lengths are in words of a synthetic vocabulary (a word is one to a few tokens), or, with
--token-ids (random and sharegpt, /v1/completions only), exact: prompts are sent as token ids drawn
from [--vocab-lo, --vocab-hi), pairwise distinct in their first 32 ids.

Arrivals: Poisson at --request-rate requests/s (default inf: all at once), optionally capped at
--max-concurrency requests in flight. Streaming (SSE) by default. --request-rates 4,8,16,inf runs
the workload once per rate in one invocation (each run with its own prompts, seed + 1000 * its
index, so a later run cannot hit the prefixes an earlier one cached) and writes one JSON with a
list of runs.

Reports request and token throughput; TTFT, inter-token latency (ITL) and end-to-end latency
percentiles; and prompt-cache reuse from `usage.prompt_tokens_details.cached_tokens` when the
server returns it. Cached-token guard (issue 16): on `random` and `sharegpt`, which are not about
sharing, more than 1 % of the prompt tokens served from the cache fails the run (exit code 2,
`cache_guard` in the JSON). Send them to /v1/completions: through /v1/chat/completions every prompt
starts with the same chat-template header, which the cache then serves. Writes JSON (with the
command line, versions and machine) to benchmarks/results/serving_<time>.json or --output.

As a module: `await run_benchmark(BenchConfig(...))` or `run(argv)` returns the result dict.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as `python benchmarks/bench_serving.py`
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._common import machine_info, write_results  # noqa: E402
from benchmarks.workloads import (  # noqa: E402
    CachedTokensError,
    check_cached,
    distinct_random_ids,
    random_prompts,
    sharegpt_lengths,
    sharegpt_requests,
)

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
DATASETS = ("shared-prefix", "random", "sharegpt")
SHARED_DATASETS = frozenset({"shared-prefix"})  # about sharing: the cached-token guard does not apply
RUN_SEED_STRIDE = 1000  # run i of --request-rates uses seed + RUN_SEED_STRIDE * i


@dataclass
class BenchConfig:
    base_url: str
    endpoint: str = "/v1/chat/completions"
    model: str | None = None  # None: the first model of GET /v1/models
    api_key: str | None = None
    dataset: str = "shared-prefix"
    num_prompts: int = 200
    random_input_len: int = 256
    token_ids: bool = False  # random/sharegpt: send token-id prompts of exact lengths (/v1/completions)
    vocab_lo: int = 100
    vocab_hi: int = 32000  # below every common tokenizer's vocabulary size
    num_groups: int = 8
    prompts_per_group: int = 16
    system_prompt_len: int = 1024
    question_len: int = 64
    output_len: int = 64
    request_rate: float = math.inf
    max_concurrency: int | None = None
    stream: bool = True
    ignore_eos: bool = False
    seed: int = 0
    timeout_s: float = 600.0
    disable_tqdm: bool = False
    extra_body: dict[str, Any] = field(default_factory=dict)
    # Load-generator processes: one Python process parses a few thousand SSE chunks a second, and
    # past that its own lateness shows up as inter-token latency. Requests are dealt round robin,
    # each keeping its arrival time; --max-concurrency is split between them.
    client_processes: int = 1


@dataclass
class Prompt:
    system: str | None
    user: str
    group: int | None = None
    output_len: int | None = None  # max_tokens of this request; None: the config's output_len
    ids: list[int] | None = None  # token-id prompt (--token-ids): sent instead of the text


@dataclass
class RequestResult:
    ok: bool = False
    ttft_s: float | None = None
    latency_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)  # gaps between chunks with text
    # The same gaps spread over the tokens each chunk carries (known when the server reports usage
    # in every chunk): a detokenizer holds text back while a character is incomplete, so one chunk
    # can carry several tokens. SGLang's bench_serving splits such gaps the same way.
    itl_token_s: list[float] = field(default_factory=list)
    multi_token_chunks: int = 0
    text_chunks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = None
    error: str | None = None


# --- workloads ---

_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "shi", "po", "ve", "da", "zo", "gu", "fe", "ri", "sa", "no")


def _vocabulary(size: int = 2048) -> list[str]:
    words = []
    for i in range(size):
        a, b, c = i % 16, (i // 16) % 16, (i // 256) % 16
        words.append(_SYLLABLES[a] + _SYLLABLES[b] + ("" if c == 0 else _SYLLABLES[c]))
    return words


def _words(rng: random.Random, vocab: list[str], n: int) -> str:
    return " ".join(rng.choices(vocab, k=n))


def _distinct_texts(rng: random.Random, vocab: list[str], lengths: list[int]) -> list[str]:
    """Random word sequences of these lengths, pairwise distinct in their first min(32, len) words."""
    return [" ".join(vocab[i] for i in ids) for ids in distinct_random_ids(lengths, 0, len(vocab), rng)]


def make_prompts(cfg: BenchConfig) -> list[Prompt]:
    rng = random.Random(cfg.seed)
    vocab = _vocabulary()
    if cfg.token_ids:
        if cfg.dataset == "random":
            ids = random_prompts(cfg.num_prompts, cfg.random_input_len, cfg.vocab_lo, cfg.vocab_hi, cfg.seed)
            return [Prompt(None, "", ids=p) for p in ids]
        if cfg.dataset == "sharegpt":
            return [Prompt(None, "", output_len=r.output_len, ids=r.prompt)
                    for r in sharegpt_requests(cfg.num_prompts, cfg.vocab_lo, cfg.vocab_hi, cfg.seed)]
        raise ValueError("token_ids: only the random and sharegpt datasets")
    if cfg.dataset == "random":
        return [Prompt(None, t) for t in _distinct_texts(rng, vocab, [cfg.random_input_len] * cfg.num_prompts)]
    if cfg.dataset == "sharegpt":
        lengths = sharegpt_lengths(cfg.num_prompts, cfg.seed)
        # Its own word stream: with the `random` dataset's stream a sharegpt run of the same seed
        # would start every prompt with the words of a random run's prompt, cached on that server.
        texts = _distinct_texts(random.Random(f"sharegpt:{cfg.seed}"), vocab, [i for i, _ in lengths])
        return [Prompt(None, t, output_len=o) for t, (_, o) in zip(texts, lengths, strict=True)]
    if cfg.dataset != "shared-prefix":
        raise ValueError(f"unknown dataset {cfg.dataset!r}")
    systems = [f"System prompt {g}. " + _words(rng, vocab, cfg.system_prompt_len) for g in range(cfg.num_groups)]
    prompts = [Prompt(systems[g], _words(rng, vocab, cfg.question_len), g)
               for g in range(cfg.num_groups) for _ in range(cfg.prompts_per_group)]
    rng.shuffle(prompts)  # groups interleave, as independent users would
    return prompts


def _request_body(cfg: BenchConfig, model: str, prompt: Prompt, continuous_usage: bool = False) -> dict[str, Any]:
    max_tokens = prompt.output_len if prompt.output_len is not None else cfg.output_len
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": 0.0, "stream": cfg.stream}
    if cfg.endpoint == "/v1/chat/completions":
        messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
        body["messages"] = [*messages, {"role": "user", "content": prompt.user}]
    elif prompt.ids is not None:
        body["prompt"] = prompt.ids
    else:
        body["prompt"] = f"{prompt.system}\n{prompt.user}" if prompt.system else prompt.user
    if cfg.stream:
        body["stream_options"] = {"include_usage": True}
        if continuous_usage:  # usage in every chunk (vLLM's option): tokens per chunk, for itl_per_token_ms
            body["stream_options"]["continuous_usage_stats"] = True
    if cfg.ignore_eos:
        body["ignore_eos"] = True
    body.update(cfg.extra_body)
    return body


# --- one request ---

def _apply_usage(result: RequestResult, usage: dict[str, Any] | None) -> None:
    if not usage:
        return
    result.prompt_tokens = int(usage.get("prompt_tokens") or result.prompt_tokens)
    result.completion_tokens = int(usage.get("completion_tokens") or result.completion_tokens)
    details = usage.get("prompt_tokens_details") or {}
    if details.get("cached_tokens") is not None:
        result.cached_tokens = int(details["cached_tokens"])


def _chunk_text(obj: dict[str, Any]) -> str:
    choices = obj.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return delta.get("content") or delta.get("reasoning_content") or ""
    return choice.get("text") or ""


async def send_request(session: aiohttp.ClientSession, url: str, body: dict[str, Any], stream: bool,
                       est_prompt_tokens: int) -> RequestResult:
    result = RequestResult(prompt_tokens=est_prompt_tokens)
    start = time.perf_counter()
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                result.error = f"HTTP {resp.status}: {(await resp.text())[:300]}"
            elif stream:
                await _read_stream(resp, result, start)
            else:
                await _read_whole(resp, result, start)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if not result.latency_s:
            result.latency_s = time.perf_counter() - start
    return result


async def _read_whole(resp: aiohttp.ClientResponse, result: RequestResult, start: float) -> None:
    """A non-streaming answer: the first token arrives with the last one."""
    data = await resp.json(content_type=None)
    result.ttft_s = result.latency_s = time.perf_counter() - start
    choice = (data.get("choices") or [{}])[0]
    text = choice.get("text") or (choice.get("message") or {}).get("content") or ""
    result.completion_tokens = len(text.split())
    _apply_usage(result, data.get("usage"))
    result.ok = True


async def _read_stream(resp: aiohttp.ClientResponse, result: RequestResult, start: float) -> None:
    """An SSE stream: TTFT at the first chunk with text, ITL between such chunks, ok at [DONE]."""
    last = start
    chunks = 0
    tokens_seen = 0  # completion tokens reported up to the previous text chunk
    async for raw in resp.content:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            if result.completion_tokens == 0:
                result.completion_tokens = chunks
            result.ok = True
            return
        obj = json.loads(payload)
        if "error" in obj:
            result.error = str(obj["error"].get("message") if isinstance(obj["error"], dict) else obj["error"])
            return
        now = time.perf_counter()
        usage = obj.get("usage")
        if _chunk_text(obj):
            chunks += 1
            tokens = int(usage.get("completion_tokens") or 0) if usage else 0
            if result.ttft_s is None:
                result.ttft_s = now - start
            else:
                gap = now - last
                result.itl_s.append(gap)
                carried = tokens - tokens_seen if usage else 1
                result.itl_token_s.extend([gap / carried] * carried if carried > 0 else [gap])
                result.multi_token_chunks += carried > 1
                result.text_chunks += 1
            tokens_seen = tokens
            last = now
        _apply_usage(result, usage)
    result.error = "stream ended without [DONE]"


# --- the run ---

def _percentiles(values: Sequence[float], scale: float = 1000.0) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)

    def pct(q: float) -> float:
        # Linear interpolation between closest ranks.
        pos = (len(ordered) - 1) * q
        lo, hi = math.floor(pos), math.ceil(pos)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)

    return {"mean": round(sum(ordered) / len(ordered) * scale, 3), "p50": round(pct(0.5) * scale, 3),
            "p90": round(pct(0.9) * scale, 3), "p99": round(pct(0.99) * scale, 3),
            "max": round(ordered[-1] * scale, 3)}


SERVER_INFO_KEYS = ("model_name", "device", "device_name", "device_count", "dtype", "attention_impl",
                    "tensor_parallel_size", "chunked_prefill_size", "enable_mixed_chunk", "max_total_num_tokens",
                    "max_running_requests", "version")


async def _server_info(session: aiohttp.ClientSession, base_url: str) -> dict[str, Any] | None:
    """What the server runs on (device, parallelism, scheduling flags), when it is a radixserve
    server; other OpenAI-compatible endpoints give None."""
    try:
        async with session.get(base_url + "/get_server_info") as resp:
            if resp.status != 200:
                return None
            data = await resp.json(content_type=None)
    except (aiohttp.ClientError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    info = {k: data[k] for k in SERVER_INFO_KEYS if k in data}
    load = data.get("load")
    if isinstance(load, dict) and "num_retractions" in load:
        info["num_retractions"] = load["num_retractions"]  # since the server started
    return info


async def _resolve_model(session: aiohttp.ClientSession, base_url: str) -> str:
    async with session.get(base_url + "/v1/models") as resp:
        resp.raise_for_status()
        data = await resp.json(content_type=None)
    return str(data["data"][0]["id"])


def summarize(cfg: BenchConfig, results: list[RequestResult], duration_s: float) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    prompt_tokens = sum(r.prompt_tokens for r in ok)
    completion_tokens = sum(r.completion_tokens for r in ok)
    reported = [r.cached_tokens for r in ok if r.cached_tokens is not None]
    cached = sum(reported) if reported else None
    tpot = [(r.latency_s - r.ttft_s) / (r.completion_tokens - 1) for r in ok
            if r.ttft_s is not None and r.completion_tokens > 1]
    text_chunks = sum(r.text_chunks for r in ok)
    return {
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "duration_s": round(duration_s, 3),
        "request_throughput": round(len(ok) / duration_s, 3) if duration_s > 0 else None,
        "input_token_throughput": round(prompt_tokens / duration_s, 1) if duration_s > 0 else None,
        "output_token_throughput": round(completion_tokens / duration_s, 1) if duration_s > 0 else None,
        "total_token_throughput": round((prompt_tokens + completion_tokens) / duration_s, 1) if duration_s else None,
        "prompt_tokens_total": prompt_tokens,
        "completion_tokens_total": completion_tokens,
        "cached_tokens_total": cached,
        "cached_tokens_reported_by": len(reported),
        "cache_hit_rate": round(cached / prompt_tokens, 4) if cached is not None and prompt_tokens else None,
        "ttft_ms": _percentiles([r.ttft_s for r in ok if r.ttft_s is not None]),
        "itl_ms": _percentiles([x for r in ok for x in r.itl_s]),
        "itl_per_token_ms": _percentiles([x for r in ok for x in r.itl_token_s]),
        "multi_token_chunk_fraction": round(sum(r.multi_token_chunks for r in ok) / text_chunks, 4)
        if text_chunks else None,
        "tpot_ms": _percentiles(tpot),
        "e2e_latency_ms": _percentiles([r.latency_s for r in ok]),
        "errors": [r.error for r in results if not r.ok][:10],
        "cache_guard": cache_guard(cfg, prompt_tokens, cached),
    }


def cache_guard(cfg: BenchConfig, prompt_tokens: int, cached: int | None) -> dict[str, Any]:
    """The cached-token guard's verdict: `passed` False when a non-shared dataset had > 1 % cached,
    None when the server reported no cached tokens (nothing to check)."""
    shared = cfg.dataset in SHARED_DATASETS
    verdict: dict[str, Any] = {"dataset": cfg.dataset, "shared": shared, "passed": None, "error": None}
    if cached is None:
        verdict["error"] = "the server reported no cached_tokens: not checked"
        return verdict
    try:
        verdict["cached_fraction"] = round(check_cached(cfg.dataset, prompt_tokens, cached, shared), 6)
        verdict["passed"] = True
    except CachedTokensError as e:
        verdict["passed"], verdict["error"] = False, str(e)
        if cfg.endpoint == "/v1/chat/completions":
            verdict["error"] += "; with /v1/chat/completions the chat template's header is shared: use /v1/completions"
    return verdict


def guard_failed(result: dict[str, Any]) -> bool:
    """True when the result (one run, or several under "runs") failed the cached-token guard."""
    runs = result.get("runs") or [result]
    return any((r.get("cache_guard") or {}).get("passed") is False for r in runs)


async def run_benchmark(cfg: BenchConfig, command: str | None = None) -> dict[str, Any]:
    """Run the workload against `cfg.base_url` and return the result dict (does not write it)."""
    if cfg.endpoint not in ENDPOINTS:
        raise ValueError(f"endpoint must be one of {ENDPOINTS}")
    if cfg.token_ids and cfg.endpoint != "/v1/completions":
        raise ValueError("token-id prompts need the /v1/completions endpoint")
    base_url = cfg.base_url.rstrip("/")
    prompts = make_prompts(cfg)
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    rng = random.Random(cfg.seed + 1)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60), headers=headers) as session:
        model = cfg.model or await _resolve_model(session, base_url)
        server = await _server_info(session, base_url)
        # A radixserve server (it answered /get_server_info) reports usage in every chunk on request.
        bodies = [_request_body(cfg, model, p, continuous_usage=server is not None) for p in prompts]
        est_tokens = [len(p.ids) if p.ids is not None else len(((p.system or "") + " " + p.user).split())
                      for p in prompts]
        offsets = _arrival_offsets(len(prompts), cfg.request_rate, rng)
    if cfg.client_processes <= 1:
        start = time.perf_counter()
        results = await _drive(cfg, base_url + cfg.endpoint, headers, bodies, est_tokens, list(range(len(prompts))),
                               offsets, cfg.max_concurrency, not cfg.disable_tqdm)
        duration = time.perf_counter() - start
    else:
        results, duration = await asyncio.to_thread(_drive_in_processes, cfg, base_url + cfg.endpoint, headers,
                                                    bodies, est_tokens, offsets)
    out: dict[str, Any] = {"benchmark": "serving", "command": command, "config": _config_dict(cfg), "model": model,
                           "server": server, "machine": machine_info(("radixserve", "aiohttp", "sglang-router"))}
    out.update(summarize(cfg, list(results), duration))
    if server is not None and "num_retractions" in server:
        # Requests the server sent back to its queue during the run (KV pool full): each such
        # stream stalls while it waits and is prefilled again, which the ITL tail shows.
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60), headers=headers) as session:
            after = await _server_info(session, base_url)
        if after is not None and "num_retractions" in after:
            out["server_retractions"] = int(after["num_retractions"] - server["num_retractions"])
    return out


def _arrival_offsets(n: int, rate: float, rng: random.Random) -> list[float]:
    """Seconds from the start at which each request is sent (Poisson arrivals; all at 0 for inf)."""
    offsets, t = [], 0.0
    for _ in range(n):
        offsets.append(t)
        if rate != math.inf:
            t += rng.expovariate(rate)
    return offsets


async def _drive(cfg: BenchConfig, url: str, headers: dict[str, str], bodies: list[dict[str, Any]],
                 est_tokens: list[int], indices: list[int], offsets: list[float], max_concurrency: int | None,
                 progress: bool, start_wall: float | None = None) -> list[RequestResult]:
    """Send requests `indices` at their offsets from now (or from `start_wall`, a time.time())."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=cfg.timeout_s)
    semaphore = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    bar = None
    if progress:
        from tqdm.asyncio import tqdm

        bar = tqdm(total=len(indices), desc="requests", unit="req")
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
        async def one(i: int) -> RequestResult:
            if semaphore is None:
                res = await send_request(session, url, bodies[i], cfg.stream, est_tokens[i])
            else:
                async with semaphore:
                    res = await send_request(session, url, bodies[i], cfg.stream, est_tokens[i])
            if bar is not None:
                bar.update(1)
            return res

        if start_wall is not None:
            await asyncio.sleep(max(0.0, start_wall - time.time()))
        start = time.perf_counter()
        tasks = []
        for i in indices:
            delay = offsets[i] - (time.perf_counter() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        results = await asyncio.gather(*tasks)
    if bar is not None:
        bar.close()
    return list(results)


def _drive_shard(args: tuple[Any, ...]) -> list[RequestResult]:
    return asyncio.run(_drive(*args))


def _drive_in_processes(cfg: BenchConfig, url: str, headers: dict[str, str], bodies: list[dict[str, Any]],
                        est_tokens: list[int], offsets: list[float]) -> tuple[list[RequestResult], float]:
    """cfg.client_processes load generators, request i in process i mod n, all started on one clock."""
    import concurrent.futures
    import multiprocessing

    n = cfg.client_processes
    shards = [list(range(k, len(bodies), n)) for k in range(n)]
    per_process = -(-cfg.max_concurrency // n) if cfg.max_concurrency else None
    start_wall = time.time() + 2.0  # every process is up and connected-ready by then
    ctx = multiprocessing.get_context("spawn")  # no forked event loop or sockets
    with concurrent.futures.ProcessPoolExecutor(n, mp_context=ctx) as pool:
        futures = [pool.submit(_drive_shard, (cfg, url, headers, bodies, est_tokens, shard, offsets, per_process,
                                              False, start_wall)) for shard in shards]
        parts = [f.result() for f in futures]
    duration = time.time() - start_wall
    results: list[RequestResult | None] = [None] * len(bodies)
    for shard, part in zip(shards, parts, strict=True):
        for i, res in zip(shard, part, strict=True):
            results[i] = res
    return [r for r in results if r is not None], duration


def _config_dict(cfg: BenchConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["api_key"] = "***" if cfg.api_key else None
    d["request_rate"] = None if cfg.request_rate == math.inf else cfg.request_rate
    return d


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_serving.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--base-url", default="http://127.0.0.1:30000", help="server or router URL")
    p.add_argument("--endpoint", choices=ENDPOINTS, default="/v1/chat/completions", help="API to call")
    p.add_argument("--model", default=None, help="model name to send (default: first of GET /v1/models)")
    p.add_argument("--api-key", default=None, help="sent as `Authorization: Bearer KEY`")
    p.add_argument("--dataset", choices=DATASETS, default="shared-prefix",
                   help="workload: shared system prompts, independent random prompts, or random prompts "
                        "with ShareGPT-like input/output lengths")
    p.add_argument("--num-prompts", type=int, default=200, help="random, sharegpt: number of requests")
    p.add_argument("--random-input-len", type=int, default=256, help="random: prompt length in words")
    p.add_argument("--token-ids", action="store_true",
                   help="random, sharegpt: send prompts as token ids of exact length (needs /v1/completions)")
    p.add_argument("--vocab-lo", type=int, default=100, help="--token-ids: smallest token id")
    p.add_argument("--vocab-hi", type=int, default=32000, help="--token-ids: token ids stay below this")
    p.add_argument("--num-groups", type=int, default=8, help="shared-prefix: distinct system prompts")
    p.add_argument("--prompts-per-group", type=int, default=16, help="shared-prefix: questions per system prompt")
    p.add_argument("--system-prompt-len", type=int, default=1024, help="shared-prefix: system prompt words")
    p.add_argument("--question-len", type=int, default=64, help="shared-prefix: question words")
    p.add_argument("--output-len", type=int, default=64,
                   help="max_tokens of every request (sharegpt: each request has its own)")
    p.add_argument("--request-rate", type=float, default=math.inf,
                   help="Poisson arrival rate in requests/s (inf: send all at once)")
    p.add_argument("--request-rates", type=parse_rates, default=None,
                   help="comma-separated rates (e.g. 4,8,16,inf): one run per rate, one JSON with a list of "
                        "runs; overrides --request-rate")
    p.add_argument("--max-concurrency", type=int, default=None, help="cap on requests in flight (default none)")
    p.add_argument("--disable-stream", action="store_true", help="non-streaming requests (TTFT = latency)")
    p.add_argument("--ignore-eos", action="store_true", help="send ignore_eos=true so outputs have full length")
    p.add_argument("--extra-body", type=json.loads, default={}, help="JSON object merged into every request body")
    p.add_argument("--seed", type=int, default=0, help="seed for prompts and arrival times")
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout in seconds")
    p.add_argument("--output", default=None, help="JSON path (default benchmarks/results/serving_<time>.json)")
    p.add_argument("--no-save", action="store_true", help="print the result only, write no JSON")
    p.add_argument("--disable-tqdm", action="store_true", help="no progress bar")
    p.add_argument("--client-processes", type=int, default=1,
                   help="load-generator processes (requests dealt round robin, arrival times kept): one Python "
                        "process parses a few thousand stream chunks a second, past which its own lateness "
                        "reads as inter-token latency")
    return p


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        base_url=args.base_url, endpoint=args.endpoint, model=args.model, api_key=args.api_key,
        dataset=args.dataset, num_prompts=args.num_prompts, random_input_len=args.random_input_len,
        token_ids=args.token_ids, vocab_lo=args.vocab_lo, vocab_hi=args.vocab_hi,
        num_groups=args.num_groups, prompts_per_group=args.prompts_per_group,
        system_prompt_len=args.system_prompt_len, question_len=args.question_len, output_len=args.output_len,
        request_rate=args.request_rate, max_concurrency=args.max_concurrency, stream=not args.disable_stream,
        ignore_eos=args.ignore_eos, seed=args.seed, timeout_s=args.timeout, disable_tqdm=args.disable_tqdm,
        extra_body=args.extra_body, client_processes=args.client_processes,
    )


def parse_rates(text: str) -> list[float]:
    """'4,8,16,inf' -> [4.0, 8.0, 16.0, inf]; every rate positive."""
    rates = [float(x) for x in text.split(",") if x.strip()]
    if not rates or any(not r > 0 for r in rates):
        raise argparse.ArgumentTypeError(f"need positive comma-separated rates (inf allowed), got {text!r}")
    return rates


async def run_rates(cfg: BenchConfig, rates: Sequence[float], command: str | None = None) -> dict[str, Any]:
    """One run per request rate, in order; run i uses seed + RUN_SEED_STRIDE * i (fresh prompts)."""
    runs = []
    for i, rate in enumerate(rates):
        run_cfg = dataclasses.replace(cfg, request_rate=rate, seed=cfg.seed + RUN_SEED_STRIDE * i)
        runs.append(await run_benchmark(run_cfg, command))
        print(f"rate {rate}: {runs[-1]['request_throughput']} req/s, "
              f"{runs[-1]['output_token_throughput']} out tok/s", flush=True)
    return {"benchmark": "serving", "command": command, "request_rates": [None if r == math.inf else r for r in rates],
            "machine": runs[0]["machine"] if runs else machine_info(("radixserve",)),
            "runs": runs, "failed": sum(r["failed"] for r in runs)}


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse `argv`, run, write the JSON unless --no-save; returns the result dict."""
    args = build_parser().parse_args(argv)
    command = " ".join(["benchmarks/bench_serving.py", *(sys.argv[1:] if argv is None else argv)])
    cfg = config_from_args(args)
    if args.request_rates:
        result = asyncio.run(run_rates(cfg, args.request_rates, command))
    else:
        result = asyncio.run(run_benchmark(cfg, command))
    if not args.no_save:
        result["output_file"] = str(write_results("serving", result, args.output))
    return result


def _print_summary(r: dict[str, Any]) -> None:
    if "runs" in r:
        for one in r["runs"]:
            print(f"--- request rate {one['config']['request_rate'] or 'inf'}")
            _print_summary(one)
        if r.get("output_file"):
            print(f"wrote {r['output_file']}")
        return
    print(f"completed {r['completed']}, failed {r['failed']} in {r['duration_s']} s")
    print(f"requests/s {r['request_throughput']}, output tokens/s {r['output_token_throughput']}, "
          f"total tokens/s {r['total_token_throughput']}")
    for key in ("ttft_ms", "itl_ms", "e2e_latency_ms"):
        v = r[key]
        print(f"{key:15s} mean {v['mean']}  p50 {v['p50']}  p90 {v['p90']}  p99 {v['p99']}")
    if r["cached_tokens_total"] is not None:
        print(f"cached prompt tokens {r['cached_tokens_total']} of {r['prompt_tokens_total']} "
              f"({r['cache_hit_rate']})")
    if r["cache_guard"]["passed"] is False:
        print(f"cached-token guard FAILED: {r['cache_guard']['error']}", file=sys.stderr)
    if r.get("output_file"):
        print(f"wrote {r['output_file']}")


def main(argv: Sequence[str] | None = None) -> int:
    result = run(argv)
    _print_summary(result)
    if guard_failed(result):
        return 2
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
