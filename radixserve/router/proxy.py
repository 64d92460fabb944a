"""Forwarding one request to a worker: pick, send, relay, retry on connection failures.

Requests go out through `upstream.UpstreamPool` (keep-alive HTTP/1.1, see there why not
aiohttp's client). Streams are relayed chunk by chunk as they arrive (`readany`), never buffered. The
client's response is started only when the worker's first body chunk has arrived, so a
worker that dies before producing anything costs the client nothing: the request is
retried on another worker. After the first byte has gone to the client, a failure ends
the stream with an SSE error event instead.

Client disconnects: a client that goes away cancels the handler (httpd.py); the `finally` below then closes the upstream connection (not
returns it to the pool), which the worker sees as a disconnect and aborts the request.

With `--worker-protocol grpc`, a POST /generate that gRPC carries exactly goes to the worker's
Generate RPC instead (grpc_client.py), with the same picking, retries and load accounting.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import aiohttp
import msgspec

from radixserve.router.admission import PRIORITY_KEY
from radixserve.router.errors import error_body, error_response
from radixserve.router.httpd import AnyResponse, Request, Response, StreamResponse
from radixserve.router.metrics import RouterMetrics
from radixserve.router.policies import Policy
from radixserve.router.request_text import routing_text
from radixserve.router.tokenize import LONG_PROMPT_BYTES, PromptTokenizer, RoutedPrompt
from radixserve.router.upstream import ConnectFailed, ConnectionBroken, UpstreamPool, UpstreamResponse
from radixserve.router.workers import Worker, WorkerRegistry

if TYPE_CHECKING:  # grpc_client imports grpcio and the server's models: only with --worker-protocol grpc
    from radixserve.router.grpc_client import GrpcGenerate, GrpcWorkers

log = logging.getLogger(__name__)

WORKER_HEADER = "x-radixserve-worker"

# Writing to a client that went away (httpd.StreamResponse raises it).
_CLIENT_GONE = (ConnectionResetError,)

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


class _Retryable(Exception):
    """The attempt failed before any byte reached the client."""


class Proxy:
    def __init__(self, workers: WorkerRegistry, policy: Policy, metrics: RouterMetrics,
                 max_attempts: int, api_key: str | None) -> None:
        self.workers = workers
        self.policy = policy
        self.metrics = metrics
        self.max_attempts = max_attempts
        self.session: aiohttp.ClientSession | None = None  # control-plane calls (app.py)
        self.upstream: UpstreamPool | None = None  # the requests it forwards
        self._base_headers = {"Content-Type": "application/json"}
        if api_key:
            self._base_headers["Authorization"] = f"Bearer {api_key}"
        self._get_rr = 0
        self.prompt_tokenizer: PromptTokenizer | None = None  # for exact matching on cache events
        self.grpc: GrpcWorkers | None = None  # --worker-protocol grpc: generation over gRPC

    async def start(self, request_timeout_s: float, connect_timeout_s: float) -> None:
        # keepalive_timeout under uvicorn's default 5 s, so that the router does not reuse a
        # connection that the worker is about to close (that race looks like a failure).
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4.0, enable_cleanup_closed=True)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=request_timeout_s, sock_connect=connect_timeout_s),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )

        self.upstream = UpstreamPool(request_timeout_s, connect_timeout_s, keepalive_timeout_s=4.0)

    async def stop(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
        if self.session is not None:
            await self.session.close()

    def _upstream_headers(self, request: Request) -> dict[str, str]:
        headers = dict(self._base_headers)
        for key, value in request.headers.items():
            # Request ids and tracing headers travel; hop-by-hop and auth do not.
            if key[:2] in ("x-", "X-") or key.lower() == "accept":
                headers[key] = value
        return headers

    @staticmethod
    def _downstream_headers(resp: UpstreamResponse, worker: Worker) -> dict[str, str]:
        headers = {WORKER_HEADER: worker.url}
        for key, value in resp.headers:
            lower = key.lower()
            if lower == "content-type" or lower.startswith("x-") or lower == "cache-control":
                headers[key] = value
        return headers

    async def handle_generate(self, request: Request) -> AnyResponse:
        """POST /generate, /v1/completions, /v1/chat/completions."""
        start = time.perf_counter()
        path = request.path
        body = request.body
        try:
            obj = _decode(body)
        except msgspec.DecodeError as exc:
            return error_response(400, f"request body is not valid JSON: {exc}")
        if not isinstance(obj, dict):
            return error_response(400, "request body must be a JSON object")
        priority = request.get(PRIORITY_KEY)
        if priority is not None:
            # The key's priority (admission.py) replaces the client's own.
            obj["priority"] = priority
            body = _encode(obj)
        text = routing_text(path, obj)
        prompt = RoutedPrompt(path, obj, self.prompt_tokenizer)  # tokenized only if a policy asks
        if self.prompt_tokenizer is not None and len(body) > LONG_PROMPT_BYTES:
            await prompt.prepare()  # milliseconds of tokenizing: not on the event loop
        call = self.grpc.translate(path, obj, request.headers.get("X-Request-Id")) if self.grpc is not None else None
        try:
            return await self._forward(request, "POST", path, body, text, prompt, call)
        finally:
            hist = self.metrics.duration.get(path)
            if hist is not None:
                hist.observe(time.perf_counter() - start)

    async def handle_get(self, request: Request) -> AnyResponse:
        """GET routes answered by any worker (/v1/models, /get_server_info, ...)."""
        return await self._forward(request, "GET", request.path_qs, None, None)

    def _pick(self, candidates: Sequence[Worker], method: str, text: str | None,
              prompt: RoutedPrompt | None = None) -> Worker:
        if method == "GET":
            # Metadata requests should not shape the routing state or its metrics.
            self._get_rr += 1
            return candidates[self._get_rr % len(candidates)]
        choice = self.policy.select(candidates, text, prompt)
        self.metrics.decisions[choice.decision] += 1
        return choice.worker

    async def _forward(self, request: Request, method: str, path: str, body: bytes | None,
                       text: str | None, prompt: RoutedPrompt | None = None,
                       call: GrpcGenerate | None = None) -> AnyResponse:
        tried: list[Worker] = []
        for _ in range(self.max_attempts):
            candidates = self.workers.healthy
            if tried:
                candidates = [w for w in candidates if w not in tried]
            if not candidates:
                break
            worker = self._pick(candidates, method, text, prompt)
            try:
                if call is not None:
                    return await self._attempt_grpc(request, worker, call)
                return await self._attempt(request, worker, method, path, body)
            except _Retryable:
                tried.append(worker)
                self.metrics.retries += 1
            except TimeoutError:
                self.metrics.errors["upstream_timeout"] += 1
                return error_response(504, f"worker {worker.url} did not answer within the request timeout")
        if tried:
            self.metrics.errors["upstream_unreachable"] += 1
            return error_response(503, f"no worker could take the request (tried {len(tried)})")
        self.metrics.errors["no_healthy_worker"] += 1
        return error_response(503, "no healthy worker is available")

    async def _attempt(self, request: Request, worker: Worker, method: str, path: str,
                       body: bytes | None) -> AnyResponse:
        assert self.upstream is not None
        worker.outstanding += 1
        worker.requests_total += 1
        resp: UpstreamResponse | None = None
        clean = False
        try:
            try:
                resp = await self.upstream.request(method, worker.url, path, self._upstream_headers(request), body)
            except ConnectFailed as exc:
                self.workers.record_failure(worker, f"connect: {exc}", eject_now=True)
                raise _Retryable from exc
            except ConnectionBroken as exc:
                self.workers.record_failure(worker, f"no response: {exc}")
                raise _Retryable from exc
            if resp.header("Content-Type").startswith("text/event-stream"):
                out = await self._relay_stream(request, resp, worker)
            else:
                try:
                    data = await resp.read()
                except ConnectionBroken as exc:
                    self.workers.record_failure(worker, f"response cut: {exc}")
                    raise _Retryable from exc
                out = Response(body=data, status=resp.status, headers=self._downstream_headers(resp, worker))
            clean = True
            return out
        finally:
            worker.outstanding -= 1
            if resp is not None:
                # Closing (not releasing) an unfinished response drops the connection, which
                # is how the worker learns that the client went away.
                if clean:
                    resp.release()
                else:
                    resp.close()

    async def _attempt_grpc(self, request: Request, worker: Worker, call: GrpcGenerate) -> AnyResponse:
        from radixserve.router.grpc_client import WorkerUnreachable

        assert self.grpc is not None
        worker.outstanding += 1
        worker.requests_total += 1
        try:
            return await self.grpc.relay(request, worker, call, {WORKER_HEADER: worker.url})
        except WorkerUnreachable as exc:
            raise _Retryable from exc
        finally:
            worker.outstanding -= 1

    async def _relay_stream(self, request: Request, resp: UpstreamResponse,
                            worker: Worker) -> AnyResponse:
        try:
            first = await resp.readany()
        except ConnectionBroken as exc:
            self.workers.record_failure(worker, f"stream cut before first byte: {exc}")
            raise _Retryable from exc
        out = StreamResponse(status=resp.status, headers=self._downstream_headers(resp, worker))
        await out.prepare(request)
        chunk = first
        while chunk:
            try:
                await out.write(chunk)
            except _CLIENT_GONE:
                return out  # the caller closes the upstream connection
            try:
                chunk = await resp.readany()
            except (TimeoutError, ConnectionBroken) as exc:
                log.warning("stream from %s broke after the first byte: %s", worker.url, exc)
                self.workers.record_failure(worker, f"stream cut: {exc}")
                self.metrics.errors["stream_cut"] += 1
                msg = f"worker {worker.url} failed mid-stream"
                with contextlib.suppress(*_CLIENT_GONE):
                    await out.write(b"data: " + error_body(502, msg) + b"\n\n")
                return out
        with contextlib.suppress(*_CLIENT_GONE):
            await out.write_eof()
        return out
