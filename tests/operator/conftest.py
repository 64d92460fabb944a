"""Fixtures: kmock's API server (with the additions in operator_harness) and the
operator running in it with a fresh kopf registry per test."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

import kmock
import kopf
import kubernetes
import pytest

from radixserve.operator import names
from radixserve.operator.config import OperatorConfig
from radixserve.operator.handlers import register
from radixserve.operator.kube import KubeClient
from tests.operator.operator_harness import (
    CR_RESOURCE,
    DEPLOYMENTS,
    NAMESPACE,
    TEST_DEFAULTS,
    ApiServer,
    Harness,
)


class _ErrorCollector(logging.Handler):
    """Keeps kopf's error logs (handler failures) so a timeout can say what went wrong."""

    def __init__(self, sink: list[str]) -> None:
        super().__init__(level=logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


@pytest.fixture()
def operator_config() -> OperatorConfig:
    # Resync and download-progress timers off by default (timers make kopf add its
    # finalizer): tests that want them ask for them.
    return OperatorConfig(defaults=TEST_DEFAULTS, resync_seconds=0, retry_seconds=0.5, progress_seconds=0)


@pytest.fixture()
async def api_server() -> AsyncIterator[ApiServer]:
    server = ApiServer()
    server.resources.load_bundled()
    server.resources[CR_RESOURCE] = kmock.ResourceInfo(
        kind=names.KIND, singular=names.SINGULAR, namespaced=True, shortnames=set(names.SHORT_NAMES),
        verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
        subresources={"status", "scale"},
    )
    async with server, kmock.Server(server):
        yield server


@pytest.fixture()
async def harness(api_server: ApiServer, operator_config: OperatorConfig) -> AsyncIterator[Harness]:
    url = str(api_server.url).rstrip("/")
    configuration = kubernetes.client.Configuration(host=url)
    client = KubeClient.from_configuration(configuration)
    harness = Harness(server=api_server, client=client)
    collector = _ErrorCollector(harness.handler_errors)
    logging.getLogger("kopf").addHandler(collector)

    registry = kopf.OperatorRegistry()  # a fresh one per test: handlers must not leak between tests

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url)

    @kopf.on.startup(registry=registry)
    def fast_settings(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.watching.reconnect_backoff = 0.1
        settings.queueing.idle_timeout = 0.5

    config = dataclasses.replace(operator_config, client_factory=lambda: client)
    register(registry, config)

    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(kopf.operator(
        registry=registry, standalone=True, namespaces=[NAMESPACE], ready_flag=ready, stop_flag=stop,
    ))
    await asyncio.wait_for(ready.wait(), timeout=10)
    # The watch streams open after the ready flag; objects created before a watch
    # starts are replayed by kmock anyway, but wait for both watches to be sure.
    await harness.wait_for("the operator's watches", lambda: {
        r.resource for r in list(api_server) if r.action == kmock.action.WATCH
    } >= {CR_RESOURCE, DEPLOYMENTS})
    try:
        yield harness
    finally:
        # Cancel rather than set the stop flag: on a graceful stop kopf waits 5 s for
        # every task started after it, which includes kmock's open watch streams.
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, timeout=10)
        logging.getLogger("kopf").removeHandler(collector)
