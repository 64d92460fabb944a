"""The server replicas: a Deployment of `radixserve serve` pods and their headless Service.

A Deployment rather than a StatefulSet: replicas are interchangeable (no per-pod
storage, no stable identity needed; the router discovers them through
EndpointSlices), and a Deployment's surge-based rolling update keeps serving
capacity while a new version loads its model.
"""

from __future__ import annotations

import math

from radixserve.operator import names
from radixserve.operator.builders import model as model_delivery
from radixserve.operator.builders.common import (
    BuildInput,
    Manifest,
    container_resources,
    labels,
    metadata,
    restricted_container_security,
    restricted_pod_security,
)
from radixserve.operator.builders.model import MODEL_MOUNT, MODEL_VOLUME
from radixserve.operator.spec import InferenceServerSpec, ModelSpec

GPU_RESOURCE = "nvidia.com/gpu"
SHM_VOLUME = "dshm"
# Seconds between the pod leaving the endpoints and SIGTERM: the router and kube-proxy
# see the EndpointSlice change and stop sending new requests before the drain starts.
# The kubelet's sleep action (beta and on by default from Kubernetes 1.30, GA in 1.34), so
# images need no `sleep` binary.
PRE_STOP_SLEEP_SECONDS = 5
# Slack after the drain so the kubelet never SIGKILLs a server that is finishing on time.
TERMINATION_SLACK_SECONDS = 10
STARTUP_PERIOD_SECONDS = 10
# progressDeadlineSeconds beyond the start-up budget: scheduling, image pull, probe periods.
PROGRESS_DEADLINE_MARGIN_SECONDS = 120


def shm_size(spec: InferenceServerSpec) -> int | str:
    """`/dev/shm` for the engine's processes and NCCL's intra-node buffers.

    A memory-backed emptyDir counts against the pod's memory, so it stays small for
    CPU pods and grows with the number of GPUs NCCL has to connect.
    """
    if spec.resources.shm_size is not None:
        return spec.resources.shm_size
    gpus = spec.gpus
    if gpus == 0:
        return "1Gi"
    if gpus == 1:
        return "4Gi"
    return "16Gi"


def model_path(model: ModelSpec) -> str | None:
    """Where the server finds the weights inside the pod; None for the embedded model.

    PVCs and host paths are mounted whole at MODEL_MOUNT and the sub-path is joined
    onto the model path (rather than a volumeMount subPath) so that a single-file
    model such as a .gguf keeps its file name and extension.
    """
    if model.image is not None:
        return model.image.path
    uri = model.parsed_uri
    if uri is not None:
        return model_delivery.model_path(uri)
    mounted = model.pvc or model.host_path
    if mounted is not None:
        return f"{MODEL_MOUNT}/{mounted.sub_path}".rstrip("/") if mounted.sub_path else MODEL_MOUNT
    return None


def server_args(spec: InferenceServerSpec) -> list[str]:
    """Arguments of `radixserve serve`. The API key is never here: it comes from the env."""
    args = ["--host", "0.0.0.0", "--port", str(names.HTTP_PORT)]
    path = model_path(spec.model)
    if path is not None:
        args += ["--model-path", path]
    served_name = spec.default_served_model_name
    if served_name:
        args += ["--served-model-name", served_name]
    args += ["--tp", str(spec.tensor_parallel_size)]
    if spec.pipeline_parallel_size > 1:
        args += ["--pp", str(spec.pipeline_parallel_size)]
    args += ["--device", "cpu" if spec.gpus == 0 else "cuda"]
    if spec.model.dtype is not None:
        args += ["--dtype", spec.model.dtype]
    if spec.model.load_format is not None:
        args += ["--load-format", spec.model.load_format]
    server = spec.server
    optional: list[tuple[str, object]] = [
        ("--context-length", server.context_length),
        ("--mem-fraction-static", server.mem_fraction_static),
        ("--max-running-requests", server.max_running_requests),
        ("--chunked-prefill-size", server.chunked_prefill_size),
        ("--schedule-policy", server.schedule_policy),
    ]
    for flag, value in optional:
        if value is not None:
            args += [flag, str(value)]
    args += ["--graceful-shutdown-timeout", str(server.graceful_shutdown_timeout_seconds)]
    return args + list(server.extra_args)


def server_env(spec: InferenceServerSpec) -> list[Manifest]:
    env: list[Manifest] = [e.model_dump(by_alias=True, exclude_none=True) for e in spec.env]
    ref = spec.server.api_key_secret_ref
    if ref is not None:
        env.append({
            "name": names.API_KEY_ENV,
            "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
        })
    return env


def model_volume(model: ModelSpec) -> Manifest | None:
    if model.pvc is not None:
        return {
            "name": MODEL_VOLUME,
            "persistentVolumeClaim": {"claimName": model.pvc.claim_name, "readOnly": True},
        }
    if model.host_path is not None:
        return {"name": MODEL_VOLUME, "hostPath": {"path": model.host_path.path, "type": "Directory"}}
    return None


