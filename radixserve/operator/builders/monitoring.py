"""spec.monitoring: PodMonitors for the server and router pods and a PrometheusRule of alerts,
for the Prometheus operator (monitoring.coreos.com/v1).

Built when spec.monitoring.enabled is true, or when it is unset and the cluster serves the
Prometheus operator's CRDs; never when it does not serve them (the Monitoring condition says
so), so a cluster without the Prometheus operator reconciles as usual. Every alert queries
only metrics `radixserve serve` (radixserve/metrics.py) and `radixserve router`
(radixserve/router/metrics.py) export; a test checks each name against their registries.
"""

from __future__ import annotations

from dataclasses import dataclass

from radixserve.operator import names
from radixserve.operator.builders.autoscaling import INSTANCE_LABEL
from radixserve.operator.builders.common import BuildInput, Manifest, metadata

MONITORING_API_VERSION = "monitoring.coreos.com/v1"
COMPONENT_MONITORING = "monitoring"
# Pod labels Prometheus copies onto every series (as radixserve_io_inferenceserver, ...), so
# queries, alerts and the dashboard can pick one InferenceServer.
POD_TARGET_LABELS = [names.LABEL_INSTANCE, names.LABEL_COMPONENT]


@dataclass(frozen=True)
class MonitoringChoice:
    enabled: bool
    reason: str
    message: str


def choose_monitoring(inp: BuildInput) -> MonitoringChoice:
    wanted = inp.spec.monitoring.enabled
    served = inp.capabilities.prometheus_operator
    if wanted is False:
        return MonitoringChoice(False, "Disabled", "spec.monitoring.enabled is false")
    if not served:
        if wanted is None:
            return MonitoringChoice(False, "PrometheusOperatorNotInstalled",
                                    "the cluster does not serve monitoring.coreos.com/v1 PodMonitors and "
                                    "PrometheusRules; nothing to build (spec.monitoring.enabled is unset)")
        return MonitoringChoice(False, "PrometheusOperatorNotInstalled",
                                "spec.monitoring.enabled is true, but the cluster does not serve "
                                "monitoring.coreos.com/v1 PodMonitors and PrometheusRules: install the Prometheus "
                                "operator (or kube-prometheus-stack)")
    what = "PodMonitors" + (" and a PrometheusRule" if inp.spec.monitoring.alerts else "")
    return MonitoringChoice(True, "PodMonitors", f"{what} built for Prometheus")


def _metadata(inp: BuildInput, name: str, component: str) -> Manifest:
    meta = metadata(inp.owner, name, component)
    # The user's labels (a Prometheus' podMonitorSelector) never replace ours.
    meta["labels"] = {**inp.spec.monitoring.labels, **meta["labels"]}
    return meta


def _pod_monitor(inp: BuildInput, name: str, component: str, selector: dict[str, str]) -> Manifest:
    return {
        "apiVersion": MONITORING_API_VERSION,
        "kind": "PodMonitor",
        "metadata": _metadata(inp, name, component),
        "spec": {
            "selector": {"matchLabels": selector},
            "podTargetLabels": list(POD_TARGET_LABELS),
            # Both /metrics answer without the API key (radixserve's open routes).
            "podMetricsEndpoints": [{
                "port": names.HTTP_PORT_NAME,
                "path": "/metrics",
                "interval": inp.spec.monitoring.interval,
            }],
        },
    }


def build_server_pod_monitor(inp: BuildInput) -> Manifest | None:
    if not choose_monitoring(inp).enabled:
        return None
    name = inp.owner.name
    return _pod_monitor(inp, names.server_name(name), names.COMPONENT_SERVER, names.server_selector(name))


def build_router_pod_monitor(inp: BuildInput) -> Manifest | None:
    if not (choose_monitoring(inp).enabled and inp.spec.router.enabled):
        return None
    name = inp.owner.name
    return _pod_monitor(inp, names.router_name(name), names.COMPONENT_ROUTER, names.router_selector(name))


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str  # PromQL with {sel} where this InferenceServer's label matchers go
    duration: str
    severity: str
    summary: str
    router_only: bool = False


ALERTS: tuple[Alert, ...] = (
    Alert("RadixServeNoHealthyReplicas", "max(radixserve_router_healthy_workers{{{sel}}}) == 0", "5m", "critical",
          "The router of {name} sees no healthy server replica: every request fails.", router_only=True),
    Alert("RadixServeReplicaUnhealthy", "min by (worker) (radixserve_router_worker_healthy{{{sel}}}) == 0",
          "10m", "warning", "A server replica of {name} has failed its health checks for 10 minutes.",
          router_only=True),
    Alert("RadixServeHighTimeToFirstToken",
          "histogram_quantile(0.95, sum by (le) (rate(radixserve:time_to_first_token_seconds_bucket{{{sel}}}[5m])))"
          " > 5", "10m", "warning", "p95 time to first token of {name} is above 5 s: add replicas."),
    Alert("RadixServeQueueBacklog", "avg(radixserve:num_queue_reqs{{{sel}}}) > 16", "10m", "warning",
          "More than 16 requests wait per replica of {name}: add replicas or lower the load."),
    Alert("RadixServeKVCacheNearlyFull", "max by (pod) (radixserve:token_usage{{{sel}}}) > 0.95", "15m", "warning",
          "Running requests of {name} hold over 95% of a replica's KV cache: requests queue or get preempted."),
    Alert("RadixServeHighErrorRate",
          "sum(rate(radixserve:num_request_errors_total{{{sel},code=~\"5..\"}}[5m])) / "
          "clamp_min(sum(rate(radixserve:num_requests_total{{{sel}}}[5m])), 1e-9) > 0.05",
          "10m", "critical", "Over 5% of the requests of {name} end in a server error."),
    Alert("RadixServeRouterErrors", "sum(rate(radixserve_router_errors_total{{{sel}}}[5m])) > 1", "10m", "warning",
          "The router of {name} fails more than one request a second.", router_only=True),
)


def selector(inp: BuildInput) -> str:
    return f'namespace="{inp.owner.namespace}",{INSTANCE_LABEL}="{inp.owner.name}"'


def alert_rules(inp: BuildInput) -> list[Manifest]:
    sel = selector(inp)
    who = f"{inp.owner.namespace}/{inp.owner.name}"
    rules = []
    for alert in ALERTS:
        if alert.router_only and not inp.spec.router.enabled:
            continue
        rules.append({
            "alert": alert.name,
            "expr": alert.expr.format(sel=sel),
            "for": alert.duration,
            "labels": {"severity": alert.severity},
            "annotations": {"summary": alert.summary.format(name=who)},
        })
    return rules


def build_prometheus_rule(inp: BuildInput) -> Manifest | None:
    if not (choose_monitoring(inp).enabled and inp.spec.monitoring.alerts):
        return None
    return {
        "apiVersion": MONITORING_API_VERSION,
        "kind": "PrometheusRule",
        "metadata": _metadata(inp, inp.owner.name, COMPONENT_MONITORING),
        "spec": {"groups": [{"name": f"radixserve.{inp.owner.namespace}.{inp.owner.name}",
                             "rules": alert_rules(inp)}]},
    }
