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
    # list/watch on every owned kind: its objects' events (a deletion, someone's edit) start a
    # reconcile that repairs the drift; the watches select our labels server-side.
    Rule("", "services", ("get", "list", "watch", "create", "patch"),
         "headless Service for the replicas and the endpoint Service; watched for drift"),
    Rule("", "serviceaccounts", ("get", "list", "watch", "create", "patch", "delete"),
         "the router's ServiceAccount; watched for drift"),
    Rule("rbac.authorization.k8s.io", "roles", ("get", "list", "watch", "create", "patch", "delete"),
         "the router's Role; watched for drift"),
    Rule("rbac.authorization.k8s.io", "rolebindings", ("get", "list", "watch", "create", "patch", "delete"),
         "the router's RoleBinding; watched for drift"),
    Rule("discovery.k8s.io", "endpointslices", ("get", "list", "watch"),
         "never called: Kubernetes lets a subject create a Role only with the permissions it grants "
         "(RBAC escalation check), and the router's Role grants these"),
    Rule("", "persistentvolumeclaims", ("get", "list", "watch", "create", "patch"),
         "checks that spec.model.pvc.claimName / a pvc:// claim / an adopted cache claim exists and its access "
         "modes fit; creates the ReadWriteMany model cache claim of cache mode pvc (server-side apply), and "
         "re-creates it when deleted (watched for drift)"),
    Rule("", "secrets", ("get",),
         "checks that spec.server.apiKeySecretRef and spec.model.credentialsSecretRef name an existing Secret "
         "with the keys needed (key names only; values are never read into logs or status)"),
    Rule("", "events", ("create",), "Kubernetes Events about InferenceServers (events.py and kopf post them)"),
    Rule("", "pods", ("list", "watch"),
         "ModelReady follows the model-download init container of server pods and the download Job's pods"),
    Rule("", "pods/log", ("get",), "download progress: the last JSON progress line of the model-download container"),
    Rule("batch", "jobs", ("get", "list", "watch", "create", "patch", "delete"),
         "the download Job of cache mode pvc (server-side apply); its completion releases the held replicas; "
         "Jobs of an earlier model URI are deleted"),
    Rule("policy", "poddisruptionbudgets", ("get", "list", "watch", "create", "patch", "delete"),
         "PodDisruptionBudgets of the server and router pods (spec.disruptionBudget); deleted when turned off"),
    Rule("networking.k8s.io", "networkpolicies", ("get", "list", "watch", "create", "patch", "delete"),
         "NetworkPolicies letting only the router and the metrics scraper reach the servers "
         "(spec.networkPolicy); deleted when turned off"),
    Rule("autoscaling", "horizontalpodautoscalers", ("get", "list", "watch", "create", "patch", "delete"),
         "the HPA of spec.autoscaling (provider hpa); deleted when autoscaling is off or KEDA takes over"),
    Rule("keda.sh", "scaledobjects", ("get", "list", "watch", "create", "patch", "delete"),
         "the KEDA ScaledObject of spec.autoscaling (provider keda, or auto with KEDA installed)"),
    Rule("monitoring.coreos.com", "podmonitors", ("get", "list", "watch", "create", "patch", "delete"),
         "PodMonitors of the server and router pods (spec.monitoring)"),
    Rule("monitoring.coreos.com", "prometheusrules", ("get", "list", "watch", "create", "patch", "delete"),
         "the alerts of spec.monitoring.alerts"),
    Rule("leaderworkerset.x-k8s.io", "leaderworkersets", ("get", "list", "watch", "create", "patch", "delete"),
         "the LeaderWorkerSet of multi-node replicas (spec.nodesPerReplica > 1, server-side apply); its status "
         "is the replicas' readiness; deleted when nodesPerReplica goes back to 1"),
    Rule("inference.networking.k8s.io", "inferencepools", ("get", "list", "watch", "create", "patch", "delete"),
         "the InferencePool of spec.gateway.inferencePool (Gateway API Inference Extension v1); deleted when "
         "turned off"),
    Rule("inference.networking.x-k8s.io", "inferencepools", ("get", "list", "watch", "create", "patch", "delete"),
         "the InferencePool of spec.gateway.inferencePool where only the older v1alpha2 CRD is installed; "
         "deleted when turned off or once the v1 CRD is served"),
    Rule(names.GROUP, f"{names.PLURAL}/scale", ("get", "patch"),
         "never called: the router's Role grants it for scale from zero (spec.autoscaling.minReplicas 0), and "
         "Kubernetes lets a subject create a Role only with the permissions it holds (RBAC escalation check)"),
)

# Cluster-scoped, granted by a ClusterRole of its own even when the operator serves some
# namespaces only, and not at all with node labelling off (--no-label-nodes, chart value
# modelCache.labelNodes=false).
NODE_RULES: tuple[Rule, ...] = (
    Rule("", "nodes", ("get", "list", "patch"),
         "labels model-cache.radixserve.io/<model>=true on nodes whose hostPath cache holds a model (cache mode "
         "node), so replicas prefer them; removes labels of models no InferenceServer uses any more"),
)


# Namespaced to the operator's own namespace (a Role there), only with leader election on
# (--leader-election, chart value leaderElection.enabled).
LEADER_ELECTION_RULES: tuple[Rule, ...] = (
    Rule("coordination.k8s.io", "leases", ("get", "create", "patch"),
         "leader election: replicas read the Lease, the first creates it, the leader renews it and a standby "
         "takes it over with a resourceVersion precondition (leader.py)"),
)


def as_leader_election_policy_rules() -> list[dict[str, list[str]]]:
    """LEADER_ELECTION_RULES in the shape of a Role's `rules`."""
    return [
        {"apiGroups": [rule.api_group], "resources": [rule.resource], "verbs": list(rule.verbs)}
        for rule in LEADER_ELECTION_RULES
    ]


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
