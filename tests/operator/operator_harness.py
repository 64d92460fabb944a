"""Driving the real kopf, running the real handlers, against kmock's in-memory API server.

`ApiServer` adds to kmock the few API-server behaviours a real cluster has and the
operator relies on (kmock's gaps are listed in shared/k8s-testing.md):
- server-side apply (PATCH application/apply-patch+yaml) creates a missing object;
- creation assigns uid, resourceVersion, generation and creationTimestamp;
- a change of `.spec` (directly or through the scale subresource) bumps generation;
- `metadata.generateName` gets a name (kopf names its Events that way);
- `GET /version` answers `version` (None: 404, a server that does not say);
- `GET .../pods/NAME/log` answers the text in `pod_logs[NAME]` (404 without one).
It does not emulate controllers: tests write Deployment statuses themselves, and
there is no garbage collector (tests check owner references instead).
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import kmock
import pytest
from kmock._internal import dicts as kmock_dicts

from radixserve.operator import names
from radixserve.operator.builders import Defaults
from radixserve.operator.kube import KubeClient

CR_RESOURCE = kmock.resource(names.GROUP, names.VERSION, names.PLURAL)
DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
SERVICES = kmock.resource("", "v1", "services")
SERVICE_ACCOUNTS = kmock.resource("", "v1", "serviceaccounts")
ROLES = kmock.resource("rbac.authorization.k8s.io", "v1", "roles")
ROLE_BINDINGS = kmock.resource("rbac.authorization.k8s.io", "v1", "rolebindings")
PVCS = kmock.resource("", "v1", "persistentvolumeclaims")
SECRETS = kmock.resource("", "v1", "secrets")
EVENTS = kmock.resource("", "v1", "events")
PODS = kmock.resource("", "v1", "pods")
NODES = kmock.resource("", "v1", "nodes")
JOBS = kmock.resource("batch", "v1", "jobs")
PDBS = kmock.resource("policy", "v1", "poddisruptionbudgets")
OWNED = {"Deployment": DEPLOYMENTS, "Service": SERVICES, "ServiceAccount": SERVICE_ACCOUNTS,
         "Role": ROLES, "RoleBinding": ROLE_BINDINGS, "Job": JOBS, "PersistentVolumeClaim": PVCS,
         "PodDisruptionBudget": PDBS}
NAMESPACE = "default"
TEST_AGENT = "radixserve-tests"  # marks the requests the tests send as a user or a controller
TEST_DEFAULTS = Defaults(image="registry.test/radixserve:gpu", cpu_image="registry.test/radixserve:cpu")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiServer(kmock.KubernetesEmulator):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.version: str | None = "v1.35.1"
        self.pod_logs: dict[str, str] = {}

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.resource is None and request.url.path == "/version":
            if self.version is None:
                return aiohttp.web.json_response({"kind": "Status", "code": 404}, status=404)
            return aiohttp.web.json_response({"major": "1", "gitVersion": self.version})
        if request.resource is not None and request.resource.plural == "pods" and request.subresource == "log":
            text = self.pod_logs.get(request.name or "")
            if text is None:
                return aiohttp.web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)
            return aiohttp.web.Response(text=text, content_type="text/plain")
        if request.resource is not None and isinstance(request.data, dict):
            if request.action == kmock.action.CREATE:
                meta = request.data.setdefault("metadata", {})
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("resourceVersion", "1")
                meta.setdefault("generation", 1)
                meta.setdefault("creationTimestamp", _now())
            elif request.action == kmock.action.UPDATE and request.name is not None:
                key = (request.resource, request.namespace, request.name)
                missing = key not in self._objects or self._objects[key].deleted
                if missing and "apply-patch" in request.headers.get("Content-Type", ""):
                    return await self._apply_create(request)
                if not missing and request.subresource != "status" and "spec" in request.data:
                    self._bump_generation(request, self._objects[key].raw)
        result: aiohttp.web.StreamResponse = await super()._handle(request)
        return result

    @staticmethod
    def _bump_generation(request: kmock.Request, current: dict[str, Any]) -> None:
        old_spec = current.get("spec") or {}
        new_spec = kmock_dicts.patch_dict(copy.deepcopy(old_spec), request.data["spec"])
        if new_spec != old_spec:
            generation = int(current.get("metadata", {}).get("generation") or 0) + 1
            request.data.setdefault("metadata", {})["generation"] = generation

    async def _apply_create(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        assert request.resource is not None and request.name is not None  # checked by the caller
        resource, name = request.resource, request.name
        obj = copy.deepcopy(request.data)
        meta = obj.setdefault("metadata", {})
        meta.update(name=request.name, namespace=request.namespace, uid=str(uuid.uuid4()),
                    resourceVersion="1", generation=1, creationTimestamp=_now())
        key = (resource, request.namespace, name)
        async with self._lock:
            if key in self._objects:
                self._objects[key].create(obj)
            else:
                self._objects[key] = obj
            raw = self._objects[key].raw
            await self._buses[resource].put({"type": "ADDED", "object": raw})
        return aiohttp.web.json_response(raw, status=201)


def _present(obj: dict[str, Any] | None, what: str) -> dict[str, Any]:
    if obj is None:
        raise KeyError(f"no {what}")
    return obj


@dataclass
class Harness:
    """A running operator plus shortcuts to drive and inspect the emulated cluster."""

    server: ApiServer
    client: KubeClient
    handler_errors: list[str] = field(default_factory=list)

    # --- the emulated cluster
    def live(self, resource: kmock.resource, name: str) -> dict[str, Any] | None:
        key = (resource, NAMESPACE, name)
        if key not in self.server.objects or self.server.objects[key].deleted:
            return None
        raw: dict[str, Any] = self.server.objects[key].raw
        return raw

    def versions(self, resource: kmock.resource, name: str) -> int:
        """How many times the object was written (kmock keeps every version)."""
        key = (resource, NAMESPACE, name)
        return len(self.server.objects[key].history) if key in self.server.objects else 0

    def owned_objects(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(kind, name) of every live object labelled as managed by the operator."""
        found = {}
        for kind, resource in OWNED.items():
            for (res, _, name), obj in list(self.server.objects.items()):
                if res == resource and not obj.deleted and obj.raw.get("metadata", {}).get(
                        "labels", {}).get(names.LABEL_MANAGED_BY) == names.OPERATOR_NAME:
                    found[(kind, name)] = obj.raw
        return found

    def events(self, name: str) -> list[dict[str, Any]]:
        return [obj.raw for (res, _, _), obj in list(self.server.objects.items())
                if res == EVENTS and not obj.deleted
                and obj.raw.get("involvedObject", {}).get("name") == name]

    async def wait_for_event(self, name: str, reason: str, type_: str | None = None) -> dict[str, Any]:
        """kopf posts events from a queue, a moment after the handler that emitted them."""
        event: dict[str, Any] = await self.wait_for(f"event {reason} on {name}", lambda: next(
            (e for e in self.events(name) if e["reason"] == reason and type_ in (None, e["type"])), None))
        return event

    # --- acting as a user or a controller
    async def request(self, method: str, path: str, body: Any = None,
                      content_type: str = "application/merge-patch+json") -> Any:
        async with self.server.request(method, path, json=body, headers={"Content-Type": content_type,
                                                                                  "User-Agent": TEST_AGENT}) as resp:
            assert resp.status < 300, (method, path, resp.status, await resp.text())
            return await resp.json()

    async def create(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": names.API_VERSION, "kind": names.KIND,
                "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}
        result: dict[str, Any] = await self.request(
            "POST", f"/apis/{names.API_VERSION}/namespaces/{NAMESPACE}/{names.PLURAL}", body)
        return result

    async def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        await self.request("PATCH", f"/apis/{names.API_VERSION}/namespaces/{NAMESPACE}/{names.PLURAL}/{name}",
                           {"spec": spec})

    async def delete(self, resource_path: str) -> None:
        await self.request("DELETE", resource_path)

    async def put_object(self, path: str, body: dict[str, Any]) -> None:
        await self.request("POST", path, body)

    async def set_deployment_status(self, name: str, status: dict[str, Any]) -> None:
        """Play the Deployment controller: report replicas for the current generation."""
        live = self.live(DEPLOYMENTS, name)
        assert live is not None, f"Deployment {name} does not exist"
        generation = live["metadata"].get("generation", 1)
        await self.request("PATCH", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{name}/status",
                           {"status": {"observedGeneration": generation, **status}})

    def node(self, name: str) -> dict[str, Any] | None:
        key = (NODES, None, name)
        if key not in self.server.objects or self.server.objects[key].deleted:
            return None
        raw: dict[str, Any] = self.server.objects[key].raw
        return raw

    async def put_node(self, name: str, labels: dict[str, str] | None = None) -> None:
        await self.request("POST", "/api/v1/nodes", {
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels or {}}})

    async def put_pod(self, pod: dict[str, Any]) -> None:
        """Play the ReplicaSet / Job controller and the scheduler: a pod (with its status), created or patched."""
        name = pod["metadata"]["name"]
        if self.live(PODS, name) is None:
            await self.put_object(f"/api/v1/namespaces/{NAMESPACE}/pods", pod)
        else:
            await self.request("PATCH", f"/api/v1/namespaces/{NAMESPACE}/pods/{name}", {"status": pod["status"]})

    async def set_job_status(self, name: str, status: dict[str, Any]) -> None:
        await self.request("PATCH", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{name}/status", {"status": status})

    def cr(self, name: str) -> dict[str, Any] | None:
        return self.live(CR_RESOURCE, name)

    def condition(self, name: str, kind: str) -> dict[str, Any] | None:
        obj = self.cr(name) or {}
        for cond in obj.get("status", {}).get("conditions") or []:
            if cond["type"] == kind:
                return dict(cond)
        return None

    # The same, for objects that must be there: KeyError when absent (`wait_for` polls on).
    def existing(self, resource: kmock.resource, name: str) -> dict[str, Any]:
        return _present(self.live(resource, name), f"{resource} {name}")

    def existing_cr(self, name: str) -> dict[str, Any]:
        return _present(self.cr(name), f"InferenceServer {name}")

    def existing_condition(self, name: str, kind: str) -> dict[str, Any]:
        return _present(self.condition(name, kind), f"condition {kind} of {name}")

    async def wait_for(self, what: str, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Poll until `predicate()` is truthy; fail with `what` after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = predicate()
            except (KeyError, TypeError, IndexError):
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout}s waiting for {what}; handler errors: {self.handler_errors}")
            await asyncio.sleep(0.05)

    async def settle(self, quiet: float = 0.6, timeout: float = 10.0) -> None:
        """Wait until the API server saw no write for `quiet` seconds (the operator is idle)."""
        deadline = time.monotonic() + timeout
        count = self.write_count()
        last_change = time.monotonic()
        while time.monotonic() - last_change < quiet:
            if time.monotonic() > deadline:
                pytest.fail("the operator never went idle")
            await asyncio.sleep(0.05)
            now_count = self.write_count()
            if now_count != count:
                count, last_change = now_count, time.monotonic()

    def write_count(self) -> int:
        return sum(1 for r in list(self.server) if r.method.value in ("POST", "PATCH", "PUT", "DELETE"))
