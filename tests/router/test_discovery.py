"""EndpointSlice discovery against kmock's Kubernetes API emulator.

kmock ignores label selectors (the discovery filters labels itself too) and replays
existing objects as ADDED on every watch; both are harmless to a level-triggered watcher.
Endpoint addresses are loopback (127.0.0.x), so that health checks stay on this machine.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import aiohttp

from radixserve.router.config import KubeDiscoveryConfig
from radixserve.router.discovery import EndpointSliceDiscovery, LabelSelector, ready_urls
from radixserve.router.proxy import WORKER_HEADER
from radixserve.router.workers import WorkerRegistry, WorkerSource

from .conftest import MakeRouter, free_port, wait_until

NS = "serving"
BASE = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"
LABELS = {"app.kubernetes.io/instance": "demo", "radixserve.io/role": "server"}
SELECTOR = "app.kubernetes.io/instance=demo,radixserve.io/role=server"


def endpoint_slice(name: str, endpoints: dict[str, bool | None], labels: dict[str, str] | None = None) -> dict[str, Any]:
    eps = []
    for address, ready in endpoints.items():
        conditions = {} if ready is None else {"ready": ready, "serving": ready, "terminating": not ready}
        eps.append({"addresses": [address], "conditions": conditions})
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        # kmock sets no resourceVersion itself (see /work/shared/k8s-testing.md).
        "metadata": {"name": name, "namespace": NS, "labels": labels or LABELS, "resourceVersion": "1"},
        "addressType": "IPv4", "endpoints": eps, "ports": [{"name": "http", "port": 30000, "protocol": "TCP"}],
    }


async def create(kmock: Any, obj: dict[str, Any]) -> None:
    resp = await kmock.post(BASE, json=obj)
    assert resp.status in (200, 201), await resp.text()


async def patch_endpoints(kmock: Any, name: str, endpoints: dict[str, bool | None]) -> None:
    body = {"endpoints": endpoint_slice(name, endpoints)["endpoints"]}
    resp = await kmock.patch(f"{BASE}/{name}", json=body, headers={"Content-Type": "application/merge-patch+json"})
    assert resp.status == 200, await resp.text()


async def delete(kmock: Any, name: str) -> None:
    resp = await kmock.delete(f"{BASE}/{name}")
    assert resp.status == 200, await resp.text()


def test_label_selector_and_ready_urls() -> None:
    sel = LabelSelector("a=1,b==2,c!=3,d")
    assert sel.matches({"a": "1", "b": "2", "d": ""})
    assert not sel.matches({"a": "1", "b": "2", "c": "3", "d": "x"})
    assert not sel.matches({"a": "1", "b": "2"})
    assert not sel.matches(None)
    obj = endpoint_slice("s", {"10.0.0.1": True, "10.0.0.2": False, "10.0.0.3": None})
    assert ready_urls(obj, 8000) == {"http://10.0.0.1:8000", "http://10.0.0.3:8000"}
    v6 = {"addressType": "IPv6", "endpoints": [{"addresses": ["fd00::1"], "conditions": {"ready": True}}]}
    assert ready_urls(v6, 80) == {"http://[fd00::1]:80"}


async def test_endpoints_that_appear_turn_unready_and_disappear(kmock: Any) -> None:
    kmock.resources.load_bundled()
    port = 30000
    registry = WorkerRegistry()
    config = KubeDiscoveryConfig(selector=SELECTOR, namespace=NS, port=port, api_server=str(kmock.url).rstrip("/"),
                                 retry_backoff_s=0.2)
    discovery = EndpointSliceDiscovery(config, registry)

    def urls() -> set[str]:
        return {w.url for w in registry.all()}

    def u(host: str) -> str:
        return f"http://{host}:{port}"

    await create(kmock, endpoint_slice("demo-a", {"127.0.0.1": True, "127.0.0.2": True, "127.0.0.3": False}))
    await create(kmock, endpoint_slice("other", {"127.0.0.9": True}, labels={"app.kubernetes.io/instance": "x"}))
    registry.add(u("127.0.0.8"), WorkerSource.API)  # added by hand: discovery must leave it alone
    await discovery.start()
    try:
        await wait_until(lambda: urls() == {u("127.0.0.1"), u("127.0.0.2"), u("127.0.0.8")}, 10,
                         what="initial endpoints")
        assert discovery.synced.is_set()
        assert {w.source for w in registry.all() if w.url != u("127.0.0.8")} == {WorkerSource.KUBERNETES}

        # .2 turns unready (e.g. terminating), .3 becomes ready.
        await patch_endpoints(kmock, "demo-a", {"127.0.0.1": True, "127.0.0.2": False, "127.0.0.3": True})
        await wait_until(lambda: urls() == {u("127.0.0.1"), u("127.0.0.3"), u("127.0.0.8")}, 10,
                         what="unready endpoint dropped")

        # A second slice of the same service appears (large services have several).
        await create(kmock, endpoint_slice("demo-b", {"127.0.0.5": True, "127.0.0.1": True}))
        await wait_until(lambda: urls() == {u("127.0.0.1"), u("127.0.0.3"), u("127.0.0.5"), u("127.0.0.8")}, 10,
                         what="second slice added")

        # The first slice goes away: .1 stays, since the second slice lists it too.
        await delete(kmock, "demo-a")
        await wait_until(lambda: urls() == {u("127.0.0.1"), u("127.0.0.5"), u("127.0.0.8")}, 10,
                         what="deleted slice dropped")
        await delete(kmock, "demo-b")
        await wait_until(lambda: urls() == {u("127.0.0.8")}, 10, what="all discovered endpoints gone")
    finally:
        await discovery.stop()
    assert discovery._thread is not None and not discovery._thread.is_alive()


async def test_router_routes_to_discovered_replicas(kmock: Any, make_router: MakeRouter,
                                                    http: aiohttp.ClientSession) -> None:
    """Discovery wired into the router: replicas on 127.0.0.1/.2 with the same port, as pods would be."""
    from radixserve.testing.fake_worker import FakeWorkerConfig, start_fake_worker

    kmock.resources.load_bundled()
    port = free_port()
    started = []
    for host in ("127.0.0.1", "127.0.0.2"):
        _, runner, _ = await start_fake_worker(FakeWorkerConfig(host=host, port=port))
        started.append(runner)
    try:
        await create(kmock, endpoint_slice("demo-a", {"127.0.0.1": True, "127.0.0.2": True}))
        kube = KubeDiscoveryConfig(selector=SELECTOR, namespace=NS, port=port, api_server=str(kmock.url).rstrip("/"))
        running = await make_router(kube=kube, policy="round_robin")
        await wait_until(lambda: len(running.router.workers.healthy) == 2, 10, what="discovered workers healthy")
        served: Counter[str] = Counter()
        for _ in range(4):
            async with http.post(running.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}) as r:
                assert r.status == 200
                served[r.headers[WORKER_HEADER]] += 1
        assert served == {f"http://127.0.0.1:{port}": 2, f"http://127.0.0.2:{port}": 2}

        await patch_endpoints(kmock, "demo-a", {"127.0.0.1": True, "127.0.0.2": False})
        await wait_until(lambda: len(running.router.workers) == 1, 10, what="unready replica dropped")
        async with http.get(running.url + "/workers") as r:
            listing = (await r.json())["workers"]
        assert [(w["url"], w["source"]) for w in listing] == [(f"http://127.0.0.1:{port}", "kubernetes")]
    finally:
        for runner in started:
            await runner.cleanup()
