"""Multi-node replicas (spec.nodesPerReplica > 1): the LeaderWorkerSet, the missing-CRD condition,
and the GPUs-per-pod cap.

The LWS CRD is not available offline, so its manifests are validated against a schema written from
LWS's API reference (kubernetes-sigs/lws, api/leaderworkerset/v1/leaderworkerset_types.go: the
fields of the spec we build, their enums and bounds, nothing else allowed), and the pod templates
inside it against Kubernetes' own PodTemplate schema (kubernetes-validate, strict).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from radixserve.operator import names
from radixserve.operator.builders import BuildInput, Capabilities, Owner, desired_objects, unwanted_objects
from radixserve.operator.builders.common import Defaults
from radixserve.operator.builders.multinode import LABEL_ROLE, LWS_API_VERSION
from radixserve.operator.kube import KubeApiError, ResourceType
from radixserve.operator.reconcile import Target, reconcile
from radixserve.operator.spec import SpecError, parse_spec
from radixserve.server.launch import build_parser
from radixserve.server_args import ServerArgs
from tests.operator.operator_testkit import EXAMPLES_DIR, cr, load_yaml_documents, schema_errors
from tests.operator.pod_security import restricted_violations

OWNER = Owner(name="llm", namespace="ns", uid="uid-1")
GPU_SPEC: dict[str, Any] = {"tensorParallelSize": 8, "pipelineParallelSize": 2, "nodesPerReplica": 2}
LWS_SERVED = Capabilities(leader_worker_set=True)

_INT_OR_STRING = {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": r"^\d+%?$"}]}
_POD_TEMPLATE = {"type": "object", "required": ["spec"], "additionalProperties": False,
                 "properties": {"metadata": {"type": "object"}, "spec": {"type": "object"}}}
LWS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "leaderworkerset.x-k8s.io/v1"},
        "kind": {"const": "LeaderWorkerSet"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["leaderWorkerTemplate"],
            "additionalProperties": False,
            "properties": {
                "replicas": {"type": "integer", "minimum": 0},
                "startupPolicy": {"enum": ["LeaderCreated", "LeaderReady"]},
                "networkConfig": {"type": "object", "additionalProperties": False, "properties": {
                    "subdomainPolicy": {"enum": ["Shared", "UniquePerReplica"]}}},
                "rolloutStrategy": {
                    "type": "object", "required": ["type"], "additionalProperties": False,
                    "properties": {
                        "type": {"enum": ["RollingUpdate"]},
                        "rollingUpdateConfiguration": {
                            "type": "object", "additionalProperties": False,
                            "properties": {"partition": {"type": "integer", "minimum": 0},
                                           "maxUnavailable": _INT_OR_STRING, "maxSurge": _INT_OR_STRING},
                        },
                    },
                },
                "leaderWorkerTemplate": {
                    "type": "object", "required": ["workerTemplate"], "additionalProperties": False,
                    "properties": {
                        "leaderTemplate": _POD_TEMPLATE,
                        "workerTemplate": _POD_TEMPLATE,
                        "size": {"type": "integer", "minimum": 1},
                        "restartPolicy": {"enum": ["Default", "RecreateGroupOnPodRestart", "RecreateGroupAfterStart",
                                                   "None"]},
                        "subGroupPolicy": {"type": "object"},
                        "volumeClaimTemplates": {"type": "array"},
                        "persistentVolumeClaimRetentionPolicy": {"type": "object"},
                    },
                },
            },
        },
    },
}


def build(spec: dict[str, Any], capabilities: Capabilities = LWS_SERVED) -> dict[tuple[str, str], dict[str, Any]]:
    objects = desired_objects(BuildInput(OWNER, parse_spec(spec), Defaults(), capabilities=capabilities))
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def assert_valid_lws(lws: dict[str, Any]) -> None:
    jsonschema.validate(lws, LWS_SCHEMA)
    for role in ("leaderTemplate", "workerTemplate"):
        template = lws["spec"]["leaderWorkerTemplate"][role]
        pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
        assert kubernetes_validate.validate(pod_template, "1.37", strict=True)
        assert restricted_violations(template["spec"]) == []


def container(lws: dict[str, Any], role: str) -> dict[str, Any]:
    c: dict[str, Any] = lws["spec"]["leaderWorkerTemplate"][role]["spec"]["containers"][0]
    return c


def test_the_lws_schema_catches_what_it_checks() -> None:
    lws = build(GPU_SPEC)[("LeaderWorkerSet", "llm-group")]
    for path, bad in ((("spec", "startupPolicy"), "WhenReady"), (("spec", "leaderWorkerTemplate", "size"), 0),
                      (("spec", "leaderWorkerTemplate", "restartPolicy"), "Always"), (("spec", "replica"), 1)):
        broken = copy.deepcopy(lws)
        node = broken
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = bad
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, LWS_SCHEMA)


def test_nodes_per_replica_renders_a_leader_worker_set_instead_of_the_deployment() -> None:
    objects = build(GPU_SPEC)
    assert ("Deployment", "llm-server") not in objects
    lws = objects[("LeaderWorkerSet", "llm-group")]
    assert_valid_lws(lws)
    spec = lws["spec"]
    assert (spec["replicas"], spec["startupPolicy"]) == (1, "LeaderCreated")  # workers start with the leader
    group = spec["leaderWorkerTemplate"]
    assert (group["size"], group["restartPolicy"]) == (2, "RecreateGroupOnPodRestart")
    leader, worker = container(lws, "leaderTemplate"), container(lws, "workerTemplate")
    assert leader["args"][-6:] == ["--nnodes", "2", "--node-rank", "0", "--dist-init-addr",
                                   "$(LWS_LEADER_ADDRESS):29500"]
    assert worker["args"][-6:] == ["--nnodes", "2", "--node-rank", "$(LWS_WORKER_INDEX)", "--dist-init-addr",
                                   "$(LWS_LEADER_ADDRESS):29500"]
    # 16 ranks over 2 pods: 8 GPUs each, and the same --tp/--pp everywhere.
    for c in (leader, worker):
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 8
        assert c["args"][c["args"].index("--tp") + 1] == "8" and c["args"][c["args"].index("--pp") + 1] == "2"
    # Readiness (and HTTP) is the leader's only.
    assert leader["readinessProbe"]["httpGet"]["path"] == "/health"
    assert not {"readinessProbe", "livenessProbe", "startupProbe", "ports"} & set(worker)
    roles = {r: group[f"{r}Template"]["metadata"]["labels"][LABEL_ROLE] for r in ("leader", "worker")}
    assert roles == {"leader": "leader", "worker": "worker"}


def test_the_server_arguments_parse_on_both_sides() -> None:
    """What the pods run is what `radixserve serve` accepts, once Kubernetes has expanded $(VAR)."""
    lws = build(GPU_SPEC)[("LeaderWorkerSet", "llm-group")]
    for role, rank in (("leaderTemplate", 0), ("workerTemplate", 1)):
        args = [a.replace("$(LWS_LEADER_ADDRESS)", "llm-group-0.llm-group.ns").replace("$(LWS_WORKER_INDEX)", "1")
                for a in container(lws, role)["args"]]
        parsed = ServerArgs.from_cli_args(build_parser().parse_args(args))
        assert (parsed.nnodes, parsed.node_rank, parsed.dist_init_addr) == (2, rank, "llm-group-0.llm-group.ns:29500")
        assert list(parsed.local_ranks) == list(range(rank * 8, rank * 8 + 8))


def test_the_service_selects_leaders_and_the_router_finds_them() -> None:
    objects = build({**GPU_SPEC, "networkPolicy": {"enabled": True}},
                    Capabilities(leader_worker_set=True, prometheus_operator=True))
    service = objects[("Service", "llm-server")]
    assert service["spec"]["selector"] == {**names.server_selector("llm"), LABEL_ROLE: "leader"}
    # Workers serve no HTTP: nothing scrapes them.
    monitor = objects[("PodMonitor", "llm-server")]
    assert monitor["spec"]["selector"]["matchLabels"] == {**names.server_selector("llm"), LABEL_ROLE: "leader"}
    # The router selects EndpointSlices by the Service's labels, which are unchanged.
    assert names.server_selector("llm").items() <= service["metadata"]["labels"].items()
    # The ranks of a group reach each other through the NetworkPolicy.
    ingress = objects[("NetworkPolicy", "llm-server")]["spec"]["ingress"]
    assert {"from": [{"podSelector": {"matchLabels": names.server_selector("llm")}}]} in ingress


def test_the_example_is_a_two_pod_cpu_group() -> None:
    (doc, *_) = load_yaml_documents(EXAMPLES_DIR / "inferenceserver-multinode.yaml")
    assert schema_errors(doc) == []
    lws = build(doc["spec"])[("LeaderWorkerSet", "llm-group")]
    assert_valid_lws(lws)
    leader = container(lws, "leaderTemplate")
    assert leader["args"][leader["args"].index("--device") + 1] == "cpu"
    assert "nvidia.com/gpu" not in leader.get("resources", {}).get("limits", {})


def test_switching_nodes_per_replica_deletes_the_other_workload() -> None:
    def unwanted(spec: dict[str, Any]) -> set[tuple[str, str]]:
        return {(r.kind, r.name) for r in unwanted_objects(BuildInput(OWNER, parse_spec(spec), Defaults(),
                                                                      capabilities=LWS_SERVED))}

    assert ("Deployment", "llm-server") in unwanted(GPU_SPEC)
    assert ("LeaderWorkerSet", "llm-group") not in unwanted(GPU_SPEC)
    assert ("LeaderWorkerSet", "llm-group") in unwanted({})
    assert ("Deployment", "llm-server") not in unwanted({})


@pytest.mark.parametrize(("spec", "mentions"), [
    ({"tensorParallelSize": 8, "pipelineParallelSize": 2}, "at most 8"),  # the finding: 16 GPUs in one pod
    ({"tensorParallelSize": 8, "pipelineParallelSize": 16, "nodesPerReplica": 8}, "at most 8"),
    ({"tensorParallelSize": 8, "pipelineParallelSize": 2, "nodesPerReplica": 3}, "must divide"),
    ({"nodesPerReplica": 17}, "nodesPerReplica"),
    ({**GPU_SPEC, "resources": {"gpus": 4}}, "spec.resources.gpus"),
])
def test_the_schema_caps_gpus_per_pod(spec: dict[str, Any], mentions: str) -> None:
    errors = schema_errors(cr(spec))
    assert any(mentions in e for e in errors), errors


@pytest.mark.parametrize("spec", [GPU_SPEC, {**GPU_SPEC, "pipelineParallelSize": 16, "nodesPerReplica": 16},
                                  {**GPU_SPEC, "resources": {"gpus": 8}}, {"tensorParallelSize": 8}])
def test_specs_that_fit_the_pods_are_accepted(spec: dict[str, Any]) -> None:
    assert schema_errors(cr(spec)) == []
    assert parse_spec(spec).gpus_needed <= 8


def test_the_operator_repeats_the_cap_for_objects_the_schema_did_not_check() -> None:
    with pytest.raises(SpecError, match="at most 8"):
        parse_spec({"tensorParallelSize": 8, "pipelineParallelSize": 2})
    with pytest.raises(SpecError, match="must divide"):
        parse_spec({"tensorParallelSize": 2, "nodesPerReplica": 4})


# ---- the LeaderWorkerSet API missing: a condition, nothing created --------------------------------


@dataclass
class FakeKube:
    """The few calls one reconcile makes, over a dict; `served` lists the group/versions discovery finds."""

    served: dict[str, set[str]] = field(default_factory=dict)
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    status: dict[str, Any] | None = None

    def get(self, rtype: ResourceType, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((rtype.plural, name))

    def apply(self, rtype: ResourceType, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        if rtype.api_version == LWS_API_VERSION and LWS_API_VERSION not in self.served:
            raise KubeApiError(404, "NotFound", f"the server could not find the requested resource ({rtype.plural})")
        self.objects[(rtype.plural, name)] = body
        return body

    def delete(self, rtype: ResourceType, namespace: str, name: str) -> bool:
        return self.objects.pop((rtype.plural, name), None) is not None

    def list_objects(self, rtype: ResourceType, namespace: str | None,
                     labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        return [o for (plural, _), o in self.objects.items() if plural == rtype.plural]

    def patch_status(self, rtype: ResourceType, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        self.status = status
        return status

    def server_version(self) -> tuple[int, int] | None:
        return (1, 35)

    def api_resources(self, api_version: str) -> set[str] | None:
        return self.served.get(api_version)

    def pod_log(self, namespace: str, name: str, container: str, tail_lines: int = 20) -> str | None:
        return None


def target(spec: dict[str, Any]) -> Target:
    return Target.from_body({"metadata": {"name": "llm", "namespace": "ns", "uid": "uid-1", "generation": 1},
                             "spec": spec})


def ready_condition(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


def test_without_the_lws_crd_nothing_is_created_and_the_condition_says_why() -> None:
    kube = FakeKube()
    outcome = reconcile(kube, target(GPU_SPEC), Defaults())  # type: ignore[arg-type]
    assert [(p.reason, p.field, p.transient) for p in outcome.problems] == [
        ("LeaderWorkerSetMissing", "spec.nodesPerReplica", True)]
    assert kube.objects == {} and not outcome.created
    assert kube.status is not None
    ready = ready_condition(kube.status)
    assert ready["status"] == "False" and ready["reason"] == "LeaderWorkerSetMissing"
    assert LWS_API_VERSION in ready["message"]
    # One pod per replica needs no LWS: the same cluster gets the Deployment.
    single = reconcile(kube, target({"tensorParallelSize": 8}), Defaults())  # type: ignore[arg-type]
    assert single.problems == [] and "Deployment llm-server" in single.created


def test_with_the_lws_crd_the_group_is_applied_and_its_status_is_the_replicas_readiness() -> None:
    kube = FakeKube(served={LWS_API_VERSION: {"leaderworkersets", "leaderworkersets/status"}})
    spec = {**GPU_SPEC, "replicas": 2, "router": {"enabled": False}}
    outcome = reconcile(kube, target(spec), Defaults())  # type: ignore[arg-type]
    assert outcome.problems == [] and "LeaderWorkerSet llm-group" in outcome.created
    assert ("deployments", "llm-server") not in kube.objects
    lws = kube.objects[("leaderworkersets", "llm-group")]
    assert_valid_lws(lws)
    lws["metadata"]["generation"] = 1
    lws["status"] = {"replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "observedGeneration": 1}
    assert kube.status is not None and ready_condition(kube.status)["status"] == "False"  # no group ready yet
    reconcile(kube, target(spec), Defaults())  # type: ignore[arg-type]
    assert kube.status is not None and kube.status["readyReplicas"] == 2
    assert ready_condition(kube.status)["status"] == "True"  # read from the group set, not a Deployment
