"""The Service clients call, named after the InferenceServer itself."""

from __future__ import annotations

from radixserve.operator import names
from radixserve.operator.builders.common import BuildInput, Manifest, metadata

# Its own component label: the EndpointSlices of this Service must not match the
# server selector the router discovers replicas with.
COMPONENT_ENDPOINT = "endpoint"


def build_endpoint_service(inp: BuildInput) -> Manifest:
    """Fronts the router when it is enabled, else the replicas directly (kube-proxy balancing)."""
    name = inp.owner.name
    selector = names.router_selector(name) if inp.spec.router.enabled else names.server_selector(name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(inp.owner, names.endpoint_service_name(name), COMPONENT_ENDPOINT),
        "spec": {
            "type": inp.spec.service.type,
            "selector": selector,
            "ports": [{
                "name": names.HTTP_PORT_NAME,
                "port": inp.spec.service.port,
                "targetPort": names.HTTP_PORT_NAME,
                "protocol": "TCP",
            }],
        },
    }


def endpoint_url(inp: BuildInput) -> str:
    """Cluster-internal URL; `.svc` resolves under any cluster domain."""
    port = inp.spec.service.port
    suffix = "" if port == 80 else f":{port}"
    return f"http://{names.endpoint_service_name(inp.owner.name)}.{inp.owner.namespace}.svc{suffix}"
