"""Checks the CRD schema cannot make: they need other objects, or hold for objects
that reached us without the API server's validation (an older CRD, a test emulator).

Every problem names the field a user would edit. The reconciler creates nothing
while any problem stands, so a bad spec never leaves half a deployment behind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from radixserve.model_store.uri import HFModel, OCIModel, PVCModel, S3Model
from radixserve.operator import names
from radixserve.operator.builders.autoscaling import KEDA_API_VERSION, choose_autoscaler
from radixserve.operator.builders.common import BuildInput, Capabilities
from radixserve.operator.builders.gateway import (
    POOL_PLURAL,
    POOL_V1_API_VERSION,
    POOL_V1ALPHA2_API_VERSION,
    choose_pool,
)
from radixserve.operator.builders.model import credential_keys
from radixserve.operator.builders.monitoring import MONITORING_API_VERSION, choose_monitoring
from radixserve.operator.builders.multinode import LWS_API_VERSION, LWS_PLURAL, MAX_MULTINODE_NAME_LENGTH
from radixserve.operator.spec import InferenceServerSpec

_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# Access modes a volume can be mounted with by one node, or one pod, only.
SINGLE_ATTACH_MODES = frozenset({"ReadWriteOnce", "ReadWriteOncePod"})
# Image volumes (oci://): beta from 1.33 (feature gate ImageVolume), on by default from 1.35.
IMAGE_VOLUME_MIN_VERSION = (1, 33)


@dataclass(frozen=True)
class SpecProblem:
    reason: str  # CamelCase, becomes the condition's reason
    field: str  # e.g. "spec.model.pvc.claimName"
    message: str
    # True when the problem can go away without a spec edit (someone creates the
    # PVC or the Secret): the operator then retries on its own.
    transient: bool = False

    def describe(self) -> str:
        return f"{self.field}: {self.message}"


class ApiDiscovery(Protocol):
    """Which optional APIs the cluster serves; the reconciler answers from API discovery."""

    def api_resources(self, api_version: str) -> set[str] | None:
        """The resources (plurals) a group/version serves, None when it is not served."""
        ...


class ClusterLookups(ApiDiscovery, Protocol):
    """What the checks need to know about the cluster; the reconciler answers from the API."""

    def pvc_access_modes(self, namespace: str, name: str) -> list[str] | None:
        """The claim's spec.accessModes, or None when it does not exist."""
        ...

    def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        """The Secret's data keys, or None when it does not exist."""
        ...

    def server_version(self) -> tuple[int, int] | None:
        """The API server's (major, minor), or None when unknown."""
        ...


def capabilities(lookups: ApiDiscovery) -> Capabilities:
    """Which optional APIs (CRDs of KEDA, the Prometheus operator, LeaderWorkerSet and the Gateway
    API Inference Extension) the cluster serves."""
    def serves(api_version: str, plural: str) -> bool:
        return plural in (lookups.api_resources(api_version) or set())

    monitoring = lookups.api_resources(MONITORING_API_VERSION) or set()
    return Capabilities(keda=serves(KEDA_API_VERSION, "scaledobjects"),
                        prometheus_operator={"podmonitors", "prometheusrules"} <= monitoring,
                        leader_worker_set=serves(LWS_API_VERSION, LWS_PLURAL),
                        inference_pool_v1=serves(POOL_V1_API_VERSION, POOL_PLURAL),
                        inference_pool_v1alpha2=serves(POOL_V1ALPHA2_API_VERSION, POOL_PLURAL))


@dataclass(frozen=True)
class FeatureCondition:
    """A condition about an optional feature: reported in .status, never blocking a reconcile."""

    type: str
    ok: bool
    reason: str
    message: str


