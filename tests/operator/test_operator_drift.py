"""The operator reconciles to the desired state: drift repair, no finalizer, API refusals,
metrics, label-filtered watches, and leader election between two instances.

Everything runs the operator's real runner (`run_operator`, what `radixserve operator` runs)
with the DEFAULT periodic work on (resync and progress refresh at 0.5 s) against kmock
(see operator_runner.py for what the emulator adds).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import kmock
import kopf
import pytest

from radixserve.operator import names, permissions
from radixserve.operator.apply import EDITED, MISSING, Drift, plan_apply, with_hash
from radixserve.operator.builders import BuildInput, Owner, desired_objects
from radixserve.operator.config import OperatorConfig
from radixserve.operator.handlers import register
from radixserve.operator.leader import HELD, LEADING, ElectionConfig, LeaderElector, LeadershipLost
from radixserve.operator.owned import OWNED_KINDS
from radixserve.operator.spec import parse_spec
from radixserve.operator.status import Observed, compute_status
from tests.operator.operator_harness import (
    CR_RESOURCE,
    DEPLOYMENTS,
    NAMESPACE,
    OWNED,
    SERVICES,
    TEST_AGENT,
    TEST_DEFAULTS,
    Harness,
)
from tests.operator.operator_runner import (
    FAST_ARGS,
    LEASES,
    RunningOperator,
    StrictApiServer,
    client_for,
    election_args,
    invalid_status,
    running_operator,
    start_api_server,
    wait_until_serving,
)

CPU_SPEC: dict[str, Any] = {"model": {"embedded": {}}, "resources": {"gpus": 0}}
RESYNC = 0.5
LOADED = 30.0  # deadline for things that take a pass or two (the CI machine's 2 cores are shared)
CR_PATH = f"/apis/{names.API_VERSION}/namespaces/{NAMESPACE}/{names.PLURAL}"


@pytest.fixture()
async def api() -> AsyncIterator[StrictApiServer]:
    server = await start_api_server()
    async with server, kmock.Server(server):
        yield server


@pytest.fixture()
async def operator(api: StrictApiServer) -> AsyncIterator[tuple[Harness, RunningOperator]]:
    harness = Harness(server=api, client=client_for(api))
    async with running_operator(api, FAST_ARGS) as running:
        await wait_until_serving(harness, running)
        yield harness, running


def sample(running: RunningOperator, name: str, labels: dict[str, str] | None = None) -> float:
    value = running.process.metrics.registry.get_sample_value(name, labels or {})
    return float(value or 0.0)


def owned_versions(harness: Harness) -> dict[tuple[str, str], int]:
    return {key: harness.versions(OWNED[key[0]], key[1]) for key in harness.owned_objects() if key[0] in OWNED}


async def create(harness: Harness, spec: dict[str, Any], name: str = "llm", settle: bool = True) -> dict[str, Any]:
    cr = await harness.create(name, spec)
    await harness.wait_for("the endpoint Service", lambda: harness.live(SERVICES, name), timeout=LOADED)
    await harness.wait_for("the status", lambda: harness.condition(name, "Ready"), timeout=LOADED)
    if settle:  # (with leader election the Lease's renewals never let the API server go quiet)
        await harness.settle(timeout=LOADED)
    return cr


async def more_passes(harness: Harness, running: RunningOperator, trigger: str, result: str, count: int) -> None:
    """Wait (with a deadline, the machine may be loaded) until `count` more passes ran."""
    labels = {"trigger": trigger, "result": result}
    before = sample(running, "radixserve_operator_reconciles_total", labels)
    await harness.wait_for(f"{count} more {trigger} passes ({result})",
                           lambda: sample(running, "radixserve_operator_reconciles_total", labels) >= before + count,
                           timeout=LOADED)


def degraded_message(harness: Harness) -> str:
    return str(harness.existing_condition("llm", "Degraded")["message"])


async def test_deleted_and_edited_objects_are_repaired_once(operator: tuple[Harness, RunningOperator]) -> None:
    harness, running = operator
    await create(harness, CPU_SPEC)
    service_port = harness.existing(SERVICES, "llm")["spec"]["ports"]

    # Someone deletes the server Deployment: re-created (its DELETED event starts a pass; the
    # resync would too).
    await harness.delete(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/llm-server")
    await harness.wait_for("the Deployment back", lambda: harness.live(DEPLOYMENTS, "llm-server"), timeout=LOADED)
    event = await harness.wait_for_event("llm", "DriftRepaired")
    assert "Deployment llm-server re-created (it was deleted)" in event["message"]
    await harness.wait_for("the repair in Degraded's message", lambda: "last drift repair" in degraded_message(harness))
    assert harness.existing_condition("llm", "Degraded")["status"] == "False"

    # Someone edits the endpoint Service's port: restored, and said so.
    await harness.request("PATCH", f"/api/v1/namespaces/{NAMESPACE}/services/llm",
                          {"spec": {"ports": [{"name": "http", "port": 8081, "targetPort": "http", "protocol": "TCP"}]}})
    await harness.wait_for("the port restored", lambda: harness.existing(SERVICES, "llm")["spec"]["ports"] == service_port)
    await harness.wait_for("its event", lambda: any("Service llm restored (it was edited)" in e["message"]
                                                    for e in harness.events("llm") if e["reason"] == "DriftRepaired"))
    assert "Service llm restored" in degraded_message(harness)
    assert sample(running, "radixserve_operator_drift_repairs_total", {"kind": "Deployment", "drift": "missing"}) == 1
    assert sample(running, "radixserve_operator_drift_repairs_total", {"kind": "Service", "drift": "edited"}) == 1

    # A deletion no watch event reports (a watch that missed it): the next resync repairs it.
    api_objects = harness.server.objects
    api_objects[(SERVICES, NAMESPACE, "llm-server")].delete()  # kmock's store only: no event
    assert harness.live(SERVICES, "llm-server") is None
    await harness.wait_for("the resync's repair", lambda: harness.live(SERVICES, "llm-server"), timeout=LOADED)
    await harness.wait_for("it counted as drift", lambda: sample(
        running, "radixserve_operator_drift_repairs_total", {"kind": "Service", "drift": "missing"}) == 1)
    await harness.wait_for("its event", lambda: any("Service llm-server re-created (it was deleted)" in e["message"]
                                                    for e in harness.events("llm") if e["reason"] == "DriftRepaired"))

    # No hot loop: the repaired state makes no further writes, through several resyncs and the
    # watch events our own writes caused.
    await harness.settle(quiet=3 * RESYNC)
    versions, writes = owned_versions(harness), harness.write_count()
    await more_passes(harness, running, "resync", "ok", 2)
    extra = [(r.method.value, r.url.path, r.data) for r in list(harness.server)
             if r.method.value in ("POST", "PATCH", "PUT", "DELETE")][writes:]
    assert extra == [] and owned_versions(harness) == versions

    # The watches of owned kinds ask the API server for our objects only.
    watched = {r.resource.plural: r.params.get("labelSelector") for r in list(harness.server)
               if r.action == kmock.action.WATCH and r.resource is not None}
    selector = f"{names.LABEL_MANAGED_BY}={names.OPERATOR_NAME},{names.LABEL_INSTANCE}"
    for plural in ("deployments", "services", "serviceaccounts", "roles", "rolebindings", "jobs",
                   "persistentvolumeclaims", "pods"):
        assert watched[plural] == selector, plural

    # /metrics and /healthz of this instance.
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{running.process.metrics_port}/metrics") as resp:
            text = await resp.text()
        async with session.get(f"http://127.0.0.1:{running.process.metrics_port}/healthz") as health:
            assert health.status == 200
    assert 'radixserve_operator_drift_repairs_total{drift="missing",kind="Deployment"} 1.0' in text
    assert "radixserve_operator_managed_inferenceservers 1.0" in text
    assert 'radixserve_operator_reconcile_duration_seconds_count{trigger="spec"}' in text
    assert "radixserve_operator_leader 1.0" in text


async def test_no_finalizer_and_deletion_does_not_wait_for_the_operator(
        api: StrictApiServer, operator: tuple[Harness, RunningOperator]) -> None:
    harness, running = operator
    await create(harness, CPU_SPEC)
    await more_passes(harness, running, "resync", "ok", 1)  # the periodic work has run
    key = (CR_RESOURCE, NAMESPACE, "llm")
    history = [version.raw for version in api.objects[key].history if version is not None]
    assert history and not any(raw.get("metadata", {}).get("finalizers") for raw in history)

    assert await running.stop() == 0
    await harness.delete(f"{CR_PATH}/llm")
    assert harness.cr("llm") is None  # gone at once, with no operator running


def _bad_operator(request: kmock.Request) -> dict[str, Any] | None:
    """The API server's validation of a node selector operator, for the server Deployment."""
    if request.resource != DEPLOYMENTS or request.action != kmock.action.UPDATE:
        return None
    affinity = request.data.get("spec", {}).get("template", {}).get("spec", {}).get("affinity") or {}
    terms = ((affinity.get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get(
        "nodeSelectorTerms") or []
    for i, term in enumerate(terms):
        for j, expr in enumerate(term.get("matchExpressions") or []):
            if expr.get("operator") not in ("In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"):
                field = ("spec.template.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
                         f".nodeSelectorTerms[{i}].matchExpressions[{j}].operator")
                return invalid_status("Deployment", request.name or "", [{
                    "field": field,
                    "message": f'Unsupported value: "{expr.get("operator")}": supported values: "DoesNotExist", '
                               '"Exists", "Gt", "In", "Lt", "NotIn"'}])
    return None


def _affinity(operator: str) -> dict[str, Any]:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "gpu", "operator": operator, "values": ["a100"]}]}]}}}


