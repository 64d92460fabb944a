"""What every owned object shares: the owner, labels, metadata with an owner reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from radixserve.operator import names
from radixserve.operator.spec import InferenceServerSpec

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Owner:
    """The InferenceServer being reconciled, as far as its children need to know it."""

    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class Defaults:
    """Operator-wide settings the spec may leave out (set by the chart's values)."""

    image: str = names.DEFAULT_IMAGE
    cpu_image: str = names.DEFAULT_CPU_IMAGE
    # spec.model.cache.mode "node": the directory on each node that holds downloaded models.
    model_cache_host_path: str = names.DEFAULT_MODEL_CACHE_HOST_PATH
    # Label nodes whose cache holds a model, and prefer them when placing replicas.
    label_nodes: bool = True
    # KEDA's Prometheus trigger queries this unless spec.autoscaling.prometheusAddress is set.
    prometheus_address: str = names.DEFAULT_PROMETHEUS_ADDRESS


@dataclass(frozen=True)
class Capabilities:
    """Optional APIs the cluster serves, from API discovery (`checks.capabilities`). Objects of
    an absent API are never built, so a missing CRD cannot fail a reconcile."""

    keda: bool = False  # keda.sh/v1alpha1 scaledobjects
    prometheus_operator: bool = False  # monitoring.coreos.com/v1 podmonitors and prometheusrules
    leader_worker_set: bool = False  # leaderworkerset.x-k8s.io/v1 leaderworkersets (spec.nodesPerReplica > 1)
    # Gateway API Inference Extension InferencePools (spec.gateway.inferencePool), GA and the older alpha.
    inference_pool_v1: bool = False  # inference.networking.k8s.io/v1
    inference_pool_v1alpha2: bool = False  # inference.networking.x-k8s.io/v1alpha2


@dataclass(frozen=True)
class BuildInput:
    owner: Owner
    spec: InferenceServerSpec
    defaults: Defaults = Defaults()
    # Cache mode "pvc": whether the download Job has succeeded. Until it has, the server
    # Deployment is built with 0 replicas, so pods do not hold GPUs while waiting.
    model_downloaded: bool = True
    capabilities: Capabilities = Capabilities()

    @property
    def server_image(self) -> str:
        if self.spec.image:
            return self.spec.image
        # GPU-less pods default to the CPU image: it holds CPU torch and the embedded model.
        return self.defaults.cpu_image if self.spec.gpus == 0 else self.defaults.image

    @property
    def router_image(self) -> str:
        # The router needs no GPU; a custom server image is assumed to hold it too.
        return self.spec.router.image or self.spec.image or self.defaults.cpu_image


def owner_reference(owner: Owner) -> Manifest:
    # controller=true marks us as the one manager; blockOwnerDeletion makes foreground
    # deletion of the InferenceServer wait for its children.
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels(owner: Owner, component: str) -> dict[str, str]:
    return {
        names.LABEL_NAME: "radixserve",
        names.LABEL_APP_INSTANCE: owner.name,
        names.LABEL_APP_COMPONENT: component,
        names.LABEL_MANAGED_BY: names.OPERATOR_NAME,
        names.LABEL_PART_OF: "radixserve",
        names.LABEL_INSTANCE: owner.name,
        names.LABEL_COMPONENT: component,
    }


def metadata(owner: Owner, name: str, component: str) -> Manifest:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner, component),
        "ownerReferences": [owner_reference(owner)],
    }


def container_resources(requests: dict[str, Any], limits: dict[str, Any]) -> Manifest:
    out: Manifest = {}
    if requests:
        out["requests"] = dict(requests)
    if limits:
        out["limits"] = dict(limits)
    return out


def restricted_container_security() -> Manifest:
    """Nothing in radixserve needs privileges; keep the container from gaining any."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


# The user the radixserve images run as (Dockerfile: `USER 1000`).
IMAGE_UID = 1000


def restricted_pod_security() -> Manifest:
    """The pod-level half of Pod Security "restricted": a non-root user and the runtime's seccomp
    profile. The user is set, not only required, so a custom image whose default user is root
    still starts (runAsNonRoot alone would refuse it); fsGroup makes emptyDir and claim volumes
    writable by that user (the model cache)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": IMAGE_UID,
        "runAsGroup": IMAGE_UID,
        "fsGroup": IMAGE_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
