"""TokenizerManager: the main process's side of the engine.

Tokenizes (and applies the chat template), validates, assigns request ids, sends
`TokenizedGenerateReqInput` to the scheduler process and hands each request's `BatchStrOut`
pieces back to the HTTP handler that waits on it. A request with `n > 1` becomes n scheduler
requests whose outputs share one queue. Leaving `generate()` early (client gone, error)
aborts what is still running, so its KV slots return to the pool.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio

from radixserve.managers.io_struct import (
    AbortReq,
    BatchStrOut,
    FinishReason,
    FlushCacheReq,
    FlushCacheReqOutput,
    GetLoadReq,
    GetLoadReqOutput,
    TokenizedGenerateReqInput,
)
from radixserve.managers.ipc import ENCODER, TOKENIZER_INPUT_DECODER, PortArgs
from radixserve.managers.schedule_batch import check_prompt
from radixserve.sampling.sampling_params import SamplingParams, SamplingParamsError
from radixserve.server.errors import APIError
from radixserve.server.metrics import TokenizerMetrics
from radixserve.server_args import ServerArgs

logger = logging.getLogger(__name__)

CONTROL_TIMEOUT_S = 30.0


@dataclass
class GenerateRequest:
    """One API request after parsing: a prompt as ids, and how to sample it."""

    input_ids: list[int]
    sampling_params: dict[str, Any]
    stream: bool = False
    return_logprob: bool = False
    top_logprobs_num: int = 0
    rid: str | None = None
    input_text: str | None = None


@dataclass
class ChoiceChunk:
    """New output of one choice (index within n) since its previous chunk."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: FinishReason | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)


@dataclass
class ReqState:
    index: int
    queue: asyncio.Queue[ChoiceChunk]
    created: float = field(default_factory=time.monotonic)
    last_token_at: float | None = None
    finished: bool = False


