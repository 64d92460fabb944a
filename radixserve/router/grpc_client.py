"""Generation over gRPC to radixserve workers: `radixserve router --worker-protocol grpc --grpc-port N`.

Each worker keeps its HTTP URL (health checks, cache events, the GET routes and the OpenAI routes
use it); its gRPC target is the URL's host with `--grpc-port`, the same on every worker, as the
containers of a Deployment's pods have. One `grpc.aio` channel per worker, made when the registry
adds the worker and closed when it removes it.

A native `POST /generate` body that a `Generate` call carries exactly (one prompt, text or token
ids, sampling parameters of the types the proto has: `translate`) goes to `Generate`; any other
body (a batch, `logprob_start_len`, `logit_bias`, an unknown or ill-typed field) goes to the
worker's HTTP port unchanged, so that the worker's own validation answers it. The streamed
`GenerateResponse` deltas are added up per choice into the objects `POST /generate` answers, built
with the server's own models (radixserve.server.protocol), so the JSON and the SSE events have the
same fields, values and formatting (only `e2e_latency` is measured here). A gRPC error becomes the
HTTP error the worker would have answered: status from the code, message as it is, `param` and
`code` from the trailing metadata.

Cancelling: a client that goes away cancels the router's handler (`handler_cancellation`); the
`finally` below cancels the call, and the worker aborts the request and frees its KV cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import grpc
import grpc.aio

from radixserve.grpc import stubs
from radixserve.router.errors import error_body
from radixserve.router.httpd import AnyResponse, Request, Response, StreamResponse
from radixserve.router.metrics import RouterMetrics
from radixserve.router.workers import Worker, WorkerRegistry
from radixserve.sampling.sampling_params import SamplingParams, SamplingParamsError
from radixserve.server.access_log import valid_request_id
from radixserve.server.errors import ERROR_TYPES
from radixserve.server.protocol import GenerateMetaInfo, GenerateResponse

log = logging.getLogger(__name__)

# Set on answers that came over gRPC (how a client, or a test, tells which way a request went).
PROTOCOL_HEADER = "x-radixserve-worker-protocol"

# gRPC status -> the HTTP status the worker answers for the same refusal (the inverse of
# radixserve/grpc/errors.py's GRPC_CODES; RESOURCE_EXHAUSTED there is 429 queue full or 413).
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# As the server's APIError types them (a timeout is streaming.timeout_error's "timeout_error").
_ERROR_TYPES = {**ERROR_TYPES, 504: "timeout_error"}

_INT64 = (-(2**63), 2**63 - 1)
_INT32 = (-(2**31), 2**31 - 1)
_MAX_TOP_LOGPROBS = 20  # GenerateRequestBody.top_logprobs_num's bound
_SSE_DONE = b"data: [DONE]\n\n"
_CLIENT_GONE = (ConnectionResetError,)  # writing to a client that went away (httpd.py)


class WorkerUnreachable(Exception):
    """The call failed before any byte reached the client: no connection, or it broke."""


# ---- request: the JSON body as a GenerateRequest ---------------------------------------------

@dataclass
class GrpcGenerate:
    """A POST /generate body as the Generate call that carries it exactly."""

    message: Any  # radixserve.v1.GenerateRequest
    stream: bool
    return_logprob: bool
    top_logprobs_num: int
    request_id: str | None  # the client's X-Request-Id, echoed as the HTTP server does


def _is_int(v: object, bounds: tuple[int, int] = _INT64) -> bool:
    return type(v) is int and bounds[0] <= v <= bounds[1]


def _fits(fd: Any, v: object) -> bool:
    """Whether `v` is a JSON value of the proto field's scalar type, which it keeps unchanged."""
    cpp = fd.cpp_type
    if cpp == fd.CPPTYPE_INT64:
        return _is_int(v)
    if cpp == fd.CPPTYPE_DOUBLE:
        return type(v) is float or _is_int(v)
    if cpp == fd.CPPTYPE_BOOL:
        return type(v) is bool
    if cpp == fd.CPPTYPE_STRING:
        return type(v) is str
    return False