def feature_conditions(inp: BuildInput) -> list[FeatureCondition]:
    """PodSecurity always; Autoscaling, Monitoring and InferencePool when asked for (or, monitoring,
    unset)."""
    spec = inp.spec
    out = []
    host_path = spec.uses_host_path
    if host_path is None:
        out.append(FeatureCondition("PodSecurity", True, "Restricted",
                                    "every pod passes the Pod Security \"restricted\" level"))
    else:
        out.append(FeatureCondition(
            "PodSecurity", False, "HostPathBreaksBaseline",
            f"{host_path} mounts a hostPath volume (allowed by spec.security.allowHostPath): the server pods fail "
            "the Pod Security \"baseline\" and \"restricted\" levels, so a namespace enforcing either refuses them"))
    if spec.autoscaling.enabled:
        choice = choose_autoscaler(inp)
        out.append(FeatureCondition("Autoscaling", choice.provider is not None, choice.reason, choice.message))
    if spec.monitoring.enabled is not False:
        monitoring = choose_monitoring(inp)
        out.append(FeatureCondition("Monitoring", monitoring.enabled, monitoring.reason, monitoring.message))
    if spec.gateway.inference_pool.enabled:
        pool = choose_pool(inp)
        out.append(FeatureCondition("InferencePool", pool.version is not None, pool.reason, pool.message))
    return out


def check_host_path(spec: InferenceServerSpec) -> SpecProblem | None:
    """hostPath volumes only by explicit opt-in: they fail Pod Security "baseline"."""
    field = spec.uses_host_path
    if field is None or spec.security.allow_host_path:
        return None
    what = "spec.model.hostPath" if field == "spec.model.hostPath" else "cache mode node"
    return SpecProblem(
        reason="HostPathNotAllowed",
        field=field,
        message=(f"{what} mounts a hostPath volume, which fails the Pod Security \"baseline\" level; set "
                 "spec.security.allowHostPath: true to accept that (the namespace must not enforce baseline or "
                 "restricted), or use a pvc or uri source / cache mode pvc"),
    )


def check_name(name: str) -> SpecProblem | None:
    """Owned Services are named after the resource, so its name must make valid Service names."""
    if len(name) > names.MAX_NAME_LENGTH or not _DNS_1035.match(name):
        return SpecProblem(
            reason="InvalidName",
            field="metadata.name",
            message=(
                f"must be a DNS-1035 label of at most {names.MAX_NAME_LENGTH} characters "
                "(lower case letters, digits and '-', starting with a letter), "
                f"because Services named {name!r}{names.ROUTER_SUFFIX} are created from it"
            ),
        )
    return None


def check_gpus(spec: InferenceServerSpec) -> SpecProblem | None:
    needed = spec.gpus_needed
    if spec.resources.gpus is not None and 0 < spec.resources.gpus < needed:
        return SpecProblem(
            reason="InsufficientGPUs",
            field="spec.resources.gpus",
            message=(
                f"{spec.resources.gpus} GPU(s) per pod is below tensorParallelSize x pipelineParallelSize"
                + (" / nodesPerReplica" if spec.nodes_per_replica > 1 else "") + " = "
                f"{spec.tensor_parallel_size} x {spec.pipeline_parallel_size}"
                + (f" / {spec.nodes_per_replica}" if spec.nodes_per_replica > 1 else "") + f" = {needed}; "
                "set it to at least that, or 0 for a CPU pod"
            ),
        )
    return None


_DOWNLOAD_ONLY = (
    ("credentialsSecretRef", "credentials_secret_ref"), ("endpoint", "endpoint"), ("region", "region"),
    ("include", "include"), ("exclude", "exclude"), ("cache", "cache"),
)


def _invalid(field: str, message: str) -> SpecProblem:
    return SpecProblem(reason="InvalidSpec", field=field, message=message)


