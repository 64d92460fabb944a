"""Node labels that record which nodes' caches hold which models (cache mode "node").

When a server pod's `model-download` init container has finished (exit code 0) on a
node, that node's hostPath cache holds the model: the operator labels the node
`model-cache.radixserve.io/<label_key_suffix(uri)>: "true"`, and server pods of every
InferenceServer serving that URI prefer labelled nodes (preferred node affinity), so a
scale-up or a rollout does not download again.

A label is a hint, never trusted for correctness: a stale one (the cache was wiped, the
node re-imaged) costs one download on that node, never a wrong model, because the
downloader checks what it has against the source's revision. Labels whose model no
InferenceServer served by this operator uses any more are removed by `LabelSweeper`:
when an InferenceServer is deleted, and periodically (during status resyncs).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from radixserve.model_store.uri import parse_model_uri
from radixserve.operator import names
from radixserve.operator.builders.model import node_label_key
from radixserve.operator.kube import KubeClient, resource_type
from radixserve.operator.spec import InferenceServerSpec, SpecError, parse_spec
from radixserve.operator.status import download_state, downloaded_uri

NODE_TYPE = resource_type("v1", "Node")
CR_TYPE = resource_type(names.API_VERSION, names.KIND)
LABEL_VALUE = "true"


def wants_node_labels(spec: InferenceServerSpec) -> bool:
    return spec.model.downloads and spec.model.cache_mode == "node"


def downloaded_label(pod: Mapping[str, Any], spec: InferenceServerSpec) -> tuple[str, str] | None:
    """(node name, label key) when this server pod has the current model in its node's cache."""
    if not wants_node_labels(spec):
        return None
    node = (pod.get("spec") or {}).get("nodeName")
    if not node or download_state(pod).state != "done":
        return None
    uri = spec.model.parsed_uri
    assert uri is not None
    # A pod of an earlier revision may have fetched another model: label only the current one.
    if downloaded_uri(pod) != str(uri):
        return None
    return str(node), node_label_key(uri)


def label_node(client: KubeClient, node: str, key: str) -> bool:
    """Set the label if it is missing; True when the node was patched."""
    live = client.get(NODE_TYPE, "", node)
    if live is None:
        return False
    if (live.get("metadata", {}).get("labels") or {}).get(key) == LABEL_VALUE:
        return False
    client.merge_patch(NODE_TYPE, None, node, {"metadata": {"labels": {key: LABEL_VALUE}}})
    return True


def used_label_keys(resources: Iterable[Mapping[str, Any]]) -> set[str]:
    """The label keys of the models that live InferenceServers keep in node caches."""
    keys = set()
    for obj in resources:
        if obj.get("metadata", {}).get("deletionTimestamp"):
            continue
        try:
            spec = parse_spec(obj.get("spec") or {})
        except SpecError:
            # An unparsable spec may still name a URI: keep its label rather than guess.
            raw = ((obj.get("spec") or {}).get("model") or {}).get("uri")
            if raw:
                with contextlib.suppress(ValueError):
                    keys.add(node_label_key(parse_model_uri(str(raw))))
            continue
        if wants_node_labels(spec):
            uri = spec.model.parsed_uri
            assert uri is not None
            keys.add(node_label_key(uri))
    return keys


def stale_labels(nodes: Iterable[Mapping[str, Any]], used: set[str]) -> dict[str, list[str]]:
    """{node: [label keys to remove]} (pure)."""
    stale: dict[str, list[str]] = {}
    for node in nodes:
        meta = node.get("metadata", {})
        keys = sorted(k for k in (meta.get("labels") or {}) if k.startswith(names.NODE_LABEL_PREFIX) and k not in used)
        if keys:
            stale[str(meta.get("name"))] = keys
    return stale


class LabelSweeper:
    """Removes model-cache labels no InferenceServer needs; at most every `interval` seconds
    unless forced (a deletion), and one sweep at a time."""

    def __init__(self, interval: float, namespaces: tuple[str, ...]) -> None:
        self.interval = interval
        self.namespaces = namespaces
        self._lock = threading.Lock()
        self._last = 0.0

    def maybe_sweep(self, client: KubeClient, force: bool = False) -> dict[str, list[str]]:
        with self._lock:
            now = time.monotonic()
            if not force and (self.interval <= 0 or now - self._last < self.interval):
                return {}
            self._last = now
            return self.sweep(client)

    def sweep(self, client: KubeClient) -> dict[str, list[str]]:
        resources: list[Mapping[str, Any]] = []
        for namespace in self.namespaces or (None,):
            resources += client.list_objects(CR_TYPE, namespace)
        stale = stale_labels(client.list_objects(NODE_TYPE, None), used_label_keys(resources))
        for node, keys in stale.items():
            client.merge_patch(NODE_TYPE, None, node, {"metadata": {"labels": dict.fromkeys(keys)}})
        return stale
