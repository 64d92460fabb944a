"""Scale from zero (radixserve/router/scale.py) against kmock's Kubernetes API emulator.

kmock routes `.../inferenceservers/NAME/scale` to the object itself: a GET returns the
InferenceServer, not an autoscaling/v1 Scale, and a PATCH merges its body into the object.
The reactions below emulate the real subresource on top: GET and PATCH answer a Scale built
from the object's `spec.replicas` (the CRD's specReplicasPath), and PATCH bodies are recorded.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import kmock as kmock_lib

from radixserve.operator import names
from radixserve.router.config import KubeDiscoveryConfig
from radixserve.router.scale import ScaleFromZeroConfig
from radixserve.testing.fake_worker import FakeWorkerConfig, start_fake_worker

from .conftest import MakeRouter, free_port, wait_until
from .test_discovery import NS, SELECTOR, create, endpoint_slice

CR = kmock_lib.resource(names.GROUP, names.VERSION, names.PLURAL)
CR_PATH = f"/apis/{names.GROUP}/{names.VERSION}/namespaces/{NS}/{names.PLURAL}"
NAME = "demo"
CHAT = {"messages": [{"role": "user", "content": "wake up"}], "max_tokens": 2}


class ScaleEmulation:
    def __init__(self, kmock: Any) -> None:
        self.kmock = kmock
        self.patches: list[Any] = []
        kmock.resources.load_bundled()
        kmock.resources[CR] = kmock_lib.ResourceInfo(
            kind=names.KIND, singular=names.SINGULAR, namespaced=True,
            verbs={"get", "list", "watch", "create", "patch", "update", "delete"}, subresources={"status", "scale"})
        kmock["get", kmock_lib.subresource("scale")] << self._scale
        kmock["patch", kmock_lib.subresource("scale")] << self._patch

    def replicas(self) -> int:
        return int(self.kmock.objects[CR, NS, NAME].raw["spec"]["replicas"])

    def _scale(self, request: Any) -> dict[str, Any]:
        return {"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {"name": request.name, "namespace": request.namespace},
                "spec": {"replicas": self.replicas()}, "status": {"replicas": 0}}

    def _patch(self, request: Any) -> dict[str, Any]:
        self.patches.append(request.data)  # kmock has merged it into the object already
        return self._scale(request)

    async def create(self, replicas: int) -> None:
        obj = {"apiVersion": names.API_VERSION, "kind": names.KIND, "spec": {"replicas": replicas},
               "metadata": {"name": NAME, "namespace": NS, "resourceVersion": "1"}}
        resp = await self.kmock.post(CR_PATH, json=obj)
        assert resp.status in (200, 201), await resp.text()


async def test_held_requests_share_one_scale_up_and_complete_when_a_replica_appears(
        kmock: Any, make_router: MakeRouter, http: aiohttp.ClientSession) -> None:
    api = ScaleEmulation(kmock)
    await api.create(replicas=0)
    api_server = str(kmock.url).rstrip("/")
    port = free_port()
    kube = KubeDiscoveryConfig(selector=SELECTOR, namespace=NS, port=port, api_server=api_server)
    scale = ScaleFromZeroConfig(namespace=NS, name=NAME, timeout_s=20, api_server=api_server)
    running = await make_router(kube=kube, scale_from_zero=scale)
    scaler = running.router.scaler
    assert scaler is not None

    # No worker, but ready: requests will be held.
    async with http.get(running.url + "/health") as r:
        assert r.status == 200 and (await r.json())["status"] == "scaled_to_zero"

    async def chat() -> tuple[int, dict[str, Any]]:
        async with http.post(running.url + "/v1/chat/completions", json=CHAT) as r:
            return r.status, await r.json()

    first = asyncio.create_task(chat())
    await wait_until(lambda: api.patches, 10, what="scale patched")
    second = asyncio.create_task(chat())
    await wait_until(lambda: scaler.held == 2, 5, what="both requests held")
    assert api.patches == [{"spec": {"replicas": 1}}] and api.replicas() == 1
    assert not first.done()

    # The operator's Deployment would now start a pod; its endpoint appears and turns ready.
    _, runner, _ = await start_fake_worker(FakeWorkerConfig(port=port))
    try:
        await create(kmock, endpoint_slice("demo-a", {"127.0.0.1": True}))
        results = await asyncio.wait_for(asyncio.gather(first, second), 10)
        assert [status for status, _ in results] == [200, 200]
        assert results[0][1]["choices"][0]["message"]["content"] == " w0 w1"
        assert api.patches == [{"spec": {"replicas": 1}}]  # one scale-up for both
        assert scaler.held == 0
        async with http.get(running.url + "/metrics") as r:
            text = await r.text()
        assert "radixserve_router_scale_from_zero_scale_ups_total 1.0" in text
    finally:
        await runner.cleanup()


async def test_timeout_and_too_many_held_answer_503_with_retry_after(
        kmock: Any, make_router: MakeRouter, http: aiohttp.ClientSession) -> None:
    api = ScaleEmulation(kmock)
    await api.create(replicas=0)
    api_server = str(kmock.url).rstrip("/")
    scale = ScaleFromZeroConfig(namespace=NS, name=NAME, timeout_s=0.8, max_held=1, api_server=api_server,
                                retry_after_s=7)
    running = await make_router(scale_from_zero=scale)
    url = running.url + "/v1/completions"
    body = {"prompt": "x", "max_tokens": 1}

    async def post() -> tuple[int, str | None, dict[str, Any]]:
        async with http.post(url, json=body) as r:
            return r.status, r.headers.get("Retry-After"), await r.json()

    held = asyncio.create_task(post())
    await wait_until(lambda: running.router.scaler is not None and running.router.scaler.held == 1, 5,
                     what="one request held")
    status, retry_after, payload = await post()  # the queue of held requests is full
    assert (status, retry_after) == (503, "7")
    assert "1 requests already wait" in payload["error"]["message"]
    status, retry_after, payload = await held  # no replica came up in time
    assert (status, retry_after) == (503, "7")
    err = payload["error"]
    assert err["code"] == "model_scaling_up" and err["type"] == "service_unavailable"
    assert f"{NS}/{NAME}" in err["message"] and "scaling up" in err["message"]
    assert api.replicas() == 1 and len(api.patches) == 1

    # A later episode reads the scale again: it already says 1, so it is not patched again.
    status, _, _ = await post()
    assert status == 503 and len(api.patches) == 1
