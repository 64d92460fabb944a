"""Active health checks: GET /health on every worker each interval; eject and re-admit.

Checks use their own client session with `force_close`, so each check opens a fresh
connection: a pooled keep-alive connection could hide a replica that restarted or stopped
accepting connections.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from radixserve.router.workers import Worker, WorkerRegistry
from radixserve.utils.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class HealthChecker:
    def __init__(self, registry: WorkerRegistry, interval_s: float, timeout_s: float,
                 headers: dict[str, str] | None = None, path: str = "/health") -> None:
        self.registry = registry
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.path = path
        self._headers = headers or {}
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[bool]] = set()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True, limit=0),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            headers=self._headers,
        )
        self._task = asyncio.create_task(self._loop(), name="router-health-checks")

    async def stop(self) -> None:
        await cancel_and_wait([self._task, *self._pending])
        if self._session is not None:
            await self._session.close()

    def check_soon(self, worker: Worker) -> None:
        """Check one worker now (a newly added one), without waiting for the next round."""
        if self._session is None:
            return
        task = asyncio.create_task(self.check(worker))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def check(self, worker: Worker) -> bool:
        assert self._session is not None
        try:
            async with self._session.get(worker.url + self.path) as resp:
                await resp.read()
                ok = resp.status == 200
                reason = f"/health returned {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            ok, reason = False, f"{type(exc).__name__}: {exc}"
        if self.registry.get(worker.url) is not worker:
            return ok  # removed while we waited
        if ok:
            self.registry.record_success(worker)
        else:
            self.registry.record_failure(worker, reason)
        return ok

    async def check_all(self) -> None:
        workers = self.registry.all()
        if workers:
            await asyncio.gather(*(self.check(w) for w in workers))

    async def _loop(self) -> None:
        while True:
            try:
                await self.check_all()
            except Exception:  # a bug here must not stop health checking for good
                log.exception("health check round failed")
            await asyncio.sleep(self.interval_s)
