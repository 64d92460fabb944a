"""Disruption safety and policy fit: PodDisruptionBudgets, two spread routers, preStop sleeps and
grace periods that cover the drain, rollout deadlines, and hostPath only by explicit opt-in."""

from __future__ import annotations

import argparse
from typing import Any

import kubernetes_validate
import pytest

from radixserve.operator import names
from radixserve.operator.builders import BuildInput, Capabilities, Owner, desired_objects, unwanted_objects
from radixserve.operator.builders.server import PROGRESS_DEADLINE_MARGIN_SECONDS
from radixserve.operator.checks import check_spec, feature_conditions
from radixserve.operator.spec import SpecError, parse_spec
from radixserve.router.cli import build_parser as build_router_parser
from radixserve.router.cli import config_from_args as router_config_from_args
from tests.operator.operator_testkit import cr, schema_errors
from tests.operator.pod_security import restricted_violations
from tests.operator.test_operator_checks import FakeCluster

OWNER = Owner(name="llm", namespace="team-a", uid="5b0f6a57-0000-4000-8000-00000000000d")
EVERYTHING = Capabilities(keda=True, prometheus_operator=True)


def build(spec: dict[str, Any], caps: Capabilities = Capabilities()) -> dict[tuple[str, str], Any]:
    inp = BuildInput(OWNER, parse_spec(spec), capabilities=caps)
    return {(o["kind"], o["metadata"]["name"]): o for o in desired_objects(inp)}


def parse_router_args(args: list[str]) -> argparse.Namespace:
    """The rendered arguments as `radixserve router` itself parses them (an unknown flag fails)."""
    parsed = build_router_parser().parse_args(args)
    router_config_from_args(parsed)  # its own cross-checks
    return parsed


def pod(objects: dict[tuple[str, str], Any], name: str) -> dict[str, Any]:
    template: dict[str, Any] = objects[("Deployment", name)]["spec"]["template"]
    return template


def test_budgets_by_default() -> None:
    objects = build({"replicas": 3})
    server, router = objects[("PodDisruptionBudget", "llm-server")], objects[("PodDisruptionBudget", "llm-router")]
    for budget in (server, router):
        assert kubernetes_validate.validate(budget, "1.37", strict=True)
        assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    # Each selects exactly the pods of its Deployment.
    for budget, name in ((server, "llm-server"), (router, "llm-router")):
        assert budget["spec"]["selector"] == objects[("Deployment", name)]["spec"]["selector"]
    assert server["spec"]["maxUnavailable"] == 1 and "minAvailable" not in server["spec"]
    assert router["spec"]["minAvailable"] == 1 and "maxUnavailable" not in router["spec"]


@pytest.mark.parametrize(("spec", "server", "router"), [
    ({"disruptionBudget": {"maxUnavailable": "25%"}}, "25%", True),
    ({"router": {"replicas": 1}}, 1, False),  # minAvailable 1 of 1 would block every drain
    ({"router": {"enabled": False}}, 1, False),
    ({"disruptionBudget": {"enabled": False}}, None, False),
])
def test_budget_options(spec: dict[str, Any], server: int | str | None, router: bool) -> None:
    inp = BuildInput(OWNER, parse_spec(spec))
    objects = {(o["kind"], o["metadata"]["name"]): o for o in desired_objects(inp)}
    budget = objects.get(("PodDisruptionBudget", "llm-server"))
    assert (budget["spec"]["maxUnavailable"] if budget else None) == server
    assert (("PodDisruptionBudget", "llm-router") in objects) == router
    unwanted = {(ref.kind, ref.name) for ref in unwanted_objects(inp)}
    assert (("PodDisruptionBudget", "llm-router") in unwanted) == (not router)


def test_two_routers_spread_over_nodes_with_a_pre_stop_sleep() -> None:
    objects = build({"server": {"gracefulShutdownTimeoutSeconds": 120}})
    router = objects[("Deployment", "llm-router")]
    assert router["spec"]["replicas"] == 2
    spec = router["spec"]["template"]["spec"]
    (term,) = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"] == {"labelSelector": {"matchLabels": names.router_selector("llm")},
                                       "topologyKey": "kubernetes.io/hostname"}
    for name in ("llm-router", "llm-server"):
        pod_spec = pod(objects, name)["spec"]
        (container,) = pod_spec["containers"]
        # The kubelet's sleep action: no `sleep` binary needed in the image.
        sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert sleep > 0 and "exec" not in container["lifecycle"]["preStop"]
        # The grace period covers the pre-stop sleep plus the drain of in-flight streams.
        assert pod_spec["terminationGracePeriodSeconds"] > sleep + 120
    # Router: readiness /health (503 from SIGTERM on), liveness /liveness (200 while draining), and a
    # drain that gives streams the server's budget, all inside the grace period.
    (router_container,) = pod(objects, "llm-router")["spec"]["containers"]
    assert router_container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert router_container["livenessProbe"]["httpGet"]["path"] == "/liveness"
    router_args = parse_router_args(router_container["args"])
    assert router_args.drain_timeout_seconds == 120
    assert pod(objects, "llm-router")["spec"]["terminationGracePeriodSeconds"] > (
        router_container["lifecycle"]["preStop"]["sleep"]["seconds"] + router_args.drain_grace_seconds + 120)
    for name in ("llm-router", "llm-server"):
        assert kubernetes_validate.validate(objects[("Deployment", name)], "1.37", strict=True)
        # The sleep action is on by default from Kubernetes 1.30 (beta; alpha behind a gate in 1.29, GA in
        # 1.34): the operator's minimum version.
        assert kubernetes_validate.validate(objects[("Deployment", name)], "1.30", strict=True)


