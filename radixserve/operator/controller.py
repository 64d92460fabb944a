"""What each trigger does to one InferenceServer: reconcile (spec change, owned-object event,
periodic resync) or refresh its status, then post Events and record metrics.

kopf's handlers (`handlers.py`) and the periodic resync (`periodic.py`) both call in here. One
lock per InferenceServer serialises the passes: events of several owned objects arrive at once
(a deleted router brings its Deployment, Role, RoleBinding and ServiceAccount), and two
concurrent passes would both repair the same object and both report it.

Event storms are coalesced: creating an InferenceServer makes a dozen objects, each with its
own watch event. A pass triggered by an event is skipped when another pass started after the
event arrived (that pass already saw its effect), so a burst costs one or two passes, not one
per event.

No hot loop: a pass that repaired something causes watch events on the objects it wrote; the
next pass finds them equal to what the spec builds (the applied-hash annotation plus a subset
comparison, see `apply.py`) and writes nothing, so the cycle ends after one quiet pass.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from radixserve.operator import events
from radixserve.operator.config import OperatorConfig
from radixserve.operator.kube import KubeApiError, KubeClient
from radixserve.operator.metrics import (
    RESULT_OK,
    RESULT_PROBLEM,
    RESULT_REJECTED,
    RESULT_SKIPPED,
    TRIGGER_SPEC,
    OperatorMetrics,
)
from radixserve.operator.reconcile import (
    API_REJECTED,
    CR_TYPE,
    Outcome,
    Target,
    check,
    reconcile,
    refused_before,
    utc_now,
    write_status,
)

logger = logging.getLogger(__name__)


def ready_state(status: Mapping[str, Any]) -> str | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            return str(cond.get("status"))
    return None


def model_state(status: Mapping[str, Any]) -> str | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == "ModelReady":
            return str(cond.get("reason"))
    return None


class Controller:
    def __init__(self, config: OperatorConfig, client: Callable[[], KubeClient],
                 metrics: OperatorMetrics | None = None) -> None:
        self.config = config
        self.client = client
        self.metrics = metrics or config.metrics or OperatorMetrics()
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        # Coalescing: a global ticket counter, and the ticket at which each InferenceServer's
        # latest pass started.
        self._tickets = itertools.count(1)
        self._pass_started: dict[tuple[str, str], int] = {}

    @contextmanager
    def _serialised(self, namespace: str, name: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks.setdefault((namespace, name), threading.Lock())
        with lock:
            yield

    def forget(self, namespace: str, name: str) -> None:
        """The InferenceServer is gone: drop its lock and stop counting it."""
        with self._locks_guard:
            self._locks.pop((namespace, name), None)
            self._pass_started.pop((namespace, name), None)
        self.metrics.track(namespace, name, present=False)

    def live_body(self, namespace: str, name: str) -> dict[str, Any] | None:
        body = self.client().get(CR_TYPE, namespace, name)
        if body is None or body.get("metadata", {}).get("deletionTimestamp"):
            return None  # gone or going: its children are being collected
        return body

    def reconcile(self, body: Mapping[str, Any], trigger: str, fresh: bool = False) -> Outcome | None:
        """One reconcile pass. `body` may be stale (an owned object's event names only the
        owner): unless `fresh`, the InferenceServer is read again inside the lock, so a pass
        never acts on a status that an earlier pass already replaced."""
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        ticket = next(self._tickets)
        with self._serialised(namespace, name):
            if not fresh and self._pass_started.get((namespace, name), 0) > ticket:
                return None  # a pass that started after this trigger already saw its cause
            self._pass_started[(namespace, name)] = next(self._tickets)
            current = dict(body) if fresh else self.live_body(namespace, name)
            if current is None:
                return None
            self.metrics.track(namespace, name, present=True)
            target = Target.from_body(current)
            with self.metrics.reconcile_pass(trigger) as result:
                try:
                    outcome = reconcile(self.client(), target, self.config.defaults,
                                        retry_refused=trigger == TRIGGER_SPEC)
                except KubeApiError:
                    self.metrics.error("api-error")
                    raise
                except Exception:
                    self.metrics.error("exception")
                    raise
                result(self._result(outcome))
            self._report(current, target, outcome)
            return outcome

    def _result(self, outcome: Outcome) -> str:
        if outcome.skipped_refused:
            return RESULT_SKIPPED
        if outcome.problems and outcome.problems[0].reason == API_REJECTED:
            self.metrics.error("api-rejected")
            return RESULT_REJECTED
        return RESULT_PROBLEM if outcome.problems else RESULT_OK

    def _report(self, body: Mapping[str, Any], target: Target, outcome: Outcome) -> None:
        api = self.client()
        if outcome.created:
            events.post_event(api, body, "Created", "created " + ", ".join(outcome.created))
        if outcome.updated:
            events.post_event(api, body, "Updated", "rolling out changes to " + ", ".join(outcome.updated))
        if outcome.deleted:
            events.post_event(api, body, "Deleted", "deleted " + ", ".join(outcome.deleted))
        if outcome.repaired:
            for drift in outcome.repaired:
                self.metrics.repaired(drift.kind, drift.how)
            events.post_event(api, body, "DriftRepaired",
                              "repaired drift: " + ", ".join(d.describe() for d in outcome.repaired))
        # Only on a change of status, so a retried problem does not repeat its event.
        if outcome.problems and outcome.status_written:
            problem = outcome.problems[0]
            events.post_event(api, body, problem.reason, problem.describe(), warning=True)
        self._post_ready(body, target.status, outcome.status)

    def _post_ready(self, body: Mapping[str, Any], before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
        if ready_state(after) != ready_state(before) and ready_state(after) == "True":
            events.post_event(self.client(), body, "Ready", "all replicas are ready")

    def refresh_status(self, namespace: str, name: str, body: Mapping[str, Any] | None = None) -> None:
        """Rewrite the status only (download progress, which no watch event announces)."""
        with self._serialised(namespace, name):
            current = dict(body) if body is not None else self.live_body(namespace, name)
            if current is None:
                return
            api = self.client()
            target = Target.from_body(current)
            if refused_before(target):
                return  # the ApiRejected condition stands until the spec changes
            spec, problems = check(target, api)
            status, written = write_status(api, target, spec, problems, self.config.defaults, utc_now())
            if written:
                self._post_ready(current, target.status, status)
