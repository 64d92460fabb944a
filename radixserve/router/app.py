"""The router service: assembles registry, policy, health checks, discovery and the HTTP app.

Routes:
  POST /generate, /v1/completions, /v1/chat/completions   routed by the policy, proxied
  GET  /v1/models, /get_server_info, /get_model_info       proxied to any healthy worker
  GET  /health     200 when at least one worker is healthy (or scaled to zero with --scale-from-zero),
                   else 503; 503 at once when draining (readiness)
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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from radixserve.router.admission import Admission, AdmissionCollector
from radixserve.router.config import RouterConfig
from radixserve.router.discovery import EndpointSliceDiscovery
from radixserve.router.drain import DrainState
from radixserve.router.errors import error_response
from radixserve.router.event_stream import EventSubscriber
from radixserve.router.health import HealthChecker
from radixserve.router.httpd import AnyResponse, Handler, HttpServer, Request, Response, json_response
from radixserve.router.kv_index import KvIndex
from radixserve.router.metrics import CONTENT_TYPE, PREFIX, RouterMetrics
from radixserve.router.policies import make_policy
from radixserve.router.proxy import Proxy
from radixserve.router.scale import ScaleCollector, ScaleFromZero
from radixserve.router.tokenize import PromptTokenizer, tokenizer_source_of
from radixserve.router.workers import Worker, WorkerRegistry, WorkerSource
from radixserve.utils.tasks import cancel_and_wait

log = logging.getLogger(__name__)

GENERATE_ROUTES = ("/generate", "/v1/completions", "/v1/chat/completions")
PASSTHROUGH_GET_ROUTES = ("/v1/models", "/get_server_info", "/get_model_info")
_OPEN_ROUTES = ("/health", "/liveness", "/metrics")  # probes and scrapes need no key

class Router:
    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.workers = WorkerRegistry(config.health_failure_threshold, config.health_success_threshold)
        # Cache events only feed cache_aware: the other policies ignore prefixes.
        self.kv_index = KvIndex() if config.cache_events and config.policy == "cache_aware" else None
        self.policy = make_policy(config.policy, config.cache, config.seed, self.kv_index)
        self.metrics = RouterMetrics(self.workers, self.policy, self.kv_index)
        self.proxy = Proxy(self.workers, self.policy, self.metrics, config.max_attempts, config.api_key)
        self.metrics.prompt_tokenizer_loaded = lambda: self.proxy.prompt_tokenizer is not None
        auth = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self.health = HealthChecker(self.workers, config.health_check_interval_s, config.health_check_timeout_s, auth)
        self.discovery = EndpointSliceDiscovery(config.kube, self.workers) if config.kube else None
        self.workers.subscribe(on_added=self.health.check_soon, on_removed=self.policy.remove_worker)
        self.events: EventSubscriber | None = None
        self._tokenizer_task: asyncio.Task[None] | None = None
        if self.kv_index is not None:
            self.events = EventSubscriber(self.workers, self.kv_index, config.events, auth)
            self.workers.subscribe(on_added=self.events.add, on_removed=self.events.remove)
        self._eviction_task: asyncio.Task[None] | None = None
        self._expected_auth = f"Bearer {config.api_key}" if config.api_key else None
        # Overload and lifecycle (admission.py, scale.py, drain.py).
        self.admission = Admission(config.admission)
        self.metrics.registry.register(AdmissionCollector(self.admission, PREFIX))
        self.scaler = ScaleFromZero(config.scale_from_zero, self.workers) if config.scale_from_zero else None
        if self.scaler is not None:
            self.metrics.registry.register(ScaleCollector(self.scaler, PREFIX))
        self.drain = DrainState()
        if config.worker_protocol == "grpc":
            if config.grpc_port is None:
                raise ValueError("worker_protocol 'grpc' needs grpc_port (the workers' --grpc-port)")
            # Imported here: grpcio and the server's response models only when asked for.
            from radixserve.router.grpc_client import GrpcWorkers

            self.proxy.grpc = GrpcWorkers(config.grpc_port, config.api_key, self.workers, self.metrics,
                                          config.request_timeout_s)
            self.workers.subscribe(on_added=self.proxy.grpc.add, on_removed=self.proxy.grpc.remove)

    async def start(self) -> None:
        if self.config.tokenizer and self.config.tokenizer != "auto" and self.kv_index is not None:
            # Seconds for a GGUF vocabulary (cached after the first time): off the event loop.
            self.proxy.prompt_tokenizer = await asyncio.to_thread(PromptTokenizer.load, self.config.tokenizer)
            log.info("router tokenizes prompts with %s for exact cache matching", self.config.tokenizer)
        await self.proxy.start(self.config.request_timeout_s, self.config.connect_timeout_s)
        await self.health.start()
        if self.events is not None:
            await self.events.start()
            if self.config.tokenizer == "auto":
                self._tokenizer_task = asyncio.create_task(self._find_tokenizer(), name="router-tokenizer")
        for url in self.config.worker_urls:
            self.workers.add(url, WorkerSource.STATIC)
        if self.discovery is not None:
            await self.discovery.start()
        if self.scaler is not None:
            await self.scaler.start()
        self._eviction_task = asyncio.create_task(self._evict_loop(), name="router-tree-eviction")

    async def stop(self) -> None:
        await cancel_and_wait([self._eviction_task])
        if self.discovery is not None:
            await self.discovery.stop()
        if self.events is not None:
            await self.events.stop()
        await cancel_and_wait([self._tokenizer_task])
        if self.scaler is not None:
            await self.scaler.stop()
        await self.health.stop()
        await self.proxy.stop()
        if self.proxy.grpc is not None:
            await self.proxy.grpc.close()

    async def _find_tokenizer(self) -> None:
        """--tokenizer auto: ask healthy workers (/get_server_info) where their tokenizer is, until
        one names a tokenizer this machine can load; meanwhile text prompts use the tree."""
        asked: set[str] = set()
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        while self.proxy.prompt_tokenizer is None:
            for worker in self.workers.healthy:
                if worker.url in asked or self.proxy.session is None:
                    continue
                asked.add(worker.url)
                try:
                    async with self.proxy.session.get(worker.url + "/get_server_info", headers=headers,
                                                      timeout=aiohttp.ClientTimeout(total=10)) as resp:
                        info = await resp.json(content_type=None) if resp.status == 200 else {}
                    source = tokenizer_source_of(info) if isinstance(info, dict) else None
                    if source is None:
                        continue
                    self.proxy.prompt_tokenizer = await asyncio.to_thread(PromptTokenizer.load, source)
                    log.info("router tokenizes prompts with %s (from %s) for exact cache matching", source,
                             worker.url)
                    return
                except Exception as exc:  # a worker's answer must not stop the search
                    log.warning("no usable tokenizer from %s: %s", worker.url, exc)
            await asyncio.sleep(0.5)

    async def _evict_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.eviction_interval_s)
            self.policy.evict()

    # --- HTTP routes ---

    def routes(self) -> dict[tuple[str, str], Handler]:
        # Key check, then per-key limits, then the scale-from-zero hold, then the proxy.
        routes: dict[tuple[str, str], Handler] = {}
        for path in GENERATE_ROUTES:
            routes["POST", path] = self._guard(self.admission.guard(self._hold(self.proxy.handle_generate)))
        for path in PASSTHROUGH_GET_ROUTES:
            routes["GET", path] = self._guard(self._hold(self.proxy.handle_get))
        routes["GET", "/health"] = self.handle_health
        routes["GET", "/liveness"] = self.handle_liveness
        routes["GET", "/metrics"] = self.handle_metrics
        routes["GET", "/workers"] = self._guard(self.handle_workers)
        routes["POST", "/add_worker"] = self._guard(self.handle_add_worker)
        routes["POST", "/remove_worker"] = self._guard(self.handle_remove_worker)
        return routes

    def dispatcher(self) -> Handler:
        """The server's one handler: the route's, else 404/405."""
        routes = self.routes()
        not_found = self.handle_not_found

        async def dispatch(request: Request) -> AnyResponse:
            method = "GET" if request.method == "HEAD" else request.method  # HEAD: GET's head
            handler = routes.get((method, request.path))
            return await (handler or not_found)(request)

        return dispatch

    def _guard(self, handler: Handler) -> Handler:
        """Require the API key when one is set (checked here so that routes without it stay free)."""
        expected = self._expected_auth
        if expected is None:
            return handler

        async def guarded(request: Request) -> AnyResponse:
            given = request.headers.get("Authorization", "")
            # The tenants file's keys are accepted too (each with its own limits).
            if not hmac.compare_digest(given.encode(), expected.encode()) and not self.admission.is_tenant_key(given):
                return error_response(401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"})
            return await handler(request)

        return guarded

    def _hold(self, handler: Handler) -> Handler:
        return self.scaler.guard(handler) if self.scaler is not None else handler

    async def handle_health(self, request: Request) -> Response:
        if self.drain.draining:
            return error_response(503, "draining: the router is shutting down")
        healthy = len(self.workers.healthy)
        if healthy == 0 and self.scaler is not None:
            # Ready to take requests: they are held while the model scales up from zero.
            return json_response({"status": "scaled_to_zero", "healthy_workers": 0, "workers": len(self.workers),
                                      "held_requests": self.scaler.held})
        if healthy == 0:
            return error_response(503, "no healthy worker is available")
        return json_response({"status": "ok", "healthy_workers": healthy, "workers": len(self.workers)})

    async def handle_liveness(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def handle_metrics(self, request: Request) -> Response:
        return Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    def worker_info(self, worker: Worker) -> dict[str, Any]:
        info = worker.to_dict()
        info["tree_size_chars"] = self.policy.tree_sizes().get(worker.url, 0)
        idx = self.kv_index.get(worker.url) if self.kv_index is not None else None
        info["cache_events"] = idx.to_dict() if idx is not None else {"state": "off"}
        if self.proxy.grpc is not None:
            info["grpc_target"] = self.proxy.grpc.target(worker)
        return info

    async def handle_workers(self, request: Request) -> Response:
        workers = [self.worker_info(w) for w in self.workers.all()]
        return json_response({"policy": self.policy.name, "healthy": len(self.workers.healthy),
                                  "workers": workers})

    @staticmethod
    async def _url_param(request: Request) -> str | None:
        url = request.query.get("url")
        if url is None and request.can_read_body:
            with contextlib.suppress(ValueError):
                body = json.loads(await request.read())
                if isinstance(body, dict) and isinstance(body.get("url"), str):
                    url = body["url"]
        return url

    async def handle_add_worker(self, request: Request) -> Response:
        url = await self._url_param(request)
        if not url:
            return error_response(400, "give the worker as ?url=URL or {\"url\": URL}", param="url")
        try:
            worker, created = self.workers.add(url, WorkerSource.API)
        except ValueError as exc:
            return error_response(400, str(exc), param="url")
        return json_response({"added": created, "worker": self.worker_info(worker)})

    async def handle_remove_worker(self, request: Request) -> Response:
        url = await self._url_param(request)
        if not url:
            return error_response(400, "give the worker as ?url=URL or {\"url\": URL}", param="url")
        try:
            worker = self.workers.remove(url)
        except ValueError as exc:
            return error_response(400, str(exc), param="url")
        if worker is None:
            return error_response(404, f"no worker {url}", param="url")
        return json_response({"removed": True, "worker": worker.to_dict()})

    async def handle_not_found(self, request: Request) -> Response:
        if request.path in GENERATE_ROUTES or request.path in PASSTHROUGH_GET_ROUTES:
            return error_response(405, f"method {request.method} not allowed on {request.path}")
        return error_response(404, f"no route {request.method} {request.path}")


@dataclass
class RunningRouter:
    router: Router
    server: HttpServer
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
    # Draining answers carry `Connection: close` (drain.py).
    server = HttpServer(router.dispatcher(), config.max_payload_bytes,
                        close_connections=lambda: router.drain.draining)
    try:
        port = await server.start(config.host, config.port)
    except OSError:
        await router.stop()
        raise
    log.info("router listening on %s:%d, policy %s", config.host, port, config.policy)
    return RunningRouter(router, server, config.host, port)


async def stop_router(running: RunningRouter) -> None:
    # In-flight requests finish for up to the drain timeout (drain.py).
    await running.server.shutdown(running.router.config.drain.timeout_s)
    await running.router.stop()


@contextlib.asynccontextmanager
async def serving(config: RouterConfig) -> AsyncIterator[RunningRouter]:
    running = await start_router(config)
    try:
        yield running
    finally:
        await stop_router(running)
