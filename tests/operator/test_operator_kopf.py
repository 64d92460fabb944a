"""The real kopf runs the real handlers against kmock's API server (see conftest.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from radixserve.operator import names, permissions
from radixserve.operator.apply import is_subset
from radixserve.operator.builders import BuildInput, Owner, desired_objects
from radixserve.operator.config import OperatorConfig
from radixserve.operator.reconcile import Target, reconcile
from radixserve.operator.spec import parse_spec
from tests.operator.operator_harness import (
    CR_RESOURCE,
    DEPLOYMENTS,
    NAMESPACE,
    OWNED,
    PVCS,
    ROLES,
    SERVICE_ACCOUNTS,
    SERVICES,
    TEST_AGENT,
    TEST_DEFAULTS,
    Harness,
)

GPU_SPEC: dict[str, Any] = {
    "model": {"pvc": {"claimName": "models", "subPath": "llama-3-8b"}},
    "servedModelName": "llama-3-8b",
    "replicas": 2,
    "tensorParallelSize": 2,
    "server": {"contextLength": 8192, "memFractionStatic": 0.85},
}
CPU_SPEC: dict[str, Any] = {"model": {"embedded": {}}, "resources": {"gpus": 0}}

EXPECTED_OBJECTS = {
    ("Deployment", "llm-server"),
    ("Service", "llm-server"),
    ("ServiceAccount", "llm-router"),
    ("Role", "llm-router"),
    ("RoleBinding", "llm-router"),
    ("Deployment", "llm-router"),
    ("Service", "llm"),
    ("PodDisruptionBudget", "llm-server"),
    ("PodDisruptionBudget", "llm-router"),  # two router replicas by default
}


async def make_pvc(harness: Harness, name: str, modes: tuple[str, ...] = ("ReadOnlyMany",)) -> None:
    await harness.put_object(f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims", {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"accessModes": list(modes), "resources": {"requests": {"storage": "50Gi"}}},
    })


async def make_secret(harness: Harness, name: str, data: dict[str, str]) -> None:
    await harness.put_object(f"/api/v1/namespaces/{NAMESPACE}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NAMESPACE}, "data": data,
    })


def server_container(harness: Harness, name: str = "llm-server") -> dict[str, Any]:
    deployment = harness.live(DEPLOYMENTS, name)
    assert deployment is not None
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


async def create_and_wait(harness: Harness, spec: dict[str, Any], name: str = "llm") -> dict[str, Any]:
    cr = await harness.create(name, spec)
    await harness.wait_for("the endpoint Service", lambda: harness.live(SERVICES, name))
    await harness.settle()
    return cr


async def test_create_produces_exactly_the_expected_objects(harness: Harness) -> None:
    await make_pvc(harness, "models")
    cr = await create_and_wait(harness, GPU_SPEC)

    owned = harness.owned_objects()
    assert set(owned) == EXPECTED_OBJECTS
    # Each live object is what the pure builders produce for this spec and owner.
    owner = Owner("llm", NAMESPACE, cr["metadata"]["uid"])
    for want in desired_objects(BuildInput(owner, parse_spec(GPU_SPEC), TEST_DEFAULTS)):
        assert is_subset(want, owned[(want["kind"], want["metadata"]["name"])])
    for obj in owned.values():
        (ref,) = obj["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("InferenceServer", "llm",
                                                                            cr["metadata"]["uid"], True)
    container = server_container(harness)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["image"] == TEST_DEFAULTS.image
    assert container["args"][4:6] == ["--model-path", "/mnt/models/llama-3-8b"]
    await harness.wait_for_event("llm", "Created")
    status = harness.existing_cr("llm")["status"]
    assert status["url"] == "http://llm.default.svc"
    assert status["model"] == "llama-3-8b"
    assert harness.handler_errors == []


async def test_replicas_image_and_tp_changes_roll_out_in_place(harness: Harness) -> None:
    await create_and_wait(harness, CPU_SPEC)
    before = harness.live(DEPLOYMENTS, "llm-server")
    assert before is not None and before["spec"]["replicas"] == 1

    await harness.patch_spec("llm", {"replicas": 3, "image": "registry.test/radixserve:v2",
                                     "tensorParallelSize": 2, "resources": {"gpus": None}})

    def rolled_out() -> bool:
        c = server_container(harness)
        d = harness.live(DEPLOYMENTS, "llm-server")
        return bool(d and d["spec"]["replicas"] == 3 and c["image"] == "registry.test/radixserve:v2"
                    and c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu") == 2)
    await harness.wait_for("the new replicas, image and GPU count", rolled_out)

    after = harness.live(DEPLOYMENTS, "llm-server")
    assert after is not None
    # Patched, not replaced: same object, a rolling update strategy, the new TP on the command line.
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["spec"]["strategy"]["type"] == "RollingUpdate"
    args = server_container(harness)["args"]
    assert args[args.index("--tp") + 1] == "2" and args[args.index("--device") + 1] == "cuda"
    await harness.wait_for_event("llm", "Updated")
    await harness.settle()
    assert harness.existing_cr("llm")["status"]["observedGeneration"] == harness.existing_cr("llm")["metadata"]["generation"]


async def test_scale_subresource_scales_the_server_deployment(harness: Harness) -> None:
    await create_and_wait(harness, CPU_SPEC)
    # What `kubectl scale rsvc/llm --replicas=4` sends. (kmock stores the Scale body
    # on the object; the real mapping is the CRD's specReplicasPath, tested there.)
    await harness.request("PATCH", f"/apis/{names.API_VERSION}/namespaces/{NAMESPACE}/{names.PLURAL}/llm/scale",
                          {"spec": {"replicas": 4}})
    await harness.wait_for("4 replicas", lambda: harness.existing(DEPLOYMENTS, "llm-server")["spec"]["replicas"] == 4)


async def test_status_follows_the_owned_deployments(harness: Harness) -> None:
    await create_and_wait(harness, {**CPU_SPEC, "replicas": 2, "router": {"replicas": 1}})
    ready = harness.condition("llm", "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("False", "ReplicasNotReady")

    await harness.set_deployment_status("llm-server", {"replicas": 2, "updatedReplicas": 2, "readyReplicas": 1})
    await harness.wait_for("1/2 ready", lambda: harness.existing_cr("llm")["status"]["readyReplicas"] == 1)
    assert harness.existing_condition("llm", "Ready")["reason"] == "ReplicasNotReady"

    await harness.set_deployment_status("llm-server", {"replicas": 2, "updatedReplicas": 2, "readyReplicas": 2})
    await harness.wait_for("router not ready",
                           lambda: harness.existing_condition("llm", "Ready")["reason"] == "RouterNotReady")
    await harness.set_deployment_status("llm-router", {"replicas": 1, "updatedReplicas": 1, "readyReplicas": 1})
    await harness.wait_for("Ready=True", lambda: harness.existing_condition("llm", "Ready")["status"] == "True")
    status = harness.existing_cr("llm")["status"]
    assert status["readyReplicas"] == 2 and status["routerReadyReplicas"] == 1
    assert harness.existing_condition("llm", "Progressing")["status"] == "False"
    await harness.wait_for_event("llm", "Ready")

    await harness.set_deployment_status("llm-server", {"replicas": 2, "updatedReplicas": 1, "readyReplicas": 2,
                                                       "conditions": [{
                                                           "type": "Progressing", "status": "False",
                                                           "reason": "ProgressDeadlineExceeded",
                                                           "message": "ReplicaSet has timed out progressing."}]})
    await harness.wait_for("Degraded=True", lambda: harness.existing_condition("llm", "Degraded")["status"] == "True")
    assert "ProgressDeadlineExceeded" in harness.existing_condition("llm", "Degraded")["message"]
    assert harness.handler_errors == []


@pytest.mark.parametrize(("spec", "reason", "field"), [
    ({"model": {"pvc": {"claimName": "nope"}}}, "PVCNotFound", "spec.model.pvc.claimName"),
    ({"tensorParallelSize": 4, "resources": {"gpus": 2}}, "InsufficientGPUs", "spec.resources.gpus"),
    ({**CPU_SPEC, "server": {"apiKeySecretRef": {"name": "missing"}}}, "SecretNotFound",
     "spec.server.apiKeySecretRef.name"),
    ({"tensorParallelSize": 3}, "InvalidSpec", "spec.tensorParallelSize"),  # what the schema would refuse
], ids=["missing-pvc", "gpus-below-tp", "missing-secret", "schema-invalid"])
# A long retry delay so that the operator goes idle and "nothing was created" is final.
@pytest.mark.parametrize("operator_config", [OperatorConfig(defaults=TEST_DEFAULTS, resync_seconds=0, retry_seconds=60, progress_seconds=0)])
async def test_invalid_spec_sets_the_condition_and_creates_nothing(
        harness: Harness, spec: dict[str, Any], reason: str, field: str, operator_config: OperatorConfig) -> None:
    await harness.create("llm", spec)
    ready = await harness.wait_for(f"Ready=False/{reason}", lambda: (
        c if (c := harness.condition("llm", "Ready")) and c["reason"] == reason else None))
    assert ready["status"] == "False" and field in ready["message"]
    assert harness.existing_condition("llm", "Degraded")["status"] == "True"
    await harness.settle()
    assert harness.owned_objects() == {}
    warning = await harness.wait_for_event("llm", reason, "Warning")
    assert field in warning["message"]


@pytest.mark.parametrize("operator_config", [OperatorConfig(defaults=TEST_DEFAULTS, resync_seconds=0, retry_seconds=60, progress_seconds=0)])
async def test_read_write_once_claim_with_two_replicas_is_refused(harness: Harness,
                                                                  operator_config: OperatorConfig) -> None:
    """Two replicas land on two nodes; a ReadWriteOnce claim mounts on one: a condition says so,
    and nothing is created (the second pod would hang in ContainerCreating)."""
    await make_pvc(harness, "rwo", ("ReadWriteOnce",))
    await harness.create("llm", {"model": {"pvc": {"claimName": "rwo"}}, "replicas": 2, "resources": {"gpus": 0}})
    ready = await harness.wait_for("Ready=False/PVCAccessMode", lambda: (
        c if (c := harness.condition("llm", "Ready")) and c["reason"] == "PVCAccessMode" else None))
    assert ready["status"] == "False" and "ReadWriteOnce" in ready["message"] and "spec.replicas is 2" in ready["message"]
    await harness.settle()
    assert harness.owned_objects() == {}


async def test_missing_pvc_is_retried_until_it_exists(harness: Harness) -> None:
    await harness.create("llm", {"model": {"pvc": {"claimName": "late"}}, "resources": {"gpus": 0}})
    await harness.wait_for("PVCNotFound", lambda: harness.existing_condition("llm", "Ready")["reason"] == "PVCNotFound")
    assert harness.owned_objects() == {}
    await make_pvc(harness, "late")
    await harness.wait_for("the objects, once the PVC exists", lambda: harness.live(SERVICES, "llm"))
    await harness.wait_for("the condition to clear",
                           lambda: harness.existing_condition("llm", "Ready")["reason"] == "ReplicasNotReady")


async def test_api_key_secret_is_injected_from_the_environment(harness: Harness) -> None:
    await make_secret(harness, "llm-key", {"token": "c2VjcmV0"})
    await create_and_wait(harness, {**CPU_SPEC, "server": {"apiKeySecretRef": {"name": "llm-key", "key": "token"}}})
    container = server_container(harness)
    assert {"name": "RADIXSERVE_API_KEY", "valueFrom": {"secretKeyRef": {"name": "llm-key", "key": "token"}}} \
        in container["env"]
    assert not any("api-key" in arg or "c2VjcmV0" in arg for arg in container["args"])


async def test_invalid_update_keeps_the_running_workload_untouched(harness: Harness) -> None:
    await create_and_wait(harness, CPU_SPEC)
    writes = harness.versions(DEPLOYMENTS, "llm-server")
    await harness.patch_spec("llm", {"tensorParallelSize": 2, "resources": {"gpus": 1}})
    await harness.wait_for("InsufficientGPUs",
                           lambda: harness.existing_condition("llm", "Ready")["reason"] == "InsufficientGPUs")
    await harness.settle()
    assert harness.versions(DEPLOYMENTS, "llm-server") == writes


async def test_disabling_the_router_removes_it_and_points_the_service_at_the_replicas(harness: Harness) -> None:
    await create_and_wait(harness, CPU_SPEC)
    await harness.patch_spec("llm", {"router": {"enabled": False}})
    await harness.wait_for("the router to go", lambda: harness.live(DEPLOYMENTS, "llm-router") is None)
    await harness.settle()
    assert harness.live(SERVICE_ACCOUNTS, "llm-router") is None and harness.live(ROLES, "llm-router") is None
    service = harness.live(SERVICES, "llm")
    assert service is not None and service["spec"]["selector"] == names.server_selector("llm")
    await harness.wait_for_event("llm", "Deleted")


async def test_deleting_the_resource_leaves_cleanup_to_owner_references(harness: Harness) -> None:
    cr = await create_and_wait(harness, CPU_SPEC)
    assert not harness.existing_cr("llm")["metadata"].get("finalizers")  # nothing blocks deletion
    await harness.delete(f"/apis/{names.API_VERSION}/namespaces/{NAMESPACE}/{names.PLURAL}/llm")
    await harness.wait_for("the resource to be gone", lambda: harness.cr("llm") is None)
    versions = {key: harness.versions(OWNED[key[0]], key[1]) for key in harness.owned_objects()}
    await harness.settle()
    # The operator did not touch (or re-create) the children of a deleted resource; the
    # garbage collector removes them through their owner reference (kmock has none).
    assert {key: harness.versions(OWNED[key[0]], key[1]) for key in harness.owned_objects()} == versions
    for obj in harness.owned_objects().values():
        assert obj["metadata"]["ownerReferences"][0]["uid"] == cr["metadata"]["uid"]
    assert harness.handler_errors == []


async def test_reconciling_twice_changes_nothing(harness: Harness) -> None:
    cr = await create_and_wait(harness, GPU_SPEC | {"model": {"embedded": {}}})
    # Owned-object events start passes too (drift repair): let those of the creation end.
    await harness.settle(quiet=2.0, timeout=30)
    versions = {key: harness.versions(OWNED[key[0]], key[1]) for key in harness.owned_objects()}
    cr_versions = harness.versions(CR_RESOURCE, "llm")
    body = harness.cr("llm")
    assert body is not None
    outcome = await asyncio.to_thread(reconcile, harness.client, Target.from_body(body), TEST_DEFAULTS)
    assert (outcome.created, outcome.updated, outcome.deleted, outcome.status_written) == ([], [], [], False)
    assert {key: harness.versions(OWNED[key[0]], key[1]) for key in harness.owned_objects()} == versions
    assert harness.versions(CR_RESOURCE, "llm") == cr_versions
    assert cr["metadata"]["uid"] == body["metadata"]["uid"]


@pytest.mark.parametrize("operator_config", [OperatorConfig(defaults=TEST_DEFAULTS, resync_seconds=0.2, progress_seconds=0)])
async def test_periodic_resync_through_kopf_writes_nothing(harness: Harness, operator_config: OperatorConfig) -> None:
    await create_and_wait(harness, CPU_SPEC)
    # A resync is a full reconcile pass now (drift repair): let the passes of the creation end.
    await harness.settle(quiet=2.0, timeout=30)
    versions = {key: harness.versions(OWNED[key[0]], key[1]) for key in harness.owned_objects()}
    cr_versions = harness.versions(CR_RESOURCE, "llm")

    def cr_reads() -> int:
        return sum(1 for r in list(harness.server) if r.method.value == "GET" and r.name == "llm"
                   and r.resource == CR_RESOURCE)
    reads = cr_reads()
    await harness.wait_for("three more resyncs", lambda: cr_reads() >= reads + 3)
    assert {key: harness.versions(OWNED[key[0]], key[1]) for key in harness.owned_objects()} == versions
    assert harness.versions(CR_RESOURCE, "llm") == cr_versions


def _verb(request: Any) -> str:
    method = request.method.value
    if method == "GET":
        return "watch" if request.params.get("watch") == "true" else "get" if request.name else "list"
    return {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}[method]


async def test_every_api_call_is_granted_by_the_declared_permissions(harness: Harness) -> None:
    """Run the operator through its paths, then check each request it sent against
    `permissions.RULES` (which the chart's RBAC must equal, see test_operator_chart)."""
    await make_pvc(harness, "models")
    await make_secret(harness, "key", {"api-key": "eA=="})
    await create_and_wait(harness, {**GPU_SPEC, "server": {"apiKeySecretRef": {"name": "key"}}})
    await harness.set_deployment_status("llm-server", {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2})
    await harness.patch_spec("llm", {"router": {"enabled": False}})
    await harness.wait_for("the router to go", lambda: harness.live(DEPLOYMENTS, "llm-router") is None)
    await harness.settle()

    granted = {(r.api_group, r.resource, verb) for r in permissions.RULES + permissions.NODE_RULES
               for verb in r.verbs}
    used = set()
    for request in list(harness.server):
        if request.resource is None or request.resource.plural is None or request.headers.get("User-Agent") == TEST_AGENT:
            continue  # discovery, or the test itself acting as a user
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        verb = _verb(request)
        used.add((request.resource.group, resource, verb))
        if verb == "patch" and "apply-patch" in request.headers.get("Content-Type", ""):
            used.add((request.resource.group, resource, "create"))  # apply may create
    assert used - granted == set()
    assert {("apps", "deployments", "patch"), ("", "secrets", "get"), ("", "events", "create"),
            (names.GROUP, f"{names.PLURAL}/status", "patch")} <= used
    assert harness.live(PVCS, "models") is not None
