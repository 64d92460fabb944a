"""The one list of kinds an InferenceServer owns: what the operator watches, repairs and grants.

Adding a builder that emits a new kind means adding it here (a test renders the builders and
fails on a kind missing from this list). From this list come:
- `kube.RESOURCE_TYPES` (the REST paths),
- the kopf watches on owned objects (`handlers.py`), each with a server-side label selector, so
  the operator never lists every Deployment of the cluster,
- drift repair (`reconcile.py` compares every desired object with its live state),
- the RBAC rules' watch verbs (`permissions.py`).

`optional` marks kinds whose CRD may be missing (KEDA, the Prometheus operator, LeaderWorkerSet,
the Gateway API Inference Extension):
the watch is still registered, and kopf serves it only when the resource exists at start-up, so
a missing CRD never blocks the operator (an operator restart picks up a CRD installed later).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OwnedKind:
    api_version: str  # "v1", "apps/v1", ...
    kind: str
    plural: str
    # Created once and never updated (a Job's pod template is immutable, and so is most of a
    # claim's spec): drift repair re-creates them when missing but leaves their fields alone.
    create_only: bool = False
    # Provided by a CRD that may not be installed.
    optional: bool = False

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]


OWNED_KINDS: tuple[OwnedKind, ...] = (
    OwnedKind("apps/v1", "Deployment", "deployments"),
    OwnedKind("v1", "Service", "services"),
    OwnedKind("v1", "ServiceAccount", "serviceaccounts"),
    OwnedKind("rbac.authorization.k8s.io/v1", "Role", "roles"),
    OwnedKind("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings"),
    OwnedKind("batch/v1", "Job", "jobs", create_only=True),
    OwnedKind("v1", "PersistentVolumeClaim", "persistentvolumeclaims", create_only=True),
    # Disruption safety, network isolation, autoscaling and monitoring (builders/disruption.py,
    # network.py, autoscaling.py, monitoring.py).
    OwnedKind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
    OwnedKind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
    OwnedKind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
    OwnedKind("keda.sh/v1alpha1", "ScaledObject", "scaledobjects", optional=True),
    OwnedKind("monitoring.coreos.com/v1", "PodMonitor", "podmonitors", optional=True),
    OwnedKind("monitoring.coreos.com/v1", "PrometheusRule", "prometheusrules", optional=True),
    # Multi-node replicas (builders/multinode.py).
    OwnedKind("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet", "leaderworkersets", optional=True),
    # Gateway API Inference Extension (builders/gateway.py): GA and the older alpha group.
    OwnedKind("inference.networking.k8s.io/v1", "InferencePool", "inferencepools", optional=True),
    OwnedKind("inference.networking.x-k8s.io/v1alpha2", "InferencePool", "inferencepools", optional=True),
)


def by_kind(api_version: str, kind: str) -> OwnedKind | None:
    for owned in OWNED_KINDS:
        if (owned.api_version, owned.kind) == (api_version, kind):
            return owned
    return None


def create_only_kinds() -> frozenset[str]:
    return frozenset(owned.kind for owned in OWNED_KINDS if owned.create_only)