def sampling_message(pb2: Any, params: object) -> Any | None:
    """/generate's `sampling_params` object as a SamplingParams message, or None when the message
    cannot say the same thing (then the request goes over HTTP, to the worker's own validation)."""
    if not isinstance(params, dict):
        return None
    msg = pb2.SamplingParams()
    fields = msg.DESCRIPTOR.fields_by_name
    int_for_double: dict[str, int] = {}
    for name, value in params.items():
        fd = fields.get(name)
        # Unknown names, nulls (the server drops some, refuses others) and the logit_bias map (JSON
        # keys are strings) stay on HTTP.
        if fd is None or value is None or fd.message_type is not None:
            return None
        if fd.is_repeated:
            if isinstance(value, str) and name == "stop":
                value = [value]  # SamplingParams.from_dict takes one stop string as a list of it
            # An empty list is not "unset" (it overrides --sampling-defaults): proto3 cannot tell.
            if not isinstance(value, list) or not value or not all(_fits(fd, v) for v in value):
                return None
            getattr(msg, name).extend(value)
        else:
            if not _fits(fd, value):
                return None
            if fd.cpp_type == fd.CPPTYPE_DOUBLE and type(value) is int:
                int_for_double[name] = value
            setattr(msg, name, value)
    if int_for_double:
        # 1 and 1.0 sample alike, but an error message quotes the value as sent ("got -1" over HTTP,
        # "got -1.0" from the proto's double): such a value that is refused goes over HTTP.
        try:
            SamplingParams.from_dict(int_for_double)
        except SamplingParamsError:
            return None
    return msg


def translate(pb2: Any, obj: dict[str, Any], request_id: str | None) -> GrpcGenerate | None:
    """The POST /generate body `obj` as a Generate call, or None when gRPC cannot carry it as is."""
    text, input_ids = obj.get("text"), obj.get("input_ids")
    stream, return_logprob = obj.get("stream", False), obj.get("return_logprob", False)
    top, start = obj.get("top_logprobs_num", 0), obj.get("logprob_start_len", -1)
    rid, priority = obj.get("rid"), obj.get("priority")
    if request_id is not None and not valid_request_id(request_id):
        request_id = None
    ok = (type(stream) is bool and type(return_logprob) is bool and _is_int(top, (0, _MAX_TOP_LOGPROBS))
          and _is_int(start, (-1, -1))  # prompt logprobs are not in the proto
          and (rid is None or (type(rid) is str and rid != ""))
          and (priority is None or _is_int(priority, _INT32)))
    if not ok:
        return None
    try:
        if type(text) is str and text and input_ids is None:
            prompt: dict[str, Any] = {"text": text}
        elif text is None and isinstance(input_ids, list) and input_ids and all(_is_int(t) for t in input_ids):
            prompt = {"input_ids": pb2.TokenIds(ids=input_ids)}
        else:  # a batch, both or neither: the worker's HTTP answer
            return None
        params = sampling_message(pb2, obj.get("sampling_params", {}))
        if params is None:
            return None
        # As the HTTP server's access log does: the client's X-Request-Id is the rid unless the body names one.
        message = pb2.GenerateRequest(**prompt, sampling_params=params, return_logprob=return_logprob,
                                      top_logprobs_num=top, rid=rid or request_id or "", priority=priority or 0,
                                      return_text=True)
    except (TypeError, ValueError):  # e.g. a string with a lone surrogate: protobuf wants UTF-8
        return None
    return GrpcGenerate(message, stream, return_logprob, top, request_id)


# ---- response: GenerateResponse deltas as /generate's objects --------------------------------

