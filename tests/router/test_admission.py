"""Per-key rate limits, concurrency caps and priority (radixserve/router/admission.py)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from radixserve.router.admission import (
    ANONYMOUS,
    AdmissionConfig,
    Limits,
    Tenant,
    TokenBucket,
    identity_of,
    load_tenants,
)
from radixserve.router.cli import build_parser, config_from_args, main
from radixserve.testing.fake_worker import FakeWorker, FakeWorkerConfig

from .conftest import MakeFakeWorkers, MakeRouter, wait_until


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


COMPLETION = {"prompt": "hello there", "max_tokens": 2}


def test_token_bucket_refill_math() -> None:
    bucket = TokenBucket(rate=4.0, capacity=2.0, tokens=2.0, stamp=0.0)
    assert bucket.take(0.0) == 0.0 and bucket.take(0.0) == 0.0  # the burst
    assert bucket.take(0.0) == pytest.approx(0.25)  # one token takes 1/rate
    assert bucket.take(0.1) == pytest.approx(0.15)  # 0.4 tokens refilled, 0.6 missing
    assert bucket.take(0.25) == 0.0  # exactly one token by now
    assert not bucket.full(0.5)
    assert bucket.full(0.75)  # 2 tokens after 0.5 s more
    assert bucket.take(10.0) == 0.0 and bucket.tokens == pytest.approx(1.0)  # capped at capacity, minus one


def test_identity_hashes_the_bearer_token() -> None:
    assert identity_of("Bearer sk-abc") == sha("sk-abc") == identity_of("bearer  sk-abc")
    assert identity_of(None) == identity_of("") == identity_of("Basic eDp5") == identity_of("Bearer ") == ANONYMOUS


def test_tenants_file(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(f"""
sk-plain: {{name: team-a, rps: 50, max_concurrent: 8, priority: 10}}
"sha256:{sha('sk-hashed')}": {{burst: 3}}
anonymous: {{rps: 0.5, priority: -1}}
""")
    default = Limits(rps=5.0, burst=10, max_concurrent=2, priority=None)
    tenants = load_tenants(path, default)
    # rps set without burst: the bucket is ceil(rps) (the default's burst belongs to its rps)
    assert tenants[sha("sk-plain")] == Tenant("team-a", Limits(rps=50.0, burst=None, max_concurrent=8, priority=10))
    assert tenants[sha("sk-plain")].limits.bucket_size == 50
    assert tenants[sha("sk-hashed")] == Tenant(f"key-{sha('sk-hashed')[:12]}",
                                               Limits(rps=5.0, burst=3, max_concurrent=2, priority=None))
    assert tenants[ANONYMOUS] == Tenant(ANONYMOUS, Limits(rps=0.5, burst=None, max_concurrent=2, priority=-1))

    for text, problem in [("k: {rps: -1}", "rps"), ("k: {color: red}", "color"), ("- a\n- b", "mapping"),
                          ("k: {rps: 1}\nk2: {priority: high}", "entry 2: priority"),
                          (f"k: {{}}\n'sha256:{sha('k')}': {{}}", "listed twice")]:
        path.write_text(text)
        with pytest.raises(ValueError, match=problem) as info:
            load_tenants(path, default)
        assert "k2:" not in str(info.value)  # keys are secrets: errors name entries by position


def test_flags_map_to_the_admission_config(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("sk-1: {priority: 3}\n")
    args = build_parser().parse_args(["--rate-limit", "2", "--rate-limit-burst", "4", "--max-concurrent-per-key", "3",
                                      "--default-priority", "1", "--tenants-file", str(path)])
    admission = config_from_args(args).admission
    assert admission.default == Limits(rps=2.0, burst=4, max_concurrent=3, priority=1)
    assert admission.tenants[sha("sk-1")].limits == Limits(rps=2.0, burst=4, max_concurrent=3, priority=3)
    path.write_text("sk-1: {rps: 0}\n")
    for bad in (["--tenants-file", str(path)], ["--rate-limit", "0"], ["--max-concurrent-per-key", "0"]):
        with pytest.raises(SystemExit):
            main(bad)


async def test_rate_limit_answers_429_with_retry_after(fake_workers: MakeFakeWorkers, make_router: MakeRouter,
                                                       http: aiohttp.ClientSession) -> None:
    (w,) = await fake_workers(1)
    # 0.5 requests/s, burst 2: the third request in a row waits ~2 s for a token.
    running = await make_router(worker_urls=[w.url], admission=AdmissionConfig(default=Limits(rps=0.5, burst=2)))
    url = running.url + "/v1/completions"
    for _ in range(2):
        async with http.post(url, json=COMPLETION, headers=bearer("sk-a")) as r:
            assert r.status == 200
    async with http.post(url, json=COMPLETION, headers=bearer("sk-a")) as r:
        assert r.status == 429
        assert r.headers["Retry-After"] == "2"
        err = (await r.json())["error"]
    assert err["type"] == "requests" and err["code"] == "rate_limit_exceeded" and err["param"] is None
    assert "0.5 requests/s" in err["message"] and "sk-a" not in err["message"]
    # Another key has its own bucket; so do anonymous clients.
    async with http.post(url, json=COMPLETION, headers=bearer("sk-b")) as r:
        assert r.status == 200
    async with http.post(url, json=COMPLETION) as r:
        assert r.status == 200
    assert w.worker.stats.requests == 4  # the refused request never reached the worker
    async with http.get(running.url + "/metrics") as r:
        text = await r.text()
    assert f'radixserve_router_rate_limited_requests_total{{reason="rate",tenant="key-{sha("sk-a")[:12]}"}} 1.0' in text
    assert "sk-a" not in text


async def test_concurrency_cap_per_key(fake_workers: MakeFakeWorkers, make_router: MakeRouter,
                                       http: aiohttp.ClientSession) -> None:
    (w,) = await fake_workers(1, token_delay=0.03)
    tenants = {sha("sk-team"): Tenant("team", Limits(max_concurrent=1))}
    running = await make_router(worker_urls=[w.url], admission=AdmissionConfig(tenants=tenants))
    url = running.url + "/v1/chat/completions"
    stream = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "stream": True}
    async with http.post(url, json=stream, headers=bearer("sk-team")) as first:
        assert first.status == 200
        await first.content.readline()  # the stream is under way: one request in flight
        async with http.post(url, json=COMPLETION, headers=bearer("sk-team")) as r:
            assert r.status == 429 and r.headers["Retry-After"] == "1"
            assert "at most 1 in flight" in (await r.json())["error"]["message"]
        async with http.post(url, json=stream, headers=bearer("sk-other")) as r:  # other keys are not capped
            assert r.status == 200 and (await r.read()).endswith(b"data: [DONE]\n\n")
        assert (await first.read()).endswith(b"data: [DONE]\n\n")
    async with http.post(url, json=stream, headers=bearer("sk-team")) as r:  # the slot is free again
        assert r.status == 200
        await r.read()
    async with http.get(running.url + "/metrics") as r:
        text = await r.text()
    assert 'radixserve_router_rate_limited_requests_total{reason="concurrency",tenant="team"} 1.0' in text
    assert 'radixserve_router_tenant_in_flight_requests{tenant="team"} 0.0' in text


class RecordingWorker(FakeWorker):
    """A fake worker that keeps every generation request's body and headers."""

    def __init__(self, config: FakeWorkerConfig) -> None:
        super().__init__(config)
        self.bodies: list[dict[str, Any]] = []
        self.auth: list[str | None] = []

    async def generate(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(json.loads(await request.read()))
        self.auth.append(request.headers.get("Authorization"))
        return await super().generate(request)


@pytest.fixture
async def recording_worker() -> Any:
    worker = RecordingWorker(FakeWorkerConfig(api_key="router-secret"))
    runner = web.AppRunner(worker.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    worker.set_port(int(runner.addresses[0][1]))
    worker.url = f"http://127.0.0.1:{runner.addresses[0][1]}"  # type: ignore[attr-defined]
    yield worker
    await runner.cleanup()


async def test_priority_reaches_the_worker_and_tenant_keys_authenticate(
        recording_worker: Any, make_router: MakeRouter, http: aiohttp.ClientSession) -> None:
    tenants = {sha("sk-gold"): Tenant("gold", Limits(priority=10)), sha("sk-plain"): Tenant("plain", Limits()),
               ANONYMOUS: Tenant(ANONYMOUS, Limits(priority=-5))}
    running = await make_router(worker_urls=[recording_worker.url], api_key="router-secret",
                                admission=AdmissionConfig(tenants=tenants))
    cases = [  # (key, route, body, priority the worker must see; None: no field)
        ("sk-gold", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "priority": 99}, 10),
        ("sk-gold", "/generate", {"text": "x", "sampling_params": {"max_new_tokens": 1}}, 10),
        ("sk-plain", "/v1/completions", {"prompt": "x", "max_tokens": 1, "priority": 3}, 3),  # the client's own
        ("sk-plain", "/v1/completions", {"prompt": "x", "max_tokens": 1}, None),
        ("router-secret", "/v1/completions", {"prompt": "x", "max_tokens": 1}, None),  # the router's own key
    ]
    for key, route, body, _ in cases:
        async with http.post(running.url + route, json=body, headers=bearer(key)) as r:
            assert r.status == 200, await r.text()
    assert [b.get("priority") for b in recording_worker.bodies] == [c[3] for c in cases]
    assert recording_worker.bodies[0]["messages"] == [{"role": "user", "content": "x"}]  # the rest unchanged
    assert set(recording_worker.auth) == {"Bearer router-secret"}  # workers see the router's key, not tenants'
    # Keys neither --api-key nor in the file are refused; "anonymous" is an identity, not a key.
    for headers in (bearer("sk-stranger"), {}, bearer("anonymous")):
        async with http.post(running.url + "/v1/completions", json=COMPLETION, headers=headers) as r:
            assert r.status == 401
    assert len(recording_worker.bodies) == len(cases)


async def test_many_distinct_keys_keep_bounded_state(fake_workers: MakeFakeWorkers, make_router: MakeRouter,
                                                     http: aiohttp.ClientSession) -> None:
    (w,) = await fake_workers(1)
    config = AdmissionConfig(default=Limits(rps=1000.0, burst=1000), max_tracked_keys=4)
    running = await make_router(worker_urls=[w.url], admission=config)
    admission = running.router.admission

    async def one(i: int) -> int:
        async with http.post(running.url + "/v1/completions", json=COMPLETION, headers=bearer(f"k{i}")) as r:
            return r.status

    assert await asyncio.gather(*(one(i) for i in range(4))) == [200] * 4
    # Idle identities (full buckets) are forgotten once the table is full.
    await wait_until(lambda: all(s.bucket is not None and s.bucket.full(admission.clock())
                                 for s in admission._states.values()), 5, what="buckets refilled")
    assert await one(99) == 200
    assert len(admission._states) == 1