def check_model_fields(spec: InferenceServerSpec) -> SpecProblem | None:
    """The spec.model fields that only make sense for some URIs (the CRD's CEL says the same)."""
    model = spec.model
    uri = model.parsed_uri
    for wire, attr in _DOWNLOAD_ONLY:
        value = getattr(model, attr)
        if value and not model.downloads:
            what = f"spec.model.uri is {model.uri!r}" if uri is not None else f"the model source is {model.source}"
            return _invalid(f"spec.model.{wire}",
                            f"only applies to downloaded models (hf:// and s3:// URIs), but {what}")
    if model.region and not isinstance(uri, S3Model):
        return _invalid("spec.model.region", "only applies to s3:// URIs")
    cache = model.cache
    if cache is not None:
        if cache.mode != "pvc" and (cache.claim_name or cache.storage_class_name):
            field = "claimName" if cache.claim_name else "storageClassName"
            return _invalid(f"spec.model.cache.{field}", f"only applies to cache.mode pvc, not {cache.mode}")
        if cache.mode == "pvc" and not cache.claim_name and cache.size is None:
            return _invalid("spec.model.cache.size",
                            "is required with cache.mode pvc: the size of the ReadWriteMany claim the operator "
                            "creates (or set cache.claimName to adopt an existing claim)")
        if cache.mode == "pvc" and cache.claim_name and cache.size is not None:
            return _invalid("spec.model.cache.size", "does not apply to an adopted claim (cache.claimName)")
    return None


def _pvc_not_found(namespace: str, claim: str, field: str) -> SpecProblem:
    # Transient: someone creating the claim clears it without a spec edit.
    return SpecProblem(
        reason="PVCNotFound",
        field=field,
        message=f"PersistentVolumeClaim {claim!r} does not exist in namespace {namespace!r}",
        transient=True,
    )


def _pvc_problems(namespace: str, claim: str, field: str, replicas: int,
                  lookups: ClusterLookups) -> list[SpecProblem]:
    modes = lookups.pvc_access_modes(namespace, claim)
    if modes is None:
        return [_pvc_not_found(namespace, claim, field)]
    if replicas > 1 and set(modes) <= SINGLE_ATTACH_MODES:
        # Replicas land on different nodes (and a ReadWriteOncePod claim takes one pod at all):
        # the second pod would hang in ContainerCreating. Transient: a new claim under the same
        # name clears it without a spec edit.
        return [SpecProblem(
            reason="PVCAccessMode",
            field=field,
            message=(f"PersistentVolumeClaim {claim!r} has access modes {sorted(modes)}, which one node "
                     f"(ReadWriteOnce) or one pod (ReadWriteOncePod) can mount, but spec.replicas is {replicas}: "
                     "use a ReadOnlyMany or ReadWriteMany claim, or one replica"),
            transient=True,
        )]
    return []


def _secret_problems(namespace: str, name: str, keys_needed: list[str], field: str,
                     lookups: ClusterLookups) -> list[SpecProblem]:
    keys = lookups.secret_keys(namespace, name)
    if keys is None:
        return [SpecProblem(
            reason="SecretNotFound",
            field=f"{field}.name",
            message=f"Secret {name!r} does not exist in namespace {namespace!r}",
            transient=True,
        )]
    missing = [key for key in keys_needed if key not in keys]
    if missing:
        return [SpecProblem(
            reason="SecretKeyNotFound",
            field=f"{field}.name" if field.endswith("credentialsSecretRef") else f"{field}.key",
            message=f"Secret {name!r} has no key {missing[0]!r}"
                    + (f" (needs {', '.join(keys_needed)})" if len(keys_needed) > 1 else ""),
            transient=True,
        )]
    return []


