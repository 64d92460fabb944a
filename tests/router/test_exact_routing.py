"""Routing on cache events end to end: routers in front of fake engines that publish events.

Two router replicas fed the same streams choose alike; exact matching beats the approximate
tree on a multi-tenant trace with tiny caches (hits counted by the engines' own cache models);
the router tokenizes text and chat prompts as the server does."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from radixserve.cache_events.protocol import EngineLoad, prefix_block_hashes
from radixserve.router.app import RunningRouter
from radixserve.router.event_stream import EventStreamConfig
from radixserve.router.kv_index import EventsState, KvIndex
from radixserve.router.policies import CacheAwareConfig, CacheAwarePolicy, Decision
from radixserve.router.proxy import WORKER_HEADER
from radixserve.router.request_text import routing_text
from radixserve.router.tokenize import PromptTokenizer, RoutedPrompt, tokenizer_source_of
from radixserve.router.workers import Worker, WorkerSource, WorkerState
from radixserve.testing.fake_cache_engine import (
    FakeCacheConfig,
    FakeCacheEngine,
    TokenizeBody,
    start_fake_cache_engine,
)
from tests.conftest import tokenizer_source
from tests.router.conftest import MakeRouter, wait_until

FAST = EventStreamConfig(backoff_initial_s=0.02, backoff_max_s=0.1, recheck_s=0.2)
Engines = Callable[..., Awaitable[list[FakeCacheEngine]]]


@pytest.fixture
async def engines() -> AsyncIterator[Engines]:
    runners: list[web.AppRunner] = []

    async def make(n: int, tokenize: TokenizeBody | None = None, **config: Any) -> list[FakeCacheEngine]:
        out = []
        for _ in range(n):
            engine, runner, port = await start_fake_cache_engine(FakeCacheConfig(**config), tokenize)
            engine.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
            runners.append(runner)
            out.append(engine)
        return out

    yield make
    for runner in runners:
        await runner.cleanup()


def _url(e: FakeCacheEngine) -> str:
    return e.url  # type: ignore[attr-defined,no-any-return]


def in_step(router: RunningRouter, engines: list[FakeCacheEngine]) -> bool:
    index = router.router.kv_index
    assert index is not None
    for e in engines:
        idx = index.get(_url(e))
        if idx is None or not idx.live or idx.epoch != e.epoch or idx.seq != e.seq:
            return False
    return True


def tenant_trace(seed: int, n: int, tenants: int) -> list[list[int]]:
    """Prompts of tenants sharing a preamble: 32 common tokens (2 blocks), 48 of the tenant's
    own (3 blocks), a 16-token question (1 block): each shares a third with every other."""
    rng = random.Random(seed)
    preamble = [1] * 32
    own = [[10 + t] * 48 for t in range(tenants)]
    return [preamble + own[rng.randrange(tenants)] + [rng.randrange(10_000) for _ in range(16)] for _ in range(n)]


async def _generate(http: aiohttp.ClientSession, router: RunningRouter, ids: list[int]) -> str:
    async with http.post(router.url + "/generate", json={"input_ids": ids, "sampling_params": {"max_new_tokens": 1}}) as r:
        assert r.status == 200, await r.text()
        return r.headers[WORKER_HEADER]


async def test_two_router_replicas_make_the_same_choices(engines: Engines, make_router: MakeRouter,
                                                         http: aiohttp.ClientSession) -> None:
    es = await engines(3, cache_blocks=14)
    urls = [_url(e) for e in es]
    a = await make_router(worker_urls=urls, events=FAST)
    b = await make_router(worker_urls=list(reversed(urls)), events=FAST)  # order of discovery differs
    chosen: list[str] = []
    for i, ids in enumerate(tenant_trace(1, 40, tenants=6)):
        await wait_until(lambda: in_step(a, es) and in_step(b, es), 5, what="both routers in step")
        via, other = (a, b) if i % 2 == 0 else (b, a)
        body = {"input_ids": ids}
        predicted = other.router.policy.select(other.router.workers.healthy, routing_text("/generate", body),
                                               RoutedPrompt("/generate", body, None))
        assert predicted.matched_tokens is not None  # decided on events, not the tree
        served_by = await _generate(http, via, ids)
        assert served_by == predicted.worker.url, f"request {i}: replicas disagree"
        chosen.append(served_by)
    assert len(set(chosen)) == 3  # and the tenants were spread, not piled onto one replica
    async with http.get(a.url + "/workers") as r:
        info = {w["url"]: w["cache_events"] for w in (await r.json())["workers"]}
    for e in es:
        assert info[_url(e)]["state"] == "live" and info[_url(e)]["seq"] == e.seq
        assert info[_url(e)]["blocks_indexed"] == len(e.cache_hashes())
    async with http.get(a.url + "/metrics") as r:
        metrics = await r.text()
    assert "radixserve_router_cache_events_applied_total" in metrics
    # a routed 20 requests and predicted 20 for b: 40 exact choices observed
    assert "radixserve_router_cache_match_tokens_count 40.0" in metrics


async def _cached_fraction(engines: list[FakeCacheEngine], router: RunningRouter, http: aiohttp.ClientSession,
                           trace: list[list[int]], exact: bool) -> float:
    for ids in trace:
        if exact:  # what the events say, not a race with them
            await wait_until(lambda: in_step(router, engines), 5, what="router in step")
        await _generate(http, router, ids)
    return sum(e.hit_tokens for e in engines) / sum(e.prompt_token_total for e in engines)


async def test_exact_routing_beats_the_approximate_tree_with_tiny_caches(
        engines: Engines, make_router: MakeRouter, http: aiohttp.ClientSession) -> None:
    trace = tenant_trace(2, 80, tenants=6)
    exact_engines = await engines(2, cache_blocks=16)
    tree_engines = await engines(2, cache_blocks=16)
    exact = await make_router(worker_urls=[_url(e) for e in exact_engines], events=FAST)
    tree = await make_router(worker_urls=[_url(e) for e in tree_engines], cache_events=False)
    exact_frac = await _cached_fraction(exact_engines, exact, http, trace, exact=True)
    tree_frac = await _cached_fraction(tree_engines, tree, http, trace, exact=False)
    print(f"cached prompt tokens: exact {exact_frac:.1%}, tree {tree_frac:.1%}")
    assert exact_frac > tree_frac + 0.1


@pytest.fixture(scope="module")
def prompt_tokenizer() -> PromptTokenizer:
    return PromptTokenizer.load(str(tokenizer_source()))  # what `--tokenizer PATH` loads


def test_router_tokenizes_like_the_server(prompt_tokenizer: PromptTokenizer) -> None:
    from radixserve.managers.request_builder import RequestBuilder
    from radixserve.server.protocol import ChatCompletionRequest
    from radixserve.server.tool_calls import ToolPlan, template_messages

    tok = prompt_tokenizer.tokenizer
    server = RequestBuilder(tok, "m", 2048, len(tok))
    text = "Once upon a time, in a land far away,"
    assert prompt_tokenizer("/v1/completions", {"prompt": text}) == server.tokenize(text)
    assert prompt_tokenizer("/generate", {"text": [text, "other"]}) == server.tokenize(text)
    assert prompt_tokenizer("/generate", {"input_ids": [[5, 6, 7]]}) == [5, 6, 7]
    body: dict[str, Any] = {"messages": [{"role": "developer", "content": "Be brief."},
                         {"role": "user", "content": [{"type": "text", "text": "Capital "},
                                                      {"type": "text", "text": "of France?"}]}]}
    req = ChatCompletionRequest(**body)
    _, ids = server.apply_chat_template(template_messages(req, ToolPlan(), tok.chat_template))
    assert prompt_tokenizer("/v1/chat/completions", body) == ids
    assert prompt_tokenizer("/v1/chat/completions", {"messages": "not a list"}) is None


def test_router_loads_its_tokenizer_without_torch(prompt_tokenizer: PromptTokenizer) -> None:
    """Importing torch (a second of the GIL, ~300 MB) while the router relayed requests halved its
    throughput for the first seconds after it found the workers' tokenizer (docs/router.md)."""
    import subprocess
    import sys

    # The fixture built the GGUF's tokenizer cache; from there the router needs no torch.
    code = ("import sys; from radixserve.router.tokenize import PromptTokenizer; "
            f"t = PromptTokenizer.load({str(tokenizer_source())!r}); "
            "print(t('/v1/chat/completions', {'messages': [{'role': 'user', 'content': 'hi'}]})); "
            "print(sorted(m for m in ('torch', 'radixserve.managers.tokenizer_manager') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    ids, loaded = out.stdout.strip().splitlines()[-2:]
    assert loaded == "[]", out.stderr[-2000:]
    assert ids == str(prompt_tokenizer("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}))


def test_tokenizer_source_of_a_worker(tmp_path: Path) -> None:
    assert tokenizer_source_of({"model_path": None, "tokenizer_path": None}) == str(tokenizer_source())
    assert tokenizer_source_of({"model_path": str(tmp_path), "tokenizer_path": None}) == str(tmp_path)
    assert tokenizer_source_of({"model_path": "/elsewhere/model.gguf"}) is None  # another machine's path
    assert tokenizer_source_of({"object": "list"}) is None  # not a radixserve server


async def test_chat_requests_route_exactly_with_the_workers_tokenizer(
        prompt_tokenizer: PromptTokenizer, engines: Engines, make_router: MakeRouter,
        http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[str] = []

    def load(source: str) -> PromptTokenizer:  # the module's tokenizer, already loaded from there
        loaded.append(source)
        return prompt_tokenizer

    monkeypatch.setattr(PromptTokenizer, "load", staticmethod(load))
    es = await engines(2, tokenize=prompt_tokenizer, cache_blocks=256, model_path=None)  # the embedded model
    router = await make_router(worker_urls=[_url(e) for e in es], events=FAST)  # --tokenizer auto
    await wait_until(lambda: router.router.proxy.prompt_tokenizer is not None, 5, what="tokenizer found")
    assert loaded == [str(tokenizer_source())]
    async with http.get(router.url + "/metrics") as r:  # what bench_router.py waits for
        assert "radixserve_router_prompt_tokenizer_loaded 1.0" in await r.text()
    # ~5 KB, ~700 tokens: long enough to be tokenized on the tokenizer's thread (LONG_PROMPT_BYTES)
    system = {"role": "system", "content": "You answer questions about geography in one short sentence. " * 80}
    offloaded = prompt_tokenizer.offloaded
    served = []
    for q in ("Capital of France?", "Capital of Peru?", "Longest river?"):
        await wait_until(lambda: in_step(router, es), 5, what="router in step")
        body = {"messages": [system, {"role": "user", "content": q}], "max_tokens": 1}
        async with http.post(router.url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200
            served.append(r.headers[WORKER_HEADER])
    assert served[1] == served[2] == served[0]  # the shared system prompt's blocks pull them together
    hit = next(e for e in es if _url(e) == served[0])
    assert hit.hit_tokens >= 2 * 640  # the engine really had the system prompt cached (40+ blocks each)
    assert router.router.policy.exact_choices == 3  # type: ignore[attr-defined]
    assert prompt_tokenizer.offloaded - offloaded == 3


def _live_policy(n: int, **config: Any) -> tuple[CacheAwarePolicy, list[Worker], KvIndex]:
    index = KvIndex()
    ws = [Worker(f"http://w{i}", WorkerSource.STATIC, WorkerState.HEALTHY) for i in range(n)]
    for w in ws:
        idx = index.worker(w.url)
        idx.set_state(EventsState.LIVE)
        idx.block_tokens = 16
    return CacheAwarePolicy(CacheAwareConfig(**config), index=index), ws, index


def _report(index: KvIndex, url: str, running: int = 0, kv: float = 0.0, tokens: list[int] | None = None) -> None:
    idx = index.worker(url)
    idx.load = EngineLoad(waiting=0, running=running, kv_usage=kv, cached_tokens=0, max_running=8)
    if tokens is not None:
        idx.blocks.update({h: 0 for h in prefix_block_hashes(tokens)})


def _prompt(tokens: list[int]) -> RoutedPrompt:
    return RoutedPrompt("/generate", {"input_ids": tokens}, None)


def test_exact_policy_weighs_the_match_against_engine_load() -> None:
    tokens = list(range(64))
    policy, ws, index = _live_policy(2, balance_abs_threshold=4, balance_rel_threshold=1.5)
    _report(index, "http://w0", running=4, kv=0.9, tokens=tokens)  # 4 - 0 is not > 4: affinity
    _report(index, "http://w1", running=0, kv=0.8)
    hit = policy.select(ws, None, _prompt(tokens))
    assert (hit.worker.url, hit.decision, hit.matched_tokens) == ("http://w0", Decision.CACHE_HIT, 64)
    _report(index, "http://w0", running=5, kv=0.9)  # 5 - 0 > 4 and 5 > 0 * 1.5: the engine is busy
    assert policy.select(ws, None, _prompt(tokens)).decision is Decision.BALANCE
    _report(index, "http://w0", running=0, kv=0.9)
    ws[0].outstanding = 9  # a burst the engine has not reported yet counts too
    assert policy.select(ws, None, _prompt(tokens)).worker.url == "http://w1"
    ws[0].outstanding = 0
    _report(index, "http://w1", kv=0.2)  # 0.9 vs 0.2: one cache far emptier
    own = policy.select(ws, None, _prompt(tokens))  # a strong hit (its whole prompt) stays with its cache
    assert (own.worker.url, own.decision) == ("http://w0", Decision.CACHE_HIT)
    shared_half = tokens[:32] + list(range(1000, 1032))  # a weak hit: only a shared first half is cached
    kv_choice = policy.select(ws, None, _prompt(shared_half))
    assert (kv_choice.worker.url, kv_choice.decision) == ("http://w1", Decision.BALANCE)


def test_exact_policy_is_deterministic_and_spreads_new_prefixes() -> None:
    policy, ws, index = _live_policy(3)
    for w in ws:
        _report(index, w.url, kv=0.5)
    picks = {}
    for p in range(30):
        tokens = [p] * 48
        first = policy.select(ws, None, _prompt(tokens)).worker.url
        assert policy.select(list(reversed(ws)), None, _prompt(tokens)).worker.url == first  # order-free
        picks[p] = first
    assert len(set(picks.values())) == 3  # rendezvous ties spread distinct prefixes


def test_workers_without_events_are_matched_by_their_tree() -> None:
    policy, ws, index = _live_policy(2)
    index.worker("http://w1").set_state(EventsState.NONE)
    text = "a long shared system prompt, then the question"
    policy.tree(ws[1]).insert(text)
    choice = policy.select(ws, text, _prompt(list(range(40))))
    assert (choice.worker.url, choice.decision, choice.matched_tokens) == ("http://w1", Decision.CACHE_HIT, None)
