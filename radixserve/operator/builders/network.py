"""NetworkPolicies (spec.networkPolicy.enabled): server pods accept traffic only from the router
pods and the metrics scraper, so nothing in the cluster can bypass the router (its API key
check, its cache-aware routing). The router accepts `clientsFrom` (anyone when empty).

Ingress only: egress stays open, since the servers download models and the router talks to the
API server, whose address differs between clusters.
"""

from __future__ import annotations

import copy
from typing import Any

from radixserve.operator import names
from radixserve.operator.builders.common import BuildInput, Manifest, metadata

NETWORKING_API_VERSION = "networking.k8s.io/v1"
_HTTP_PORT = [{"protocol": "TCP", "port": names.HTTP_PORT}]


def _policy(inp: BuildInput, name: str, component: str, selector: dict[str, str],
            sources: list[dict[str, Any]] | None) -> Manifest:
    """Ingress to the HTTP port from `sources`; None means from anywhere."""
    rule: Manifest = {"ports": copy.deepcopy(_HTTP_PORT)}
    if sources is not None:
        rule["from"] = sources
    return {
        "apiVersion": NETWORKING_API_VERSION,
        "kind": "NetworkPolicy",
        "metadata": metadata(inp.owner, name, component),
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress"],
            "ingress": [rule],
        },
    }


def _peers(peers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [copy.deepcopy(p) for p in peers]


def build_server_network_policy(inp: BuildInput) -> Manifest | None:
    spec = inp.spec
    if not spec.network_policy.enabled:
        return None
    name = inp.owner.name
    clients = spec.network_policy.clients_from
    sources: list[dict[str, Any]] | None
    if spec.router.enabled:
        # A podSelector alone selects pods of the policy's own namespace: the router's.
        sources = [{"podSelector": {"matchLabels": names.router_selector(name)}}]
        sources += _peers(spec.network_policy.metrics_from)
    elif clients:
        # No router: clients call the servers through the endpoint Service.
        sources = _peers(clients) + _peers(spec.network_policy.metrics_from)
    else:
        sources = None
    return _policy(inp, names.server_name(name), names.COMPONENT_SERVER, names.server_selector(name), sources)


def build_router_network_policy(inp: BuildInput) -> Manifest | None:
    spec = inp.spec
    if not (spec.network_policy.enabled and spec.router.enabled):
        return None
    name = inp.owner.name
    clients = spec.network_policy.clients_from
    sources = _peers(clients) + _peers(spec.network_policy.metrics_from) if clients else None
    return _policy(inp, names.router_name(name), names.COMPONENT_ROUTER, names.router_selector(name), sources)
