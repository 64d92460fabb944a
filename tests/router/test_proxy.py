"""The router's HTTP surface against in-process fake workers."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict

import aiohttp

from radixserve.router.proxy import WORKER_HEADER
from radixserve.router.workers import WorkerState
from radixserve.testing.fake_worker import WORKER_ID_HEADER

from .conftest import MakeFakeWorkers, MakeRouter, free_port, wait_until


def assert_openai_error(payload: dict[str, object], code: int) -> None:
    err = payload["error"]
    assert isinstance(err, dict)
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code and isinstance(err["message"], str) and err["message"]


async def test_non_streaming_completion_and_models(fake_workers: MakeFakeWorkers, make_router: MakeRouter,
                                                   http: aiohttp.ClientSession) -> None:
    ws = await fake_workers(2)
    running = await make_router(worker_urls=[w.url for w in ws])
    async with http.post(running.url + "/v1/completions", json={"prompt": "one two", "max_tokens": 3}) as r:
        assert r.status == 200
        body = await r.json()
        assert r.headers[WORKER_HEADER] in {w.url for w in ws}
        assert r.headers[WORKER_ID_HEADER].startswith("fake-")
    assert body["choices"][0]["text"] == " w0 w1 w2"
    assert body["usage"]["prompt_tokens"] == 2
    async with http.get(running.url + "/v1/models") as r:
        assert r.status == 200 and (await r.json())["data"][0]["id"] == "fake-model"
    async with http.post(running.url + "/generate", json={"text": "a b", "sampling_params": {"max_new_tokens": 2}}) as r:
        assert r.status == 200 and (await r.json())["text"] == " w0 w1"


async def test_streaming_is_relayed_chunk_by_chunk(fake_workers: MakeFakeWorkers, make_router: MakeRouter,
                                                   http: aiohttp.ClientSession) -> None:
    (w,) = await fake_workers(1, token_delay=0.15)
    running = await make_router(worker_urls=[w.url])
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": True}
    start = time.perf_counter()
    arrivals: list[float] = []
    data = b""
    async with http.post(running.url + "/v1/chat/completions", json=body) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        while chunk := await r.content.readany():
            arrivals.append(time.perf_counter() - start)
            data += chunk
    total = arrivals[-1]
    assert total >= 0.55  # the worker takes 4 x 0.15 s
    # The first token reached the client long before the worker finished: no buffering.
    assert arrivals[0] < total - 0.4
    assert len(arrivals) >= 4
    events = [line[6:] for line in data.decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1]) == " w0 w1 w2 w3 w4"


async def test_cache_aware_keeps_each_prefix_on_one_worker(fake_workers: MakeFakeWorkers,
                                                           make_router: MakeRouter,
                                                           http: aiohttp.ClientSession) -> None:
    ws = await fake_workers(3)
    running = await make_router(worker_urls=[w.url for w in ws], policy="cache_aware")
    served: dict[int, set[str]] = defaultdict(set)
    for i in range(18):
        group = i % 3
        system = f"system prompt number {group} " + "lorem ipsum " * 30
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": f"question {i}"}]
        async with http.post(running.url + "/v1/chat/completions", json={"messages": msgs, "max_tokens": 1}) as r:
            assert r.status == 200
            served[group].add(r.headers[WORKER_HEADER])
    assert all(len(urls) == 1 for urls in served.values()), served
    assert len(set().union(*served.values())) == 3  # new prefixes went to the emptiest trees
    decisions = running.router.metrics.decisions
    assert decisions["cache_hit"] == 15 and decisions["cache_miss"] == 3


async def test_no_healthy_worker_gives_503_and_health_reflects_it(make_router: MakeRouter,
                                                                  http: aiohttp.ClientSession) -> None:
    running = await make_router()
    async with http.post(running.url + "/v1/completions", json={"prompt": "x"}) as r:
        assert r.status == 503
        assert_openai_error(await r.json(), 503)
    async with http.get(running.url + "/health") as r:
        assert r.status == 503
    async with http.get(running.url + "/liveness") as r:
        assert r.status == 200


async def test_api_key_is_required_and_passed_to_workers(fake_workers: MakeFakeWorkers,
                                                         make_router: MakeRouter, http: aiohttp.ClientSession) -> None:
    (w,) = await fake_workers(1, api_key="s3cret")
    running = await make_router(worker_urls=[w.url], api_key="s3cret")
    url = running.url + "/v1/completions"
    async with http.post(url, json={"prompt": "x"}) as r:
        assert r.status == 401
        assert_openai_error(await r.json(), 401)
    async with http.post(url, json={"prompt": "x"}, headers={"Authorization": "Bearer wrong"}) as r:
        assert r.status == 401
    async with http.post(url, json={"prompt": "x"}, headers={"Authorization": "Bearer s3cret"}) as r:
        assert r.status == 200  # the fake worker itself checks the bearer the router sends
    async with http.get(running.url + "/workers") as r:
        assert r.status == 401
    for open_path in ("/health", "/liveness", "/metrics"):
        async with http.get(running.url + open_path) as r:
            assert r.status == 200, open_path


async def test_bad_requests_get_openai_errors(fake_workers: MakeFakeWorkers, make_router: MakeRouter,
                                              http: aiohttp.ClientSession) -> None:
    (w,) = await fake_workers(1)
    running = await make_router(worker_urls=[w.url], max_payload_bytes=2000)
    cases = [
        ("POST", "/v1/completions", b"{not json", 400),
        ("POST", "/v1/chat/completions", b"[1, 2]", 400),
        ("POST", "/v1/completions", json.dumps({"prompt": "x" * 5000}).encode(), 413),
        ("GET", "/v1/completions", b"", 405),
        ("GET", "/no/such/route", b"", 404),
    ]
    for method, path, data, status in cases:
        async with http.request(method, running.url + path, data=data,
                                headers={"Content-Type": "application/json"}) as r:
            assert r.status == status, (method, path)
            assert_openai_error(await r.json(), status)
    assert w.worker.stats.requests == 0  # none of them reached the worker


async def test_add_and_remove_workers_at_run_time(fake_workers: MakeFakeWorkers, make_router: MakeRouter,
                                                  http: aiohttp.ClientSession) -> None:
    ws = await fake_workers(2)
    running = await make_router()
    for w in ws:
        async with http.post(running.url + "/add_worker", params={"url": w.url}) as r:
            assert r.status == 200 and (await r.json())["added"] is True
    async with http.post(running.url + "/add_worker", json={"url": ws[0].url + "/"}) as r:
        assert (await r.json())["added"] is False  # same worker, normalized URL
    async with http.post(running.url + "/add_worker", params={"url": "ftp://x"}) as r:
        assert r.status == 400
    await wait_until(lambda: len(running.router.workers.healthy) == 2, what="added workers healthy")
    async with http.post(running.url + "/v1/completions", json={"prompt": "hello", "max_tokens": 1}) as r:
        served = r.headers[WORKER_HEADER]
    async with http.get(running.url + "/workers") as r:
        listing = {w["url"]: w for w in (await r.json())["workers"]}
    assert set(listing) == {w.url for w in ws}
    assert listing[served]["state"] == "healthy" and listing[served]["requests_total"] == 1
    assert listing[served]["outstanding_requests"] == 0 and listing[served]["tree_size_chars"] == len("hello")
    async with http.post(running.url + "/remove_worker", params={"url": served}) as r:
        assert r.status == 200
    async with http.post(running.url + "/remove_worker", params={"url": served}) as r:
        assert r.status == 404
    assert served not in running.router.policy.tree_sizes()
    for _ in range(4):
        async with http.post(running.url + "/v1/completions", json={"prompt": "hello", "max_tokens": 1}) as r:
            assert r.headers[WORKER_HEADER] != served


async def test_health_checks_eject_and_readmit(fake_workers: MakeFakeWorkers, make_router: MakeRouter,
                                               http: aiohttp.ClientSession) -> None:
    ws = await fake_workers(2)
    running = await make_router(worker_urls=[w.url for w in ws], policy="round_robin")
    ws[0].worker.healthy = False
    sick = running.router.workers.get(ws[0].url)
    assert sick is not None
    await wait_until(lambda: sick.state is WorkerState.UNHEALTHY, 5, what="ejection")
    served: Counter[str] = Counter()
    for _ in range(6):
        async with http.post(running.url + "/v1/completions", json={"prompt": "p", "max_tokens": 1}) as r:
            served[r.headers[WORKER_HEADER]] += 1
    assert served == {ws[1].url: 6}
    ws[0].worker.healthy = True
    await wait_until(lambda: sick.state is WorkerState.HEALTHY, 5, what="re-admission")
    for _ in range(4):
        async with http.post(running.url + "/v1/completions", json={"prompt": "p", "max_tokens": 1}) as r:
            served[r.headers[WORKER_HEADER]] += 1
    assert served[ws[0].url] == 2


async def test_connection_failure_is_retried_on_another_worker(fake_workers: MakeFakeWorkers,
                                                               make_router: MakeRouter,
                                                               http: aiohttp.ClientSession) -> None:
    (good,) = await fake_workers(1)
    dead_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    running = await make_router(worker_urls=[dead_url, good.url], policy="round_robin", wait_healthy=False,
                                health_check_interval_s=60)
    registry = running.router.workers
    dead = registry.get(dead_url)
    assert dead is not None
    await wait_until(lambda: dead.state is WorkerState.UNHEALTHY and len(registry.healthy) == 1,
                     what="first health checks")
    for _ in range(registry.success_threshold):  # pretend the dead worker looked healthy
        registry.record_success(dead)
    assert len(registry.healthy) == 2
    for _ in range(4):
        async with http.post(running.url + "/v1/completions", json={"prompt": "p", "max_tokens": 1}) as r:
            assert r.status == 200 and r.headers[WORKER_HEADER] == good.url
    assert running.router.metrics.retries == 1  # the first failure ejected it at once
    assert dead.state is WorkerState.UNHEALTHY and dead.outstanding == 0


async def test_client_disconnect_reaches_the_worker(fake_workers: MakeFakeWorkers, make_router: MakeRouter,
                                                    http: aiohttp.ClientSession) -> None:
    (w,) = await fake_workers(1, token_delay=0.1)
    running = await make_router(worker_urls=[w.url])
    body = {"prompt": "long one", "max_tokens": 200, "stream": True}
    async with aiohttp.ClientSession() as client:
        resp = await client.post(running.url + "/v1/completions", json=body)
        assert (await resp.content.readany()).startswith(b"data: ")
        resp.close()  # hang up mid-stream
    await wait_until(lambda: w.worker.stats.disconnects == 1, 5, what="worker to see the disconnect (stream)")
    # Non-streaming: the router is waiting for the whole answer when the client leaves.
    client = aiohttp.ClientSession()
    task = asyncio.create_task(client.post(running.url + "/v1/completions", json={"prompt": "x", "max_tokens": 100}))
    await wait_until(lambda: w.worker.stats.active == 1, 5, what="request to reach the worker")
    task.cancel()
    await client.close()
    await wait_until(lambda: w.worker.stats.disconnects == 2, 5, what="worker to see the disconnect (blocking)")
    worker = running.router.workers.get(w.url)
    assert worker is not None
    await wait_until(lambda: worker.outstanding == 0, 5, what="router load back to zero")
    assert w.worker.stats.active == 0


async def test_metrics_expose_workers_trees_and_decisions(fake_workers: MakeFakeWorkers,
                                                          make_router: MakeRouter, http: aiohttp.ClientSession) -> None:
    ws = await fake_workers(2)
    running = await make_router(worker_urls=[w.url for w in ws])
    for _ in range(3):
        async with http.post(running.url + "/v1/completions", json={"prompt": "same prompt", "max_tokens": 1}) as r:
            served = r.headers[WORKER_HEADER]
    async with http.get(running.url + "/metrics") as r:
        assert r.status == 200
        text = await r.text()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples[f'radixserve_router_worker_requests_total{{worker="{served}"}}'] == 3
    assert samples[f'radixserve_router_tree_size_chars{{worker="{served}"}}'] == len("same prompt")
    assert samples[f'radixserve_router_worker_outstanding_requests{{worker="{served}"}}'] == 0
    assert samples['radixserve_router_routing_decisions_total{decision="cache_hit",policy="cache_aware"}'] == 2
    assert samples['radixserve_router_routing_decisions_total{decision="cache_miss",policy="cache_aware"}'] == 1
    assert samples["radixserve_router_healthy_workers"] == 2
    assert samples['radixserve_router_request_duration_seconds_count{route="/v1/completions"}'] == 3