def check_model_references(spec: InferenceServerSpec, namespace: str, lookups: ClusterLookups) -> list[SpecProblem]:
    model = spec.model
    uri = model.parsed_uri
    if uri is None:
        return []
    problems: list[SpecProblem] = []
    if isinstance(uri, PVCModel):
        problems += _pvc_problems(namespace, uri.claim, "spec.model.uri", spec.replicas, lookups)
    if isinstance(uri, OCIModel):
        version = lookups.server_version()
        if version is not None and version < IMAGE_VOLUME_MIN_VERSION:
            problems.append(SpecProblem(
                reason="ImageVolumeUnsupported",
                field="spec.model.uri",
                message=(f"oci:// models are mounted as image volumes, which this cluster (Kubernetes "
                         f"{version[0]}.{version[1]}) does not have: they are beta from 1.33 (feature gate "
                         "ImageVolume) and on by default from 1.35; use hf://, s3:// or pvc://, or upgrade"),
            ))
    ref = model.credentials_secret_ref
    if ref is not None and isinstance(uri, HFModel | S3Model):
        needed = [key for key, optional in credential_keys(uri) if not optional]
        problems += _secret_problems(namespace, ref.name, needed, "spec.model.credentialsSecretRef", lookups)
    cache = model.cache
    if model.downloads and cache is not None and cache.mode == "pvc" and cache.claim_name:
        modes = lookups.pvc_access_modes(namespace, cache.claim_name)
        if modes is None:
            problems.append(_pvc_not_found(namespace, cache.claim_name, "spec.model.cache.claimName"))
        elif "ReadWriteMany" not in modes:
            problems.append(SpecProblem(
                reason="PVCAccessMode",
                field="spec.model.cache.claimName",
                message=(f"PersistentVolumeClaim {cache.claim_name!r} has access modes {sorted(modes)}, but a model "
                         "cache claim must be ReadWriteMany: the download Job writes it while replicas on other "
                         "nodes read it"),
                transient=True,
            ))
    return problems


def check_leader_worker_set(name: str, spec: InferenceServerSpec, lookups: ClusterLookups) -> list[SpecProblem]:
    """spec.nodesPerReplica > 1 is a LeaderWorkerSet: its API must be served, and its pod names
    (`<name>-group-<replica>-<worker>`) must make host names."""
    if spec.nodes_per_replica == 1:
        return []
    if len(name) > MAX_MULTINODE_NAME_LENGTH:
        return [SpecProblem(
            reason="InvalidName", field="metadata.name",
            message=(f"must be at most {MAX_MULTINODE_NAME_LENGTH} characters with spec.nodesPerReplica > 1: "
                     "the pods of a group are named <name>-group-<replica>-<worker>, and a pod's host name "
                     "(which the workers reach the leader by) is at most 63 characters"))]
    if not capabilities(lookups).leader_worker_set:
        # Transient: installing LWS clears it without a spec edit, and the operator retries.
        return [SpecProblem(
            reason="LeaderWorkerSetMissing", field="spec.nodesPerReplica", transient=True,
            message=(f"spec.nodesPerReplica is {spec.nodes_per_replica}, which needs the LeaderWorkerSet API "
                     f"({LWS_API_VERSION}), but this cluster does not serve it: install LeaderWorkerSet "
                     "(https://lws.sigs.k8s.io) or set nodesPerReplica to 1; nothing was created"))]
    return []


def check_references(spec: InferenceServerSpec, namespace: str, lookups: ClusterLookups) -> list[SpecProblem]:
    problems: list[SpecProblem] = []
    pvc = spec.model.pvc
    if pvc is not None:
        problems += _pvc_problems(namespace, pvc.claim_name, "spec.model.pvc.claimName", spec.replicas, lookups)
    problems += check_model_references(spec, namespace, lookups)
    ref = spec.server.api_key_secret_ref
    if ref is not None:
        problems += _secret_problems(namespace, ref.name, [ref.key], "spec.server.apiKeySecretRef", lookups)
    return problems


def check_spec(
    name: str, namespace: str, spec: InferenceServerSpec, lookups: ClusterLookups
) -> list[SpecProblem]:
    """All problems, cheapest first; the cluster is asked only about a spec that is sound itself."""
    local = [p for p in (check_name(name), check_gpus(spec), check_model_fields(spec)) if p is not None]
    if not local:  # a policy question, asked of a spec that is sound otherwise
        local = [p for p in (check_host_path(spec),) if p is not None]
    if local:
        return local
    return check_leader_worker_set(name, spec, lookups) + check_references(spec, namespace, lookups)