def _probe(path: str, period: int, timeout: int, failures: int) -> Manifest:
    return {
        "httpGet": {"path": path, "port": names.HTTP_PORT_NAME},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def server_container(inp: BuildInput) -> Manifest:
    spec = inp.spec
    requests = dict(spec.resources.requests)
    limits = dict(spec.resources.limits)
    if spec.gpus > 0:
        # Extended resources are requested through limits; the request defaults to them.
        limits[GPU_RESOURCE] = spec.gpus
    mounts: list[Manifest] = [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}]
    if model_volume(spec.model) is not None:
        mounts.append({"name": MODEL_VOLUME, "mountPath": MODEL_MOUNT, "readOnly": True})
    mounts += model_delivery.model_mounts(inp)
    # /health answers 200 only once the model is loaded and warmed: the start-up probe
    # gives loading its own budget, readiness gates traffic, liveness catches a dead engine.
    startup_failures = math.ceil(spec.server.startup_timeout_seconds / STARTUP_PERIOD_SECONDS)
    container: Manifest = {
        "name": "server",
        "image": inp.server_image,
        "command": ["radixserve", "serve"],
        "args": server_args(spec),
        "ports": [{"name": names.HTTP_PORT_NAME, "containerPort": names.HTTP_PORT, "protocol": "TCP"}],
        "startupProbe": _probe("/health", STARTUP_PERIOD_SECONDS, 5, startup_failures),
        "readinessProbe": _probe("/health", 5, 3, 3),
        "livenessProbe": _probe("/health", 15, 10, 4),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SLEEP_SECONDS}}},
        "volumeMounts": mounts,
        "securityContext": restricted_container_security(),
    }
    env = server_env(spec)
    if env:
        container["env"] = env
    resources = container_resources(requests, limits)
    if resources:
        container["resources"] = resources
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    return container


def server_pod_spec(inp: BuildInput) -> Manifest:
    spec = inp.spec
    volumes: list[Manifest] = [
        {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": shm_size(spec)}},
    ]
    volume = model_volume(spec.model)
    if volume is not None:
        volumes.append(volume)
    volumes += model_delivery.model_volumes(inp)
    grace = spec.server.graceful_shutdown_timeout_seconds + PRE_STOP_SLEEP_SECONDS + TERMINATION_SLACK_SECONDS
    pod: Manifest = {
        "containers": [server_container(inp)],
        "volumes": volumes,
        "terminationGracePeriodSeconds": grace,
        # The server never talks to the API server.
        "automountServiceAccountToken": False,
        # Service links would inject e.g. RADIXSERVE_PORT for a Service named
        # "radixserve", which the server could read as its own configuration.
        "enableServiceLinks": False,
        "securityContext": restricted_pod_security(),
    }
    init = model_delivery.init_containers(inp)
    if init:
        pod["initContainers"] = init
    scheduling = spec.scheduling
    if scheduling.node_selector:
        pod["nodeSelector"] = dict(scheduling.node_selector)
    if scheduling.tolerations:
        pod["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in scheduling.tolerations]
    affinity = model_delivery.merged_affinity(inp)
    if affinity:
        pod["affinity"] = affinity
    if scheduling.priority_class_name:
        pod["priorityClassName"] = scheduling.priority_class_name
    if scheduling.runtime_class_name:
        pod["runtimeClassName"] = scheduling.runtime_class_name
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
    return pod


def progress_deadline_seconds(spec: InferenceServerSpec) -> int:
    """How long a rollout may go without progress before the Deployment (and Degraded) says it
    failed: spec.rollout.progressDeadlineSeconds, else the start-up budget plus a margin."""
    if spec.rollout.progress_deadline_seconds is not None:
        return spec.rollout.progress_deadline_seconds
    return spec.server.startup_timeout_seconds + PROGRESS_DEADLINE_MARGIN_SECONDS


def build_server_deployment(inp: BuildInput) -> Manifest:
    spec = inp.spec
    selector = names.server_selector(inp.owner.name)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(inp.owner, names.server_name(inp.owner.name), names.COMPONENT_SERVER),
        "spec": {
            # Cache mode "pvc": no pods (holding GPUs) until the download Job has succeeded.
            "replicas": spec.replicas if inp.model_downloaded or not model_delivery.uses_download_job(inp) else 0,
            "selector": {"matchLabels": selector},
            # Surge first, then retire: serving capacity never drops during a rollout
            # (with the default maxUnavailable=0), at the price of one spare pod's GPUs.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {
                    "maxSurge": spec.rollout.max_surge,
                    "maxUnavailable": spec.rollout.max_unavailable,
                },
            },
            # A pod may legitimately take the whole start-up budget to load its model
            # before the Deployment shows any progress.
            "progressDeadlineSeconds": progress_deadline_seconds(spec),
            "revisionHistoryLimit": 3,
            "template": {
                "metadata": {"labels": labels(inp.owner, names.COMPONENT_SERVER)},
                "spec": server_pod_spec(inp),
            },
        },
    }


def build_server_service(inp: BuildInput) -> Manifest:
    """Headless: one DNS record per ready replica, and the EndpointSlices the router watches.

    The EndpointSlice controller copies a Service's labels onto its slices, which is
    why this Service carries the replicas' selector labels that the router selects on.
    """
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(inp.owner, names.server_name(inp.owner.name), names.COMPONENT_SERVER),
        "spec": {
            "clusterIP": "None",
            "selector": names.server_selector(inp.owner.name),
            "ports": [{
                "name": names.HTTP_PORT_NAME,
                "port": names.HTTP_PORT,
                "targetPort": names.HTTP_PORT_NAME,
                "protocol": "TCP",
            }],
        },
    }
