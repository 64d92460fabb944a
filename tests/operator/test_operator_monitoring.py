"""spec.monitoring (PodMonitors, PrometheusRule) and the chart's Grafana dashboard: valid objects,
built only where the Prometheus operator's CRDs are served, and every PromQL expression using
metric names the server and router really export."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import helm_python
import pytest
import yaml
from prometheus_client import CollectorRegistry

from radixserve.metrics import SchedulerMetrics, TokenizerMetrics
from radixserve.operator import names
from radixserve.operator.builders import BuildInput, Capabilities, Owner, desired_objects, unwanted_objects
from radixserve.operator.builders.autoscaling import INSTANCE_LABEL, prometheus_query
from radixserve.operator.builders.monitoring import ALERTS
from radixserve.operator.checks import feature_conditions
from radixserve.operator.spec import parse_spec
from radixserve.router.metrics import RouterMetrics
from radixserve.router.policies import make_policy
from radixserve.router.workers import WorkerRegistry
from tests.operator.operator_testkit import CHART_DIR
from tests.operator.third_party_schemas import custom_resource_errors

OWNER = Owner(name="llm", namespace="team-a", uid="5b0f6a57-0000-4000-8000-00000000000c")
PROM = Capabilities(prometheus_operator=True)
DASHBOARD = CHART_DIR / "dashboards" / "radixserve.json"
MONITORING_KINDS = {"PodMonitor", "PrometheusRule"}


def build(spec: dict[str, Any], caps: Capabilities = PROM) -> dict[tuple[str, str], Any]:
    inp = BuildInput(OWNER, parse_spec(spec), capabilities=caps)
    return {(o["kind"], o["metadata"]["name"]): o for o in desired_objects(inp)}


# --- what the server and router export --------------------------------------------------------

SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
            "gauge": ("",), "summary": ("", "_count", "_sum", "_created")}


def exported_series() -> set[str]:
    """Series names of the server's registries (request and scheduler metrics) and the router's."""
    server = CollectorRegistry()
    TokenizerMetrics("m", server)
    SchedulerMetrics("m", server)
    router = RouterMetrics(WorkerRegistry(), make_policy("cache_aware")).registry
    return {family.name + suffix for registry in (server, router) for family in registry.collect()
            for suffix in SUFFIXES[family.type]}


PROMQL_WORDS = frozenset({"sum", "max", "min", "avg", "count", "rate", "irate", "increase", "histogram_quantile",
                          "clamp_min", "label_values", "and", "or", "unless"})


def metric_names(expr: str) -> list[str]:
    """The metric names an expression selects: what is left once strings, label matchers,
    grouping clauses, ranges, numbers and PromQL's own words are taken out."""
    text = re.sub(r'"[^"]*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\b(by|without)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"label_values\(([^,()]*),\s*[A-Za-z_][A-Za-z0-9_]*\)", r"label_values(\1)", text)
    text = re.sub(r"(?<![A-Za-z0-9_:])\d+(\.\d+)?([eE][-+]?\d+)?", "", text)
    return [t for t in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text) if t not in PROMQL_WORDS]


def dashboard_exprs() -> Iterator[str]:
    dash = json.loads(DASHBOARD.read_text())
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            yield var["query"]["query"]


def test_the_metric_name_check_catches_invented_names() -> None:
    assert metric_names('sum by (pod) (rate(radixserve:prompt_tokens_total{a="b"}[5m])) / 1e-9 > 0.5') \
        == ["radixserve:prompt_tokens_total"]
    assert metric_names("vllm:num_requests_waiting{}") == ["vllm:num_requests_waiting"]
    assert "radixserve:queue_depth" not in exported_series()
    assert {"radixserve:num_queue_reqs", "radixserve:time_to_first_token_seconds_bucket",
            "radixserve_router_errors_total"} <= exported_series()


