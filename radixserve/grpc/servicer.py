"""The RadixServe service (radixserve.proto) over the server's TokenizerManager.

A Generate call is built exactly as POST /generate builds a request (the same pydantic body, the
same RequestBuilder, so the same validation and messages) and streams each TokenizerManager
chunk as one GenerateResponse: the new token ids of one choice, and their text on request.
Leaving the handler early (the client cancelled, its connection dropped, the deadline passed)
closes the TokenizerManager's generator, which aborts the request in the scheduler and frees its
KV slots, as a disconnect does on HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc.aio

from radixserve import __version__
from radixserve.grpc.errors import UNAUTHENTICATED, abort
from radixserve.managers.request_builder import GenerateRequest
from radixserve.managers.tokenizer_manager import ChoiceChunk, TokenizerManager
from radixserve.sampling.sampling_params import SamplingParams
from radixserve.server.errors import APIError
from radixserve.server.http_server import HEALTH_GENERATE_TIMEOUT_S, ServerState
from radixserve.server.protocol import GenerateRequestBody

Context = grpc.aio.ServicerContext[Any, Any]


def sampling_dict(params: Any) -> dict[str, Any]:
    """The SamplingParams message as /generate's `sampling_params` object: only the fields the
    client set (proto3 `optional` keeps presence), so unset ones take the server's defaults."""
    out: dict[str, Any] = {}
    for fd, value in params.ListFields():
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            out[fd.name] = dict(value)
        elif fd.is_repeated:
            out[fd.name] = list(value)
        else:
            out[fd.name] = value
    return out


def request_body(request: Any) -> GenerateRequestBody:
    """The GenerateRequest message as the JSON body POST /generate would take; pydantic's
    ValidationError (the HTTP server's 400) if it is not one."""
    body: dict[str, Any] = {"sampling_params": sampling_dict(request.sampling_params), "stream": True,
                            "return_logprob": request.return_logprob, "top_logprobs_num": request.top_logprobs_num}
    prompt = request.WhichOneof("prompt")
    if prompt == "text":
        body["text"] = request.text
    elif prompt == "input_ids":
        body["input_ids"] = list(request.input_ids.ids)
    if request.rid:
        body["rid"] = request.rid
    if request.priority:
        body["priority"] = request.priority
    return GenerateRequestBody.model_validate(body)


