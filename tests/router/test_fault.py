"""Fault tolerance with worker processes: kill one replica mid-run, then bring it back."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp

from radixserve.router.proxy import WORKER_HEADER
from radixserve.router.workers import WorkerState

from .conftest import MakeRouter, StartWorkerProcesses, fake_worker_command, wait_until


@dataclass
class Outcome:
    sent_at: float
    first_byte_at: float | None = None
    done: bool = False
    worker: str | None = None
    error: str | None = None


async def stream_request(session: aiohttp.ClientSession, url: str, i: int) -> Outcome:
    out = Outcome(sent_at=time.monotonic())
    body = {"prompt": f"request {i} " + "words " * 20, "max_tokens": 15, "stream": True}
    try:
        async with session.post(url, json=body) as r:
            out.worker = r.headers.get(WORKER_HEADER)
            if r.status != 200:
                out.error = f"HTTP {r.status}"
                return out
            data = b""
            while chunk := await r.content.readany():
                if out.first_byte_at is None:
                    out.first_byte_at = time.monotonic()
                data += chunk
            out.done = data.rstrip().endswith(b"data: [DONE]")
            if not out.done:
                out.error = "stream cut"
    except aiohttp.ClientError as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    return out


async def test_killing_a_replica_loses_no_unstarted_request(worker_processes: StartWorkerProcesses,
                                                            make_router: MakeRouter,
                                                            http: aiohttp.ClientSession) -> None:
    procs = await worker_processes(3, fake_worker_command("--token-delay", "0.02"))
    running = await make_router(worker_urls=[p.url for p in procs], policy="round_robin",
                                health_check_interval_s=0.2, health_failure_threshold=2, health_success_threshold=2)
    victim = procs[1]
    url = running.url + "/v1/completions"
    semaphore = asyncio.Semaphore(12)

    async def limited(i: int) -> Outcome:
        async with semaphore:
            return await stream_request(http, url, i)

    tasks = [asyncio.create_task(limited(i)) for i in range(120)]
    # Kill once the victim has served some requests and has streams in flight.
    victim_worker = running.router.workers.get(victim.url)
    assert victim_worker is not None
    await wait_until(lambda: victim_worker.requests_total >= 6 and victim_worker.outstanding > 0, 10,
                     0.005, "victim busy")
    victim.kill()
    killed_at = time.monotonic()
    outcomes = await asyncio.gather(*tasks)

    failed = [o for o in outcomes if not o.done]
    # Only streams of the victim that had already delivered bytes may fail: bytes from a
    # SIGKILLed process were sent before it died. (Client timestamps cannot order this: the
    # client shares the router's event loop and reads a chunk some time after it was relayed.)
    for o in failed:
        assert o.first_byte_at is not None and o.worker == victim.url and o.error == "stream cut", o
    # Those that had not started streaming were all served, retried elsewhere if needed.
    assert all(o.done for o in outcomes if o.first_byte_at is None)
    assert sum(o.done for o in outcomes) >= 120 - 12
    assert victim_worker.state is WorkerState.UNHEALTHY
    late = [o for o in outcomes if o.sent_at > killed_at + 0.05]
    assert late and all(o.worker != victim.url and o.done for o in late)

    # The replica comes back on the same address: health checks re-admit it.
    victim.start()
    await victim.wait_healthy(http)
    await wait_until(lambda: victim_worker.state is WorkerState.HEALTHY, 10, what="re-admission")
    again = [await stream_request(http, url, 1000 + i) for i in range(6)]
    assert all(o.done for o in again)
    assert sum(o.worker == victim.url for o in again) == 2  # round robin over three again