def test_every_alert_and_dashboard_query_uses_exported_metrics() -> None:
    exported = exported_series()
    rules = build({})[("PrometheusRule", "llm")]["spec"]["groups"][0]["rules"]
    exprs = [rule["expr"] for rule in rules] + list(dashboard_exprs())
    exprs.append(prometheus_query(BuildInput(OWNER, parse_spec({}))))  # the KEDA trigger's query too
    assert len(exprs) > 25
    for expr in exprs:
        used = metric_names(expr)
        assert used, expr
        assert set(used) <= exported, (expr, set(used) - exported)


def test_queries_select_by_the_label_the_pod_monitors_copy() -> None:
    # Prometheus turns the pod label radixserve.io/inferenceserver into radixserve_io_inferenceserver.
    assert re.sub(r"[^A-Za-z0-9_]", "_", names.LABEL_INSTANCE) == INSTANCE_LABEL
    monitor = build({})[("PodMonitor", "llm-server")]
    assert names.LABEL_INSTANCE in monitor["spec"]["podTargetLabels"]
    for rule in build({})[("PrometheusRule", "llm")]["spec"]["groups"][0]["rules"]:
        assert f'{INSTANCE_LABEL}="llm"' in rule["expr"] and 'namespace="team-a"' in rule["expr"]
    panel_exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p.get("targets", [])]
    for expr in panel_exprs:
        assert f'{INSTANCE_LABEL}=~"$inferenceserver"' in expr and 'namespace="$namespace"' in expr, expr


def test_pod_monitors_and_rules_match_the_prometheus_operator_schemas() -> None:
    objects = build({"monitoring": {"interval": "15s", "labels": {"release": "kps", names.LABEL_COMPONENT: "x"}}})
    server, router = objects[("PodMonitor", "llm-server")], objects[("PodMonitor", "llm-router")]
    rule = objects[("PrometheusRule", "llm")]
    for obj in (server, router, rule):
        assert custom_resource_errors(obj) == [], obj["kind"]
        assert obj["metadata"]["labels"]["release"] == "kps"
    # The user's labels never replace the operator's (its selectors and watches rely on them).
    assert server["metadata"]["labels"][names.LABEL_COMPONENT] == names.COMPONENT_SERVER
    assert server["spec"]["selector"]["matchLabels"] == names.server_selector("llm")
    assert router["spec"]["selector"]["matchLabels"] == names.router_selector("llm")
    (endpoint,) = server["spec"]["podMetricsEndpoints"]
    assert endpoint == {"port": names.HTTP_PORT_NAME, "path": "/metrics", "interval": "15s"}
    alerts = {r["alert"] for r in rule["spec"]["groups"][0]["rules"]}
    assert {"RadixServeNoHealthyReplicas", "RadixServeHighTimeToFirstToken", "RadixServeKVCacheNearlyFull",
            "RadixServeHighErrorRate", "RadixServeQueueBacklog"} <= alerts
    broken = {**rule, "spec": {"groups": [{"name": "x", "rules": [{"alert": "A"}]}]}}  # no expr
    assert custom_resource_errors(broken)


def test_without_router_no_router_monitor_or_router_alerts() -> None:
    objects = build({"router": {"enabled": False}})
    assert ("PodMonitor", "llm-router") not in objects
    alerts = {r["alert"] for r in objects[("PrometheusRule", "llm")]["spec"]["groups"][0]["rules"]}
    assert alerts == {a.name for a in ALERTS if not a.router_only}
    assert not build({"monitoring": {"alerts": False}}).keys() & {("PrometheusRule", "llm")}


