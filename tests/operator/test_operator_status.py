"""`.status` from observed Deployments (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from radixserve.operator.checks import SpecProblem
from radixserve.operator.spec import parse_spec
from radixserve.operator.status import Observed, compute_status, rollout_of, status_changed

NOW, LATER = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def deployment(replicas: int, ready: int, updated: int | None = None, generation: int = 1,
               observed: int = 1, conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "status": {"observedGeneration": observed, "replicas": replicas, "readyReplicas": ready,
                   "updatedReplicas": replicas if updated is None else updated, "conditions": conditions or []},
    }


def observe(spec: dict[str, Any], server: dict[str, Any] | None, router: dict[str, Any] | None = None,
            problems: tuple[SpecProblem, ...] = (), generation: int = 3) -> Observed:
    # One router pod, as the router Deployments below have (the default is two).
    spec = {**spec, "router": {"replicas": 1, **spec.get("router", {})}}
    return Observed(generation=generation, spec=parse_spec(spec), url="http://llm.ns.svc", server=server,
                    router=router, problems=problems, name="llm")


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


@pytest.mark.parametrize(("spec", "server", "router", "expected"), [
    ({"replicas": 2}, deployment(2, 2), deployment(1, 1),
     {"Ready": ("True", "AllReplicasReady"), "Progressing": ("False", "RolloutComplete"),
      "Degraded": ("False", "AsExpected")}),
    ({"replicas": 2}, deployment(2, 1), deployment(1, 1),
     {"Ready": ("False", "ReplicasNotReady"), "Progressing": ("True", "RollingOut"),
      "Degraded": ("False", "AsExpected")}),
    ({"replicas": 2}, deployment(2, 2), deployment(1, 0),
     {"Ready": ("False", "RouterNotReady"), "Progressing": ("True", "RollingOut"),
      "Degraded": ("False", "AsExpected")}),
    ({"replicas": 2, "router": {"enabled": False}}, deployment(2, 2), None,
     {"Ready": ("True", "AllReplicasReady"), "Progressing": ("False", "RolloutComplete"),
      "Degraded": ("False", "AsExpected")}),
    # A surge rollout: 3 pods (2 old ready + 1 new loading): still Ready, Progressing.
    ({"replicas": 2}, deployment(3, 2, updated=1), deployment(1, 1),
     {"Ready": ("True", "AllReplicasReady"), "Progressing": ("True", "RollingOut"),
      "Degraded": ("False", "AsExpected")}),
    # The controller has not seen the new Deployment spec yet.
    ({"replicas": 2}, deployment(2, 2, generation=5, observed=4), deployment(1, 1),
     {"Ready": ("True", "AllReplicasReady"), "Progressing": ("True", "RollingOut"),
      "Degraded": ("False", "AsExpected")}),
    ({"replicas": 1}, None, None,
     {"Ready": ("False", "ReplicasNotReady"), "Progressing": ("True", "RollingOut"),
      "Degraded": ("False", "AsExpected")}),
    ({"replicas": 0}, deployment(0, 0), deployment(1, 1),
     {"Ready": ("False", "ScaledToZero"), "Progressing": ("False", "RolloutComplete"),
      "Degraded": ("False", "AsExpected")}),
    ({"replicas": 2}, deployment(2, 1, updated=1, conditions=[{
        "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "timed out"}]),
     deployment(1, 1),
     {"Ready": ("False", "ReplicasNotReady"), "Progressing": ("True", "RollingOut"),
      "Degraded": ("True", "DeploymentFailed")}),
    ({"replicas": 2}, deployment(2, 2), deployment(1, 0, conditions=[{
        "type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": "quota"}]),
     {"Ready": ("False", "RouterNotReady"), "Progressing": ("True", "RollingOut"),
      "Degraded": ("True", "DeploymentFailed")}),
], ids=["ready", "replica-loading", "router-loading", "no-router", "surge-rollout", "unobserved-generation",
        "nothing-yet", "scaled-to-zero", "deadline-exceeded", "replica-failure"])
def test_conditions(spec: dict[str, Any], server: dict[str, Any] | None, router: dict[str, Any] | None,
                    expected: dict[str, tuple[str, str]]) -> None:
    status = compute_status(observe(spec, server, router), None, NOW)
    assert conditions(status) == {**expected, "ModelReady": ("True", "Embedded")}
    assert all(c["observedGeneration"] == 3 and c["message"] for c in status["conditions"])


def test_counts_url_selector_and_generation() -> None:
    status = compute_status(observe({"replicas": 3, "servedModelName": "m"}, deployment(3, 2), deployment(2, 1)),
                            None, NOW)
    assert (status["replicas"], status["readyReplicas"], status["routerReadyReplicas"]) == (3, 2, 1)
    assert status["observedGeneration"] == 3 and status["url"] == "http://llm.ns.svc" and status["model"] == "m"
    assert status["selector"] == "radixserve.io/component=server,radixserve.io/inferenceserver=llm"


def test_a_spec_problem_wins_and_names_the_field() -> None:
    problem = SpecProblem("PVCNotFound", "spec.model.pvc.claimName", "PersistentVolumeClaim 'm' does not exist")
    status = compute_status(observe({}, deployment(1, 1), deployment(1, 1), problems=(problem,)), None, NOW)
    assert conditions(status) == {"Ready": ("False", "PVCNotFound"), "Progressing": ("False", "PVCNotFound"),
                                  "Degraded": ("True", "PVCNotFound"), "ModelReady": ("False", "PVCNotFound")}
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert "spec.model.pvc.claimName" in ready["message"]


def test_transition_time_moves_only_when_the_status_flips() -> None:
    first = compute_status(observe({"replicas": 1}, deployment(1, 0), deployment(1, 1)), None, NOW)
    same = compute_status(observe({"replicas": 1}, deployment(1, 0), deployment(1, 1)), first, LATER)
    assert same == first and not status_changed(first, same)
    flipped = compute_status(observe({"replicas": 1}, deployment(1, 1), deployment(1, 1)), first, LATER)
    times = {c["type"]: c["lastTransitionTime"] for c in flipped["conditions"]}
    assert times == {"Ready": LATER, "Progressing": LATER, "Degraded": NOW, "ModelReady": NOW}
    assert status_changed(first, flipped)


def test_rollout_of_an_absent_or_empty_deployment() -> None:
    assert not rollout_of(None, 1).complete
    assert not rollout_of({"metadata": {"generation": 1}}, 1).complete  # no status yet
    assert rollout_of(deployment(0, 0), 0).complete
