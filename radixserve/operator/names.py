"""API coordinates, label keys and the names of the objects an InferenceServer owns.

Kept in one place because the CRD, the builders, the router's selector and the
chart's RBAC all have to agree on them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata

GROUP = "radixserve.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InferenceServer"
PLURAL = "inferenceservers"
SINGULAR = "inferenceserver"
SHORT_NAMES = ("rsvc",)  # not "isvc": KServe's InferenceService owns that one

OPERATOR_NAME = "radixserve-operator"
FIELD_MANAGER = OPERATOR_NAME

# Labels. The first two form the selector of the server replicas: they are
# stable for the life of the resource, since a Deployment's selector is immutable.
LABEL_INSTANCE = f"{GROUP}/inferenceserver"
LABEL_COMPONENT = f"{GROUP}/component"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_APP_INSTANCE = "app.kubernetes.io/instance"
LABEL_APP_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"

# Hash of the manifest we last applied; see `apply.py` for why.
ANNOTATION_APPLIED_HASH = f"{GROUP}/applied-hash"

COMPONENT_SERVER = "server"
COMPONENT_ROUTER = "router"

# Both the server and the router listen here (the interface of `radixserve serve` / `router`).
HTTP_PORT = 30000
HTTP_PORT_NAME = "http"

API_KEY_ENV = "RADIXSERVE_API_KEY"

# Model delivery (spec.model.uri).
COMPONENT_MODEL_DOWNLOAD = "model-download"
MODEL_DOWNLOAD_CONTAINER = "model-download"
DEFAULT_MODEL_CACHE_HOST_PATH = "/var/lib/radixserve/models"
# Node label "this node's cache holds model X": NODE_LABEL_PREFIX + uri.label_key_suffix(X).
NODE_LABEL_PREFIX = f"model-cache.{GROUP}/"
MODEL_CACHE_CLAIM_SUFFIX = "-model-cache"

# spec.autoscaling with KEDA: the Prometheus its trigger queries unless the spec names one
# (kube-prometheus-stack's Service in the monitoring namespace).
DEFAULT_PROMETHEUS_ADDRESS = "http://prometheus-operated.monitoring.svc:9090"

# Object names are the CR name plus a suffix; Services must be DNS-1035 labels
# (<= 63 characters), so the CR name is capped by the longest suffix.
SERVER_SUFFIX = "-server"
ROUTER_SUFFIX = "-router"
MAX_NAME_LENGTH = 63 - len(ROUTER_SUFFIX)


def _package_version() -> str:
    try:
        return importlib.metadata.version("radixserve")
    except importlib.metadata.PackageNotFoundError:
        # Running from a source tree that is not installed (tests, `python -m`).
        return "0.1.0"


IMAGE_REPOSITORY = "ghcr.io/radixserve/radixserve"
DEFAULT_IMAGE = f"{IMAGE_REPOSITORY}:{_package_version()}"
# The CPU image carries CPU torch and the embedded model; GPU-less pods default to it.
DEFAULT_CPU_IMAGE = f"{DEFAULT_IMAGE}-cpu"


def server_name(cr_name: str) -> str:
    """The server Deployment and its headless Service."""
    return f"{cr_name}{SERVER_SUFFIX}"


def router_name(cr_name: str) -> str:
    """The router Deployment, ServiceAccount, Role and RoleBinding."""
    return f"{cr_name}{ROUTER_SUFFIX}"


def model_cache_claim_name(cr_name: str) -> str:
    """The ReadWriteMany claim of cache mode "pvc", when the operator creates it."""
    return f"{cr_name}{MODEL_CACHE_CLAIM_SUFFIX}"


def model_job_name(cr_name: str, uri_text: str) -> str:
    """The download Job of cache mode "pvc", one per model URI. Job names become a label
    value on the Job's pods (at most 63 characters), hence the cut."""
    digest = hashlib.sha256(uri_text.encode()).hexdigest()[:8]
    return f"{cr_name[:47].rstrip('-')}-model-{digest}"


def endpoint_service_name(cr_name: str) -> str:
    """The Service clients call: the router when enabled, else the replicas themselves."""
    return cr_name


def server_selector(cr_name: str) -> dict[str, str]:
    """Labels selecting the server pods (and, copied from the headless Service, its EndpointSlices)."""
    return {LABEL_INSTANCE: cr_name, LABEL_COMPONENT: COMPONENT_SERVER}


def router_selector(cr_name: str) -> dict[str, str]:
    return {LABEL_INSTANCE: cr_name, LABEL_COMPONENT: COMPONENT_ROUTER}


def selector_string(labels: dict[str, str]) -> str:
    """`k=v,k2=v2`, the form of `--kube-selector` and of the scale subresource's selector."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