@pytest.mark.parametrize(("enabled", "caps", "built", "condition"), [
    (None, PROM, True, ("True", "PodMonitors")),
    (None, Capabilities(), False, ("False", "PrometheusOperatorNotInstalled")),
    (True, Capabilities(), False, ("False", "PrometheusOperatorNotInstalled")),
    (True, PROM, True, ("True", "PodMonitors")),
    (False, PROM, False, None),
], ids=["auto-served", "auto-absent", "on-absent", "on-served", "off"])
def test_monitoring_is_built_only_where_its_api_is_served(
        enabled: bool | None, caps: Capabilities, built: bool, condition: tuple[str, str] | None) -> None:
    spec = {} if enabled is None else {"monitoring": {"enabled": enabled}}
    inp = BuildInput(OWNER, parse_spec(spec), capabilities=caps)
    kinds = {o["kind"] for o in desired_objects(inp)}
    assert bool(kinds & MONITORING_KINDS) == built
    conds = {c.type: c for c in feature_conditions(inp)}
    if condition is None:
        assert "Monitoring" not in conds
    else:
        assert ("True" if conds["Monitoring"].ok else "False", conds["Monitoring"].reason) == condition
    if enabled and not built:
        assert "install the Prometheus operator" in conds["Monitoring"].message
    # Turned off where the CRDs exist: the old objects are deleted; where they do not, never looked for.
    unwanted = {ref.kind for ref in unwanted_objects(inp)} & MONITORING_KINDS
    assert unwanted == (MONITORING_KINDS if caps.prometheus_operator and not built else set())


@pytest.fixture(scope="module")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART_DIR) as loaded:
        yield loaded


def test_chart_ships_the_dashboard_as_a_grafana_config_map(chart: helm_python.Chart) -> None:
    def config_maps(values: dict[str, Any]) -> list[dict[str, Any]]:
        rendered = chart.render(values, name="rs", namespace="radixserve-system")
        return [doc for path, text in rendered.items() if path.endswith(".yaml")
                for doc in yaml.safe_load_all(text) if doc and doc.get("kind") == "ConfigMap"]

    assert config_maps({}) == []
    (cm,) = config_maps({"grafanaDashboard": {"enabled": True, "namespace": "monitoring",
                                              "annotations": {"grafana_folder": "LLM"}}})
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert (cm["metadata"]["namespace"], cm["metadata"]["annotations"]) == ("monitoring", {"grafana_folder": "LLM"})
    assert json.loads(cm["data"]["radixserve.json"]) == json.loads(DASHBOARD.read_text())
    with pytest.raises(helm_python.HelmValuesError):
        chart.render({"grafanaDashboard": {"enabled": "yes"}}, name="rs", namespace="radixserve-system")


def test_dashboard_covers_the_issue_panels() -> None:
    dash = json.loads(DASHBOARD.read_text())
    text = " ".join(dashboard_exprs())
    for metric in ("radixserve:generation_tokens_total", "radixserve:time_to_first_token_seconds_bucket",
                   "radixserve:inter_token_latency_seconds_bucket", "radixserve:num_queue_reqs",
                   "radixserve:token_usage", "radixserve:cache_hit_rate"):
        assert metric in text, metric
    assert "by (pod)" in text  # per replica
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "namespace", "inferenceserver"}
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_chart_pod_monitor_for_the_operator(chart: helm_python.Chart) -> None:
    def rendered(values: dict[str, Any]) -> list[dict[str, Any]]:
        out = chart.render(values, name="rs", namespace="radixserve-system")
        return [doc for path, text in out.items() if path.endswith(".yaml") for doc in yaml.safe_load_all(text) if doc]

    # "auto": Helm's discovery here serves no monitoring.coreos.com, so none.
    assert [o for o in rendered({}) if o["kind"] == "PodMonitor"] == []
    objects = rendered({"operatorPodMonitor": {"enabled": True, "labels": {"release": "kps"}}})
    (monitor,) = [o for o in objects if o["kind"] == "PodMonitor"]
    (operator,) = [o for o in objects if o["kind"] == "Deployment"]
    assert custom_resource_errors(monitor) == []
    assert monitor["spec"]["selector"] == operator["spec"]["selector"]
    ports = {p["name"] for c in operator["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] in ports
    assert monitor["metadata"]["labels"]["release"] == "kps"
