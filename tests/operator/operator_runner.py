"""The operator's real runner (`radixserve.operator.runner.run_operator`, what `radixserve
operator` runs) against kmock, with the emulator answering like an API server where the tests
need it and kmock does not on its own:
- `refusals`: a request a real API server would refuse gets its 422 `Status` (with
  `details.causes`), before kmock stores anything (kmock's own reactions run after it has
  already applied the write);
- Leases get a `resourceVersion` that moves on every write, and a write carrying an older one
  is answered 409 Conflict (optimistic concurrency, which leader election relies on).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp.web
import kmock
import kopf
import kubernetes

from radixserve.operator import names
from radixserve.operator.cli import parse_args, run_settings
from radixserve.operator.kube import KubeClient
from radixserve.operator.runner import OperatorProcess, RunSettings, run_operator
from tests.operator.operator_harness import (
    CR_RESOURCE,
    DEPLOYMENTS,
    NAMESPACE,
    TEST_DEFAULTS,
    ApiServer,
    Harness,
)

LEASES = kmock.resource("coordination.k8s.io", "v1", "leases")
Refusal = Callable[[kmock.Request], dict[str, Any] | None]


def invalid_status(kind: str, name: str, causes: list[dict[str, str]]) -> dict[str, Any]:
    """A 422 `Status` as the API server writes it for a field validation error."""
    text = ", ".join(f"{c['field']}: {c['message']}" for c in causes)
    return {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": 422,
            "reason": "Invalid", "message": f'{kind}.apps "{name}" is invalid: {text}',
            "details": {"name": name, "kind": kind.lower() + "s", "causes": [
                {"reason": "FieldValueNotSupported", **c} for c in causes]}}


class StrictApiServer(ApiServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refusals: list[Refusal] = []
        self.refused: list[kmock.Request] = []

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.resource is not None and isinstance(request.data, dict):
            for refusal in self.refusals:
                status = refusal(request)
                if status is not None:
                    self.refused.append(request)
                    return aiohttp.web.json_response(status, status=int(status["code"]))
            if request.resource == LEASES:
                conflict = self._lease_version(request)
                if conflict is not None:
                    return conflict
        result: aiohttp.web.StreamResponse = await super()._handle(request)
        return result

    def _lease_version(self, request: kmock.Request) -> aiohttp.web.StreamResponse | None:
        meta = request.data.setdefault("metadata", {})
        if request.action == kmock.action.CREATE:
            meta["resourceVersion"] = "1"
        elif request.action == kmock.action.UPDATE and request.name is not None and request.resource is not None:
            key = (request.resource, request.namespace, request.name)
            if key in self._objects and not self._objects[key].deleted:
                current = str(self._objects[key].raw.get("metadata", {}).get("resourceVersion", "0"))
                if meta.get("resourceVersion") not in (None, current):
                    return aiohttp.web.json_response({"kind": "Status", "code": 409, "reason": "Conflict",
                                                      "message": "the object has been modified"}, status=409)
                meta["resourceVersion"] = str(int(current) + 1)
        return None


async def start_api_server() -> StrictApiServer:
    server = StrictApiServer()
    server.resources.load_bundled()
    server.resources[CR_RESOURCE] = kmock.ResourceInfo(
        kind=names.KIND, singular=names.SINGULAR, namespaced=True, shortnames=set(names.SHORT_NAMES),
        verbs={"get", "list", "watch", "create", "patch", "update", "delete"}, subresources={"status", "scale"})
    server.resources[LEASES] = kmock.ResourceInfo(kind="Lease", singular="lease", namespaced=True,
                                                  verbs={"get", "list", "watch", "create", "patch", "delete"})
    return server


def client_for(server: ApiServer) -> KubeClient:
    return KubeClient.from_configuration(kubernetes.client.Configuration(host=str(server.url).rstrip("/")))


def prepare_for(server: ApiServer) -> Callable[[kopf.OperatorRegistry], None]:
    url = str(server.url).rstrip("/")

    def prepare(registry: kopf.OperatorRegistry) -> None:
        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=url)

        @kopf.on.startup(registry=registry)
        def fast_settings(settings: kopf.OperatorSettings, **_: Any) -> None:
            settings.watching.reconnect_backoff = 0.1
            settings.queueing.idle_timeout = 0.5
    return prepare


class RunningOperator:
    """`run_operator` in a thread with its own event loop, as in a process of its own. (In the
    tests' loop it could not stop: when kopf stops, it cancels every task created after it
    started, the test's own task included.)"""

    def __init__(self, settings: RunSettings, prepare: Callable[[kopf.OperatorRegistry], None]) -> None:
        self.process = OperatorProcess()
        self.result: int | None = None
        self._settings, self._prepare = settings, prepare
        self._loop = asyncio.new_event_loop()
        self._stop_flag: asyncio.Event | None = None
        self._task: asyncio.Task[int] | None = None
        self._thread = threading.Thread(target=self._main, name="operator", daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        with contextlib.suppress(asyncio.CancelledError):
            self.result = self._loop.run_until_complete(self._run())
        self._loop.close()

    async def _run(self) -> int:
        self._stop_flag = asyncio.Event()
        self.process.kopf_started = asyncio.Event()
        self._task = asyncio.current_task()
        return await run_operator(self._settings, self._prepare, self.process, self._stop_flag)

    def start(self) -> None:
        self._thread.start()

    @property
    def serving(self) -> bool:
        return self.process.kopf_started.is_set()

    async def stop(self, gracefully: bool = True) -> int | None:
        """Graceful: the stop flag (kopf exits, the Lease is released); else the task is cancelled."""
        if self._thread.is_alive():
            if gracefully and self._stop_flag is not None:
                self._loop.call_soon_threadsafe(self._stop_flag.set)
            elif self._task is not None:
                self._loop.call_soon_threadsafe(self._task.cancel)
            await asyncio.to_thread(self._thread.join, 20)
        return self.result


@contextlib.asynccontextmanager
async def running_operator(server: ApiServer, argv: list[str]) -> AsyncIterator[RunningOperator]:
    """`radixserve operator ARGV` (parsed by the CLI's own parser into the CLI's run settings),
    with the handlers' client pointed at the emulator and the metrics endpoint on an
    ephemeral port of 127.0.0.1."""
    client = client_for(server)
    settings = run_settings(parse_args([*argv, "--metrics-bind-address", "127.0.0.1"]))
    settings = dataclasses.replace(settings, metrics_port=0,
                                   config=dataclasses.replace(settings.config, client_factory=lambda: client))
    running = RunningOperator(settings, prepare_for(server))
    running.start()
    try:
        yield running
    finally:
        await running.stop(gracefully=False)


async def wait_until_serving(harness: Harness, running: RunningOperator) -> None:
    await harness.wait_for("kopf to start", lambda: running.serving, timeout=30)
    await harness.wait_for("the operator's watches", lambda: {
        r.resource for r in list(harness.server) if r.action == kmock.action.WATCH
    } >= {CR_RESOURCE, DEPLOYMENTS}, timeout=30)


# The defaults (resync and progress refresh on), with short intervals.
FAST_ARGS = ["--namespace", NAMESPACE, "--standalone", "--resync-seconds", "0.5", "--retry-seconds", "0.5",
             "--progress-seconds", "0.5", "--default-image", TEST_DEFAULTS.image,
             "--default-cpu-image", TEST_DEFAULTS.cpu_image]


def election_args(lease: float = 2.0) -> list[str]:
    return ["--leader-election", "--leader-election-namespace", NAMESPACE,
            "--lease-duration-seconds", str(lease), "--renew-deadline-seconds", str(lease * 0.6),
            "--retry-period-seconds", "0.1"]


class ErrorCollector(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(level=logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())
