"""The RBAC rules the operator needs, with the reason for each.

The chart's Role/ClusterRole must grant exactly these (a test renders the chart
and compares), so a new API call here fails the tests until the chart grants it,
and a grant nobody uses fails them too.
"""

from __future__ import annotations

from dataclasses import dataclass

from radixserve.operator import names


@dataclass(frozen=True)
class Rule:
    api_group: str
    resource: str
    verbs: tuple[str, ...]
    why: str


RULES: tuple[Rule, ...] = (
    Rule(names.GROUP, names.PLURAL, ("get", "list", "watch", "patch"),
         "kopf watches InferenceServers and patches its progress annotations; "
         "status refreshes read the current object"),
    Rule(names.GROUP, f"{names.PLURAL}/status", ("patch",), "writes .status"),
    Rule(names.GROUP, f"{names.PLURAL}/finalizers", ("update",),
         "owner references with blockOwnerDeletion=true need it (OwnerReferencesPermissionEnforcement)"),
    # Server-side apply creates through PATCH, and the API server then checks `create` too.
    Rule("apps", "deployments", ("get", "list", "watch", "create", "patch", "delete"),
         "server and router Deployments (server-side apply); "
         "their status changes are watched to keep the InferenceServer's status current; "
         "the router's is deleted when the router is disabled"),
    Rule("", "services", ("get", "create", "patch"), "headless Service for the replicas and the endpoint Service"),
    Rule("", "serviceaccounts", ("get", "create", "patch", "delete"), "the router's ServiceAccount"),
    Rule("rbac.authorization.k8s.io", "roles", ("get", "create", "patch", "delete"), "the router's Role"),
    Rule("rbac.authorization.k8s.io", "rolebindings", ("get", "create", "patch", "delete"),
         "the router's RoleBinding"),
    Rule("discovery.k8s.io", "endpointslices", ("get", "list", "watch"),
         "never called: Kubernetes lets a subject create a Role only with the permissions it grants "
         "(RBAC escalation check), and the router's Role grants these"),
    Rule("", "persistentvolumeclaims", ("get", "create", "patch"),
         "checks that spec.model.pvc.claimName / a pvc:// claim / an adopted cache claim exists and its access "
         "modes fit; creates the ReadWriteMany model cache claim of cache mode pvc (server-side apply)"),
    Rule("", "secrets", ("get",),
         "checks that spec.server.apiKeySecretRef and spec.model.credentialsSecretRef name an existing Secret "
         "with the keys needed (key names only; values are never read into logs or status)"),
    Rule("", "events", ("create",), "Kubernetes Events about InferenceServers (kopf posts them)"),
    Rule("", "pods", ("list", "watch"),
         "ModelReady follows the model-download init container of server pods and the download Job's pods"),
    Rule("", "pods/log", ("get",), "download progress: the last JSON progress line of the model-download container"),
    Rule("batch", "jobs", ("get", "list", "watch", "create", "patch", "delete"),
         "the download Job of cache mode pvc (server-side apply); its completion releases the held replicas; "
         "Jobs of an earlier model URI are deleted"),
)

# Cluster-scoped, granted by a ClusterRole of its own even when the operator serves some
# namespaces only, and not at all with node labelling off (--no-label-nodes, chart value
# modelCache.labelNodes=false).
NODE_RULES: tuple[Rule, ...] = (
    Rule("", "nodes", ("get", "list", "patch"),
         "labels model-cache.radixserve.io/<model>=true on nodes whose hostPath cache holds a model (cache mode "
         "node), so replicas prefer them; removes labels of models no InferenceServer uses any more"),
)


def as_policy_rules() -> list[dict[str, list[str]]]:
    """The rules in the shape of a Role's `rules`, one entry per resource."""
    return [
        {"apiGroups": [rule.api_group], "resources": [rule.resource], "verbs": list(rule.verbs)}
        for rule in RULES
    ]


def as_node_policy_rules() -> list[dict[str, list[str]]]:
    """NODE_RULES in the shape of a ClusterRole's `rules`."""
    return [
        {"apiGroups": [rule.api_group], "resources": [rule.resource], "verbs": list(rule.verbs)}
        for rule in NODE_RULES
    ]
