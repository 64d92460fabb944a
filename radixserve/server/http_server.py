"""The FastAPI app: OpenAI-compatible routes, native routes, health, metrics and control."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from radixserve import __version__
from radixserve.cache_events.hub import CacheEventHub, GapError
from radixserve.cache_events.protocol import ENCODER as CACHE_EVENTS_ENCODER
from radixserve.cache_events.protocol import EVENTS_PATH, SNAPSHOT_PATH
from radixserve.errors import QueueFullError
from radixserve.managers.request_builder import GenerateRequest
from radixserve.managers.tokenizer_manager import RequestTimeoutError, TokenizerManager
from radixserve.metrics import render_metrics
from radixserve.sampling.input_logprobs import format_input_token_logprobs
from radixserve.sampling.sampling_params import SamplingParams
from radixserve.server import openai_serving
from radixserve.server.access_log import AccessLog
from radixserve.server.errors import APIError, api_error, install_error_handlers
from radixserve.server.openai_serving import ChoiceState, collect
from radixserve.server.protocol import (
    AbortRequestBody,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChunk,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    GenerateMetaInfo,
    GenerateRequestBody,
    GenerateResponse,
    HealthResponse,
    ModelCard,
    ModelList,
    SuccessResponse,
)
from radixserve.server.streaming import (
    ClientDisconnected,
    chained,
    first_and_rest,
    sse,
    sse_response,
    sse_stream,
    timeout_error,
    until_disconnect,
)

MAX_BODY_BYTES = 32 << 20
HEALTH_GENERATE_TIMEOUT_S = 30.0
# Status 499 (nginx's "client closed request"): logged, never read by anyone.
CLIENT_CLOSED = 499

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in (
        (400, "Invalid request: bad JSON, an out-of-range parameter, or a prompt over the context length."),
        (401, "Missing or wrong API key."),
        (404, "Unknown model."),
        (413, "Request body too large."),
        (429, "The request queue is full; retry later."),
        (503, "The server is starting, shutting down, or unhealthy."),
    )
}

def _stream_doc(model: type) -> dict[int | str, dict[str, Any]]:
    from radixserve.server.protocol import stream_event_schema

    # "model" puts `model` into the components, so the event-stream $ref resolves. An event is a
    # chunk, or an error that ended the stream after it began (then `data: [DONE]` follows).
    # The schema describes one event (OpenAPI 3.2's itemSchema shape): its `data` is JSON text.
    events = [{"$ref": f"#/components/schemas/{model.__name__}"}, {"$ref": "#/components/schemas/ErrorResponse"}]
    event = {"type": "object", "required": ["data"], "properties": {"data": {"anyOf": [
        {"type": "string", "contentMediaType": "application/json", "contentSchema": {"anyOf": events}},
        {"const": "[DONE]"}]}}}
    return {200: {"description": f"JSON, or with `stream: true` server-sent events `data: <{model.__name__}>` "
                  "(or `data: <ErrorResponse>` if the stream fails after it began) ending with `data: [DONE]`.",
                  "model": stream_event_schema(model),
                  "content": {"text/event-stream": {"schema": {"type": "array", "items": event}, "itemSchema": event}}},
            **ERRORS}

class BodySizeLimit:
    """413 for a request body over the limit: at once when Content-Length says so, otherwise as soon
    as the bytes actually received (chunked transfer encoding, or a lying Content-Length) pass it.
    The body is read here in full and handed on to the app unchanged."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    def _too_large(self, size: int | None) -> Response:
        said = f"is {size} bytes" if size is not None else "is longer"
        return APIError(413, f"the request body {said}; the limit is {self.limit} bytes",
                        code="request_too_large").response()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._too_large(int(value))(scope, receive, send)
                return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break  # the client left: the app sees the disconnect
            size += len(message.get("body", b""))
            if size > self.limit:
                messages.clear()
                await self._too_large(None)(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


RETRY_AFTER_S = 1  # the Retry-After of a 429: running requests finish and free slots continually


@dataclasses.dataclass
class ServerState:
    """What the routes need besides the TokenizerManager; `healthy` turns false when a child dies."""

    healthy: bool = True
    started_at: float = dataclasses.field(default_factory=time.time)
    server_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The model and tokenizer as resolved at start (the embedded default has no --model-path).
    model_path: str | None = None
    tokenizer_path: str | None = None


def build_app(tm: TokenizerManager, api_key: str | None, state: ServerState | None = None) -> FastAPI:
    state = state or ServerState()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        tm.start()
        yield
        await tm.close()

    app = FastAPI(title="radixserve", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible LLM server (radix-cache prefix reuse, continuous batching).")
    app.add_middleware(BodySizeLimit)
    install_error_handlers(app)
    # Added last, so outermost: every response (413s included) gets an id and an access-log line.
    app.add_middleware(AccessLog, metrics=tm.metrics, log_requests=bool(state.server_args.get("log_requests")))
    app.state.server = state

    @app.exception_handler(QueueFullError)
    async def _queue_full(_: Request, exc: QueueFullError) -> Response:
        resp = api_error(exc).response()
        resp.headers["Retry-After"] = str(RETRY_AFTER_S)
        return resp

    @app.exception_handler(RequestTimeoutError)
    async def _timed_out(_: Request, exc: RequestTimeoutError) -> Response:
        return timeout_error(exc).response()

    @app.exception_handler(ClientDisconnected)
    async def _gone(_: Request, __: ClientDisconnected) -> Response:
        return Response(status_code=CLIENT_CLOSED)

    bearer = HTTPBearer(auto_error=False, description="Needed when the server runs with --api-key.")

    async def require_key(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        # Constant-time comparison: the time to refuse says nothing about how much of the key matched.
        if api_key is not None and (creds is None or not hmac.compare_digest(
                creds.credentials.encode(), api_key.encode())):
            raise APIError(401, "invalid or missing API key; send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    # Without a key the routes carry no auth dependency, so /openapi.json documents none.
    auth = [Depends(require_key)] if api_key is not None else []
    app.include_router(_openai_routes(tm, auth))
    app.include_router(_native_routes(tm, state, auth))
    app.include_router(_cache_event_routes(tm, auth))
    app.include_router(_open_routes(tm, state))
    return app


def _openai_routes(tm: TokenizerManager, auth: list[Any]) -> APIRouter:
    api = APIRouter(dependencies=auth, responses=ERRORS)

    @api.post("/v1/chat/completions", response_model=ChatCompletionResponse,
              responses=_stream_doc(ChatCompletionChunk), tags=["openai"])
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Response:
        """Chat through the model's chat template; `stream: true` for server-sent events."""
        return await openai_serving.create_chat_completion(tm, req, request)

    @api.post("/v1/completions", response_model=CompletionResponse, responses=_stream_doc(CompletionChunk),
              tags=["openai"])
    async def completions(req: CompletionRequest, request: Request) -> Response:
        """Text completion of a prompt (text or token ids, or a batch of them)."""
        return await openai_serving.create_completion(tm, req, request)

    def model_card() -> ModelCard:
        return ModelCard(id=tm.model_name, root=tm.model_name, max_model_len=tm.context_len)

    @api.get("/v1/models", response_model=ModelList, tags=["openai"])
    async def models() -> ModelList:
        """The served model."""
        return ModelList(data=[model_card()])

    @api.get("/v1/models/{model:path}", response_model=ModelCard, tags=["openai"])
    async def get_model(model: str) -> ModelCard:
        openai_serving.check_model(tm, model)
        return model_card()

    return api


def _native_routes(tm: TokenizerManager, state: ServerState, auth: list[Any]) -> APIRouter:
    """SGLang's native generation route and the control routes."""
    api = APIRouter(dependencies=auth, responses=ERRORS)

    @api.post("/generate", response_model=GenerateResponse | list[GenerateResponse],
              responses=_stream_doc(GenerateResponse), tags=["native"])
    async def generate(body: GenerateRequestBody, request: Request) -> Response:
        """SGLang-style generation from text or token ids; streams the text so far in each event."""
        return await _native_generate(tm, body, request)

    @api.post("/abort_request", response_model=SuccessResponse, tags=["control"])
    async def abort_request(body: AbortRequestBody) -> SuccessResponse:
        """Abort a running request by the `rid` it was sent with."""
        if not tm.abort_request(body.rid):
            raise APIError(404, f"no running request with rid {body.rid!r}", param="rid", code="not_found")
        return SuccessResponse(success=True, message=f"aborted {body.rid}")

    @api.post("/flush_cache", response_model=SuccessResponse, tags=["control"],
              responses={409: {"model": ErrorResponse, "description": "Requests are running."}})
    async def flush_cache() -> SuccessResponse:
        """Drop every cached prefix from the radix cache (only while no request runs)."""
        if not await tm.flush_cache():
            raise APIError(409, "cache not flushed: requests are running", code="requests_running")
        return SuccessResponse(success=True, message="cache flushed")

    @api.get("/check_kv_integrity", response_model=SuccessResponse, tags=["control"])
    async def check_kv_integrity() -> SuccessResponse:
        """Verify that every KV slot is free, cached in the radix tree, or held by exactly one running
        request (O(pool size): a diagnostic, not a probe). 500 if the accounting is broken."""
        out = await tm.check_memory()
        if not out.ok:
            raise APIError(500, out.message, code="kv_integrity")
        return SuccessResponse(success=True, message=f"{out.message} ({out.pool_slots} slots)")

    @api.get("/get_server_info", tags=["control"])
    @api.get("/server_info", tags=["control"], include_in_schema=False)  # SGLang's newer name
    async def get_server_info() -> dict[str, Any]:
        """Server arguments (API key hidden), model facts, load and version. `served_model_name` is the
        name requests use (sglang-router takes its model id from it)."""
        return {**state.server_args, **tm.info, "served_model_name": tm.model_name, "load": await tm.get_load(),
                "version": __version__, "uptime_s": round(time.time() - state.started_at, 1)}

    @api.get("/get_model_info", tags=["control"])
    @api.get("/model_info", tags=["control"], include_in_schema=False)
    async def get_model_info() -> dict[str, Any]:
        """SGLang's model facts, for clients written against SGLang (its native API's /get_model_info)."""
        model_path = state.model_path or state.server_args.get("model_path")
        tokenizer_path = state.tokenizer_path or state.server_args.get("tokenizer_path") or model_path
        return {"model_path": model_path, "tokenizer_path": tokenizer_path,
                "served_model_name": tm.model_name, "is_generation": True, "preferred_sampling_params": None,
                "weight_version": "default", "max_context_length": tm.context_len, "vocab_size": tm.vocab_size,
                "architectures": [tm.info["architecture"]] if tm.info.get("architecture") else None}

    @api.get("/health_generate", response_model=HealthResponse, tags=["health"])
    async def health_generate() -> HealthResponse:
        """Healthy only if the model really generates a token within 30 s."""
        _check_health(tm, state)
        gr = tm.builder.build([0], SamplingParams(max_new_tokens=1, temperature=0.0))
        try:
            await asyncio.wait_for(collect(tm.generate(gr), 1), HEALTH_GENERATE_TIMEOUT_S)
        except TimeoutError as e:
            raise APIError(503, "no token generated within 30 s", code="unhealthy") from e
        return HealthResponse(status="ok")

    return api


def _cache_event_routes(tm: TokenizerManager, auth: list[Any]) -> APIRouter:
    """The RadixCache as block events for cache-aware routers (docs/router.md, "Cache events")."""
    api = APIRouter(dependencies=auth, tags=["cache"], responses={
        **ERRORS, 404: {"model": ErrorResponse, "description": "Cache events are off (--disable-cache-events)."}})

    def hub() -> CacheEventHub:
        if tm.cache_events is None:
            raise APIError(404, "cache events are turned off on this server (--disable-cache-events)",
                           code="cache_events_disabled")
        return tm.cache_events

    @api.get(EVENTS_PATH, response_class=StreamingResponse, responses={
        200: {"content": {"application/x-ndjson": {}},
              "description": "One EventBatch (radixserve/cache_events/protocol.py) per line, for as long as the "
                             "client reads; a load-only batch at least every second."},
        410: {"model": ErrorResponse, "description": "`since` or `epoch` cannot be served: take a snapshot."}})
    async def cache_events(
            since: int | None = Query(None, ge=0, description="Replay the retained batches after this seq first."),
            epoch: str | None = Query(None, description="The epoch `since` belongs to; another one answers 410.")
    ) -> StreamingResponse:
        """The cache's block events and the engine's load as NDJSON, live; with `since`, the retained
        batches after it first. 410 when they are not retained (or the server restarted)."""
        h = hub()
        try:
            sub = h.subscribe(since, epoch)
        except GapError as e:
            raise APIError(410, str(e), param=e.param, code="cache_events_gap",
                           error_type="invalid_request_error") from None

        async def lines() -> AsyncIterator[bytes]:
            try:
                async for line in sub.lines(stop=lambda: tm.draining):
                    yield line
            finally:
                h.unsubscribe(sub)

        return StreamingResponse(lines(), media_type="application/x-ndjson",
                                 headers={"Cache-Control": "no-cache", "x-radixserve-cache-epoch": h.epoch})

    @api.get(SNAPSHOT_PATH, response_class=Response, responses={
        200: {"content": {"application/json": {}},
              "description": "A Snapshot: every block as of batch `seq`; continue with the stream at `since=seq`."}})
    async def cache_snapshot() -> Response:
        """Every block in the RadixCache now, with the epoch and seq it is consistent with."""
        return Response(CACHE_EVENTS_ENCODER.encode(hub().snapshot()), media_type="application/json")

    return api


def _open_routes(tm: TokenizerManager, state: ServerState) -> APIRouter:
    """Probes and scrapers carry no key."""
    open_routes = APIRouter()

    @open_routes.get("/health", response_model=HealthResponse, tags=["health"],
                     responses={503: {"model": ErrorResponse, "description": "Not ready, shutting down or unhealthy."}})
    async def health() -> HealthResponse:
        """200 once the model is loaded and warmed up and every process is alive."""
        _check_health(tm, state)
        return HealthResponse(status="ok")

    @open_routes.get("/metrics", tags=["health"], response_class=Response,
                     responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."}})
    async def metrics() -> Response:
        """Prometheus metrics of all server processes."""
        return Response(render_metrics(tm.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return open_routes


def _check_health(tm: TokenizerManager, state: ServerState) -> None:
    if not state.healthy:
        raise APIError(503, "a server process died", code="unhealthy")
    if tm.draining:
        raise APIError(503, "the server is shutting down", code="shutting_down")

async def _native_generate(tm: TokenizerManager, body: GenerateRequestBody, request: Request) -> Response:
    batch = await _native_prompts(tm, body)
    single = isinstance(body.text, str) or (body.input_ids is not None and not (
        body.input_ids and isinstance(body.input_ids[0], list)))
    params = tm.builder.sampling_params(body.sampling_params)
    grs = await tm.run_blocking(lambda: [
        tm.builder.build(ids, params, rid=body.rid if len(batch) == 1 else None, stream=body.stream,
                         return_logprob=body.return_logprob, top_logprobs_num=body.top_logprobs_num,
                         priority=body.priority or 0,
                         logprob_start_len=body.logprob_start_len, input_text=text, prompt_param="text" if text is not None else "input_ids")
        for ids, text in batch])
    return await _native_respond(tm, body, request, grs, single)


async def _native_prompts(tm: TokenizerManager, body: GenerateRequestBody) -> list[tuple[list[int], str | None]]:
    """The prompts as token ids (tokenized off the event loop) with their text, if any."""
    if (body.text is None) == (body.input_ids is None):
        raise APIError(400, "give exactly one of 'text' and 'input_ids'", param="text", code="invalid_value")
    batch: list[tuple[list[int], str | None]]
    if isinstance(body.text, str):
        tm.check_prompt_chars(len(body.text), "text")
        batch = [(await tm.run_blocking(tm.builder.tokenize, body.text), body.text)]
    elif isinstance(body.text, list):
        texts = body.text
        for t in texts:
            tm.check_prompt_chars(len(t), "text")
        token_ids = await tm.run_blocking(lambda: [tm.builder.tokenize(t) for t in texts])
        batch = [(ids, t) for ids, t in zip(token_ids, texts, strict=True)]
    elif body.input_ids and isinstance(body.input_ids[0], list):
        batch = [([int(t) for t in ids], None) for ids in body.input_ids]
    else:
        batch = [([int(t) for t in body.input_ids or []], None)]  # type: ignore[arg-type]
    if not batch:
        raise APIError(400, "the batch is empty", param="text")
    return batch


async def _native_respond(tm: TokenizerManager, body: GenerateRequestBody, request: Request,
                          grs: list[GenerateRequest], single: bool) -> Response:
    started = time.monotonic()

    def meta(s: ChoiceState, rid: str, want_lp: bool, prompt_ids: list[int]) -> GenerateMetaInfo:
        return GenerateMetaInfo(
            id=rid, prompt_tokens=s.prompt_tokens, completion_tokens=s.completion_tokens,
            cached_tokens=s.cached_tokens, finish_reason=s.reason.to_json() if s.reason else None,
            e2e_latency=round(time.monotonic() - started, 6),
            output_token_logprobs=list(zip(s.logprobs, s.token_ids, strict=False)) if want_lp else None,
            output_top_logprobs=[[(lp, t) for t, lp in row] for row in s.top_logprobs]
            if want_lp and body.top_logprobs_num else None,
            input_token_logprobs=format_input_token_logprobs(prompt_ids, body.logprob_start_len, s.input_logprobs)
            if body.logprob_start_len >= 0 else None)

    if body.stream:
        if len(grs) != 1:
            raise APIError(400, "streaming supports one prompt per request", param="text", code="unsupported")
        gr = grs[0]
        first, rest = await first_and_rest(request, tm.generate(gr))
        rid = gr.rid

        async def events() -> AsyncIterator[str]:
            states = [ChoiceState() for _ in range(len(gr.reqs))]
            async for c in chained(first, rest):
                s = states[c.index]
                s.add(c)
                yield sse(GenerateResponse(text=s.text, output_ids=s.token_ids, index=c.index,
                                           meta_info=meta(s, rid, body.return_logprob, gr.reqs[0].input_ids)))

        return sse_response(sse_stream(events(), rest))

    async def run_all() -> list[list[ChoiceState]]:
        return list(await asyncio.gather(*(collect(tm.generate(gr), len(gr.reqs)) for gr in grs)))

    groups = await until_disconnect(request, run_all())
    outs = [GenerateResponse(text=s.text, output_ids=s.token_ids, index=i,
                             meta_info=meta(s, gr.rid, body.return_logprob, gr.reqs[0].input_ids)).model_dump()
            for g, gr in zip(groups, grs, strict=True) for i, s in enumerate(g)]
    return JSONResponse(outs[0] if single and len(outs) == 1 else outs)