async def test_an_object_the_api_refuses_becomes_a_condition_without_retries(
        api: StrictApiServer, operator: tuple[Harness, RunningOperator]) -> None:
    harness, running = operator
    api.refusals.append(_bad_operator)
    await harness.create("llm", {**CPU_SPEC, "scheduling": {"affinity": _affinity("Near")}})
    degraded = await harness.wait_for("Degraded=True/ApiRejected", lambda: (
        c if (c := harness.condition("llm", "Degraded")) and c["reason"] == "ApiRejected" else None))
    assert degraded["status"] == "True"
    assert "Deployment llm-server" in degraded["message"]
    assert "nodeSelectorTerms[0].matchExpressions[0].operator" in degraded["message"]
    assert "Unsupported value" in degraded["message"]
    assert harness.existing_condition("llm", "Ready")["reason"] == "ApiRejected"
    warning = await harness.wait_for_event("llm", "ApiRejected", "Warning")
    assert "matchExpressions[0].operator" in warning["message"]

    # A permanent error: neither kopf nor the resyncs send it again until the spec changes.
    await harness.settle(quiet=2 * RESYNC)
    attempts = len(api.refused)
    assert 1 <= attempts <= 2
    await more_passes(harness, running, "resync", "skipped", 3)
    assert len(api.refused) == attempts
    assert len([e for e in harness.events("llm") if e["reason"] == "ApiRejected"]) == 1
    assert harness.live(DEPLOYMENTS, "llm-server") is None
    assert sample(running, "radixserve_operator_errors_total", {"reason": "api-rejected"}) >= 1

    # Fixing the spec applies it.
    await harness.patch_spec("llm", {"scheduling": {"affinity": _affinity("In")}})
    await harness.wait_for("the Deployment", lambda: harness.live(DEPLOYMENTS, "llm-server"))
    await harness.wait_for("Degraded=False", lambda: harness.existing_condition("llm", "Degraded")["status"] == "False")


