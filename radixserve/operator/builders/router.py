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
    ]


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
        "rules": [dict(rule) for rule in ROUTER_RULES],
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
    # The router's probes check the port only: whether it has healthy replicas
    # behind it is what the InferenceServer's Ready condition reports.
    tcp_probe = {"tcpSocket": {"port": names.HTTP_PORT_NAME}}
    container: Manifest = {
        "name": "router",
        "image": inp.router_image,
        "command": ["radixserve", "router"],
        "args": router_args(inp),
        "ports": [{"name": names.HTTP_PORT_NAME, "containerPort": names.HTTP_PORT, "protocol": "TCP"}],
        "readinessProbe": {**tcp_probe, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**tcp_probe, "periodSeconds": 15, "failureThreshold": 4},
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
