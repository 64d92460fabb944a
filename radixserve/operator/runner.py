"""One operator process: the metrics/health endpoint, leader election, then kopf.

With leader election every replica serves `/healthz` and `/metrics` and waits as a standby
until it holds the Lease; only then does it start kopf (watches, handlers, periodic work). A
leader that loses the Lease stops kopf at once and returns exit code 1, so its pod restarts as
a standby (what Kubernetes' own controllers do); a clean stop releases the Lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

import kopf

from radixserve.operator.config import OperatorConfig
from radixserve.operator.handlers import register
from radixserve.operator.kube import KubeClient
from radixserve.operator.leader import ElectionConfig, LeaderElector, LeadershipLost
from radixserve.operator.metrics import MetricsServer, OperatorMetrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSettings:
    config: OperatorConfig
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    standalone: bool = False  # kopf peering off (always off with leader election)
    liveness: str | None = None  # kopf's own liveness endpoint (only while kopf runs)
    metrics_host: str = "0.0.0.0"
    metrics_port: int | None = None  # None: no endpoint; 0: an ephemeral port (tests)
    election: ElectionConfig | None = None


@dataclass
class OperatorProcess:
    """What a running operator exposes to its caller (the tests read it)."""

    metrics: OperatorMetrics = dataclasses.field(default_factory=OperatorMetrics)
    elector: LeaderElector | None = None
    metrics_port: int | None = None
    kopf_started: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    _kopf_task: asyncio.Task[None] | None = None

    def healthy(self) -> bool:
        if self._kopf_task is not None:
            return not self._kopf_task.done()
        return self.elector is None or self.elector.alive()


async def run_operator(settings: RunSettings, prepare: Callable[[kopf.OperatorRegistry], None],
                       process: OperatorProcess | None = None, stop_flag: asyncio.Event | None = None) -> int:
    """Run until stopped (0) or until leadership is lost (1). `prepare` adds the login
    handler (and, in tests, faster kopf settings) to the fresh registry."""
    process = process or OperatorProcess()
    config = dataclasses.replace(settings.config, metrics=process.metrics)
    election = settings.election
    if election is not None:
        process.elector = LeaderElector(_once(config.client_factory), election,
                                        on_change=lambda leading: process.metrics.leader.set(1 if leading else 0))
    server = MetricsServer(process.metrics, process.healthy)
    if settings.metrics_port is not None:
        process.metrics_port = await server.start(settings.metrics_host, settings.metrics_port)
    renewal: asyncio.Task[None] | None = None
    try:
        if process.elector is not None and election is not None:
            logger.info("waiting for the leader Lease %s/%s as %s", election.namespace, election.name,
                        process.elector.identity)
            await process.elector.acquire()
        else:
            process.metrics.leader.set(1)
        registry = kopf.OperatorRegistry()
        prepare(registry)
        register(registry, config)
        if process.elector is not None:
            # Before kopf starts: on a graceful stop kopf waits 5 s for every task started after it.
            renewal = asyncio.create_task(process.elector.keep_leading())
        process._kopf_task = asyncio.create_task(kopf.operator(
            registry=registry,
            standalone=settings.standalone or election is not None,
            liveness_endpoint=settings.liveness,
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            stop_flag=stop_flag,
            ready_flag=process.kopf_started,
        ))
        if renewal is None:
            await process._kopf_task
            return 0
        done, _ = await asyncio.wait({process._kopf_task, renewal}, return_when=asyncio.FIRST_COMPLETED)
        if renewal in done:
            with contextlib.suppress(LeadershipLost):
                renewal.result()
            logger.error("leadership lost: stopping the operator")
            return 1
        return 0
    finally:
        for task in (renewal, process._kopf_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if process.elector is not None:
            await asyncio.to_thread(process.elector.release)
        await server.stop()


def _once(factory: Callable[[], KubeClient]) -> Callable[[], KubeClient]:
    """One client for the elector, created on first use."""
    made: list[KubeClient] = []

    def get() -> KubeClient:
        if not made:
            made.append(factory())
        return made[0]
    return get
