"""Readiness drain on SIGTERM (radixserve/router/drain.py) with a real router process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import aiohttp

from radixserve.router.drain import DrainConfig

from .conftest import REPO_ROOT, MakeFakeWorkers, MakeRouter, wait_until

GRACE_S = 1.0
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 12, "stream": True}


async def test_sigterm_fails_readiness_serves_the_grace_then_finishes_streams_and_exits_0(
        fake_workers: MakeFakeWorkers, http: aiohttp.ClientSession) -> None:
    (w,) = await fake_workers(1, token_delay=0.25)  # a 12-token stream lasts ~2.75 s, past the grace period
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "radixserve", "router", "--port", "0", "--worker-urls", w.url,
        "--health-check-interval", "0.2", "--drain-grace-seconds", str(GRACE_S), "--drain-timeout-seconds", "20",
        cwd=REPO_ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().split()[-1]

        async def ready() -> bool:
            async with http.get(url + "/health") as r:
                return r.status == 200

        await wait_until(ready, 10, 0.05, "router ready")
        async with http.post(url + "/v1/chat/completions", json=CHAT) as stream:
            assert stream.status == 200
            first = await stream.content.readline()
            assert first.startswith(b"data: ")
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()

            # Readiness fails at once; liveness does not.
            async def draining() -> bool:
                async with http.get(url + "/health") as r:
                    return r.status == 503 and "draining" in (await r.json())["error"]["message"]

            await wait_until(draining, 0.5, 0.02, "/health 503 draining")
            async with http.get(url + "/liveness") as r:
                assert r.status == 200
            # Within the grace period new requests are still served, with Connection: close.
            async with http.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}) as r:
                assert r.status == 200 and r.headers.get("Connection", "").lower() == "close"
            assert time.monotonic() - signalled < GRACE_S

            # After it the listener is closed, while the stream still runs.
            async def refused() -> bool:
                try:
                    async with http.get(url + "/liveness", timeout=aiohttp.ClientTimeout(total=1)):
                        return False
                except aiohttp.ClientConnectionError:
                    return True

            await wait_until(refused, GRACE_S + 2, 0.05, "listener closed")
            assert proc.returncode is None
            rest = await stream.read()
        events = [line for line in (first + rest).split(b"\n\n") if line]
        assert len(events) == 12 + 1 and events[-1] == b"data: [DONE]"  # every token, then the end
        assert await asyncio.wait_for(proc.wait(), 5) == 0
        assert time.monotonic() - signalled < GRACE_S + 5
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_drain_timeout_bounds_what_in_flight_requests_get(fake_workers: MakeFakeWorkers,
                                                                make_router: MakeRouter,
                                                                http: aiohttp.ClientSession) -> None:
    """In process: a stream longer than --drain-timeout-seconds is cut when the router stops."""
    from radixserve.router.app import stop_router

    (w,) = await fake_workers(1, token_delay=0.2)
    running = await make_router(worker_urls=[w.url], drain=DrainConfig(grace_s=0, timeout_s=0.4))
    async with http.post(running.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 50}) as stream:
        await stream.content.readline()
        started = time.monotonic()
        await stop_router(running)
        assert time.monotonic() - started < 2.0
        try:
            rest = await stream.read()
        except aiohttp.ClientPayloadError:
            rest = b""
        assert b"[DONE]" not in rest
    await wait_until(lambda: w.worker.stats.disconnects == 1, 5, what="the worker saw the cut")