class RadixServeServicer:
    """Implements the RadixServe service; registered by name with the generated
    `add_RadixServeServicer_to_server`."""

    def __init__(self, pb2: Any, tm: TokenizerManager, state: ServerState, api_key: str | None) -> None:
        self.pb2 = pb2
        self.tm = tm
        self.state = state
        self.api_key = api_key

    # ---- helpers -----------------------------------------------------------------------------
    async def _authorize(self, context: Context) -> None:
        if self.api_key is None:
            return
        for key, value in context.invocation_metadata() or ():
            if key.lower() != "authorization":
                continue
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            # Constant-time comparison, as the HTTP server does.
            if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                return
        await abort(context, UNAUTHENTICATED)

    async def _build(self, request: Any) -> GenerateRequest:
        tm = self.tm
        body = request_body(request)
        if body.text is None and body.input_ids is None:
            raise APIError(400, "give exactly one of 'text' and 'input_ids'", param="text", code="invalid_value")
        if isinstance(body.text, str):
            tm.check_prompt_chars(len(body.text), "text")
            text: str | None = body.text
            ids = await tm.run_blocking(tm.builder.tokenize, body.text)
        else:
            text = None
            ids = [int(t) for t in body.input_ids or []]  # type: ignore[arg-type]  # a single prompt
        params = tm.builder.sampling_params(body.sampling_params)
        return await tm.run_blocking(lambda: tm.builder.build(
            ids, params, rid=body.rid, stream=True, return_logprob=body.return_logprob, priority=body.priority or 0,
            top_logprobs_num=body.top_logprobs_num, input_text=text,
            prompt_param="text" if text is not None else "input_ids"))

    def _response(self, rid: str, c: ChoiceChunk, request: Any) -> Any:
        pb2 = self.pb2
        out = pb2.GenerateResponse(rid=rid, index=c.index, token_ids=c.token_ids, prompt_tokens=c.prompt_tokens,
                                   completion_tokens=c.completion_tokens, cached_tokens=c.cached_tokens)
        if request.return_text:
            out.text = c.text
        if request.return_logprob:
            tops = c.top_logprobs or [[] for _ in c.token_ids]
            out.logprobs.extend(
                pb2.TokenLogprob(token_id=t, logprob=lp, top_logprobs=[
                    pb2.TopLogprob(token_id=tt, logprob=tlp) for tt, tlp in top])
                for t, lp, top in zip(c.token_ids, c.logprobs, tops, strict=False))
        reason = c.finish_reason
        if reason is not None:
            out.finish_reason.type = reason.type
            if isinstance(reason.matched, int):
                out.finish_reason.matched_token_id = reason.matched
            elif isinstance(reason.matched, str):
                out.finish_reason.matched_text = reason.matched
            if reason.message:
                out.finish_reason.message = reason.message
        return out

    # ---- RPCs --------------------------------------------------------------------------------
    async def Generate(self, request: Any, context: Context) -> AsyncIterator[Any]:
        await self._authorize(context)
        try:
            gr = await self._build(request)
            # aclosing: however the loop ends (error, or CancelledError when the client goes
            # away), the generator's `finally` aborts what is still running.
            async with contextlib.aclosing(self.tm.generate(gr)) as chunks:
                async for chunk in chunks:
                    yield self._response(gr.rid, chunk, request)
        except Exception as e:
            await abort(context, e)

    async def Abort(self, request: Any, context: Context) -> Any:
        await self._authorize(context)
        if not self.tm.abort_request(request.rid):
            await abort(context, APIError(404, f"no running request with rid {request.rid!r}", param="rid",
                                          code="not_found"))
        return self.pb2.AbortResponse(success=True, message=f"aborted {request.rid}")

    async def HealthCheck(self, request: Any, context: Context) -> Any:
        status = self.pb2.HealthCheckResponse
        if not self.state.healthy:
            return status(status=status.NOT_SERVING, message="a server process died")
        if self.tm.draining:
            return status(status=status.NOT_SERVING, message="the server is shutting down")
        if request.generate:  # as GET /health_generate, which needs the key
            await self._authorize(context)
            gr = self.tm.builder.build([0], SamplingParams(max_new_tokens=1, temperature=0.0))

            async def one_token() -> None:
                async with contextlib.aclosing(self.tm.generate(gr)) as chunks:
                    async for _ in chunks:
                        pass

            try:
                await asyncio.wait_for(one_token(), HEALTH_GENERATE_TIMEOUT_S)
            except TimeoutError:
                return status(status=status.NOT_SERVING, message="no token generated within 30 s")
            except Exception as e:
                await abort(context, e)
        return status(status=status.SERVING)

    async def GetModelInfo(self, request: Any, context: Context) -> Any:
        await self._authorize(context)
        info = self.tm.info
        return self.pb2.GetModelInfoResponse(
            model_name=self.tm.model_name, context_length=self.tm.context_len, vocab_size=self.tm.vocab_size,
            max_total_num_tokens=info.get("max_total_num_tokens", 0),
            max_running_requests=info.get("max_running_requests", 0), architecture=str(info.get("architecture", "")),
            device=str(info.get("device", "")), dtype=str(info.get("dtype", "")))

    async def GetServerInfo(self, request: Any, context: Context) -> Any:
        await self._authorize(context)
        try:
            load = await self.tm.get_load()
        except Exception as e:
            await abort(context, e)
        info = {**self.state.server_args, **self.tm.info, "load": load, "version": __version__,
                "uptime_s": round(time.time() - self.state.started_at, 1)}
        return self.pb2.GetServerInfoResponse(json=json.dumps(info))
