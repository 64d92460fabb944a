"""TokenizerManager: the main process's side of the engine.

Its RequestBuilder tokenizes, validates and fans requests out; `generate()` sends the
`TokenizedGenerateReqInput`s to the scheduler process and hands each request's `BatchStrOut`
pieces back to the HTTP handler that waits on it (the n requests of one API request share one
queue). Leaving `generate()` early (client gone, error) aborts what is still running, so its KV
slots return to the pool. Errors are radixserve.errors; the server maps them to HTTP.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import zmq
import zmq.asyncio

from radixserve.cache_events.hub import CacheEventHub
from radixserve.errors import EngineError, InvalidRequestError, UnavailableError, refusal
from radixserve.managers.io_struct import (
    AbortReq,
    BatchStrOut,
    CacheEventsOut,
    CheckMemoryReq,
    CheckMemoryReqOutput,
    FinishReason,
    FlushCacheReq,
    FlushCacheReqOutput,
    GetLoadReq,
    GetLoadReqOutput,
)
from radixserve.managers.ipc import ENCODER, TOKENIZER_INPUT_DECODER, PortArgs
from radixserve.managers.request_builder import GenerateRequest, RequestBuilder
from radixserve.metrics import CURRENT_REQUEST, RequestRecord, TokenizerMetrics
from radixserve.server_args import ServerArgs
from radixserve.utils.step_log import StepLog

logger = logging.getLogger(__name__)

CONTROL_TIMEOUT_S = 30.0
# A prompt whose text is longer than context_length * this many characters cannot fit the context
# whatever the tokenizer (real tokens average 3-5 characters; long runs of whitespace or repeated
# characters make some tokens longer, hence the generous bound): refused before tokenizing.
MAX_CHARS_PER_TOKEN = 64

T = TypeVar("T")


class RequestTimeoutError(EngineError):
    """The request ran past --request-timeout; the server answers 504 (or an error event)."""

    code = "request_timeout"


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
    input_logprobs: list[float] = field(default_factory=list)  # the prompt's (logprob_start_len), once


@dataclass
class ReqState:
    index: int
    queue: asyncio.Queue[ChoiceChunk | EngineError]
    created: float = field(default_factory=time.monotonic)
    last_token_at: float | None = None
    finished: bool = False
    # The HTTP request's access-log record, taken from the context generate() runs in.
    record: RequestRecord | None = field(default_factory=lambda: CURRENT_REQUEST.get())


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
        self.step_log = StepLog.from_env("http")  # RADIXSERVE_STEP_LOG: output batches, for latency work
        self._probe_task: asyncio.Task[None] | None = None
        self.recv_sock = self.ctx.socket(zmq.PULL)
        self.recv_sock.setsockopt(zmq.RCVHWM, 0)
        self.recv_sock.bind(port_args.tokenizer_input)
        self.builder = RequestBuilder(tokenizer, self.model_name, self.context_len, self.vocab_size,
                                      info.get("sampling_defaults"),
                                      grammar_backend=getattr(server_args, "grammar_backend", "xgrammar"))
        self.states: dict[str, ReqState] = {}
        self.groups: dict[str, list[str]] = {}  # API request id -> its scheduler request ids
        self.metrics = TokenizerMetrics(self.model_name)
        # The RadixCache as block events for routers (docs/router.md, "Cache events").
        self.cache_events: CacheEventHub | None = None
        if not getattr(server_args, "disable_cache_events", False):
            self.cache_events = CacheEventHub(max_running=int(info.get("max_running_requests", 0)))
        self.draining = False
        self._control: dict[type, list[asyncio.Future[Any]]] = {
            FlushCacheReqOutput: [], GetLoadReqOutput: [], CheckMemoryReqOutput: []}
        self._loop_task: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.failed: UnavailableError | None = None  # set when a child process died
        self.request_timeout: float | None = getattr(server_args, "request_timeout", None)
        # Tokenizing and chat templating run here, off the event loop. One thread: a Hugging Face
        # fast tokenizer is not safe to call from several threads at once ("Already borrowed").
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start receiving outputs; call from inside the server's event loop."""
        if self._loop_task is None:
            self.loop = asyncio.get_running_loop()
            self._loop_task = self.loop.create_task(self._handle_loop())
            if self.step_log is not None:
                self._probe_task = self.loop.create_task(self.step_log.probe_event_loop())

    async def close(self) -> None:
        if self.cache_events is not None:
            self.cache_events.close()
        if self._loop_task is not None:
            self._loop_task.cancel()
        if self._probe_task is not None:
            self._probe_task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.ctx.destroy(linger=0)

    @property
    def max_prompt_chars(self) -> int:
        return self.context_len * MAX_CHARS_PER_TOKEN

    def check_prompt_chars(self, chars: int, param: str) -> None:
        """Refuse, cheaply and before tokenizing, a prompt text that cannot fit the context."""
        if chars > self.max_prompt_chars:
            raise InvalidRequestError(
                f"this model's maximum context length is {self.context_len} tokens; the prompt has {chars} "
                f"characters, far more than that many tokens can hold", param=param, code="context_length_exceeded")

    async def run_blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` (tokenizing, templating: CPU work) on the tokenizer thread, not the event loop."""
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def fail_all(self, error: UnavailableError) -> None:
        """End every request in flight with `error` and refuse new ones (a child process died).
        Call on the event loop (from another thread: `loop.call_soon_threadsafe`)."""
        self.failed = error
        for st in self.states.values():
            if not st.finished:
                st.finished = True  # nothing to abort: the scheduler is gone
                st.queue.put_nowait(UnavailableError(error.message, code=error.code))
        for waiters in self._control.values():
            while waiters:
                fut = waiters.pop(0)
                if not fut.done():
                    fut.set_exception(UnavailableError(error.message, code=error.code))

    @property
    def num_inflight(self) -> int:
        return len(self.states)

    # ---- generation --------------------------------------------------------------------------
    async def generate(self, req: GenerateRequest) -> AsyncGenerator[ChoiceChunk, None]:
        """Chunks of all n choices, interleaved, until every choice has finished."""
        if self.failed is not None:
            raise UnavailableError(self.failed.message, code=self.failed.code)
        if self.draining:
            raise UnavailableError("the server is shutting down", code="shutting_down")
        if req.rid in self.groups:
            raise InvalidRequestError(f"request id {req.rid!r} is already in use", param="rid")
        queue: asyncio.Queue[ChoiceChunk | EngineError] = asyncio.Queue()
        self.groups[req.rid] = [sub.rid for sub in req.reqs]
        for i, sub in enumerate(req.reqs):
            self.states[sub.rid] = ReqState(i, queue)
            self.send_to_scheduler.send(ENCODER.encode(sub), flags=zmq.NOBLOCK)
        left = len(req.reqs)
        deadline = None if self.request_timeout is None else time.monotonic() + self.request_timeout
        cause = "client_disconnected"  # why unfinished choices are aborted: GeneratorExit, CancelledError
        try:
            while left:
                chunk = await self._next_chunk(queue, deadline)
                if chunk.finish_reason is not None:
                    left -= 1
                    reason = chunk.finish_reason
                    if reason.error is not None and chunk.completion_tokens == 0:
                        raise refusal(reason.error, reason.message or "request refused")
                yield chunk
        except Exception as e:
            cause = "timeout" if isinstance(e, RequestTimeoutError) else "error"
            raise
        finally:
            for sub in req.reqs:
                st = self.states.pop(sub.rid, None)
                if st is not None and not st.finished:
                    self._send_abort(sub.rid)
                    self.metrics.abort(cause)
            self.groups.pop(req.rid, None)

    async def _next_chunk(self, queue: asyncio.Queue[ChoiceChunk | EngineError], deadline: float | None) -> ChoiceChunk:
        if deadline is None:
            item = await queue.get()
        else:
            try:
                item = await asyncio.wait_for(queue.get(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise RequestTimeoutError(f"the request took longer than the server's request timeout "
                                          f"({self.request_timeout:g} s) and was aborted") from None
        if isinstance(item, EngineError):
            raise item
        return item

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
        if self.failed is not None:
            raise UnavailableError(self.failed.message, code=self.failed.code)
        self._control[reply_type].append(fut)
        self.send_to_scheduler.send(ENCODER.encode(msg), flags=zmq.NOBLOCK)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), CONTROL_TIMEOUT_S)
        except TimeoutError as e:
            raise UnavailableError("the scheduler did not answer in time", code="scheduler_timeout") from e

    async def flush_cache(self) -> bool:
        out: FlushCacheReqOutput = await self._control_call(FlushCacheReq(), FlushCacheReqOutput)
        return out.success

    async def get_load(self) -> dict[str, float]:
        out: GetLoadReqOutput = await self._control_call(GetLoadReq(), GetLoadReqOutput)
        return out.load

    async def check_memory(self) -> CheckMemoryReqOutput:
        out: CheckMemoryReqOutput = await self._control_call(CheckMemoryReq(), CheckMemoryReqOutput)
        return out

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
                started = time.perf_counter()
                self._handle_batch(msg)
                if self.step_log is not None:
                    self.step_log.output_batch(len(msg.tokens.rids), (time.perf_counter() - started) * 1e3)
            elif isinstance(msg, CacheEventsOut):
                if self.cache_events is not None:
                    self.cache_events.publish(msg.events, msg.load, msg.ts)
            else:
                waiters = self._control[type(msg)]
                while waiters:
                    fut = waiters.pop(0)
                    if not fut.done():  # a timed-out caller left; the reply is the next caller's
                        fut.set_result(msg)
                        break

    def _handle_batch(self, batch: BatchStrOut) -> None:
        now, out = time.monotonic(), batch.tokens
        for i, rid in enumerate(out.rids):
            st = self.states.get(rid)
            if st is None:
                continue  # aborted by the client; the scheduler's last word on it
            ids = out.new_token_ids[i]
            reason = out.finished_reasons[i]
            chunk = ChoiceChunk(
                index=st.index, text=batch.new_texts[i], token_ids=ids, finish_reason=reason,
                prompt_tokens=out.prompt_tokens[i], completion_tokens=out.completion_tokens[i],
                cached_tokens=out.cached_tokens[i], logprobs=out.new_token_logprobs[i],
                top_logprobs=[[(int(t), float(lp)) for t, lp in row] for row in out.new_top_logprobs[i]],
                input_logprobs=out.input_token_logprobs[i] if out.input_token_logprobs else [])
            rec = st.record
            if ids:
                if st.last_token_at is None:
                    self.metrics.ttft.observe(now - st.created)
                    if rec is not None and rec.first_token_at is None:
                        rec.first_token_at = now
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
                if reason.type == "abort":  # POST /abort_request, or refused (queue_full, ...)
                    self.metrics.abort(reason.error or "abort_request")
                if rec is not None:
                    rec.completion_tokens += out.completion_tokens[i]
                    if st.index == 0:
                        rec.prompt_tokens += out.prompt_tokens[i]
                        rec.cached_tokens += out.cached_tokens[i]
            st.queue.put_nowait(chunk)