class TokenizerManager:
    def __init__(self, server_args: ServerArgs, port_args: PortArgs, tokenizer: Any, info: dict[str, Any]) -> None:
        self.server_args = server_args
        self.tokenizer = tokenizer
        self.info = info
        self.model_name: str = info["model_name"]
        self.context_len: int = info["context_length"]
        self.vocab_size: int = info["vocab_size"]
        self.ctx = zmq.asyncio.Context()
        self.send_to_scheduler = self.ctx.socket(zmq.PUSH)
        self.send_to_scheduler.setsockopt(zmq.LINGER, 0)
        self.send_to_scheduler.setsockopt(zmq.SNDHWM, 0)  # see ipc.connect_push
        self.send_to_scheduler.connect(port_args.scheduler_input)
        self.recv_sock = self.ctx.socket(zmq.PULL)
        self.recv_sock.setsockopt(zmq.RCVHWM, 0)
        self.recv_sock.bind(port_args.tokenizer_input)
        self.states: dict[str, ReqState] = {}
        self.groups: dict[str, list[str]] = {}  # API request id -> its scheduler request ids
        self.metrics = TokenizerMetrics(self.model_name)
        self.draining = False
        self._control: dict[type, list[asyncio.Future[Any]]] = {FlushCacheReqOutput: [], GetLoadReqOutput: []}
        self._loop_task: asyncio.Task[None] | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start receiving outputs; call from inside the server's event loop."""
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._handle_loop())

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        self.ctx.destroy(linger=0)

    @property
    def num_inflight(self) -> int:
        return len(self.states)

    # ---- inputs ------------------------------------------------------------------------------
    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens).input_ids)

    def apply_chat_template(self, messages: list[dict[str, Any]], **template_kwargs: Any) -> tuple[str, list[int]]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise APIError(400, f"model {self.model_name!r} has no chat template; use /v1/completions",
                           param="messages")
        try:
            text: str = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                           **template_kwargs)
        except Exception as e:  # jinja errors from the template ("roles must alternate", ...)
            raise APIError(400, f"the chat template rejected the messages: {e}", param="messages") from e
        return text, self.tokenize(text, add_special_tokens=False)

    def validate(self, req: GenerateRequest, explicit_max_tokens: bool = False) -> SamplingParams:
        """Refuse what the scheduler would refuse, before it is queued, with the parameter named."""
        if self.draining:
            raise APIError(503, "the server is shutting down", code="shutting_down")
        try:
            params = SamplingParams.from_dict(req.sampling_params)
        except SamplingParamsError as e:
            raise APIError(400, str(e), param=e.field_name, code="invalid_value") from e
        if req.top_logprobs_num < 0 or req.top_logprobs_num > 20:
            raise APIError(400, "top_logprobs must be in [0, 20]", param="top_logprobs", code="invalid_value")
        error = check_prompt(req.input_ids, self.context_len, self.vocab_size)
        if error is not None:
            raise APIError(400, f"{error} (this model's maximum context length is {self.context_len} tokens)",
                           param="messages" if req.input_text is None else "prompt", code="context_length_exceeded")
        if explicit_max_tokens and len(req.input_ids) + params.max_new_tokens > self.context_len:
            raise APIError(400, f"this model's maximum context length is {self.context_len} tokens; the request "
                           f"asks for {len(req.input_ids) + params.max_new_tokens} ({len(req.input_ids)} in the "
                           f"prompt, {params.max_new_tokens} to generate)", param="max_tokens",
                           code="context_length_exceeded")
        return params

    # ---- generation --------------------------------------------------------------------------
    async def generate(self, req: GenerateRequest, params: SamplingParams) -> AsyncGenerator[ChoiceChunk, None]:
        """Chunks of all n choices, interleaved, until every choice has finished."""
        rid = req.rid or uuid.uuid4().hex
        if rid in self.groups:
            raise APIError(400, f"request id {rid!r} is already in use", param="rid")
        queue: asyncio.Queue[ChoiceChunk] = asyncio.Queue()
        sub_rids = [rid] if params.n == 1 else [f"{rid}-{i}" for i in range(params.n)]
        base = {k: v for k, v in req.sampling_params.items() if k != "n" and v is not None}
        self.groups[rid] = sub_rids
        for i, sub in enumerate(sub_rids):
            sp = dict(base)
            if params.seed is not None:
                sp["seed"] = params.seed + i  # n seeded samples differ from each other, reproducibly
            self.states[sub] = ReqState(i, queue)
            self.send_to_scheduler.send(ENCODER.encode(TokenizedGenerateReqInput(
                rid=sub, input_ids=req.input_ids, sampling_params=sp, input_text=req.input_text,
                stream=req.stream, return_logprob=req.return_logprob, top_logprobs_num=req.top_logprobs_num)),
                flags=zmq.NOBLOCK)
        left = len(sub_rids)
        try:
            while left:
                chunk = await queue.get()
                if chunk.finish_reason is not None:
                    left -= 1
                    reason = chunk.finish_reason
                    if reason.type == "abort" and reason.status_code is not None and chunk.completion_tokens == 0:
                        raise APIError(reason.status_code, reason.message or "request refused",
                                       code="queue_full" if reason.status_code == 429 else None)
                yield chunk
        finally:
            for sub in sub_rids:
                st = self.states.pop(sub, None)
                if st is not None and not st.finished:
                    self._send_abort(sub)
            self.groups.pop(rid, None)

    def abort_request(self, rid: str) -> bool:
        """Abort an API request (all its choices) or one scheduler request id; False if unknown."""
        subs = self.groups.get(rid) or ([rid] if rid in self.states else [])
        for sub in subs:
            self._send_abort(sub)
        return bool(subs)

    def _send_abort(self, rid: str) -> None:
        self.send_to_scheduler.send(ENCODER.encode(AbortReq(rid)), flags=zmq.NOBLOCK)

    # ---- control -----------------------------------------------------------------------------
    async def _control_call(self, msg: object, reply_type: type) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._control[reply_type].append(fut)
        self.send_to_scheduler.send(ENCODER.encode(msg), flags=zmq.NOBLOCK)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), CONTROL_TIMEOUT_S)
        except TimeoutError as e:
            raise APIError(503, "the scheduler did not answer in time") from e

    async def flush_cache(self) -> bool:
        out: FlushCacheReqOutput = await self._control_call(FlushCacheReq(), FlushCacheReqOutput)
        return out.success

    async def get_load(self) -> dict[str, float]:
        out: GetLoadReqOutput = await self._control_call(GetLoadReq(), GetLoadReqOutput)
        return out.load

    # ---- outputs -----------------------------------------------------------------------------
    async def _handle_loop(self) -> None:
        while True:
            data = await self.recv_sock.recv()
            try:
                msg = TOKENIZER_INPUT_DECODER.decode(data)
            except Exception:  # never let one bad message stop every request's output
                logger.exception("undecodable message from the scheduler or detokenizer")
                continue
            if isinstance(msg, BatchStrOut):
                self._handle_batch(msg)
            else:
                waiters = self._control[type(msg)]
                while waiters:
                    fut = waiters.pop(0)
                    if not fut.done():  # a timed-out caller left; the reply is the next caller's
                        fut.set_result(msg)
                        break

    def _handle_batch(self, out: BatchStrOut) -> None:
        now = time.monotonic()
        for i, rid in enumerate(out.rids):
            st = self.states.get(rid)
            if st is None:
                continue  # aborted by the client; the scheduler's last word on it
            ids = out.new_token_ids[i]
            reason = out.finished_reasons[i]
            chunk = ChoiceChunk(
                index=st.index, text=out.new_texts[i], token_ids=ids, finish_reason=reason,
                prompt_tokens=out.prompt_tokens[i], completion_tokens=out.completion_tokens[i],
                cached_tokens=out.cached_tokens[i],
                logprobs=out.new_token_logprobs[i] if out.new_token_logprobs else [],
                top_logprobs=[[(int(t), float(lp)) for t, lp in row] for row in out.new_top_logprobs[i]]
                if out.new_top_logprobs else [])
            if ids:
                if st.last_token_at is None:
                    self.metrics.ttft.observe(now - st.created)
                    gaps = len(ids) - 1
                else:
                    gaps = len(ids)
                if gaps and st.last_token_at is not None:
                    per = (now - st.last_token_at) / gaps
                    for _ in range(gaps):
                        self.metrics.itl.observe(per)
                st.last_token_at = now
            if reason is not None:
                st.finished = True
                self.metrics.finished(reason.type, out.prompt_tokens[i], out.completion_tokens[i],
                                      out.cached_tokens[i], now - st.created)
            st.queue.put_nowait(chunk)
