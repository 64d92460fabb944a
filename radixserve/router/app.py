"""The router service: assembles registry, policy, health checks, discovery and the HTTP app.

Routes:
  POST /generate, /v1/completions, /v1/chat/completions   routed by the policy, proxied
  GET  /v1/models, /get_server_info, /get_model_info       proxied to any healthy worker
  GET  /health     200 when at least one worker is healthy, else 503 (readiness)
  GET  /liveness   200 while the router process runs
  GET  /metrics    the router's Prometheus metrics
  GET  /workers    workers with state and load
  POST /add_worker?url=URL, /remove_worker?url=URL (or a JSON body {"url": ...})
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from radixserve.router.config import RouterConfig
from radixserve.router.discovery import EndpointSliceDiscovery
from radixserve.router.errors import error_response
from radixserve.router.health import HealthChecker
from radixserve.router.metrics import CONTENT_TYPE, RouterMetrics
from radixserve.router.policies import make_policy
from radixserve.router.proxy import Proxy
from radixserve.router.workers import Worker, WorkerRegistry, WorkerSource

log = logging.getLogger(__name__)

GENERATE_ROUTES = ("/generate", "/v1/completions", "/v1/chat/completions")
PASSTHROUGH_GET_ROUTES = ("/v1/models", "/get_server_info", "/get_model_info")
_OPEN_ROUTES = ("/health", "/liveness", "/metrics")  # probes and scrapes need no key

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Router:
    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.workers = WorkerRegistry(config.health_failure_threshold, config.health_success_threshold)
        self.policy = make_policy(config.policy, config.cache, config.seed)
        self.metrics = RouterMetrics(self.workers, self.policy)
        self.proxy = Proxy(self.workers, self.policy, self.metrics, config.max_attempts, config.api_key)
        auth = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self.health = HealthChecker(self.workers, config.health_check_interval_s, config.health_check_timeout_s, auth)
        self.discovery = EndpointSliceDiscovery(config.kube, self.workers) if config.kube else None
        self.workers.subscribe(on_added=self.health.check_soon, on_removed=self.policy.remove_worker)
        self._eviction_task: asyncio.Task[None] | None = None
        self._expected_auth = f"Bearer {config.api_key}" if config.api_key else None

    async def start(self) -> None:
        await self.proxy.start(self.config.request_timeout_s, self.config.connect_timeout_s)
        await self.health.start()
        for url in self.config.worker_urls:
            self.workers.add(url, WorkerSource.STATIC)
        if self.discovery is not None:
            await self.discovery.start()
        self._eviction_task = asyncio.create_task(self._evict_loop(), name="router-tree-eviction")

    async def stop(self) -> None:
        if self._eviction_task is not None:
            self._eviction_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._eviction_task
        if self.discovery is not None:
            await self.discovery.stop()
        await self.health.stop()
        await self.proxy.stop()

    async def _evict_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.eviction_interval_s)
            self.policy.evict()

    # --- HTTP app ---

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_payload_bytes)
        for path in GENERATE_ROUTES:
            app.router.add_post(path, self._guard(self.proxy.handle_generate))
        for path in PASSTHROUGH_GET_ROUTES:
            app.router.add_get(path, self._guard(self.proxy.handle_get))
        app.router.add_get("/health", self.handle_health)
        app.router.add_get("/liveness", self.handle_liveness)
        app.router.add_get("/metrics", self.handle_metrics)
        app.router.add_get("/workers", self._guard(self.handle_workers))
        app.router.add_post("/add_worker", self._guard(self.handle_add_worker))
        app.router.add_post("/remove_worker", self._guard(self.handle_remove_worker))
        app.router.add_route("*", "/{tail:.*}", self.handle_not_found)
        return app

    def _guard(self, handler: Handler) -> Handler:
        """Require the API key when one is set (checked here so that routes without it stay free)."""
        expected = self._expected_auth
        if expected is None:
            return handler

        async def guarded(request: web.Request) -> web.StreamResponse:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return error_response(401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"})
            return await handler(request)

        return guarded

    async def handle_health(self, request: web.Request) -> web.Response:
        healthy = len(self.workers.healthy)
        if healthy == 0:
            return error_response(503, "no healthy worker is available")
        return web.json_response({"status": "ok", "healthy_workers": healthy, "workers": len(self.workers)})

    async def handle_liveness(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    def worker_info(self, worker: Worker) -> dict[str, Any]:
        info = worker.to_dict()
        info["tree_size_chars"] = self.policy.tree_sizes().get(worker.url, 0)
        return info

    async def handle_workers(self, request: web.Request) -> web.Response:
        workers = [self.worker_info(w) for w in self.workers.all()]
        return web.json_response({"policy": self.policy.name, "healthy": len(self.workers.healthy),
                                  "workers": workers})

    @staticmethod
    async def _url_param(request: web.Request) -> str | None:
        url = request.query.get("url")
        if url is None and request.can_read_body:
            with contextlib.suppress(ValueError):
                body = json.loads(await request.read())
                if isinstance(body, dict) and isinstance(body.get("url"), str):
                    url = body["url"]
        return url

    async def handle_add_worker(self, request: web.Request) -> web.Response:
        url = await self._url_param(request)
        if not url:
            return error_response(400, "give the worker as ?url=URL or {\"url\": URL}", param="url")
        try:
            worker, created = self.workers.add(url, WorkerSource.API)
        except ValueError as exc:
            return error_response(400, str(exc), param="url")
        return web.json_response({"added": created, "worker": self.worker_info(worker)})

    async def handle_remove_worker(self, request: web.Request) -> web.Response:
        url = await self._url_param(request)
        if not url:
            return error_response(400, "give the worker as ?url=URL or {\"url\": URL}", param="url")
        try:
            worker = self.workers.remove(url)
        except ValueError as exc:
            return error_response(400, str(exc), param="url")
        if worker is None:
            return error_response(404, f"no worker {url}", param="url")
        return web.json_response({"removed": True, "worker": worker.to_dict()})

    async def handle_not_found(self, request: web.Request) -> web.Response:
        if request.path in GENERATE_ROUTES or request.path in PASSTHROUGH_GET_ROUTES:
            return error_response(405, f"method {request.method} not allowed on {request.path}")
        return error_response(404, f"no route {request.method} {request.path}")


@dataclass
class RunningRouter:
    router: Router
    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


async def start_router(config: RouterConfig) -> RunningRouter:
    """Start the router's services and its HTTP server; port 0 picks a free port."""
    router = Router(config)
    await router.start()
    # handler_cancellation: a client disconnect cancels the handler, which closes the
    # upstream connection (see proxy.py). access_log off: it costs ~10% of throughput.
    runner = web.AppRunner(router.build_app(), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, reuse_address=True, backlog=1024)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        await router.stop()
        raise
    port = int(runner.addresses[0][1])
    log.info("router listening on %s:%d, policy %s", config.host, port, config.policy)
    return RunningRouter(router, runner, config.host, port)


async def stop_router(running: RunningRouter) -> None:
    await running.runner.cleanup()
    await running.router.stop()


@contextlib.asynccontextmanager
async def serving(config: RouterConfig) -> AsyncIterator[RunningRouter]:
    running = await start_router(config)
    try:
        yield running
    finally:
        await stop_router(running)

