"""Replicas that span several pods (spec.nodesPerReplica > 1): a LeaderWorkerSet instead of the
server Deployment.

One replica is one LWS group of nodesPerReplica pods. The leader pod (worker index 0) runs
`radixserve serve ... --nnodes N --node-rank 0` (HTTP, tokenizer, detokenizer and the first share
of the tp x pp ranks) and serves the TCP rendezvous the others join; worker pod i runs
`--node-rank i` (its share of the ranks, no HTTP). LWS injects LWS_LEADER_ADDRESS (the leader's
DNS name under the headless Service LWS creates for the group) and LWS_WORKER_INDEX into every
container, and Kubernetes expands `$(VAR)` in the arguments from them.

- Readiness is the leader's: only it has /health, and it answers 200 once every rank of every
  pod has joined and warmed up. The server Service (and so the router's EndpointSlices) selects
  leaders only.
- The group fails as one: a server whose peer died exits non-zero (docs/parallelism.md), and
  restartPolicy RecreateGroupOnPodRestart recreates every pod of the group when one restarts.
- startupPolicy LeaderCreated: workers start with the leader, not after it is ready (it never is
  without them).

The LeaderWorkerSet API (leaderworkerset.x-k8s.io/v1) comes from a CRD that may be missing:
`checks.check_leader_worker_set` then reports LeaderWorkerSetMissing and nothing is created.
"""

from __future__ import annotations

import copy

from radixserve.operator import names
from radixserve.operator.builders import model as model_delivery
from radixserve.operator.builders.common import BuildInput, Manifest, labels, metadata
from radixserve.operator.builders.server import server_container, server_pod_spec

LWS_API_VERSION = "leaderworkerset.x-k8s.io/v1"
LWS_KIND = "LeaderWorkerSet"
LWS_PLURAL = "leaderworkersets"
# Set by the LWS controller in every container of a group.
LEADER_ADDRESS_ENV = "LWS_LEADER_ADDRESS"
WORKER_INDEX_ENV = "LWS_WORKER_INDEX"
# Node 0 serves the torch.distributed TCP store here; the others connect to it, then every rank
# opens gloo/NCCL connections to every other on ports of its own choosing.
DIST_PORT = 29500
DIST_PORT_NAME = "dist"
# Pods of a group say which side they are, so Services and monitors can pick the leaders.
LABEL_ROLE = f"{names.GROUP}/role"
ROLE_LEADER = "leader"
ROLE_WORKER = "worker"
# The LWS is named apart from the server Service: LWS creates a headless Service named after
# the set (publishing not-ready pods, so workers can resolve the leader before it is ready).
GROUP_SUFFIX = "-group"
# Pod names are `<set>-<replica>-<worker>`; they become host names, which Kubernetes caps at 63.
MAX_POD_SUFFIX = len("-999-15")
MAX_MULTINODE_NAME_LENGTH = 63 - len(GROUP_SUFFIX) - MAX_POD_SUFFIX


def is_multinode(inp: BuildInput) -> bool:
    return inp.spec.nodes_per_replica > 1


def group_set_name(cr_name: str) -> str:
    """The LeaderWorkerSet (and the headless Service its controller creates)."""
    return f"{cr_name}{GROUP_SUFFIX}"


def leader_selector(cr_name: str) -> dict[str, str]:
    return {**names.server_selector(cr_name), LABEL_ROLE: ROLE_LEADER}


def node_args(inp: BuildInput, node_rank: str) -> list[str]:
    rendezvous = f"$({LEADER_ADDRESS_ENV}):{DIST_PORT}"
    return ["--nnodes", str(inp.spec.nodes_per_replica), "--node-rank", node_rank, "--dist-init-addr", rendezvous]


def leader_container(inp: BuildInput) -> Manifest:
    """The single-pod server container plus the node flags and the rendezvous port."""
    container = server_container(inp)
    container["args"] = [*container["args"], *node_args(inp, "0")]
    container["ports"] = [*container["ports"],
                          {"name": DIST_PORT_NAME, "containerPort": DIST_PORT, "protocol": "TCP"}]
    return container


def worker_container(inp: BuildInput) -> Manifest:
    """Ranks only: no HTTP, so no probes and no drain (a worker is stopped with its group);
    it exits non-zero when the group breaks, which restarts the group."""
    container = server_container(inp)
    container["args"] = [*container["args"], *node_args(inp, f"$({WORKER_INDEX_ENV})")]
    for key in ("ports", "startupProbe", "readinessProbe", "livenessProbe", "lifecycle"):
        container.pop(key, None)
    return container


def _pod_template(inp: BuildInput, role: str, container: Manifest) -> Manifest:
    pod = server_pod_spec(inp)
    pod["containers"] = [container]
    return {"metadata": {"labels": {**labels(inp.owner, names.COMPONENT_SERVER), LABEL_ROLE: role}}, "spec": pod}


def build_leader_worker_set(inp: BuildInput) -> Manifest:
    spec = inp.spec
    held = not inp.model_downloaded and model_delivery.uses_download_job(inp)
    return {
        "apiVersion": LWS_API_VERSION,
        "kind": LWS_KIND,
        "metadata": metadata(inp.owner, group_set_name(inp.owner.name), names.COMPONENT_SERVER),
        "spec": {
            # Cache mode "pvc": no groups (holding GPUs) until the download Job has succeeded.
            "replicas": 0 if held else spec.replicas,
            "startupPolicy": "LeaderCreated",
            "rolloutStrategy": {
                "type": "RollingUpdate",
                "rollingUpdateConfiguration": {
                    "maxSurge": spec.rollout.max_surge,
                    "maxUnavailable": spec.rollout.max_unavailable,
                },
            },
            "leaderWorkerTemplate": {
                "size": spec.nodes_per_replica,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": _pod_template(inp, ROLE_LEADER, leader_container(inp)),
                "workerTemplate": _pod_template(inp, ROLE_WORKER, worker_container(inp)),
            },
        },
    }


def leaders_only(manifest: Manifest) -> Manifest:
    """A Service or PodMonitor of the server pods, narrowed to the leaders (workers serve no HTTP)."""
    out = copy.deepcopy(manifest)
    selector = out["spec"]["selector"]
    target = selector.get("matchLabels", selector)  # a PodMonitor's label selector, or a Service's map
    target[LABEL_ROLE] = ROLE_LEADER
    return out


def with_group_traffic(policy: Manifest, inp: BuildInput) -> Manifest:
    """The server NetworkPolicy plus ingress on every port from this InferenceServer's server pods:
    the ranks of a group meet at the rendezvous port and then connect to each other on ports
    torch picks."""
    out = copy.deepcopy(policy)
    out["spec"]["ingress"].append({"from": [{"podSelector": {"matchLabels": names.server_selector(inp.owner.name)}}]})
    return out


def span_nodes(objects: list[Manifest], inp: BuildInput) -> list[Manifest]:
    """The single-pod objects of `desired_objects`, made multi-node when nodesPerReplica > 1: the
    server Deployment becomes the LeaderWorkerSet (in its place, so it is still applied first),
    the server Service and PodMonitor select leaders only, the server NetworkPolicy lets the
    group's pods reach each other."""
    if not is_multinode(inp):
        return objects
    server = names.server_name(inp.owner.name)
    out = []
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if name == server and kind == "Deployment":
            obj = build_leader_worker_set(inp)
        elif name == server and kind in ("Service", "PodMonitor"):
            obj = leaders_only(obj)
        elif name == server and kind == "NetworkPolicy":
            obj = with_group_traffic(obj, inp)
        out.append(obj)
    return out