def _election(identity: str, lease: float = 2.0) -> ElectionConfig:
    return ElectionConfig(namespace=NAMESPACE, name="radixserve-operator", identity=identity,
                          lease_seconds=lease, renew_deadline=lease * 0.6, retry_period=0.1)


async def test_two_instances_elect_one_leader_and_hand_over(api: StrictApiServer) -> None:
    harness = Harness(server=api, client=client_for(api))
    async with running_operator(api, FAST_ARGS + election_args()) as a, \
            running_operator(api, FAST_ARGS + election_args()) as b:
        await harness.wait_for("a leader", lambda: a.serving or b.serving, timeout=LOADED)
        leader, standby = (a, b) if a.serving else (b, a)
        await wait_until_serving(harness, leader)
        await create(harness, CPU_SPEC, settle=False)
        await more_passes(harness, leader, "resync", "ok", 1)
        # The periodic resync may build the objects before kopf's watch hands the creation to
        # its handler (CI's loaded machine): the handler's pass comes, but not by a set time.
        await harness.wait_for("the leader's pass for the creation", lambda: sample(
            leader, "radixserve_operator_reconciles_total", {"trigger": "spec", "result": "ok"}) >= 1, timeout=LOADED)

        # Only the leader acts; the standby waits, healthy, with kopf not started.
        assert not standby.serving and standby.process.healthy()
        assert sample(standby, "radixserve_operator_reconciles_total", {"trigger": "resync", "result": "ok"}) == 0
        assert (sample(leader, "radixserve_operator_leader"), sample(standby, "radixserve_operator_leader")) == (1, 0)
        lease = harness.live(LEASES, "radixserve-operator")
        assert lease is not None and leader.process.elector is not None
        assert lease["spec"]["holderIdentity"] == leader.process.elector.identity

        # The leader stops cleanly (releases the Lease); the standby takes over and repairs
        # what happened in between.
        assert await leader.stop() == 0
        await harness.delete(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/llm-server")
        await harness.wait_for("the standby to take over", lambda: standby.serving, timeout=LOADED)
        await harness.wait_for("the new leader's repair", lambda: harness.live(DEPLOYMENTS, "llm-server"))
        lease = harness.existing(LEASES, "radixserve-operator")
        assert standby.process.elector is not None
        assert lease["spec"]["holderIdentity"] == standby.process.elector.identity
        assert lease["spec"]["leaseTransitions"] == 1

    # Every call the instances made is granted by the chart's rules.
    granted = {(r.api_group, r.resource, verb) for r in
               permissions.RULES + permissions.NODE_RULES + permissions.LEADER_ELECTION_RULES for verb in r.verbs}
    used = set()
    for request in list(api):
        if request.resource is None or request.resource.plural is None \
                or request.headers.get("User-Agent") == TEST_AGENT:
            continue
        method = request.method.value
        verb = {"POST": "create", "PATCH": "patch", "DELETE": "delete", "PUT": "update"}.get(method) or (
            "watch" if request.params.get("watch") == "true" else "get" if request.name else "list")
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        used.add((request.resource.group, resource, verb))
    assert ("coordination.k8s.io", "leases", "patch") in used
    assert used - granted == set()


async def test_lease_expiry_takeover_and_loss(api: StrictApiServer) -> None:
    """A leader that stops renewing (a crash) loses the Lease after its duration; when it comes
    back it finds another holder and steps down."""
    client = client_for(api)
    a = LeaderElector(lambda: client, _election("op-a", lease=0.6))
    b = LeaderElector(lambda: client, _election("op-b", lease=0.6))
    await a.acquire()
    assert a.is_leader and await asyncio.to_thread(b.try_acquire_or_renew) == HELD
    started = time.monotonic()
    await asyncio.wait_for(b.acquire(), timeout=5)  # a is silent: b waits out the lease
    assert time.monotonic() - started >= 0.5
    with pytest.raises(LeadershipLost, match="taken over"):
        await asyncio.wait_for(a.keep_leading(), timeout=5)
    assert (a.is_leader, b.is_leader) == (False, True)
    assert await asyncio.to_thread(b.try_acquire_or_renew) == LEADING


def test_no_handler_makes_kopf_add_its_finalizer() -> None:
    """kopf adds its finalizer for timers, daemons and on-delete handlers: none may be registered,
    whatever the periodic settings (a guard for whoever adds a handler)."""
    for config in (OperatorConfig(defaults=TEST_DEFAULTS), OperatorConfig(defaults=TEST_DEFAULTS, resync_seconds=0)):
        registry = kopf.OperatorRegistry()
        register(registry, config)
        assert list(registry._spawning.get_all_handlers()) == []  # timers and daemons
        changing = list(registry._changing.get_all_handlers())
        assert changing and not any(h.requires_finalizer for h in changing)


def test_every_kind_the_builders_emit_is_watched_and_repaired() -> None:
    """The list in owned.py drives watches, drift repair and RBAC: a builder's new kind must be in it."""
    specs = [CPU_SPEC, {**CPU_SPEC, "router": {"enabled": False}},
             {"model": {"uri": "hf://org/model", "cache": {"mode": "pvc", "size": "10Gi"}}, "resources": {"gpus": 0}}]
    listed = {(k.api_version, k.kind) for k in OWNED_KINDS}
    for spec in specs:
        for obj in desired_objects(BuildInput(Owner("llm", NAMESPACE, "uid-1"), parse_spec(spec), TEST_DEFAULTS)):
            assert (obj["apiVersion"], obj["kind"]) in listed
    rules = {(r.api_group, r.resource): set(r.verbs) for r in permissions.RULES}
    for kind in OWNED_KINDS:
        assert {"get", "list", "watch", "create", "patch"} <= rules[(kind.group, kind.plural)], kind


def test_drift_is_told_apart_from_a_spec_change() -> None:
    owner = Owner("llm", NAMESPACE, "uid-1")
    desired = desired_objects(BuildInput(owner, parse_spec(CPU_SPEC), TEST_DEFAULTS))
    live: list[dict[str, Any] | None] = [with_hash(obj) for obj in desired]
    edited = [dict(obj) if obj else None for obj in live]
    edited[0] = None  # deleted
    service = with_hash(desired[1])
    service["spec"] = {**service["spec"], "clusterIP": "10.0.0.1", "publishNotReadyAddresses": False}
    edited[1] = service
    plan = plan_apply(desired, edited, "uid-1", settled=True)
    assert plan.drift == [Drift("Deployment", "llm-server", MISSING), Drift("Service", "llm-server", EDITED)]
    # Not yet applied at this generation: a missing object is a creation, not drift.
    assert [d.how for d in plan_apply(desired, edited, "uid-1", settled=False).drift] == [EDITED]
    # A new spec (another hash) is a rollout, not drift.
    other = desired_objects(BuildInput(owner, parse_spec({**CPU_SPEC, "replicas": 3}), TEST_DEFAULTS))
    assert plan_apply(other, live, "uid-1", settled=True).drift == []
    assert not plan_apply(desired, live, "uid-1", settled=True).writes


def test_degraded_keeps_the_last_repair_until_something_fails() -> None:
    spec = parse_spec(CPU_SPEC)
    obs = Observed(generation=1, spec=spec, url="", server=None, router=None, name="llm",
                   repaired=["Deployment llm-server re-created (it was deleted)"])
    first = compute_status(obs, None, "2026-01-01T00:00:00Z")
    degraded = next(c for c in first["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "False" and degraded["message"].endswith(
        "last drift repair 2026-01-01T00:00:00Z: Deployment llm-server re-created (it was deleted)")
    later = compute_status(Observed(generation=1, spec=spec, url="", server=None, router=None, name="llm"),
                           first, "2026-01-01T00:05:00Z")
    assert next(c for c in later["conditions"] if c["type"] == "Degraded")["message"] == degraded["message"]