def test_progress_deadline_fits_the_model_load() -> None:
    default = build({"server": {"startupTimeoutSeconds": 900}})[("Deployment", "llm-server")]
    assert default["spec"]["progressDeadlineSeconds"] == 900 + PROGRESS_DEADLINE_MARGIN_SECONDS
    # The full-GPU-cluster recipe: replace in place, and say Degraded after a chosen deadline.
    recipe = {"server": {"startupTimeoutSeconds": 900},
              "rollout": {"maxSurge": 0, "maxUnavailable": 1, "progressDeadlineSeconds": 960}}
    deployment = build(recipe)[("Deployment", "llm-server")]
    assert deployment["spec"]["progressDeadlineSeconds"] == 960
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert kubernetes_validate.validate(deployment, "1.37", strict=True)
    assert schema_errors(cr(recipe)) == []
    # A deadline shorter than the start-up budget would fail every slow but healthy load.
    short = {"server": {"startupTimeoutSeconds": 900}, "rollout": {"progressDeadlineSeconds": 600}}
    assert any("must exceed spec.server.startupTimeoutSeconds" in e for e in schema_errors(cr(short)))
    with pytest.raises(SpecError, match="progressDeadlineSeconds"):
        parse_spec(short)
    # Against the CRD's default startup budget (1800 s) too.
    assert schema_errors(cr({"rollout": {"progressDeadlineSeconds": 1700}}))


@pytest.mark.parametrize(("model", "field"), [
    ({"hostPath": {"path": "/data/models"}}, "spec.model.hostPath"),
    ({"uri": "hf://Qwen/Qwen3-8B", "cache": {"mode": "node"}}, "spec.model.cache.mode"),
])
def test_host_path_only_by_opt_in_and_then_a_pod_security_condition(model: dict[str, Any], field: str) -> None:
    refused = check_spec("llm", "ns", parse_spec({"model": model}), FakeCluster())
    assert [(p.reason, p.field, p.transient) for p in refused] == [("HostPathNotAllowed", field, False)]
    assert "spec.security.allowHostPath" in refused[0].message and "baseline" in refused[0].message
    allowed = parse_spec({"model": model, "security": {"allowHostPath": True}})
    assert check_spec("llm", "ns", allowed, FakeCluster()) == []
    (cond,) = [c for c in feature_conditions(BuildInput(OWNER, allowed)) if c.type == "PodSecurity"]
    assert (cond.ok, cond.reason) == (False, "HostPathBreaksBaseline") and field in cond.message


def test_scale_from_zero_router_args_parse_with_the_router_cli() -> None:
    objects = build({"autoscaling": {"enabled": True, "minReplicas": 0, "scaleFromZeroTimeoutSeconds": 90}},
                    Capabilities(keda=True))
    (container,) = pod(objects, "llm-router")["spec"]["containers"]
    parsed = parse_router_args(container["args"])
    assert (parsed.scale_from_zero, parsed.scale_from_zero_timeout) == ("team-a/llm", 90)
    assert parsed.kube_namespace == "team-a"


def test_pods_pass_restricted_with_every_new_option() -> None:
    spec = {"replicas": 2, "resources": {"gpus": 1},
            "networkPolicy": {"enabled": True}, "disruptionBudget": {"maxUnavailable": 2},
            "autoscaling": {"enabled": True, "minReplicas": 0}, "monitoring": {"enabled": True},
            "rollout": {"maxSurge": 0, "maxUnavailable": 1}}
    objects = build(spec, EVERYTHING)
    pods = [o["spec"]["template"]["spec"] for o in objects.values() if o["kind"] == "Deployment"]
    assert len(pods) == 2
    for pod_spec in pods:
        assert restricted_violations(pod_spec) == []
    (cond,) = [c for c in feature_conditions(BuildInput(OWNER, parse_spec(spec), capabilities=EVERYTHING))
               if c.type == "PodSecurity"]
    assert (cond.ok, cond.reason) == (True, "Restricted")
    for obj in objects.values():
        if not obj["apiVersion"].startswith(("keda.sh/", "monitoring.coreos.com/")):
            assert kubernetes_validate.validate(obj, "1.37", strict=True), obj["kind"]
