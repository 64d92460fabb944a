"""The set of workers the router knows, their health state and their load."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)


class WorkerState(StrEnum):
    PENDING = "pending"  # added, not yet health-checked: receives no traffic
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"  # ejected: failed health checks or a connection; re-admitted by checks


class WorkerSource(StrEnum):
    STATIC = "static"  # --worker-urls
    API = "api"  # POST /add_worker
    KUBERNETES = "kubernetes"  # EndpointSlice discovery


def normalize_url(url: str) -> str:
    """`host:port` or `http://host:port/` -> `http://host:port`; raises ValueError when unusable."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) worker URL: {url!r}")
    try:
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as exc:
        raise ValueError(f"bad port in worker URL {url!r}") from exc
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


@dataclass(eq=False)
class Worker:
    url: str
    source: WorkerSource
    state: WorkerState = WorkerState.PENDING
    outstanding: int = 0  # requests sent and not yet finished: the load the policies see
    requests_total: int = 0
    failures_total: int = 0
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    last_error: str | None = None
    added_at: float = field(default_factory=time.time)

    @property
    def healthy(self) -> bool:
        return self.state is WorkerState.HEALTHY

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "state": self.state.value,
            "source": self.source.value,
            "outstanding_requests": self.outstanding,
            "requests_total": self.requests_total,
            "failures_total": self.failures_total,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
        }


class WorkerRegistry:
    """Workers by URL, with a cached list of the healthy ones for the request path.

    Listeners hear about removals (a policy drops that worker's tree) and state changes.
    """

    def __init__(self, failure_threshold: int = 3, success_threshold: int = 2) -> None:
        self.failure_threshold = failure_threshold
        self.success_threshold = success_threshold
        self._workers: dict[str, Worker] = {}
        self._healthy: list[Worker] = []
        self._on_added: list[Callable[[Worker], None]] = []
        self._on_removed: list[Callable[[Worker], None]] = []

    def subscribe(self, on_added: Callable[[Worker], None], on_removed: Callable[[Worker], None]) -> None:
        self._on_added.append(on_added)
        self._on_removed.append(on_removed)

    @property
    def healthy(self) -> list[Worker]:
        """Healthy workers; the same list object until membership or state changes."""
        return self._healthy

    def all(self) -> list[Worker]:
        return list(self._workers.values())

    def get(self, url: str) -> Worker | None:
        return self._workers.get(url)

    def __len__(self) -> int:
        return len(self._workers)

    def add(self, url: str, source: WorkerSource, state: WorkerState = WorkerState.PENDING) -> tuple[Worker, bool]:
        """Add a worker (URL normalized); returns (worker, created). Existing ones are kept."""
        url = normalize_url(url)
        existing = self._workers.get(url)
        if existing is not None:
            return existing, False
        worker = Worker(url=url, source=source, state=state)
        self._workers[url] = worker
        self._refresh()
        log.info("worker added: %s (%s, %s)", url, source.value, state.value)
        for cb in self._on_added:
            cb(worker)
        return worker, True

    def remove(self, url: str) -> Worker | None:
        worker = self._workers.pop(normalize_url(url), None)
        if worker is None:
            return None
        self._refresh()
        log.info("worker removed: %s", worker.url)
        for cb in self._on_removed:
            cb(worker)
        return worker

    def record_success(self, worker: Worker) -> None:
        """A health check passed: re-admit after `success_threshold` in a row (first one if pending)."""
        worker.consecutive_failures = 0
        worker.consecutive_successes += 1
        if worker.state is not WorkerState.HEALTHY and (
            worker.state is WorkerState.PENDING or worker.consecutive_successes >= self.success_threshold
        ):
            self._set_state(worker, WorkerState.HEALTHY, None)

    def record_failure(self, worker: Worker, reason: str, *, eject_now: bool = False) -> None:
        """A health check or a connection failed; eject after `failure_threshold` in a row.

        `eject_now` is for failures on the request path (connection refused/reset): the
        worker is very likely gone, so it gets no more traffic until health checks pass.
        """
        worker.consecutive_successes = 0
        worker.consecutive_failures += 1
        worker.failures_total += 1
        worker.last_error = reason
        if worker.state is not WorkerState.UNHEALTHY and (
            eject_now or worker.state is WorkerState.PENDING or worker.consecutive_failures >= self.failure_threshold
        ):
            self._set_state(worker, WorkerState.UNHEALTHY, reason)

    def _set_state(self, worker: Worker, state: WorkerState, reason: str | None) -> None:
        if worker.url not in self._workers:
            return  # removed meanwhile: its in-flight requests may still report back
        level = logging.INFO if state is WorkerState.HEALTHY else logging.WARNING
        log.log(level, "worker %s: %s -> %s%s", worker.url, worker.state.value, state.value,
                f" ({reason})" if reason else "")
        worker.state = state
        self._refresh()

    def _refresh(self) -> None:
        # A new list object, so that a request iterating the old one is unaffected.
        self._healthy = [w for w in self._workers.values() if w.state is WorkerState.HEALTHY]
