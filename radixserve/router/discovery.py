"""Worker discovery from Kubernetes EndpointSlices (list, then watch; relist on any error).

Each EndpointSlice of the replicas' Service lists pod addresses with a `ready` condition.
A worker URL is `scheme://address:port` for every ready endpoint; the union over all
matching slices is the desired worker set. New URLs are added (then health-checked like
any worker), URLs that disappear or turn unready are removed.

The `kubernetes` client is synchronous, so the list/watch loop runs in a daemon thread and
hands snapshots to the event loop. Events are read as raw JSON (`_preload_content=False`):
the generated models are not needed for the few fields read, and keeping the raw
response lets `stop()` shut the connection down to unblock the thread.

The label selector is sent to the API server and also checked here, since API emulators
used in tests may ignore it. RBAC needed: get/list/watch on
`discovery.k8s.io/endpointslices` in the namespace.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

from radixserve.router.config import KubeDiscoveryConfig
from radixserve.router.kube import api_client
from radixserve.router.workers import WorkerRegistry, WorkerSource

log = logging.getLogger(__name__)


class LabelSelector:
    """Equality-based selector `k=v,k==v,k!=v,k` (set-based terms are left to the server)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.equal: dict[str, str] = {}
        self.not_equal: dict[str, str] = {}
        self.exists: list[str] = []
        for raw in text.split(","):
            term = raw.strip()
            if not term or " in " in term or " notin " in term or term.startswith("!"):
                continue
            if "!=" in term:
                key, value = term.split("!=", 1)
                self.not_equal[key.strip()] = value.strip()
            elif "=" in term:
                key, value = term.replace("==", "=").split("=", 1)
                self.equal[key.strip()] = value.strip()
            else:
                self.exists.append(term)

    def matches(self, labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        return (
            all(labels.get(k) == v for k, v in self.equal.items())
            and all(labels.get(k) != v for k, v in self.not_equal.items())
            and all(k in labels for k in self.exists)
        )


def ready_urls(endpoint_slice: dict[str, Any], port: int, scheme: str = "http") -> set[str]:
    """URLs of the ready endpoints of one EndpointSlice (raw API JSON)."""
    ipv6 = endpoint_slice.get("addressType") == "IPv6"
    urls = set()
    for endpoint in endpoint_slice.get("endpoints") or []:
        conditions = endpoint.get("conditions") or {}
        # The API says an unset `ready` means unknown, to be read as ready; `terminating`
        # endpoints report ready=false, so they leave here before their pod stops.
        if conditions.get("ready") is False:
            continue
        for address in endpoint.get("addresses") or []:
            host = f"[{address}]" if ipv6 or ":" in address else address
            urls.add(f"{scheme}://{host}:{port}")
    return urls


class EndpointSliceDiscovery:
    def __init__(self, config: KubeDiscoveryConfig, registry: WorkerRegistry) -> None:
        self.config = config
        self.registry = registry
        self.selector = LabelSelector(config.selector)
        self._slices: dict[str, set[str]] = {}  # owned by the watch thread
        self._known: set[str] = set()  # owned by the event loop: URLs this discovery added
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._response: Any = None  # the open watch response, shut down by stop()
        self._api: Any = None
        self.synced = asyncio.Event()  # set after the first successful list

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._api = await asyncio.to_thread(self._make_api)
        self._thread = threading.Thread(target=self._run, name="router-endpointslice-watch", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            try:
                response.shutdown()  # unblocks a read in the watch thread (urllib3 >= 2.3)
            except Exception:  # already closed, or an older urllib3: the watch timeout ends it
                log.debug("could not shut the watch connection down", exc_info=True)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)

    def _make_api(self) -> Any:
        from kubernetes import client

        return client.DiscoveryV1Api(api_client(self.config.api_server))

    # --- watch thread ---

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                version = self._list()
                self._watch(version)
            except Exception as exc:
                if self._stop.is_set():
                    break
                log.warning("EndpointSlice watch failed (%s: %s); relisting in %.1fs",
                            type(exc).__name__, exc, self.config.retry_backoff_s)
                self._stop.wait(self.config.retry_backoff_s)

    def _list(self) -> str | None:
        response = self._api.list_namespaced_endpoint_slice(
            self.config.namespace, label_selector=self.config.selector, _preload_content=False,
            _request_timeout=(10, 60),
        )
        data = json.loads(response.data)
        self._slices = {}
        for item in data.get("items") or []:
            self._apply_event("ADDED", item)
        self._publish(synced=True)
        version: str | None = (data.get("metadata") or {}).get("resourceVersion")
        return version

    def _watch(self, version: str | None) -> None:
        response = self._api.list_namespaced_endpoint_slice(
            self.config.namespace, label_selector=self.config.selector, watch=True,
            resource_version=version, allow_watch_bookmarks=True,
            timeout_seconds=self.config.watch_timeout_s, _preload_content=False,
            _request_timeout=(10, self.config.watch_timeout_s + 30),
        )
        self._response = response
        try:
            for event in self._events(response):
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":  # e.g. 410 Gone: our version is too old; relist
                    raise RuntimeError(f"watch error: {obj.get('message') or obj}")
                if kind == "BOOKMARK":
                    continue
                if self._apply_event(str(kind), obj):
                    self._publish()
        finally:
            self._response = None
            response.release_conn()

    def _events(self, response: Any) -> Iterator[dict[str, Any]]:
        buffer = b""
        for chunk in response.stream(amt=None, decode_content=False):
            if self._stop.is_set():
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    yield json.loads(line)

    def _apply_event(self, kind: str, obj: dict[str, Any]) -> bool:
        """Update the slice table; True when the set of URLs may have changed."""
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        if not name:
            return False
        if kind == "DELETED" or not self.selector.matches(meta.get("labels")):
            return self._slices.pop(name, None) is not None
        urls = ready_urls(obj, self.config.port, self.config.scheme)
        changed = self._slices.get(name) != urls
        self._slices[name] = urls
        return changed

    def _publish(self, synced: bool = False) -> None:
        desired = frozenset().union(*self._slices.values()) if self._slices else frozenset()
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._reconcile, desired, synced)

    # --- event loop ---

    def _reconcile(self, desired: frozenset[str], synced: bool) -> None:
        for url in sorted(desired - self._known):
            self.registry.add(url, WorkerSource.KUBERNETES)
        for url in sorted(self._known - desired):
            worker = self.registry.get(url)
            if worker is not None and worker.source is WorkerSource.KUBERNETES:
                self.registry.remove(url)
        self._known = set(desired)
        if synced:
            self.synced.set()

    @property
    def urls(self) -> set[str]:
        return set(self._known)
