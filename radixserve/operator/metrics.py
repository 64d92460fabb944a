"""The operator's own Prometheus metrics and its small HTTP endpoint (`/metrics`, `/healthz`).

Metrics register on a registry per operator instance, never the global one, so two
instances (the leader-election tests run two) can share a process. The endpoint is served
from the operator's event loop with aiohttp (a kopf dependency), so a standby replica waiting
for the leader Lease answers its liveness probe too (kopf's own `--liveness` endpoint only
exists while kopf runs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import aiohttp.web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

PREFIX = "radixserve_operator_"
# A pass is a few API round trips; a slow API server or a large namespace takes seconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# Why a reconcile pass ran (a bounded label set).
TRIGGER_SPEC, TRIGGER_OWNED, TRIGGER_RESYNC = "spec", "owned-object", "resync"
# How it ended.
RESULT_OK, RESULT_PROBLEM, RESULT_REJECTED, RESULT_ERROR, RESULT_SKIPPED = (
    "ok", "spec-problem", "api-rejected", "error", "skipped")


@dataclass
class OperatorMetrics:
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        r = self.registry
        self.reconciles = Counter(f"{PREFIX}reconciles_total",
                                  "Reconcile passes of InferenceServers, by trigger and result.",
                                  ["trigger", "result"], registry=r)
        self.errors = Counter(f"{PREFIX}errors_total",
                              "Reconcile passes that failed: the API refused an object (api-rejected), "
                              "another API error (api-error), or a bug (exception).", ["reason"], registry=r)
        self.duration = Histogram(f"{PREFIX}reconcile_duration_seconds", "Duration of one reconcile pass.",
                                  ["trigger"], buckets=DURATION_BUCKETS, registry=r)
        self.drift_repairs = Counter(f"{PREFIX}drift_repairs_total",
                                     "Owned objects re-created (missing) or restored (edited) by drift repair.",
                                     ["kind", "drift"], registry=r)
        self.managed = Gauge(f"{PREFIX}managed_inferenceservers",
                             "InferenceServers this operator serves (as last seen by its watch).", registry=r)
        self.leader = Gauge(f"{PREFIX}leader",
                            "1 while this instance acts (holds the leader Lease, or runs without election).",
                            registry=r)
        self._managed: set[tuple[str, str]] = set()

    @contextmanager
    def reconcile_pass(self, trigger: str) -> Iterator[Callable[[str], None]]:
        """Times a pass; the body calls the yielded function with the result. An exception
        counts as an error and propagates."""
        started = time.monotonic()
        results: list[str] = []
        try:
            yield results.append
        except Exception:
            results.append(RESULT_ERROR)
            raise
        finally:
            self.duration.labels(trigger).observe(time.monotonic() - started)
            self.reconciles.labels(trigger, results[-1] if results else RESULT_OK).inc()

    def error(self, reason: str) -> None:
        self.errors.labels(reason).inc()

    def repaired(self, kind: str, drift: str) -> None:
        self.drift_repairs.labels(kind, drift).inc()

    def track(self, namespace: str, name: str, present: bool) -> None:
        key = (namespace, name)
        if present:
            self._managed.add(key)
        else:
            self._managed.discard(key)
        self.managed.set(len(self._managed))

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))


class MetricsServer:
    """`/metrics` (Prometheus text format) and `/healthz` (200 while `healthy()`, else 503)."""

    def __init__(self, metrics: OperatorMetrics, healthy: Callable[[], bool]) -> None:
        self._metrics = metrics
        self._healthy = healthy
        self._runner: aiohttp.web.AppRunner | None = None
        self.port: int | None = None

    async def _serve_metrics(self, _: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(body=self._metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _serve_health(self, _: aiohttp.web.Request) -> aiohttp.web.Response:
        ok = self._healthy()
        return aiohttp.web.Response(text="ok\n" if ok else "unhealthy\n", status=200 if ok else 503)

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (port 0: an ephemeral port); returns the port."""
        app = aiohttp.web.Application()
        app.router.add_get("/metrics", self._serve_metrics)
        app.router.add_get("/healthz", self._serve_health)
        self._runner = aiohttp.web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