@dataclass
class ChoiceSoFar:
    """One choice's output so far, added up from its GenerateResponse deltas."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[tuple[float, int]] = field(default_factory=list)  # (logprob, token id), as meta_info
    top_logprobs: list[list[tuple[float, int]]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    finish_reason: dict[str, Any] | None = None

    def add(self, m: Any) -> None:
        self.text += m.text
        self.token_ids.extend(m.token_ids)
        for lp in m.logprobs:
            self.logprobs.append((lp.logprob, lp.token_id))
            self.top_logprobs.append([(t.logprob, t.token_id) for t in lp.top_logprobs])
        self.prompt_tokens, self.completion_tokens, self.cached_tokens = (
            m.prompt_tokens, m.completion_tokens, m.cached_tokens)
        if m.HasField("finish_reason"):
            self.finish_reason = finish_reason_json(m.finish_reason)

    def response(self, rid: str, index: int, call: GrpcGenerate, started: float) -> GenerateResponse:
        want_lp = call.return_logprob
        return GenerateResponse(text=self.text, output_ids=self.token_ids, index=index, meta_info=GenerateMetaInfo(
            id=rid, prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
            cached_tokens=self.cached_tokens, finish_reason=self.finish_reason,
            e2e_latency=round(time.monotonic() - started, 6),
            output_token_logprobs=self.logprobs if want_lp else None,
            output_top_logprobs=self.top_logprobs if want_lp and call.top_logprobs_num else None))


def finish_reason_json(reason: Any) -> dict[str, Any]:
    """A FinishReason message as the server's FinishReason.to_json()."""
    out: dict[str, Any] = {"type": reason.type}
    matched = reason.WhichOneof("matched")
    if matched is not None:
        out["matched"] = getattr(reason, matched)
    if reason.message:
        out["message"] = reason.message
    return out


def _json_body(obj: Any) -> bytes:
    # Starlette's JSONResponse rendering, which the worker's non-streamed answers use.
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


# ---- errors: a gRPC status as the worker's HTTP error ----------------------------------------

@dataclass
class WorkerError:
    status: int
    message: str
    param: str | None
    code: str | None

    @classmethod
    def of(cls, e: grpc.aio.AioRpcError) -> WorkerError:
        trailing = {k: v for k, v in (e.trailing_metadata() or ()) if isinstance(v, str)}
        return cls(HTTP_STATUS.get(e.code(), 500), e.details() or e.code().name, trailing.get("param"),
                   trailing.get("code"))

    @property
    def transport(self) -> bool:
        """gRPC itself failed (no connection, a dropped one, the router's own deadline, a server
        that stopped taking calls), not the servicer: its UNAVAILABLE and DEADLINE_EXCEEDED carry `code`."""
        return self.code is None and self.status in (503, 504)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": _ERROR_TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}

    def response(self, headers: dict[str, str]) -> Response:
        if self.status == 401:
            headers = {**headers, "WWW-Authenticate": "Bearer"}
        return Response(body=_json_body(self.body()), status=self.status, content_type="application/json",
                            headers=headers)

    def event(self) -> bytes:
        # streaming.sse() of an APIError body: json.dumps' default separators.
        return f"data: {json.dumps(self.body())}\n\n".encode()


# ---- channels and calls ----------------------------------------------------------------------

