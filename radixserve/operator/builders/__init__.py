"""Pure manifest builders: an InferenceServer's spec in, Kubernetes objects (dicts) out.

`desired_objects` lists everything one InferenceServer should own, in the order it
is applied; `unwanted_objects` lists what it owned under another spec and must go.
"""

from __future__ import annotations

from dataclasses import dataclass

from radixserve.operator import names
from radixserve.operator.builders.autoscaling import (
    HPA_API_VERSION,
    KEDA_API_VERSION,
    build_hpa,
    build_scaled_object,
)
from radixserve.operator.builders.common import BuildInput, Capabilities, Defaults, Manifest, Owner
from radixserve.operator.builders.disruption import (
    POLICY_API_VERSION,
    build_router_budget,
    build_server_budget,
)
from radixserve.operator.builders.endpoint import build_endpoint_service, endpoint_url
from radixserve.operator.builders.gateway import (
    POOL_KIND,
    POOL_V1_API_VERSION,
    POOL_V1ALPHA2_API_VERSION,
    build_inference_pool,
)
from radixserve.operator.builders.model import build_download_job, build_model_cache_claim
from radixserve.operator.builders.monitoring import (
    MONITORING_API_VERSION,
    build_prometheus_rule,
    build_router_pod_monitor,
    build_server_pod_monitor,
)
from radixserve.operator.builders.multinode import LWS_API_VERSION, LWS_KIND, group_set_name, span_nodes
from radixserve.operator.builders.network import (
    NETWORKING_API_VERSION,
    build_router_network_policy,
    build_server_network_policy,
)
from radixserve.operator.builders.router import (
    build_router_deployment,
    build_router_role,
    build_router_role_binding,
    build_router_service_account,
)
from radixserve.operator.builders.server import build_server_deployment, build_server_service

__all__ = [
    "BuildInput",
    "Capabilities",
    "Defaults",
    "Manifest",
    "ObjectRef",
    "Owner",
    "desired_objects",
    "endpoint_url",
    "unwanted_objects",
]


@dataclass(frozen=True)
class ObjectRef:
    api_version: str
    kind: str
    name: str


def _present(*objects: Manifest | None) -> list[Manifest]:
    return [obj for obj in objects if obj is not None]


def _router_objects(inp: BuildInput) -> list[Manifest]:
    # Identity before the pods that use it, so the first pods start with their token.
    return _present(
        build_router_service_account(inp),
        build_router_role(inp),
        build_router_role_binding(inp),
        build_router_deployment(inp),
        build_router_budget(inp),
        build_router_network_policy(inp),
    )


def desired_objects(inp: BuildInput) -> list[Manifest]:
    """The server Deployment comes first: it carries every user-supplied pod field
    (env, affinity, resources), so if the API rejects something it is rejected
    before anything else was created."""
    objects = _present(build_server_deployment(inp), build_server_service(inp), build_server_budget(inp),
                       build_server_network_policy(inp))
    # Cache mode "pvc": the claim, then the Job that fills it (both created once, see apply.py).
    objects += _present(build_model_cache_claim(inp), build_download_job(inp))
    if inp.spec.router.enabled:
        objects += _router_objects(inp)
    objects.append(build_endpoint_service(inp))
    # Optional APIs last (each built only when the cluster serves it, see Capabilities).
    objects += _present(build_hpa(inp), build_scaled_object(inp), build_server_pod_monitor(inp),
                        build_router_pod_monitor(inp), build_prometheus_rule(inp), build_inference_pool(inp))
    return span_nodes(objects, inp)  # spec.nodesPerReplica > 1: a LeaderWorkerSet, not a Deployment


def optional_objects(inp: BuildInput) -> list[ObjectRef]:
    """Every object some spec of this InferenceServer builds and another does not, in the order
    they are deleted (monitors and autoscalers before the router they watch or wake). Kinds of an
    API the cluster does not serve are left out: no such object can exist, and no request is spent."""
    name = inp.owner.name
    server, router = names.server_name(name), names.router_name(name)
    refs = []
    # The pool first: a gateway stops sending requests before anything behind it goes. Both
    # versions, so a pool of the alpha group goes once the cluster serves v1 (and the v1 one is built).
    if inp.capabilities.inference_pool_v1:
        refs.append(ObjectRef(POOL_V1_API_VERSION, POOL_KIND, name))
    if inp.capabilities.inference_pool_v1alpha2:
        refs.append(ObjectRef(POOL_V1ALPHA2_API_VERSION, POOL_KIND, name))
    if inp.capabilities.prometheus_operator:
        refs += [ObjectRef(MONITORING_API_VERSION, "PrometheusRule", name),
                 ObjectRef(MONITORING_API_VERSION, "PodMonitor", router),
                 ObjectRef(MONITORING_API_VERSION, "PodMonitor", server)]
    if inp.capabilities.keda:
        refs.append(ObjectRef(KEDA_API_VERSION, "ScaledObject", name))
    # One kind of server workload or the other, after a change of spec.nodesPerReplica.
    if inp.capabilities.leader_worker_set:
        refs.append(ObjectRef(LWS_API_VERSION, LWS_KIND, group_set_name(name)))
    refs.append(ObjectRef("apps/v1", "Deployment", server))
    refs += [
        ObjectRef(HPA_API_VERSION, "HorizontalPodAutoscaler", name),
        ObjectRef(NETWORKING_API_VERSION, "NetworkPolicy", router),
        ObjectRef(NETWORKING_API_VERSION, "NetworkPolicy", server),
        ObjectRef(POLICY_API_VERSION, "PodDisruptionBudget", router),
        ObjectRef(POLICY_API_VERSION, "PodDisruptionBudget", server),
        ObjectRef("apps/v1", "Deployment", router),
        ObjectRef("rbac.authorization.k8s.io/v1", "RoleBinding", router),
        ObjectRef("rbac.authorization.k8s.io/v1", "Role", router),
        ObjectRef("v1", "ServiceAccount", router),
    ]
    return refs


def unwanted_objects(inp: BuildInput) -> list[ObjectRef]:
    """What an earlier spec built and this one does not (the router once disabled, the HPA
    once autoscaling is off, ...): deleted if this InferenceServer owns it."""
    desired = {(obj["apiVersion"], obj["kind"], obj["metadata"]["name"]) for obj in desired_objects(inp)}
    return [ref for ref in optional_objects(inp) if (ref.api_version, ref.kind, ref.name) not in desired]
