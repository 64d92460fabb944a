"""Fixtures for router tests: fake workers in-process or as processes, routers, polling helpers.

`worker_processes` starts N worker processes from a command line and waits for their
/health: today the command is the fake worker; the integration test with real replicas
passes `radixserve serve ...` instead (test_real_replicas.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest
from aiohttp import web

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # benchmarks/ is imported by its tests
    sys.path.insert(0, str(REPO_ROOT))

from radixserve.router.app import RunningRouter, start_router, stop_router  # noqa: E402
from radixserve.router.config import RouterConfig  # noqa: E402
from radixserve.testing.fake_worker import FakeWorker, FakeWorkerConfig, start_fake_worker  # noqa: E402

Command = Callable[[int], list[str]]


# What the fixtures below yield, for the tests' annotations.
class StartWorkerProcesses(Protocol):
    async def __call__(self, n: int, command: Command, timeout: float = 20.0) -> list[WorkerProcess]: ...


class MakeFakeWorkers(Protocol):
    async def __call__(self, n: int, **config: Any) -> list[InProcessWorker]: ...


class MakeRouter(Protocol):
    async def __call__(self, wait_healthy: bool = True, **config: Any) -> RunningRouter: ...


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (the OS may hand it out again later; tests bind it at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
                     what: str = "condition") -> Any:
    """Poll `predicate` (sync or async) until truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def fake_worker_command(*extra: str) -> Command:
    return lambda port: [sys.executable, "-m", "radixserve.testing.fake_worker", "--port", str(port), *extra]


@dataclass
class WorkerProcess:
    command: Command
    port: int
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None
    log: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                                           os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(self.command(self.port), cwd=REPO_ROOT, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def wait_healthy(self, session: aiohttp.ClientSession, timeout: float = 20.0) -> None:
        async def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"worker process on port {self.port} exited with {self.proc.returncode}")
            try:
                async with session.get(self.url + "/health", timeout=aiohttp.ClientTimeout(total=1)) as r:
                    return r.status == 200
            except (aiohttp.ClientError, TimeoutError):
                return False

        await wait_until(healthy, timeout, 0.05, f"worker {self.url} /health")

    def kill(self) -> None:
        """SIGKILL: the replica dies without closing anything cleanly."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture
async def worker_processes(http: aiohttp.ClientSession) -> AsyncIterator[StartWorkerProcesses]:
    """`await worker_processes(n, command)`: n processes on free ports, healthy; stopped at teardown."""
    started: list[WorkerProcess] = []

    async def start(n: int, command: Command, timeout: float = 20.0) -> list[WorkerProcess]:
        procs = [WorkerProcess(command, free_port()) for _ in range(n)]
        for p in procs:
            p.start()
            started.append(p)
        await asyncio.gather(*(p.wait_healthy(http, timeout) for p in procs))
        return procs

    yield start
    for p in started:
        p.stop()


@dataclass
class InProcessWorker:
    worker: FakeWorker
    runner: web.AppRunner
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def fake_workers() -> AsyncIterator[MakeFakeWorkers]:
    """`await fake_workers(n, **FakeWorkerConfig fields)`: workers in this event loop."""
    made: list[InProcessWorker] = []

    async def make(n: int, **config: Any) -> list[InProcessWorker]:
        out = []
        for _ in range(n):
            worker, runner, port = await start_fake_worker(FakeWorkerConfig(**config))
            out.append(InProcessWorker(worker, runner, port))
        made.extend(out)
        return out

    yield make
    for w in made:
        await w.runner.cleanup()


@pytest.fixture
async def make_router(http: aiohttp.ClientSession) -> AsyncIterator[MakeRouter]:
    """`await make_router(worker_urls=[...], **RouterConfig fields)`: started, workers healthy."""
    routers: list[RunningRouter] = []

    async def make(wait_healthy: bool = True, **config: Any) -> RunningRouter:
        config.setdefault("health_check_interval_s", 0.2)
        config.setdefault("health_check_timeout_s", 1.0)
        config.setdefault("seed", 0)
        running = await start_router(RouterConfig(host="127.0.0.1", port=0, **config))
        routers.append(running)
        if wait_healthy and running.router.config.worker_urls:
            n = len(running.router.config.worker_urls)
            await wait_until(lambda: len(running.router.workers.healthy) == n, 10, what="workers healthy")
        return running

    yield make
    for running in routers:
        await stop_router(running)
