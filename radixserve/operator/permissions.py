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
    Rule("", "persistentvolumeclaims", ("get",), "checks that spec.model.pvc.claimName exists and its access modes fit spec.replicas"),
    Rule("", "secrets", ("get",), "checks that spec.server.apiKeySecretRef names an existing Secret and key"),
    Rule("", "events", ("create",), "Kubernetes Events about InferenceServers (kopf posts them)"),
)


def as_policy_rules() -> list[dict[str, list[str]]]:
    """The rules in the shape of a Role's `rules`, one entry per resource."""
    return [
        {"apiGroups": [rule.api_group], "resources": [rule.resource], "verbs": list(rule.verbs)}
        for rule in RULES
    ]
