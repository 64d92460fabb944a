"""spec.gateway.inferencePool: an InferencePool of the Gateway API Inference Extension, so the
server replicas can sit behind a Gateway (Envoy Gateway, kgateway, Istio, GKE ...) whose
endpoint picker (EPP) chooses a replica per request from the metrics the servers export under
the extension's model-server protocol names (vllm:num_requests_waiting, vllm:kv_cache_usage_perc,
... in radixserve/metrics.py).

The pool only names the server pods, their port and the EPP's Service. The EPP is the user's to
run (the extension's reference endpoint picker, or llm-d's inference scheduler), pointed at this
pool with `--pool-name <name> --pool-namespace <namespace> --pool-group <group>`: our router is
not an EPP (it is an HTTP proxy, not an Envoy ext_proc service), so it is never referenced here.

Two API versions exist: `inference.networking.k8s.io/v1` (GA, `targetPorts` and
`endpointPickerRef`) and the older `inference.networking.x-k8s.io/v1alpha2` (`targetPortNumber`
and `extensionRef`). The pool is built in the newest version the cluster serves, and not at all
when it serves neither (the InferencePool condition says so); a CRD missing never fails a
reconcile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from radixserve.operator import names
from radixserve.operator.builders.common import BuildInput, Manifest, metadata
from radixserve.operator.builders.multinode import is_multinode, leader_selector

POOL_KIND = "InferencePool"
POOL_PLURAL = "inferencepools"
POOL_V1_API_VERSION = "inference.networking.k8s.io/v1"
POOL_V1ALPHA2_API_VERSION = "inference.networking.x-k8s.io/v1alpha2"
COMPONENT_GATEWAY = "gateway"

PoolVersion = Literal["v1", "v1alpha2"]
API_VERSIONS: dict[PoolVersion, str] = {"v1": POOL_V1_API_VERSION, "v1alpha2": POOL_V1ALPHA2_API_VERSION}


@dataclass(frozen=True)
class PoolChoice:
    """Which InferencePool version is built (None: none) and why, for the InferencePool condition."""

    version: PoolVersion | None
    reason: str
    message: str

    @property
    def api_version(self) -> str | None:
        return API_VERSIONS[self.version] if self.version is not None else None


def choose_pool(inp: BuildInput) -> PoolChoice:
    pool = inp.spec.gateway.inference_pool
    if not pool.enabled:
        return PoolChoice(None, "Disabled", "spec.gateway.inferencePool.enabled is false")
    caps = inp.capabilities
    version: PoolVersion | None = "v1" if caps.inference_pool_v1 else "v1alpha2" if caps.inference_pool_v1alpha2 else None
    if version is None:
        return PoolChoice(None, "InferencePoolCRDMissing",
                          "spec.gateway.inferencePool.enabled is true, but the cluster serves neither "
                          f"{POOL_PLURAL}.inference.networking.k8s.io (v1) nor {POOL_PLURAL}."
                          "inference.networking.x-k8s.io (v1alpha2): install the Gateway API Inference Extension "
                          "CRDs; the servers keep serving through the endpoint Service until then")
    picker = pool.endpoint_picker  # required when enabled (spec.py)
    who = "leader pods" if is_multinode(inp) else "pods"
    epp = f"; endpoint picker Service {picker.name}:{picker.port} ({picker.failure_mode})" if picker else ""
    return PoolChoice(version, f"InferencePool{version.capitalize()}",
                      f"InferencePool {inp.owner.name} ({API_VERSIONS[version]}) selects the server {who} on port "
                      f"{names.HTTP_PORT}{epp}")


def pool_selector(inp: BuildInput) -> dict[str, str]:
    """The server pods that take requests: with nodesPerReplica > 1 the leaders only, since the
    workers of a group run ranks and serve no HTTP."""
    name = inp.owner.name
    return leader_selector(name) if is_multinode(inp) else names.server_selector(name)


def build_inference_pool(inp: BuildInput) -> Manifest | None:
    choice = choose_pool(inp)
    picker = inp.spec.gateway.inference_pool.endpoint_picker
    if choice.version is None or picker is None:
        return None
    # kind and group are the CRDs' defaults, written out so the object reads the same before and
    # after the API server defaults it (and the v1 CEL rule "port is required for a Service" holds).
    if choice.version == "v1":
        spec: Manifest = {
            "selector": {"matchLabels": pool_selector(inp)},
            "targetPorts": [{"number": names.HTTP_PORT}],
            "endpointPickerRef": {
                "group": "",
                "kind": "Service",
                "name": picker.name,
                "port": {"number": picker.port},
                "failureMode": picker.failure_mode,
            },
        }
    else:
        spec = {
            "selector": pool_selector(inp),
            "targetPortNumber": names.HTTP_PORT,
            "extensionRef": {
                "group": "",
                "kind": "Service",
                "name": picker.name,
                "portNumber": picker.port,
                "failureMode": picker.failure_mode,
            },
        }
    return {
        "apiVersion": choice.api_version,
        "kind": POOL_KIND,
        "metadata": metadata(inp.owner, inp.owner.name, COMPONENT_GATEWAY),
        "spec": spec,
    }
