"""benchmarks/bench_serving.py against fake workers behind the router (and directly)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from benchmarks import bench_serving
from benchmarks.bench_serving import BenchConfig, make_prompts, run_benchmark

from .conftest import MakeFakeWorkers, MakeRouter

SHARED = BenchConfig(base_url="http://unused", dataset="shared-prefix", num_groups=4, prompts_per_group=8,
                     system_prompt_len=120, question_len=8, output_len=6, max_concurrency=4, disable_tqdm=True)


def test_help_explains_every_flag() -> None:
    parser = bench_serving.build_parser()
    for action in parser._actions:
        assert action.help, action.option_strings
    flags = {s for a in parser._actions for s in a.option_strings}
    assert {"--num-groups", "--prompts-per-group", "--system-prompt-len", "--question-len", "--request-rate",
            "--max-concurrency", "--disable-stream", "--output"} <= flags


def test_shared_prefix_workload_shape() -> None:
    prompts = make_prompts(SHARED)
    assert len(prompts) == 32
    systems = {p.system for p in prompts}
    assert len(systems) == 4
    assert all(len((p.system or "").split()) == 120 + 3 for p in prompts)  # "System prompt N." + 120 words
    groups = [p.group for p in prompts[:8] if p.group is not None]
    assert len(groups) == 8 and groups != sorted(groups)  # groups interleave


async def test_streaming_shared_prefix_through_router(fake_workers: MakeFakeWorkers, make_router: MakeRouter,
                                                      tmp_path: Path) -> None:
    ws = await fake_workers(3, token_delay=0.002)
    running = await make_router(worker_urls=[w.url for w in ws])
    result = await run_benchmark(dataclasses.replace(SHARED, base_url=running.url), command="test")
    assert (result["completed"], result["failed"]) == (32, 0), result["errors"]
    assert result["completion_tokens_total"] == 32 * 6
    assert result["prompt_tokens_total"] == sum(w.worker.stats.prompt_tokens for w in ws)
    assert result["cached_tokens_total"] == sum(w.worker.stats.cached_tokens for w in ws) > 0
    for key in ("ttft_ms", "itl_ms", "e2e_latency_ms"):
        assert 0 < result[key]["p50"] <= result[key]["p99"], key
    assert result["request_throughput"] > 0 and result["model"] == "fake-model"
    out = bench_serving.write_results("serving", result, tmp_path / "r.json")
    saved = json.loads(out.read_text())
    assert saved["command"] == "test" and saved["machine"]["cpu_count"] and saved["config"]["num_groups"] == 4


async def test_cache_aware_reuses_more_prefix_than_round_robin_on_fake_workers(fake_workers: MakeFakeWorkers,
                                                                                make_router: MakeRouter) -> None:
    """Router-level check with prefix-caching fake workers; the real-replica version needs the server."""
    cached = {}
    for policy in ("cache_aware", "round_robin"):
        ws = await fake_workers(3)
        running = await make_router(worker_urls=[w.url for w in ws], policy=policy)
        result = await run_benchmark(dataclasses.replace(SHARED, base_url=running.url))
        assert result["failed"] == 0
        cached[policy] = result["cached_tokens_total"]
        # The workers' own counters agree with what the benchmark read from `usage`.
        assert cached[policy] == sum(w.worker.stats.cached_tokens for w in ws)
    assert cached["cache_aware"] > cached["round_robin"]


async def test_non_streaming_poisson_completions_direct(fake_workers: MakeFakeWorkers) -> None:
    (w,) = await fake_workers(1)
    cfg = BenchConfig(base_url=w.url, endpoint="/v1/completions", dataset="random", num_prompts=20,
                      random_input_len=16, output_len=4, request_rate=400.0, stream=False, disable_tqdm=True)
    result = await run_benchmark(cfg)
    assert (result["completed"], result["failed"]) == (20, 0)
    assert result["ttft_ms"] == result["e2e_latency_ms"]
    assert result["itl_ms"]["p50"] is None
    assert result["completion_tokens_total"] == 80 and result["prompt_tokens_total"] == 320
    assert w.worker.stats.paths == {"/v1/completions": 20}


async def test_load_generator_in_several_processes(fake_workers: MakeFakeWorkers) -> None:
    """--client-processes: every request is sent once, by one of the processes, and its result lands
    at its own index (the summary matches a one-process run of the same prompts)."""
    (w,) = await fake_workers(1)
    cfg = BenchConfig(base_url=w.url, endpoint="/v1/completions", dataset="random", num_prompts=24,
                      random_input_len=16, output_len=4, request_rate=200.0, disable_tqdm=True, seed=3)
    one = await run_benchmark(cfg)
    two = await run_benchmark(dataclasses.replace(cfg, client_processes=2))
    assert (two["completed"], two["failed"]) == (24, 0)
    assert w.worker.stats.paths == {"/v1/completions": 48}
    assert two["prompt_tokens_total"] == one["prompt_tokens_total"]
    assert two["completion_tokens_total"] == one["completion_tokens_total"] == 96
    assert two["itl_ms"]["p50"] is not None and two["config"]["client_processes"] == 2


def test_unknown_endpoint_is_refused() -> None:
    with pytest.raises(SystemExit):
        bench_serving.build_parser().parse_args(["--endpoint", "/v2/x"])


def test_random_dataset_prompts_are_distinct() -> None:
    cfg = BenchConfig(base_url="http://unused", dataset="random", num_prompts=300, random_input_len=40)
    prompts = make_prompts(cfg)
    assert all(len(p.user.split()) == 40 and p.system is None for p in prompts)
    assert len({tuple(p.user.split()[:32]) for p in prompts}) == 300
    assert make_prompts(cfg) == prompts  # seeded


def test_sharegpt_dataset_has_per_request_lengths() -> None:
    from benchmarks.workloads import sharegpt_lengths

    cfg = BenchConfig(base_url="http://unused", dataset="sharegpt", num_prompts=50, seed=5)
    prompts = make_prompts(cfg)
    lengths = sharegpt_lengths(50, 5)
    assert [(len(p.user.split()), p.output_len) for p in prompts] == lengths
    bodies = [bench_serving._request_body(cfg, "m", p) for p in prompts]
    assert [b["max_tokens"] for b in bodies] == [o for _, o in lengths]
    assert len({b["max_tokens"] for b in bodies}) > 10  # not the one --output-len of other datasets
    # A random run of the same seed on the same server must not hold these prompts' prefixes.
    randoms = make_prompts(dataclasses.replace(cfg, dataset="random", random_input_len=40))
    assert {p.user.split()[0] for p in prompts[:3]} != {p.user.split()[0] for p in randoms[:3]}
    assert not {tuple(p.user.split()[:4]) for p in prompts} & {tuple(p.user.split()[:4]) for p in randoms}


async def test_cached_token_guard_fails_a_repeated_random_workload(fake_workers: MakeFakeWorkers) -> None:
    """The same random prompts sent twice: the second run is served from the (fake) prefix cache."""
    (w,) = await fake_workers(1)
    cfg = BenchConfig(base_url=w.url, endpoint="/v1/completions", dataset="random", num_prompts=16,
                      random_input_len=40, output_len=2, disable_tqdm=True)
    first = await run_benchmark(cfg)
    assert first["cache_guard"]["passed"] is True and first["cache_guard"]["cached_fraction"] < 0.01
    second = await run_benchmark(cfg)
    assert second["cache_guard"]["passed"] is False and "'random'" in second["cache_guard"]["error"]
    assert bench_serving.guard_failed(second) and not bench_serving.guard_failed(first)
    # The shared-prefix workload is about sharing: a high hit rate passes.
    shared = await run_benchmark(dataclasses.replace(SHARED, base_url=w.url))
    assert shared["cache_hit_rate"] > 0.5 and shared["cache_guard"]["passed"] is True


async def test_several_request_rates_in_one_invocation(fake_workers: MakeFakeWorkers) -> None:
    (w,) = await fake_workers(1)
    cfg = BenchConfig(base_url=w.url, endpoint="/v1/completions", dataset="sharegpt", num_prompts=12,
                      output_len=4, disable_tqdm=True)
    result = await bench_serving.run_rates(cfg, bench_serving.parse_rates("400,inf"), command="test")
    assert [r["config"]["request_rate"] for r in result["runs"]] == [400.0, None]
    assert result["request_rates"] == [400.0, None] and result["failed"] == 0
    # Each run draws its own prompts, so the second is not served from the first one's cache.
    assert [r["config"]["seed"] for r in result["runs"]] == [0, bench_serving.RUN_SEED_STRIDE]
    assert not bench_serving.guard_failed(result)
    assert all(r["completed"] == 12 for r in result["runs"])
    with pytest.raises(argparse.ArgumentTypeError):
        bench_serving.parse_rates("4,0")


async def test_token_id_prompts_have_exact_lengths(fake_workers: MakeFakeWorkers) -> None:
    (w,) = await fake_workers(1)
    cfg = BenchConfig(base_url=w.url, endpoint="/v1/completions", dataset="random", num_prompts=10,
                      random_input_len=48, output_len=3, token_ids=True, vocab_lo=100, vocab_hi=5000,
                      stream=False, disable_tqdm=True)
    prompts = make_prompts(cfg)
    assert all(p.ids is not None and len(p.ids) == 48 and all(100 <= t < 5000 for t in p.ids) for p in prompts)
    result = await run_benchmark(cfg)
    assert result["prompt_tokens_total"] == 10 * 48 and result["cache_guard"]["passed"] is True
    sharegpt = make_prompts(dataclasses.replace(cfg, dataset="sharegpt"))
    assert all(p.ids is not None and p.output_len is not None for p in sharegpt)
    with pytest.raises(ValueError, match="completions"):
        await run_benchmark(dataclasses.replace(cfg, endpoint="/v1/chat/completions"))


async def test_itl_per_token_spreads_a_chunk_over_its_tokens() -> None:
    """A chunk that carries several tokens (text held back for an incomplete character) counts as
    one gap in itl_ms and as that gap split over its tokens in itl_per_token_ms."""
    import asyncio

    import aiohttp
    from aiohttp import web

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for text, tokens in (("a", 1), ("b", 2), ("cde", 5)):
            body = {"choices": [{"index": 0, "text": text}],
                    "usage": {"prompt_tokens": 4, "completion_tokens": tokens, "total_tokens": 4 + tokens}}
            await resp.write(f"data: {json.dumps(body)}\n\n".encode())
            await asyncio.sleep(0.06)
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/completions", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session:
            res = await bench_serving.send_request(session, f"http://127.0.0.1:{port}/v1/completions", {}, True, 4)
    finally:
        await runner.cleanup()
    assert res.ok and res.completion_tokens == 5 and len(res.itl_s) == 2
    assert len(res.itl_token_s) == 4 and (res.multi_token_chunks, res.text_chunks) == (1, 2)
    assert res.itl_token_s[0] == res.itl_s[0]
    assert res.itl_token_s[1:] == [res.itl_s[1] / 3] * 3
    summary = bench_serving.summarize(BenchConfig(base_url="x"), [res], 1.0)
    assert summary["multi_token_chunk_fraction"] == 0.5
    # Spreading keeps the stream's total time: the per-token gaps add up to the chunk gaps.
    assert sum(res.itl_token_s) == pytest.approx(sum(res.itl_s))
    assert summary["itl_per_token_ms"]["p50"] < summary["itl_ms"]["p50"]
