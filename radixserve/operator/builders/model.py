"""Model delivery for `spec.model.uri`: volumes, the download init container, the
download Job and cache claim of cache mode "pvc", and the node affinity that prefers
nodes whose cache already holds the model.

    hf://, s3://   `radixserve download URI /models-cache/<cache key>` fetches the model
                   before the server starts, into the cache chosen by spec.model.cache.mode:
                   none  an emptyDir of the pod (sizeLimit = cache.size): every pod downloads;
                   node  a hostPath directory shared by the pods of a node (the downloader's
                         file lock makes them download once per node);
                   pvc   a ReadWriteMany claim filled once per cluster by a Job; the server
                         mounts it read-only and starts only once the Job has succeeded.
    pvc://         the claim, mounted read-only at /mnt/models (like spec.model.pvc)
    oci://         a Kubernetes image volume (1.33+) at /mnt/models
    /path          a path inside the server image (like spec.model.image)

Why an init container rather than the server downloading at start: the download
credentials reach only the init container (the server container never sees them), and
the start-up probe's budget (server.startupTimeoutSeconds) stays a budget for loading,
not for a download of unknown length.
"""

from __future__ import annotations

import copy
from typing import Any

from radixserve.model_store.uri import (
    HFModel,
    LocalModel,
    ModelURI,
    OCIModel,
    PVCModel,
    S3Model,
    cache_key,
    label_key_suffix,
)
from radixserve.operator import names
from radixserve.operator.builders.common import (
    BuildInput,
    Manifest,
    labels,
    metadata,
    restricted_container_security,
    restricted_pod_security,
)

CACHE_VOLUME = "model-cache"
CACHE_MOUNT = "/models-cache"
MODEL_VOLUME = "model"
MODEL_MOUNT = "/mnt/models"
TERMINATION_LOG = "/dev/termination-log"
# The downloader is I/O bound: enough for parallel HTTP streams and checksums. Init
# containers' requests count towards the pod's only while they are above the app's.
DOWNLOAD_RESOURCES: Manifest = {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}
# Attempts of the download Job (cache mode "pvc") before it gives up; the Job controller
# backs off exponentially between them (10 s, 20 s, 40 s, ... capped at 6 minutes).
DOWNLOAD_JOB_BACKOFF_LIMIT = 6

# Environment variables each scheme reads from spec.model.credentialsSecretRef:
# (name, optional). The Secret's keys are the variables' names.
CREDENTIAL_KEYS: dict[type, tuple[tuple[str, bool], ...]] = {
    HFModel: (("HF_TOKEN", False),),
    S3Model: (("AWS_ACCESS_KEY_ID", False), ("AWS_SECRET_ACCESS_KEY", False), ("AWS_SESSION_TOKEN", True)),
}


def uri_of(inp: BuildInput) -> ModelURI | None:
    return inp.spec.model.parsed_uri


def downloads(inp: BuildInput) -> bool:
    return inp.spec.model.downloads


def cache_dir(uri: ModelURI) -> str:
    """Where the downloaded model lies inside the pod."""
    return f"{CACHE_MOUNT}/{cache_key(uri)}"


def node_label_key(uri: ModelURI) -> str:
    return names.NODE_LABEL_PREFIX + label_key_suffix(uri)


def credential_keys(uri: ModelURI) -> tuple[tuple[str, bool], ...]:
    return CREDENTIAL_KEYS.get(type(uri), ())


def model_path(uri: ModelURI) -> str:
    """--model-path for a URI source."""
    if isinstance(uri, HFModel | S3Model):
        return cache_dir(uri)
    if isinstance(uri, PVCModel):
        return f"{MODEL_MOUNT}/{uri.path}" if uri.path else MODEL_MOUNT
    if isinstance(uri, OCIModel):
        return MODEL_MOUNT
    assert isinstance(uri, LocalModel)
    return uri.path


# --- the downloader ------------------------------------------------------------------

def download_command(inp: BuildInput) -> list[str]:
    """`radixserve download URI DEST ...` (the contract of the downloader CLI)."""
    uri = uri_of(inp)
    assert uri is not None and isinstance(uri, HFModel | S3Model)
    model = inp.spec.model
    command = ["radixserve", "download", str(uri), cache_dir(uri),
               "--progress", "json", "--termination-log", TERMINATION_LOG]
    for pattern in model.include:
        command += ["--include", pattern]
    for pattern in model.exclude:
        command += ["--exclude", pattern]
    if model.endpoint:
        command += ["--hf-endpoint" if isinstance(uri, HFModel) else "--s3-endpoint", model.endpoint]
    if model.region and isinstance(uri, S3Model):
        command += ["--s3-region", model.region]
    return command


def download_env(inp: BuildInput) -> list[Manifest]:
    uri = uri_of(inp)
    ref = inp.spec.model.credentials_secret_ref
    if uri is None or ref is None:
        return []
    env = []
    for key, optional in credential_keys(uri):
        selector: Manifest = {"name": ref.name, "key": key}
        if optional:
            selector["optional"] = True
        env.append({"name": key, "valueFrom": {"secretKeyRef": selector}})
    return env


def download_container(inp: BuildInput) -> Manifest:
    """The `model-download` container: an init container of the server pods (cache modes
    none and node) or the container of the download Job (cache mode pvc)."""
    container: Manifest = {
        "name": names.MODEL_DOWNLOAD_CONTAINER,
        "image": inp.server_image,
        "command": download_command(inp),
        "volumeMounts": [{"name": CACHE_VOLUME, "mountPath": CACHE_MOUNT}],
        "resources": copy.deepcopy(DOWNLOAD_RESOURCES),
        # The downloader writes "<Reason>: <message>" there; when it dies before writing
        # it, the log's tail becomes the termination message instead.
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": restricted_container_security(),
    }
    env = download_env(inp)
    if env:
        container["env"] = env
    if inp.spec.image_pull_policy:
        container["imagePullPolicy"] = inp.spec.image_pull_policy
    return container


