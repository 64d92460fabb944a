"""spec.autoscaling: the HPA or KEDA ScaledObject on the scale subresource, which one is chosen,
scale to zero (router flags and RBAC), and the choice made from the cluster's API discovery."""

from __future__ import annotations

import asyncio
from typing import Any

import kmock
import kubernetes
import kubernetes_validate
import pytest
from prometheus_client import CollectorRegistry

from radixserve.metrics import SchedulerMetrics
from radixserve.operator import names, permissions
from radixserve.operator.builders import (
    BuildInput,
    Capabilities,
    Defaults,
    Owner,
    desired_objects,
    unwanted_objects,
)
from radixserve.operator.builders.autoscaling import METRICS, choose_autoscaler, quantity
from radixserve.operator.checks import capabilities, feature_conditions
from radixserve.operator.kube import KubeClient, resource_type
from radixserve.operator.reconcile import Target, reconcile
from radixserve.operator.spec import SpecError, parse_spec
from tests.operator.operator_harness import ApiServer
from tests.operator.operator_testkit import cr, schema_errors
from tests.operator.third_party_schemas import custom_resource_errors

OWNER = Owner(name="llm", namespace="team-a", uid="5b0f6a57-0000-4000-8000-00000000000a")
KEDA = Capabilities(keda=True)
NONE = Capabilities()


def build(spec: dict[str, Any], caps: Capabilities = NONE, defaults: Defaults = Defaults()) -> dict[tuple[str, str], Any]:
    inp = BuildInput(OWNER, parse_spec(spec), defaults, capabilities=caps)
    return {(o["kind"], o["metadata"]["name"]): o for o in desired_objects(inp)}


def scaling(**fields: Any) -> dict[str, Any]:
    return {"autoscaling": {"enabled": True, **fields}}


def scheduler_gauges() -> set[str]:
    """The gauge names `radixserve serve` really exports (its scheduler's registry)."""
    registry = CollectorRegistry()
    SchedulerMetrics("m", registry)
    return {family.name for family in registry.collect() if family.type == "gauge"}


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_hpa_averages_a_real_server_gauge_per_replica(metric: str) -> None:
    objects = build(scaling(provider="hpa", minReplicas=2, maxReplicas=6, metric=metric,
                            scaleDownStabilizationSeconds=120))
    hpa = objects[("HorizontalPodAutoscaler", "llm")]
    assert kubernetes_validate.validate(hpa, "1.37", strict=True)
    assert kubernetes_validate.validate(hpa, "1.30", strict=True)  # the oldest Kubernetes the operator supports
    spec = hpa["spec"]
    # The InferenceServer itself, through its scale subresource: the operator keeps owning the Deployment.
    assert spec["scaleTargetRef"] == {"apiVersion": names.API_VERSION, "kind": names.KIND, "name": "llm"}
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 6)
    (pods,) = [m["pods"] for m in spec["metrics"] if m["type"] == "Pods"]
    assert pods["metric"]["name"] == METRICS[metric].prometheus_name
    assert pods["metric"]["name"] in scheduler_gauges()
    assert pods["target"] == {"type": "AverageValue", "averageValue": quantity(METRICS[metric].default_target)}
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 120
    assert ("ScaledObject", "llm") not in objects


def test_quantities() -> None:
    assert (quantity(4), quantity(0.8), quantity(2.5), quantity(0.05)) == ("4", "800m", "2500m", "50m")
    hpa = build(scaling(provider="hpa", metric="kvUsage", target=0.7))[("HorizontalPodAutoscaler", "llm")]
    assert hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "700m"