def grpc_target(url: str, port: int) -> str:
    host = urlsplit(url).hostname or ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcWorkers:
    """The workers' gRPC channels, and POST /generate relayed through them."""

    def __init__(self, port: int, api_key: str | None, workers: WorkerRegistry, metrics: RouterMetrics,
                 request_timeout_s: float) -> None:
        self.pb2, self.pb2_grpc = stubs.load()
        self.port = port
        self.workers = workers
        self.metrics = metrics
        self.request_timeout_s = request_timeout_s
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, Any] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def target(self, worker: Worker) -> str:
        return grpc_target(worker.url, self.port)

    def add(self, worker: Worker) -> None:
        # Requests are as large as the router's payload limit lets them be; answers are small.
        channel = grpc.aio.insecure_channel(self.target(worker), options=[("grpc.max_receive_message_length", -1)])
        self._channels[worker.url] = channel
        self._stubs[worker.url] = self.pb2_grpc.RadixServeStub(channel)

    def remove(self, worker: Worker) -> None:
        channel = self._channels.pop(worker.url, None)
        self._stubs.pop(worker.url, None)
        if channel is None:
            return
        # Calls in flight finish (as HTTP requests to a removed worker do) within the request timeout.
        task = asyncio.get_running_loop().create_task(channel.close(self.request_timeout_s))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        channels = list(self._channels.values())
        self._channels.clear()
        self._stubs.clear()
        for task in list(self._closing):
            task.cancel()
        await asyncio.gather(*(c.close(None) for c in channels), *self._closing, return_exceptions=True)

    def translate(self, path: str, obj: dict[str, Any], request_id: str | None) -> GrpcGenerate | None:
        """The Generate call for this request, or None when it goes over HTTP (docs/router.md)."""
        return translate(self.pb2, obj, request_id) if path == "/generate" else None

    async def relay(self, request: Request, worker: Worker, call: GrpcGenerate,
                    headers: dict[str, str]) -> AnyResponse:
        """Run `call` on `worker` and answer as its POST /generate would have. WorkerUnreachable
        when nothing reached the client (the caller retries elsewhere); TimeoutError when the
        request timeout passed before the answer began."""
        stub = self._stubs.get(worker.url)
        if stub is None:
            raise WorkerUnreachable(f"no gRPC channel to {worker.url}")
        started = time.monotonic()
        headers = {**headers, PROTOCOL_HEADER: "grpc"}
        rpc = stub.Generate(call.message, metadata=self._metadata, timeout=self.request_timeout_s)
        try:
            try:
                first = await rpc.read()
            except grpc.aio.AioRpcError as e:
                return self._refusal(WorkerError.of(e), worker, headers)
            if first is grpc.aio.EOF:  # the servicer always sends a last message; a stopped server may not
                raise WorkerUnreachable(f"{worker.url}: the gRPC stream ended without a message")
            headers["X-Request-Id"] = call.request_id or first.rid
            if call.stream:
                return await self._stream(request, worker, call, rpc, first, headers, started)
            return await self._collect(worker, call, rpc, first, headers, started)
        finally:
            if not rpc.done():
                rpc.cancel()  # the client went away, or an error here: the worker aborts the request

    def _refusal(self, err: WorkerError, worker: Worker, headers: dict[str, str]) -> Response:
        """An error before the first message: the worker's HTTP error, or a failure to retry."""
        if not err.transport:
            return err.response(headers)
        if err.status == 504:
            raise TimeoutError(err.message)
        self.workers.record_failure(worker, f"grpc: {err.message}", eject_now=err.status == 503)
        raise WorkerUnreachable(err.message)

    async def _collect(self, worker: Worker, call: GrpcGenerate, rpc: Any, first: Any, headers: dict[str, str],
                       started: float) -> Response:
        choices: dict[int, ChoiceSoFar] = {}
        message = first
        try:
            while message is not grpc.aio.EOF:
                choices.setdefault(message.index, ChoiceSoFar()).add(message)
                message = await rpc.read()
        except grpc.aio.AioRpcError as e:  # nothing has reached the client yet
            return self._refusal(WorkerError.of(e), worker, headers)
        outs = [choices[i].response(first.rid, i, call, started).model_dump() for i in sorted(choices)]
        return Response(body=_json_body(outs[0] if len(outs) == 1 else outs), content_type="application/json",
                            headers=headers)

    async def _stream(self, request: Request, worker: Worker, call: GrpcGenerate, rpc: Any, first: Any,
                      headers: dict[str, str], started: float) -> AnyResponse:
        out = StreamResponse(headers={**headers, "Content-Type": "text/event-stream; charset=utf-8",
                                          "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        await out.prepare(request)
        choices: dict[int, ChoiceSoFar] = {}
        message = first
        try:
            while message is not grpc.aio.EOF:
                choice = choices.setdefault(message.index, ChoiceSoFar())
                choice.add(message)
                event = choice.response(first.rid, message.index, call, started).model_dump_json(exclude_none=False)
                await out.write(f"data: {event}\n\n".encode())
                message = await rpc.read()
            end = _SSE_DONE
        except grpc.aio.AioRpcError as e:
            err = WorkerError.of(e)
            if not err.transport:  # e.g. a timeout or a dead process on the worker: its error event, then [DONE]
                end = err.event() + _SSE_DONE
            else:  # the connection broke: as the HTTP relay says it (proxy.py)
                log.warning("gRPC stream from %s broke after the first byte: %s", worker.url, err.message)
                self.workers.record_failure(worker, f"grpc stream cut: {err.message}")
                self.metrics.errors["stream_cut"] += 1
                end = b"data: " + error_body(502, f"worker {worker.url} failed mid-stream") + b"\n\n"
        except _CLIENT_GONE:
            return out  # relay() cancels the call
        with contextlib.suppress(*_CLIENT_GONE):
            await out.write(end)
            await out.write_eof()
        return out
