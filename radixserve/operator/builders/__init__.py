"""Pure manifest builders: an InferenceServer's spec in, Kubernetes objects (dicts) out.

`desired_objects` lists everything one InferenceServer should own, in the order it
is applied; `unwanted_objects` lists what it owned under another spec and must go.
"""

from __future__ import annotations

from dataclasses import dataclass

from radixserve.operator import names
from radixserve.operator.builders.common import BuildInput, Defaults, Manifest, Owner
from radixserve.operator.builders.endpoint import build_endpoint_service, endpoint_url
from radixserve.operator.builders.model import build_download_job, build_model_cache_claim
from radixserve.operator.builders.router import (
    build_router_deployment,
    build_router_role,
    build_router_role_binding,
    build_router_service_account,
)
from radixserve.operator.builders.server import build_server_deployment, build_server_service

__all__ = [
    "BuildInput",
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


def _router_objects(inp: BuildInput) -> list[Manifest]:
    # Identity before the pods that use it, so the first pods start with their token.
    return [
        build_router_service_account(inp),
        build_router_role(inp),
        build_router_role_binding(inp),
        build_router_deployment(inp),
    ]


def desired_objects(inp: BuildInput) -> list[Manifest]:
    """The server Deployment comes first: it carries every user-supplied pod field
    (env, affinity, resources), so if the API rejects something it is rejected
    before anything else was created."""
    objects = [build_server_deployment(inp), build_server_service(inp)]
    # Cache mode "pvc": the claim, then the Job that fills it (both created once, see apply.py).
    objects += [obj for obj in (build_model_cache_claim(inp), build_download_job(inp)) if obj is not None]
    if inp.spec.router.enabled:
        objects += _router_objects(inp)
    objects.append(build_endpoint_service(inp))
    return objects


def unwanted_objects(inp: BuildInput) -> list[ObjectRef]:
    if inp.spec.router.enabled:
        return []
    name = names.router_name(inp.owner.name)
    return [
        ObjectRef("apps/v1", "Deployment", name),
        ObjectRef("rbac.authorization.k8s.io/v1", "RoleBinding", name),
        ObjectRef("rbac.authorization.k8s.io/v1", "Role", name),
        ObjectRef("v1", "ServiceAccount", name),
    ]
