"""The cache-aware router: a Deployment of `radixserve router` pods and the identity
that lets them watch the replicas' EndpointSlices (and nothing else)."""

from __future__ import annotations

from radixserve.operator import names
from radixserve.operator.builders.common import (
    BuildInput,
    Manifest,
    container_resources,
    labels,
    metadata,
    restricted_container_security,
    restricted_pod_security,
)

# Enough for a Python proxy at modest load; the spec overrides both.
DEFAULT_ROUTER_REQUESTS = {"cpu": "250m", "memory": "256Mi"}

# The router's whole API access: discover replicas from EndpointSlices in its namespace.
ROUTER_RULES: list[Manifest] = [
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
]
# Scale from zero (spec.autoscaling.minReplicas 0): the router reads and patches the scale
# subresource of its own InferenceServer, by name, to wake the first replica.
SCALE_FROM_ZERO_VERBS = ["get", "patch"]
# Seconds between the pod leaving the endpoints and SIGTERM (kube-proxy, load balancers and
# ingress controllers see the EndpointSlice change first). The kubelet's own sleep action
# (Kubernetes 1.30+): no `sleep` binary needed in the image.
PRE_STOP_SLEEP_SECONDS = 5
# After SIGTERM the router keeps serving new requests this long (`--drain-grace-seconds`), then
# closes its listener and lets in-flight streams finish for the server's own drain budget
# (`--drain-timeout-seconds` = spec.server.gracefulShutdownTimeoutSeconds).
DRAIN_GRACE_SECONDS = 5
TERMINATION_SLACK_SECONDS = 10


def termination_grace_seconds(inp: BuildInput) -> int:
    """The kubelet's SIGKILL deadline: pre-stop sleep, drain grace and drain timeout, plus slack."""
    return (PRE_STOP_SLEEP_SECONDS + DRAIN_GRACE_SECONDS + inp.spec.server.graceful_shutdown_timeout_seconds
            + TERMINATION_SLACK_SECONDS)


def router_rules(inp: BuildInput) -> list[Manifest]:
    rules = [dict(rule) for rule in ROUTER_RULES]
    if inp.spec.scales_to_zero:
        rules.append({"apiGroups": [names.GROUP], "resources": [f"{names.PLURAL}/scale"],
                      "resourceNames": [inp.owner.name], "verbs": list(SCALE_FROM_ZERO_VERBS)})
    return rules


def router_args(inp: BuildInput) -> list[str]:
    router = inp.spec.router
    return [
        "--host", "0.0.0.0",
        "--port", str(names.HTTP_PORT),
        "--kube-selector", names.selector_string(names.server_selector(inp.owner.name)),
        "--kube-namespace", inp.owner.namespace,
        "--kube-port", str(names.HTTP_PORT),
        "--policy", router.policy,
        "--cache-threshold", str(router.cache_threshold),
        "--balance-abs-threshold", str(router.balance_abs_threshold),
        "--balance-rel-threshold", str(router.balance_rel_threshold),
        "--max-tree-size", str(router.max_tree_size),
        "--drain-grace-seconds", str(DRAIN_GRACE_SECONDS),
        "--drain-timeout-seconds", str(inp.spec.server.graceful_shutdown_timeout_seconds),
        *scale_from_zero_args(inp),
    ]


def scale_from_zero_args(inp: BuildInput) -> list[str]:
    """With minReplicas 0 the router holds requests while it scales the server up from zero, and
    answers 503 with Retry-After when the first replica is not ready in time."""
    if not inp.spec.scales_to_zero:
        return []
    return ["--scale-from-zero", f"{inp.owner.namespace}/{inp.owner.name}",
            "--scale-from-zero-timeout", str(inp.spec.autoscaling.scale_from_zero_timeout_seconds)]


def build_router_service_account(inp: BuildInput) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(inp.owner, names.router_name(inp.owner.name), names.COMPONENT_ROUTER),
    }


def build_router_role(inp: BuildInput) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata(inp.owner, names.router_name(inp.owner.name), names.COMPONENT_ROUTER),
        "rules": router_rules(inp),
    }


def build_router_role_binding(inp: BuildInput) -> Manifest:
    name = names.router_name(inp.owner.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": metadata(inp.owner, name, names.COMPONENT_ROUTER),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": inp.owner.namespace}],
    }


def router_container(inp: BuildInput) -> Manifest:
    spec = inp.spec
    requests = dict(spec.router.resources.requests) or dict(DEFAULT_ROUTER_REQUESTS)
    # Readiness is /health: 503 from SIGTERM on (the router drains) and while no replica is
    # healthy, except with --scale-from-zero, where it stays 200 so requests reach the router
    # that wakes the server. Liveness is /liveness, 200 while the process runs (draining too).
    def http_probe(path: str) -> Manifest:
        return {"httpGet": {"path": path, "port": names.HTTP_PORT_NAME}, "timeoutSeconds": 3}

    container: Manifest = {
        "name": "router",
        "image": inp.router_image,
        "command": ["radixserve", "router"],
        "args": router_args(inp),
        "ports": [{"name": names.HTTP_PORT_NAME, "containerPort": names.HTTP_PORT, "protocol": "TCP"}],
        "readinessProbe": {**http_probe("/health"), "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {**http_probe("/liveness"), "periodSeconds": 15, "failureThreshold": 4},
        # The endpoints drop a deleted pod at once; the sleep lets everyone who routes to it
        # notice before SIGTERM starts the router's drain of in-flight streams.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SLEEP_SECONDS}}},
        "resources": container_resources(requests, dict(spec.router.resources.limits)),
        "securityContext": restricted_container_security(),
    }
    ref = spec.server.api_key_secret_ref
    if ref is not None:
        # Same key as the replicas: clients present it to the router, the router to the replicas.
        container["env"] = [{
            "name": names.API_KEY_ENV,
            "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
        }]
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    return container


def build_router_deployment(inp: BuildInput) -> Manifest:
    spec = inp.spec
    name = names.router_name(inp.owner.name)
    pod: Manifest = {
        "serviceAccountName": name,
        "containers": [router_container(inp)],
        "enableServiceLinks": False,
        "securityContext": restricted_pod_security(),
        # Streams through the router last as long as they do on a server: the same drain budget.
        "terminationGracePeriodSeconds": termination_grace_seconds(inp),
        # Spread over nodes, so one node's drain or failure takes one router at most.
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100,
            "podAffinityTerm": {
                "labelSelector": {"matchLabels": names.router_selector(inp.owner.name)},
                "topologyKey": "kubernetes.io/hostname",
            },
        }]}},
    }
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(inp.owner, name, names.COMPONENT_ROUTER),
        "spec": {
            "replicas": spec.router.replicas,
            "selector": {"matchLabels": names.router_selector(inp.owner.name)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "revisionHistoryLimit": 3,
            "template": {
                "metadata": {"labels": labels(inp.owner, names.COMPONENT_ROUTER)},
                "spec": pod,
            },
        },
    }