def test_keda_scaled_object_matches_keda_schema_and_queries_this_server() -> None:
    objects = build(scaling(minReplicas=0, maxReplicas=3, metric="runningRequests", target=16,
                            scaleDownStabilizationSeconds=900), KEDA,
                    Defaults(prometheus_address="http://prom.monitoring.svc:9090"))
    scaled = objects[("ScaledObject", "llm")]
    assert custom_resource_errors(scaled) == []
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": names.API_VERSION, "kind": names.KIND, "name": "llm"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"], spec["cooldownPeriod"]) == (0, 3, 900)
    (trigger,) = spec["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "prometheus" and meta["serverAddress"] == "http://prom.monitoring.svc:9090"
    assert meta["query"] == ('sum(radixserve:num_running_reqs{namespace="team-a",'
                             'radixserve_io_inferenceserver="llm"})')
    assert meta["threshold"] == "16"
    assert ("HorizontalPodAutoscaler", "llm") not in objects
    # The spec's own address wins over the operator's default.
    own = build(scaling(prometheusAddress="https://thanos.example:443"), KEDA)[("ScaledObject", "llm")]
    assert own["spec"]["triggers"][0]["metadata"]["serverAddress"] == "https://thanos.example:443"
    # A broken object is caught by the schema (the check is not vacuous).
    broken = {**scaled, "spec": {**spec, "minReplicaCount": "zero"}}
    assert custom_resource_errors(broken)


@pytest.mark.parametrize(("fields", "caps", "built", "reason"), [
    ({"provider": "auto"}, NONE, "HorizontalPodAutoscaler", "HorizontalPodAutoscaler"),
    ({"provider": "auto"}, KEDA, "ScaledObject", "KEDAScaledObject"),
    ({"provider": "hpa"}, KEDA, "HorizontalPodAutoscaler", "HorizontalPodAutoscaler"),
    ({"provider": "keda"}, KEDA, "ScaledObject", "KEDAScaledObject"),
    ({"provider": "keda"}, NONE, None, "KEDANotInstalled"),
    ({"provider": "auto", "minReplicas": 0}, KEDA, "ScaledObject", "KEDAScaledObject"),
    ({"provider": "auto", "minReplicas": 0}, NONE, None, "ScaleToZeroNeedsKEDA"),
], ids=["auto-hpa", "auto-keda", "hpa-with-keda", "keda", "keda-missing", "zero-keda", "zero-no-keda"])
def test_which_autoscaler_and_the_condition(fields: dict[str, Any], caps: Capabilities, built: str | None,
                                            reason: str) -> None:
    inp = BuildInput(OWNER, parse_spec(scaling(**fields)), capabilities=caps)
    kinds = {o["kind"] for o in desired_objects(inp)}
    assert (kinds & {"HorizontalPodAutoscaler", "ScaledObject"}) == ({built} if built else set())
    (cond,) = [c for c in feature_conditions(inp) if c.type == "Autoscaling"]
    assert (cond.ok, cond.reason) == (built is not None, reason)
    if built is None:
        assert "install KEDA" in cond.message
    assert choose_autoscaler(inp).reason == reason
    # Whatever is not built now goes if an earlier spec built it.
    # (A ScaledObject cannot exist where KEDA is not installed: not even looked for.)
    possible = {"HorizontalPodAutoscaler"} | ({"ScaledObject"} if caps.keda else set())
    unwanted = {ref.kind for ref in unwanted_objects(inp)}
    assert unwanted & {"HorizontalPodAutoscaler", "ScaledObject"} == possible - {built}


def test_no_autoscaler_and_no_condition_when_disabled() -> None:
    inp = BuildInput(OWNER, parse_spec({}), capabilities=KEDA)
    assert not {o["kind"] for o in desired_objects(inp)} & {"HorizontalPodAutoscaler", "ScaledObject"}
    assert "Autoscaling" not in {c.type for c in feature_conditions(inp)}


def test_scale_to_zero_renders_the_router_flags_and_its_scale_rbac() -> None:
    objects = build(scaling(minReplicas=0, scaleFromZeroTimeoutSeconds=120), KEDA)
    args = objects[("Deployment", "llm-router")]["spec"]["template"]["spec"]["containers"][0]["args"]
    i = args.index("--scale-from-zero")
    assert args[i + 1] == "team-a/llm"
    assert args[args.index("--scale-from-zero-timeout") + 1] == "120"
    role = objects[("Role", "llm-router")]
    assert kubernetes_validate.validate(role, "1.37", strict=True)
    scale_rule = {"apiGroups": [names.GROUP], "resources": [f"{names.PLURAL}/scale"], "resourceNames": ["llm"],
                  "verbs": ["get", "patch"]}
    assert scale_rule in role["rules"]
    # The operator holds what the router's Role grants (the RBAC escalation check).
    granted = {(r.api_group, r.resource, v) for r in permissions.RULES for v in r.verbs}
    assert {(names.GROUP, f"{names.PLURAL}/scale", v) for v in ("get", "patch")} <= granted
    # Without scale to zero: neither the flags nor the grant.
    plain = build(scaling(minReplicas=1), KEDA)
    assert "--scale-from-zero" not in plain[("Deployment", "llm-router")]["spec"]["template"]["spec"][
        "containers"][0]["args"]
    assert all(f"{names.PLURAL}/scale" not in rule["resources"] for rule in plain[("Role", "llm-router")]["rules"])


@pytest.mark.parametrize(("fields", "mentions"), [
    ({"minReplicas": 5, "maxReplicas": 2}, "minReplicas must not exceed maxReplicas"),
    ({"minReplicas": 0, "provider": "hpa"}, "minReplicas 0 needs KEDA"),
    ({"metric": "gpuUtilization"}, "metric"),
    ({"target": 0}, "target"),
    ({"metric": "kvUsage", "target": 80}, "fraction of the KV pool"),
    ({"prometheusAddress": "prometheus:9090"}, "prometheusAddress"),
    ({"scaleDownStabilizationSeconds": 7200}, "scaleDownStabilizationSeconds"),
])
def test_bad_autoscaling_is_refused_by_the_crd_and_the_model(fields: dict[str, Any], mentions: str) -> None:
    errors = schema_errors(cr(scaling(**fields)))
    assert errors and any(mentions in e for e in errors), errors
    with pytest.raises(SpecError):
        parse_spec(scaling(**fields))


class _Discovery:
    def __init__(self, served: dict[str, set[str]]) -> None:
        self.served = served

    def api_resources(self, api_version: str) -> set[str] | None:
        return self.served.get(api_version)


def test_capabilities_from_discovery() -> None:
    assert capabilities(_Discovery({})) == Capabilities()
    caps = capabilities(_Discovery({"keda.sh/v1alpha1": {"scaledobjects", "scaledjobs"},
                                    "monitoring.coreos.com/v1": {"podmonitors"}}))
    assert caps.keda and not caps.prometheus_operator  # PrometheusRules missing: no monitoring objects
    caps = capabilities(_Discovery({"monitoring.coreos.com/v1": {"podmonitors", "prometheusrules", "probes"}}))
    assert caps.prometheus_operator and not caps.keda


SCALED_OBJECTS = kmock.resource("keda.sh", "v1alpha1", "scaledobjects")
HPAS = kmock.resource("autoscaling", "v2", "horizontalpodautoscalers")


def _live(server: ApiServer, resource: kmock.resource, name: str) -> dict[str, Any] | None:
    for (res, _, obj_name), obj in list(server.objects.items()):
        if res == resource and obj_name == name and not obj.deleted:
            raw: dict[str, Any] = obj.raw
            return raw
    return None


async def test_reconcile_asks_discovery_builds_keda_then_removes_it(api_server: ApiServer) -> None:
    """Against the API emulator (no kopf): without KEDA an HPA; KEDA installed -> the ScaledObject
    replaces it; autoscaling off -> both gone. The conditions follow."""
    client = KubeClient.from_configuration(kubernetes.client.Configuration(host=str(api_server.url).rstrip("/")))
    cr_type = resource_type(names.API_VERSION, names.KIND)
    body = cr({"resources": {"gpus": 0}, **scaling(metric="queueDepth")}, namespace="default")
    body["metadata"].update(uid="5b0f6a57-0000-4000-8000-00000000000b", resourceVersion="1", generation=1)
    await asyncio.to_thread(client.create, cr_type, "default", body)
    assert await asyncio.to_thread(client.api_resources, "keda.sh/v1alpha1") is None

    async def pass_(spec: dict[str, Any]) -> dict[str, Any]:
        live = await asyncio.to_thread(client.get, cr_type, "default", "llm")
        assert live is not None
        target = Target.from_body({**live, "spec": spec})
        outcome = await asyncio.to_thread(reconcile, client, target, Defaults())
        assert outcome.problems == []
        return {c["type"]: c for c in outcome.status["conditions"]}

    conditions = await pass_(body["spec"])
    assert _live(api_server, HPAS, "llm") is not None
    assert (conditions["Autoscaling"]["status"], conditions["Autoscaling"]["reason"]) == ("True",
                                                                                         "HorizontalPodAutoscaler")
    assert conditions["Monitoring"]["reason"] == "PrometheusOperatorNotInstalled"

    api_server.resources[SCALED_OBJECTS] = kmock.ResourceInfo(
        kind="ScaledObject", namespaced=True, verbs={"get", "list", "watch", "create", "patch", "delete"})
    client._discovery.clear()  # what DISCOVERY_TTL_SECONDS does in time
    assert "scaledobjects" in (await asyncio.to_thread(client.api_resources, "keda.sh/v1alpha1") or set())
    conditions = await pass_(body["spec"])
    assert conditions["Autoscaling"]["reason"] == "KEDAScaledObject"
    scaled = _live(api_server, SCALED_OBJECTS, "llm")
    assert scaled is not None and custom_resource_errors(scaled) == []
    assert _live(api_server, HPAS, "llm") is None

    conditions = await pass_({**body["spec"], "autoscaling": {"enabled": False}})
    assert "Autoscaling" not in conditions
    assert _live(api_server, SCALED_OBJECTS, "llm") is None and _live(api_server, HPAS, "llm") is None


async def test_discovery_answers_are_cached(api_server: ApiServer) -> None:
    client = KubeClient.from_configuration(kubernetes.client.Configuration(host=str(api_server.url).rstrip("/")))
    before = len(list(api_server))
    first = await asyncio.to_thread(client.api_resources, "policy/v1")
    again = await asyncio.to_thread(client.api_resources, "policy/v1")
    assert first == again and first is not None and "poddisruptionbudgets" in first
    assert len(list(api_server)) == before + 1
