"""`.status` of an InferenceServer, computed from what was observed (pure).

Conditions:
- Ready: every desired server replica passes its readiness probe and, with the
  router enabled, at least one router pod does. Rolling updates surge before they
  retire, so a healthy rollout keeps Ready=True.
- Progressing: a rollout or scale is under way (the Deployments have not yet
  reached the spec).
- Degraded: something needs a human: the spec is invalid, or a Deployment gave up
  (progress deadline exceeded, replica creation failing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from radixserve.operator import names
from radixserve.operator.checks import SpecProblem
from radixserve.operator.spec import InferenceServerSpec

Condition = dict[str, Any]


@dataclass(frozen=True)
class Observed:
    """Everything the status is computed from."""

    generation: int
    spec: InferenceServerSpec | None  # None when the spec does not parse
    url: str
    server: Mapping[str, Any] | None  # the live server Deployment, if any
    router: Mapping[str, Any] | None  # the live router Deployment, if any
    problems: Sequence[SpecProblem] = field(default_factory=tuple)
    name: str = ""


@dataclass(frozen=True)
class Rollout:
    """A Deployment's progress towards `desired` replicas."""

    desired: int
    total: int  # pods of any revision
    updated: int  # pods of the current revision
    ready: int
    caught_up: bool  # the controller has seen the latest Deployment spec
    failure: str | None  # why the controller gave up, if it did

    @property
    def complete(self) -> bool:
        return self.caught_up and self.updated >= self.desired and self.ready >= self.desired \
            and self.total == self.desired


def rollout_of(deployment: Mapping[str, Any] | None, desired: int) -> Rollout:
    if deployment is None:
        return Rollout(desired, 0, 0, 0, caught_up=False, failure=None)
    status: Mapping[str, Any] = deployment.get("status") or {}
    generation = deployment.get("metadata", {}).get("generation", 0)
    failure = None
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("status") == "False" \
                and cond.get("reason") == "ProgressDeadlineExceeded":
            failure = f"ProgressDeadlineExceeded: {cond.get('message', '')}".rstrip(": ")
        elif cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            failure = f"ReplicaFailure: {cond.get('message', '')}".rstrip(": ")
    return Rollout(
        desired=desired,
        total=int(status.get("replicas") or 0),
        updated=int(status.get("updatedReplicas") or 0),
        ready=int(status.get("readyReplicas") or 0),
        caught_up=int(status.get("observedGeneration") or 0) >= int(generation or 0) and bool(status),
        failure=failure,
    )


def condition(kind: str, ok: bool, reason: str, message: str) -> Condition:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message}


def _problem_conditions(problem: SpecProblem) -> list[Condition]:
    message = problem.describe()
    return [
        condition("Ready", False, problem.reason, message),
        condition("Progressing", False, problem.reason, "waiting for the spec to be fixed"),
        condition("Degraded", True, problem.reason, message),
    ]


def _workload_conditions(spec: InferenceServerSpec, server: Rollout, router: Rollout | None) -> list[Condition]:
    if spec.replicas == 0:
        ready = condition("Ready", False, "ScaledToZero", "spec.replicas is 0")
    elif server.ready < spec.replicas:
        ready = condition("Ready", False, "ReplicasNotReady",
                          f"{server.ready}/{spec.replicas} server replicas ready")
    elif router is not None and router.ready < 1:
        ready = condition("Ready", False, "RouterNotReady",
                          f"{server.ready}/{spec.replicas} server replicas ready, no router pod ready")
    else:
        ready = condition("Ready", True, "AllReplicasReady",
                          f"{server.ready}/{spec.replicas} server replicas ready"
                          + (f", {router.ready} router pod(s) ready" if router is not None else ""))

    pending = [f"server {server.updated}/{server.desired} updated, {server.ready} ready"] \
        if not server.complete else []
    if router is not None and not router.complete:
        pending.append(f"router {router.updated}/{router.desired} updated, {router.ready} ready")
    progressing = condition("Progressing", True, "RollingOut", "; ".join(pending)) if pending \
        else condition("Progressing", False, "RolloutComplete", "the workload matches the spec")

    failures = [f"server: {server.failure}"] if server.failure else []
    if router is not None and router.failure:
        failures.append(f"router: {router.failure}")
    degraded = condition("Degraded", True, "DeploymentFailed", "; ".join(failures)) if failures \
        else condition("Degraded", False, "AsExpected", "no failures observed")
    return [ready, progressing, degraded]


def _stamp(conditions: list[Condition], previous: Sequence[Mapping[str, Any]], now: str,
           generation: int) -> list[Condition]:
    """lastTransitionTime moves only when a condition's status flips."""
    before = {c.get("type"): c for c in previous}
    out = []
    for cond in conditions:
        old = before.get(cond["type"])
        changed = old is None or old.get("status") != cond["status"]
        stamped = dict(cond)
        stamped["lastTransitionTime"] = now if changed or not old else old.get("lastTransitionTime", now)
        stamped["observedGeneration"] = generation
        out.append(stamped)
    return out


def compute_status(obs: Observed, previous: Mapping[str, Any] | None, now: str) -> dict[str, Any]:
    """The full `.status`; `previous` is the current one (for transition times), `now` RFC 3339."""
    previous_conditions = list((previous or {}).get("conditions") or [])
    status: dict[str, Any] = {
        "observedGeneration": obs.generation,
        "url": obs.url,
        "selector": names.selector_string(names.server_selector(obs.name)),
    }
    if obs.problems or obs.spec is None:
        conditions = _problem_conditions(obs.problems[0]) if obs.problems else []
        server_rollout = rollout_of(obs.server, 0)
        status.update(replicas=server_rollout.total, readyReplicas=server_rollout.ready)
    else:
        spec = obs.spec
        server_rollout = rollout_of(obs.server, spec.replicas)
        router_rollout = rollout_of(obs.router, spec.router.replicas) if spec.router.enabled else None
        conditions = _workload_conditions(spec, server_rollout, router_rollout)
        status.update(
            model=spec.display_model,
            replicas=server_rollout.total,
            readyReplicas=server_rollout.ready,
            updatedReplicas=server_rollout.updated,
        )
        if router_rollout is not None:
            status["routerReadyReplicas"] = router_rollout.ready
    status["conditions"] = _stamp(conditions, previous_conditions, now, obs.generation)
    return status


def status_changed(current: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether writing `new` would change anything we own (transition times included)."""
    current = current or {}
    return any(current.get(key) != value for key, value in new.items())
