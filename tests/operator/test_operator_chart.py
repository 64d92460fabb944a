"""The Helm chart, rendered offline with the real Helm library (helm-python-sdk)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from radixserve.operator import names, permissions
from radixserve.operator.cli import parse_args
from tests.operator.operator_testkit import CHART_DIR, CRD_PATH, schema_errors
from tests.operator.third_party_schemas import custom_resource_errors

RELEASE, NAMESPACE = "rs", "radixserve-system"


@pytest.fixture(scope="module")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART_DIR) as loaded:
        yield loaded


def render(chart: helm_python.Chart, values: dict[str, Any] | None = None) -> dict[str, str]:
    rendered: dict[str, str] = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)
    return rendered


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    return [doc for path, text in rendered.items() if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


def by_kind(rendered: dict[str, str], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects(rendered) if o["kind"] == kind]


VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "model-cache": {"modelCache": {"hostPath": "/mnt/nvme/models", "labelNodes": False, "labelSweepSeconds": 0,
                                   "progressSeconds": 5}},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"], "logLevel": "debug"},
    "everything": {
        "watchNamespaces": ["ml"], "example": {"enabled": True}, "imagePullSecrets": [{"name": "regcred"}],
        "serviceAccount": {"create": True, "name": "op", "annotations": {"a": "b"}},
        "podAnnotations": {"prometheus.io/scrape": "false"}, "nodeSelector": {"pool": "system"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "system-cluster-critical", "image": {"repository": "r/op", "tag": "t"},
    },
    "observability": {
        "grafanaDashboard": {"enabled": True, "namespace": "monitoring", "labels": {"team": "ml"},
                             "annotations": {"grafana_folder": "LLM"}},
        "autoscaling": {"prometheusAddress": "http://prometheus.monitoring.svc:9090"},
        "operatorPodMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "kps"}},
    },
}


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_rendered_objects_are_valid_kubernetes_in_strict_mode(chart: helm_python.Chart,
                                                              values: dict[str, Any]) -> None:
    rendered = objects(render(chart, values))
    assert {o["kind"] for o in rendered} >= {"Deployment", "ServiceAccount"}
    for obj in rendered:
        if obj["kind"] == names.KIND:
            assert schema_errors(obj) == []  # custom resources: against the CRD's own schema
        elif obj["apiVersion"].startswith("monitoring.coreos.com/"):
            assert custom_resource_errors(obj) == []  # the Prometheus operator's CRD schema
        else:
            assert kubernetes_validate.validate(obj, "1.37", strict=True)


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_lint_passes(values: dict[str, Any]) -> None:
    result = helm_python.lint(CHART_DIR, values, strict=True, kube_version="1.31.0")
    assert result["errors"] == []
    # Severity 1 is informational ("icon is recommended"); nothing worse.
    assert [m for m in result["messages"] if m["severity"] > 1] == []


@pytest.mark.parametrize("bad", [
    {"logLevel": "loud"},
    {"watchNamespaces": "default"},
    {"watchNamespaces": ["Not_A_Namespace"]},
    {"image": {"repository": "r", "pullPolicy": "Sometimes"}},
    {"resyncSeconds": -1},
    {"retrySeconds": 0},
    {"resources": {"requests": {"memory": "a lot"}}},
    {"example": {"enabled": "yes"}},
    {"replicaCount": 0},
    {"leaderElection": {"enabled": "yes"}},
    {"metrics": {"port": 0}},
    {"modelCache": {"hostPath": "relative/dir", "labelNodes": True}},
    {"modelCache": {"hostPath": "/", "labelNodes": True}},
    {"modelCache": {"hostPath": "/var/cache", "labelNodes": "yes"}},
    {"modelCache": {"hostPath": "/var/cache", "labelNodes": True, "progressSeconds": -1}},
    {"modelCache": {"hostPath": "/var/cache", "labelNodes": True, "mode": "pvc"}},
], ids=str)
def test_bad_values_are_rejected_by_the_schema(chart: helm_python.Chart, bad: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmValuesError):
        chart.validate_schema(bad)
    with pytest.raises(helm_python.HelmValuesError):
        render(chart, bad)


def test_default_values_pass_the_schema(chart: helm_python.Chart) -> None:
    chart.validate_schema(yaml.safe_load((CHART_DIR / "values.yaml").read_text()))


def _granted(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def _cluster_roles(rendered: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in by_kind(rendered, "ClusterRole")}


def test_rbac_grants_exactly_what_the_operator_uses(chart: helm_python.Chart) -> None:
    used = _granted(permissions.as_policy_rules())
    node_rules = _granted(permissions.as_node_policy_rules())
    fullname = f"{RELEASE}-radixserve"
    roles_by_name = _cluster_roles(render(chart))
    assert set(roles_by_name) == {fullname, f"{fullname}-nodes"}
    assert _granted(roles_by_name[fullname]["rules"]) == used
    assert _granted(roles_by_name[f"{fullname}-nodes"]["rules"]) == node_rules == {
        ("", "nodes", "get"), ("", "nodes", "list"), ("", "nodes", "patch")}
    roles = [r for r in by_kind(render(chart, VALUE_SETS["namespaced"]), "Role") if r["metadata"]["name"] == fullname]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert all(_granted(r["rules"]) == used for r in roles)
    # Nodes are cluster-scoped: their ClusterRole stays in namespaced mode (and only it).
    namespaced = _cluster_roles(render(chart, VALUE_SETS["namespaced"]))
    assert set(namespaced) == {f"{fullname}-nodes"}
    (node_binding,) = by_kind(render(chart, VALUE_SETS["namespaced"]), "ClusterRoleBinding")
    assert node_binding["roleRef"]["name"] == f"{fullname}-nodes"
    # Node labelling off: no node RBAC at all, and the operator is told so.
    off = render(chart, {**VALUE_SETS["namespaced"], "modelCache": {"labelNodes": False}})
    assert by_kind(off, "ClusterRole") == [] and by_kind(off, "ClusterRoleBinding") == []
    (deployment,) = by_kind(off, "Deployment")
    assert not parse_args(deployment["spec"]["template"]["spec"]["containers"][0]["args"][1:]).label_nodes
    assert set(_cluster_roles(render(chart, {"modelCache": {"labelNodes": False}}))) == {fullname}
    # Nothing broad: no wildcards, and secrets are only read (to check a key exists).
    assert not any("*" in part for grant in used | node_rules for part in grant)
    assert {verb for group, resource, verb in used if resource == "secrets"} == {"get"}


def test_bindings_bind_the_operators_service_account(chart: helm_python.Chart) -> None:
    rendered = render(chart)
    (account,) = by_kind(rendered, "ServiceAccount")
    (binding,) = [b for b in by_kind(rendered, "ClusterRoleBinding") if not b["metadata"]["name"].endswith("-nodes")]
    (deployment,) = by_kind(rendered, "Deployment")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": NAMESPACE}]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]


def test_operator_deployment_runs_the_cli_with_the_values(chart: helm_python.Chart) -> None:
    values = {"watchNamespaces": ["a", "b"], "logLevel": "warning",
              "serverImage": {"repository": "reg/rs", "tag": "1.2"}, "image": {"repository": "reg/op", "tag": "9"}}
    (deployment,) = by_kind(render(chart, values), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "reg/op:9" and container["command"] == ["radixserve"]
    assert container["args"][0] == "operator"
    options = parse_args(container["args"][1:])  # the operator's own parser accepts them
    assert options.namespaces == ("a", "b") and options.log_level == "warning" and options.standalone
    assert (options.image, options.cpu_image) == ("reg/rs:1.2", "reg/rs:1.2-cpu")
    assert (options.model_cache_host_path, options.label_nodes) == ("/var/lib/radixserve/models", True)
    assert (options.node_label_sweep_seconds, options.progress_seconds) == (600.0, 15.0)
    assert container["livenessProbe"]["httpGet"]["port"] == "metrics"
    # Leader election on by default: two replicas, rolled (see test_operator_leader_chart.py).
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    (default_deployment,) = by_kind(render(chart), "Deployment")
    assert parse_args(default_deployment["spec"]["template"]["spec"]["containers"][0]["args"][1:]).clusterwide


def test_example_inference_server_only_when_enabled(chart: helm_python.Chart) -> None:
    assert by_kind(render(chart), names.KIND) == []
    (example,) = by_kind(render(chart, {"example": {"enabled": True}}), names.KIND)
    assert example["metadata"]["namespace"] == NAMESPACE and example["spec"]["resources"]["gpus"] == 0


def test_notes_render(chart: helm_python.Chart) -> None:
    notes = render(chart, {"example": {"enabled": True, "name": "demo"}})["radixserve/templates/NOTES.txt"]
    assert "kubectl wait" in notes and "demo" in notes and "all namespaces" in notes


def test_chart_crd_is_the_crd(chart: helm_python.Chart) -> None:
    assert (CHART_DIR / "crds" / CRD_PATH.name).read_text() == CRD_PATH.read_text()
