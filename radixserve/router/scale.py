"""Scale from zero: hold requests while the InferenceServer scales up from 0 replicas.

With `--scale-from-zero NS/NAME`, a request that finds no healthy worker is held instead of
refused. The first one of an episode (from the first held request until a worker turns
healthy or nothing is held any more) reads the InferenceServer's scale subresource and, if
it says 0 replicas, patches it to 1; the requests held meanwhile share that one scale-up.
Held requests go on to the proxy as soon as a worker is healthy (discovery adds the new pod,
the health checker admits it). After `--scale-from-zero-timeout` seconds a held request gets
503 with `Retry-After`; beyond `--scale-from-zero-max-held` held requests, new ones get that
503 at once. Scaling down to zero is left to whatever set 0 replicas (an autoscaler, a user).

RBAC needed: `get` and `patch` on `inferenceservers/scale` (group radixserve.io) in NS.
The `kubernetes` client is synchronous: its calls run in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from radixserve.router.errors import error_response
from radixserve.router.httpd import AnyResponse, Handler, Request, Response
from radixserve.router.kube import api_client
from radixserve.router.workers import WorkerRegistry

log = logging.getLogger(__name__)

GROUP = "radixserve.io"
VERSION = "v1alpha1"
PLURAL = "inferenceservers"
# How often held requests look for a healthy worker (health checks admit workers at their own pace).
POLL_S = 0.05



@dataclass
class ScaleFromZeroConfig:
    namespace: str
    name: str
    timeout_s: float = 300.0  # a cold start pulls an image and loads a model: minutes
    max_held: int = 1024
    api_server: str | None = None  # None: in-cluster config, else ~/.kube/config
    retry_after_s: int = 30  # told to clients refused while the model is still coming up

    @classmethod
    def parse(cls, target: str, **kwargs: Any) -> ScaleFromZeroConfig:
        namespace, sep, name = target.partition("/")
        if not sep or not namespace or not name or "/" in name:
            raise ValueError(f"--scale-from-zero takes NAMESPACE/NAME, got {target!r}")
        return cls(namespace=namespace, name=name, **kwargs)


def _make_api(api_server: str | None) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(api_client(api_server))


class ScaleFromZero:
    def __init__(self, config: ScaleFromZeroConfig, workers: WorkerRegistry) -> None:
        self.config = config
        self.workers = workers
        self.held = 0
        self.scale_ups = 0  # patches to 1 replica
        self.scale_errors = 0
        self.timeouts = 0
        self.overflows = 0
        self._api: Any = None
        self._ready: asyncio.Event | None = None  # the current episode's "a worker is healthy"
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._api = await asyncio.to_thread(_make_api, self.config.api_server)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def guard(self, handler: Handler) -> Handler:
        async def held(request: Request) -> AnyResponse:
            if not self.workers.healthy:
                refusal = await self.wait_for_worker()
                if refusal is not None:
                    return refusal
            return await handler(request)

        return held

    async def wait_for_worker(self) -> Response | None:
        """Hold until a worker is healthy (None), or the 503 to answer."""
        if self.held >= self.config.max_held:
            self.overflows += 1
            return self._unavailable(f"{self.held} requests already wait for it")
        self.held += 1
        try:
            ready = self._episode()
            await asyncio.wait_for(ready.wait(), self.config.timeout_s)
            return None
        except TimeoutError:
            self.timeouts += 1
            return self._unavailable(f"no replica became ready within {self.config.timeout_s:g}s")
        finally:
            self.held -= 1

    def _unavailable(self, why: str) -> Response:
        c = self.config
        return error_response(503, f"the model is scaling up from zero replicas (InferenceServer "
                                   f"{c.namespace}/{c.name}): {why}; retry later",
                              err_type="service_unavailable", code="model_scaling_up",
                              headers={"Retry-After": str(c.retry_after_s)})

    def _episode(self) -> asyncio.Event:
        if self._ready is None:
            self._ready = asyncio.Event()
            self._spawn(self._scale_up(), "router-scale-from-zero")
            self._spawn(self._watch(self._ready), "router-scale-from-zero-watch")
        return self._ready

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, ready: asyncio.Event) -> None:
        try:
            while not self.workers.healthy:
                if self.held == 0:
                    return  # every held request timed out: the next one starts a new episode
                await asyncio.sleep(POLL_S)
            ready.set()
        finally:
            self._ready = None

    async def _scale_up(self) -> None:
        c = self.config
        started = time.monotonic()
        try:
            replicas = await asyncio.to_thread(self._read_replicas)
            if replicas > 0:
                log.info("scale from zero: %s/%s already wants %d replica(s); holding requests",
                         c.namespace, c.name, replicas)
                return
            await asyncio.to_thread(self._patch_replicas, 1)
            self.scale_ups += 1
            log.info("scale from zero: patched %s/%s to 1 replica (%.2fs)", c.namespace, c.name,
                     time.monotonic() - started)
        except Exception as exc:  # RBAC, API server down: requests stay held until their timeout
            self.scale_errors += 1
            log.warning("scale from zero: could not scale %s/%s up: %s: %s", c.namespace, c.name,
                        type(exc).__name__, exc)

    def _read_replicas(self) -> int:
        c = self.config
        scale = self._api.get_namespaced_custom_object_scale(GROUP, VERSION, c.namespace, PLURAL, c.name,
                                                             _request_timeout=10)
        return int(((scale or {}).get("spec") or {}).get("replicas") or 0)

    def _patch_replicas(self, replicas: int) -> None:
        c = self.config
        self._api.patch_namespaced_custom_object_scale(GROUP, VERSION, c.namespace, PLURAL, c.name,
                                                       {"spec": {"replicas": replicas}},
                                                       _content_type="application/merge-patch+json",
                                                       _request_timeout=10)


class ScaleCollector(Collector):
    def __init__(self, scaler: ScaleFromZero, prefix: str) -> None:
        self._s = scaler
        self._prefix = prefix

    def collect(self) -> Iterable[Metric]:
        s, p = self._s, self._prefix
        yield GaugeMetricFamily(f"{p}_scale_from_zero_held_requests",
                                "Requests held while the InferenceServer scales up from zero.", value=s.held)
        yield CounterMetricFamily(f"{p}_scale_from_zero_scale_ups", "Patches of the scale subresource to 1 replica.",
                                  value=s.scale_ups)
        refused = CounterMetricFamily(f"{p}_scale_from_zero_refused_requests",
                                      "Held requests answered 503: timeout, or too many held.", labels=["reason"])
        refused.add_metric(["timeout"], s.timeouts)
        refused.add_metric(["too_many_held"], s.overflows)
        yield refused
        yield CounterMetricFamily(f"{p}_scale_from_zero_errors", "Failed reads or patches of the scale subresource.",
                                  value=s.scale_errors)