# --- volumes -----------------------------------------------------------------------------

def cache_claim_name(inp: BuildInput) -> str:
    cache = inp.spec.model.cache
    if cache is not None and cache.claim_name:
        return cache.claim_name
    return names.model_cache_claim_name(inp.owner.name)


def model_volumes(inp: BuildInput) -> list[Manifest]:
    """The volume a URI source needs in the server pod."""
    uri = uri_of(inp)
    model = inp.spec.model
    if uri is None:
        return []
    if isinstance(uri, PVCModel):
        return [{"name": MODEL_VOLUME, "persistentVolumeClaim": {"claimName": uri.claim, "readOnly": True}}]
    if isinstance(uri, OCIModel):
        return [{"name": MODEL_VOLUME, "image": {"reference": uri.reference, "pullPolicy": "IfNotPresent"}}]
    if not isinstance(uri, HFModel | S3Model):
        return []
    mode = model.cache_mode
    if mode == "node":
        # hostPath: fails the Pod Security "baseline" level, and the directory must be
        # writable by the pods' (non-root) UID.
        return [{"name": CACHE_VOLUME, "hostPath": {"path": inp.defaults.model_cache_host_path,
                                                    "type": "DirectoryOrCreate"}}]
    if mode == "pvc":
        return [{"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": cache_claim_name(inp),
                                                                 "readOnly": True}}]
    empty_dir: Manifest = {}
    if model.cache is not None and model.cache.size is not None:
        empty_dir["sizeLimit"] = model.cache.size
    return [{"name": CACHE_VOLUME, "emptyDir": empty_dir}]


def model_mounts(inp: BuildInput) -> list[Manifest]:
    """The server container's read-only mount of the model volume."""
    uri = uri_of(inp)
    if isinstance(uri, PVCModel | OCIModel):
        return [{"name": MODEL_VOLUME, "mountPath": MODEL_MOUNT, "readOnly": True}]
    if isinstance(uri, HFModel | S3Model):
        return [{"name": CACHE_VOLUME, "mountPath": CACHE_MOUNT, "readOnly": True}]
    return []


def init_containers(inp: BuildInput) -> list[Manifest]:
    """The download init container (cache modes none and node)."""
    if downloads(inp) and inp.spec.model.cache_mode != "pvc":
        return [download_container(inp)]
    return []


# --- cache mode "pvc": the claim and the Job ------------------------------------------

def uses_download_job(inp: BuildInput) -> bool:
    return downloads(inp) and inp.spec.model.cache_mode == "pvc"


def job_name(inp: BuildInput) -> str:
    """Named after the URI (and an adopted claim): a Job is created once, so a new model, or a
    new claim to fill, needs a new Job."""
    cache = inp.spec.model.cache
    key = str(uri_of(inp))
    if cache is not None and cache.claim_name:
        key += f" on pvc {cache.claim_name}"
    return names.model_job_name(inp.owner.name, key)


def build_model_cache_claim(inp: BuildInput) -> Manifest | None:
    """The cache claim the operator creates (not when cache.claimName adopts one)."""
    cache = inp.spec.model.cache
    if not uses_download_job(inp) or cache is None or cache.claim_name:
        return None
    spec: Manifest = {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": cache.size}},
    }
    if cache.storage_class_name:
        spec["storageClassName"] = cache.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(inp.owner, cache_claim_name(inp), names.COMPONENT_MODEL_DOWNLOAD),
        "spec": spec,
    }


def build_download_job(inp: BuildInput) -> Manifest | None:
    if not uses_download_job(inp):
        return None
    container = download_container(inp)
    pod: Manifest = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [{"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": cache_claim_name(inp)}}],
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": restricted_pod_security(),
    }
    if inp.spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s.name} for s in inp.spec.image_pull_secrets]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(inp.owner, job_name(inp), names.COMPONENT_MODEL_DOWNLOAD),
        "spec": {
            "backoffLimit": DOWNLOAD_JOB_BACKOFF_LIMIT,
            "template": {
                "metadata": {"labels": labels(inp.owner, names.COMPONENT_MODEL_DOWNLOAD)},
                "spec": pod,
            },
        },
    }


# --- placement ---------------------------------------------------------------------------

def cache_affinity_term(inp: BuildInput) -> Manifest | None:
    """Prefer nodes labelled as holding the model (cache mode node, with node labelling on)."""
    uri = uri_of(inp)
    if uri is None or not downloads(inp) or inp.spec.model.cache_mode != "node" or not inp.defaults.label_nodes:
        return None
    return {"weight": 100, "preference": {"matchExpressions": [{"key": node_label_key(uri), "operator": "Exists"}]}}


def merged_affinity(inp: BuildInput) -> dict[str, Any] | None:
    """The user's spec.scheduling.affinity with the cache preference appended (never replacing a term)."""
    user = copy.deepcopy(inp.spec.scheduling.affinity) if inp.spec.scheduling.affinity else None
    term = cache_affinity_term(inp)
    if term is None:
        return user
    affinity: dict[str, Any] = user or {}
    node_affinity = affinity.setdefault("nodeAffinity", {})
    preferred = node_affinity.setdefault("preferredDuringSchedulingIgnoredDuringExecution", [])
    if term not in preferred:
        preferred.append(term)
    return affinity
