"""A small generic Kubernetes REST client over the official client's transport.

The official client brings authentication (in-cluster token, kubeconfig, exec
plugins) and TLS; its typed per-kind methods would make every kind a special
case, so this calls the REST paths directly with plain dicts.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kubernetes

from radixserve.operator import names
from radixserve.operator.owned import OWNED_KINDS

Manifest = dict[str, Any]

APPLY_PATCH = "application/apply-patch+yaml"  # server-side apply; JSON is valid YAML
MERGE_PATCH = "application/merge-patch+json"


@dataclass(frozen=True)
class ResourceType:
    api_version: str  # "v1", "apps/v1", ...
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
        """The REST path; a namespace of None (or a cluster-scoped kind) gives the cluster-wide path."""
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        scope = f"/namespaces/{namespace}" if self.namespaced and namespace is not None else ""
        path = f"{prefix}{scope}/{self.plural}"
        if name is not None:
            path += f"/{name}"
        if subresource is not None:
            path += f"/{subresource}"
        return path


# How long an API discovery answer is reused: a CRD installed later (KEDA, the Prometheus
# operator) is seen within this time, without two discovery requests on every reconcile.
DISCOVERY_TTL_SECONDS = 60.0

# Every kind the operator reads or writes; `permissions.py` grants exactly these.
# The owned kinds come from `owned.OWNED_KINDS`; the rest are read (or, nodes, labelled).
RESOURCE_TYPES: dict[tuple[str, str], ResourceType] = {
    **{(k.api_version, k.kind): ResourceType(k.api_version, k.plural) for k in OWNED_KINDS},
    ("v1", "Secret"): ResourceType("v1", "secrets"),
    ("v1", "Pod"): ResourceType("v1", "pods"),
    ("v1", "Event"): ResourceType("v1", "events"),
    ("v1", "Node"): ResourceType("v1", "nodes", namespaced=False),
    ("coordination.k8s.io/v1", "Lease"): ResourceType("coordination.k8s.io/v1", "leases"),
    (names.API_VERSION, names.KIND): ResourceType(names.API_VERSION, names.PLURAL),
}


def resource_type(api_version: str, kind: str) -> ResourceType:
    return RESOURCE_TYPES[(api_version, kind)]


class KubeApiError(Exception):
    """A refusal from the API server, with its `Status` object's reason and field causes."""

    def __init__(self, status: int, reason: str, message: str,
                 causes: list[dict[str, Any]] | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        # `details.causes` of the Status: [{"field": "spec.template...", "reason": ..., "message": ...}]
        self.causes = causes or []

    @property
    def invalid(self) -> bool:
        """400 BadRequest / 422 Invalid: the object itself is wrong; sending it again cannot help."""
        return self.status in (400, 422)

    @property
    def fields(self) -> list[str]:
        return [str(c["field"]) for c in self.causes if c.get("field")]


def _causes(payload: Any) -> list[dict[str, Any]]:
    details = payload.get("details") if isinstance(payload, dict) else None
    causes = details.get("causes") if isinstance(details, dict) else None
    return [c for c in causes if isinstance(c, dict)] if isinstance(causes, list) else []


class KubeClient:
    """get / apply / merge-patch / delete of namespaced objects as dicts."""

    def __init__(self, api_client: kubernetes.client.ApiClient, timeout: float = 30.0) -> None:
        self._api = api_client
        # api_resources answers, by group/version: (when read, what was served).
        self._discovery: dict[str, tuple[float, set[str] | None]] = {}
        self._timeout = timeout

    @classmethod
    def from_configuration(cls, configuration: kubernetes.client.Configuration) -> KubeClient:
        return cls(kubernetes.client.ApiClient(configuration))

    @classmethod
    def from_environment(cls) -> KubeClient:
        """In-cluster service account first, then the local kubeconfig (as kubectl does)."""
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        return cls(kubernetes.client.ApiClient())

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        raw: bool = False,
    ) -> Any:
        headers = {"Accept": "*/*" if raw else "application/json", "Content-Type": content_type}
        params = self._api.param_serialize(
            method, path, query_params=query or [], header_params=headers, body=body,
            auth_settings=["BearerToken"],
        )
        response = self._api.call_api(*params, _request_timeout=self._timeout)
        data = response.read()
        if raw and 200 <= response.status <= 299:
            return data.decode("utf-8", errors="replace") if isinstance(data, bytes) else str(data)
        try:
            payload = json.loads(data) if data else {}
        except ValueError:
            payload = {"message": str(data[:200])}
        if not 200 <= response.status <= 299:
            raise KubeApiError(
                response.status,
                str(payload.get("reason", response.reason)) if isinstance(payload, dict) else "",
                str(payload.get("message", data[:200])) if isinstance(payload, dict) else str(data[:200]),
                _causes(payload),
            )
        return payload

    def get(self, rtype: ResourceType, namespace: str, name: str) -> Manifest | None:
        try:
            result: Manifest = self._request("GET", rtype.path(namespace, name))
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    def apply(self, rtype: ResourceType, namespace: str, name: str, body: Manifest) -> Manifest:
        """Server-side apply: creates or updates, and drops fields we stopped setting.

        `force` takes fields over from other managers (e.g. someone's `kubectl edit`
        of a Deployment we own): the InferenceServer is the source of truth.
        """
        query = [("fieldManager", names.FIELD_MANAGER), ("force", "true")]
        result: Manifest = self._request(
            "PATCH", rtype.path(namespace, name), query=query, body=body, content_type=APPLY_PATCH)
        return result

    def patch_status(self, rtype: ResourceType, namespace: str, name: str, status: Manifest) -> Manifest:
        result: Manifest = self._request(
            "PATCH", rtype.path(namespace, name, "status"),
            body={"status": status}, content_type=MERGE_PATCH)
        return result

    def delete(self, rtype: ResourceType, namespace: str, name: str) -> bool:
        """Background deletion; False when it was already gone."""
        try:
            self._request("DELETE", rtype.path(namespace, name), query=[("propagationPolicy", "Background")])
        except KubeApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def create(self, rtype: ResourceType, namespace: str, body: Manifest) -> Manifest:
        """POST: fails with 409 AlreadyExists when the name is taken (what a Lease's creation relies on)."""
        result: Manifest = self._request("POST", rtype.path(namespace), body=body)
        return result

    def merge_patch(self, rtype: ResourceType, namespace: str | None, name: str, body: Manifest) -> Manifest:
        """A JSON merge patch (used for node labels: null removes a key)."""
        result: Manifest = self._request("PATCH", rtype.path(namespace, name), body=body, content_type=MERGE_PATCH)
        return result

    def list_objects(self, rtype: ResourceType, namespace: str | None,
             labels: Mapping[str, str] | None = None) -> list[Manifest]:
        """Objects of a kind (namespace None: every namespace), filtered by exact label values.

        The selector is sent to the API server and applied here as well, so the result is the
        same from a server that ignores it (a test emulator)."""
        query = [("labelSelector", ",".join(f"{k}={v}" for k, v in sorted(labels.items())))] if labels else []
        result = self._request("GET", rtype.path(namespace), query=query)
        items = [item for item in (result.get("items") or []) if isinstance(item, dict)]
        if labels:
            items = [item for item in items
                     if labels.items() <= ((item.get("metadata") or {}).get("labels") or {}).items()]
        return items

    def pod_log(self, namespace: str, name: str, container: str, tail_lines: int = 20) -> str | None:
        """The last lines of a container's log; None when it cannot be read (not started, gone, forbidden)."""
        query = [("container", container), ("tailLines", str(tail_lines))]
        try:
            text: str = self._request("GET", resource_type("v1", "Pod").path(namespace, name, "log"),
                                      query=query, raw=True)
        except KubeApiError:
            return None
        return text

    def api_resources(self, api_version: str) -> set[str] | None:
        """The resources (plurals) a group/version serves, from API discovery; None when the API
        server does not serve that group/version (e.g. a CRD that is not installed)."""
        cached = self._discovery.get(api_version)
        if cached is not None and time.monotonic() - cached[0] < DISCOVERY_TTL_SECONDS:
            return cached[1]
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        try:
            listing = self._request("GET", prefix)
            served: set[str] | None = {str(r.get("name")) for r in (listing.get("resources") or [])
                                       if isinstance(r, dict)}
        except KubeApiError as exc:
            if exc.status not in (404, 503):  # 503: an aggregated API whose server is down
                raise
            served = None
        self._discovery[api_version] = (time.monotonic(), served)
        return served

    def server_version(self) -> tuple[int, int] | None:
        """(major, minor) of the API server from `GET /version`; None when it does not say."""
        try:
            info = self._request("GET", "/version")
        except KubeApiError:
            return None
        return parse_version(str(info.get("gitVersion", "")) if isinstance(info, dict) else "")


def parse_version(git_version: str) -> tuple[int, int] | None:
    """"v1.33.2-eks-1" -> (1, 33)."""
    match = re.match(r"^v?(\d+)\.(\d+)", git_version.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None
