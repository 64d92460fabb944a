"""/v1/chat/completions and /v1/completions on top of the TokenizerManager."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from radixserve.managers.io_struct import FinishReason
from radixserve.managers.request_builder import GenerateRequest
from radixserve.managers.tokenizer_manager import ChoiceChunk, TokenizerManager
from radixserve.server import streaming
from radixserve.server.chat_output import ChatDeltas, OutputPlan, chat_message, chunk_body
from radixserve.server.errors import APIError
from radixserve.server.protocol import (
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    ChoiceLogprobs,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    PromptTokensDetails,
    SamplingFields,
    TokenLogprob,
    TopLogprob,
    UsageInfo,
)
from radixserve.server.structured_output import (
    constraint_field,
    grammar_errors,
    grammar_of,
    logit_bias_of,
    remapped,
)
from radixserve.server.tool_calls import KEEP_SPECIAL_TOKENS, chat_template_of, plan_tools, template_messages


def check_model(tm: TokenizerManager, model: str | None) -> None:
    if model and model != tm.model_name:
        raise APIError(404, f"the model {model!r} does not exist; this server serves {tm.model_name!r}",
                       param="model", code="model_not_found")


def sampling_dict(req: SamplingFields, max_new_tokens: int, vocab_size: int | None = None,
                  grammar: dict[str, str] | None = None) -> dict[str, Any]:
    """The engine's sampling parameters of a request; `grammar`: its constraint ({"json_schema": ...},
    {"regex": ...} or {"ebnf": ...}, from `grammar_of`)."""
    d: dict[str, Any] = {
        "max_new_tokens": max_new_tokens, "temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k,
        "min_p": req.min_p, "frequency_penalty": req.frequency_penalty, "presence_penalty": req.presence_penalty,
        "repetition_penalty": req.repetition_penalty, "stop": req.stop, "stop_token_ids": req.stop_token_ids,
        "ignore_eos": req.ignore_eos, "min_new_tokens": req.min_tokens,
        "skip_special_tokens": req.skip_special_tokens, "seed": req.seed, "n": req.n,
        "logit_bias": logit_bias_of(req.logit_bias, vocab_size), **(grammar or {}),
    }
    return {k: v for k, v in d.items() if v is not None}


def finish_reason(reason: FinishReason | None) -> str | None:
    return None if reason is None else reason.type


def make_usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> UsageInfo:
    return UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     total_tokens=prompt_tokens + completion_tokens,
                     prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens))


@dataclass
class ChoiceState:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    input_logprobs: list[float] = field(default_factory=list)  # the prompt's, with logprob_start_len
    reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def add(self, c: ChoiceChunk) -> None:
        self.text += c.text
        self.token_ids += c.token_ids
        self.logprobs += c.logprobs
        self.top_logprobs += c.top_logprobs
        self.input_logprobs += c.input_logprobs
        self.reason = c.finish_reason or self.reason
        self.prompt_tokens, self.completion_tokens, self.cached_tokens = (
            c.prompt_tokens, c.completion_tokens, c.cached_tokens)


async def collect(gen: AsyncGenerator[ChoiceChunk, None], n: int) -> list[ChoiceState]:
    states = [ChoiceState() for _ in range(n)]
    async for c in gen:
        states[c.index].add(c)
    return states


def usage_of(groups: list[list[ChoiceState]]) -> UsageInfo:
    """Each prompt counts once; its cached tokens are those of its first choice."""
    return make_usage(sum(g[0].prompt_tokens for g in groups),
                      sum(s.completion_tokens for g in groups for s in g),
                      sum(g[0].cached_tokens for g in groups))


class TokenText:
    """Token id -> its text, for logprobs."""

    def __init__(self, tm: TokenizerManager) -> None:
        self.tokenizer = tm.tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, tid: int) -> str:
        s = self.cache.get(tid)
        if s is None:
            s = self.cache[tid] = self.tokenizer.decode([tid])
        return s


def chat_logprobs(tt: TokenText, ids: list[int], lps: list[float], tops: list[list[tuple[int, float]]],
                  want_top: int) -> ChoiceLogprobs:
    content = []
    for k, (tid, lp) in enumerate(zip(ids, lps, strict=False)):
        s = tt(tid)
        top = [TopLogprob(token=tt(t), logprob=v, bytes=list(tt(t).encode())) for t, v in tops[k][:want_top]] \
            if want_top and k < len(tops) else []
        content.append(TokenLogprob(token=s, logprob=lp, bytes=list(s.encode()), top_logprobs=top))
    return ChoiceLogprobs(content=content)


def completion_logprobs(tt: TokenText, ids: list[int], lps: list[float], tops: list[list[tuple[int, float]]],
                        want_top: int, offset: int) -> CompletionLogprobs:
    out = CompletionLogprobs()
    for k, (tid, lp) in enumerate(zip(ids, lps, strict=False)):
        s = tt(tid)
        out.tokens.append(s)
        out.token_logprobs.append(lp)
        out.top_logprobs.append({tt(t): v for t, v in tops[k][:want_top]} if want_top and k < len(tops) else None)
        out.text_offset.append(offset)
        offset += len(s)
    return out


# ---- chat ----------------------------------------------------------------------------------
@dataclass
class ChatPlan:
    gr: GenerateRequest
    output: OutputPlan
    grammar_source: str | None  # the request field the output constraint came from


def chat_request(tm: TokenizerManager, req: ChatCompletionRequest) -> ChatPlan:
    check_model(tm, req.model)
    if req.top_logprobs and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value")
    tools = plan_tools(tm, req)
    grammar, source = grammar_of(req, tools.schema)
    template = chat_template_of(tm)
    messages = template_messages(req, tools, template)
    tm.check_prompt_chars(sum(len(m["content"]) for m in messages), "messages")
    kwargs = dict(req.chat_template_kwargs or {})
    if tools.tools is not None:
        kwargs["tools"] = tools.tools
    _, ids = tm.builder.apply_chat_template(messages, **kwargs)
    explicit = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    max_new = explicit if explicit is not None else max(1, tm.context_len - len(ids))
    d = sampling_dict(req, max_new, tm.vocab_size, grammar)
    if tools.mode == "parser" and tools.parser in KEEP_SPECIAL_TOKENS:
        d["skip_special_tokens"] = False  # the parser needs its markers (special tokens) in the text
    with grammar_errors(source):
        params = tm.builder.sampling_params(d)
        gr = tm.builder.build(ids, params, rid=req.rid, stream=req.stream, return_logprob=req.logprobs,
                              top_logprobs_num=req.top_logprobs or 0, prompt_param="messages",
                              priority=req.priority or 0,
                              max_tokens_param=None if explicit is None else "max_tokens")
    # A constrained output is all content (the constraint starts at the first token): no reasoning split.
    reasoning = getattr(tm.server_args, "reasoning_parser", None) if not grammar else None
    return ChatPlan(gr, OutputPlan(reasoning_parser=reasoning, tools=tools), source)


async def create_chat_completion(tm: TokenizerManager, req: ChatCompletionRequest, request: Request) -> Response:
    plan = await tm.run_blocking(chat_request, tm, req)  # templating and tokenizing: off the event loop
    gen = remapped(tm.generate(plan.gr), plan.grammar_source)
    if req.stream:
        return await _stream_chat(tm, req, plan, gen, request)
    states = await streaming.until_disconnect(request, collect(gen, len(plan.gr.reqs)))
    tt = TokenText(tm)
    choices = []
    for i, s in enumerate(states):
        message, reason = chat_message(s.text, finish_reason(s.reason), plan.output)
        choices.append(ChatCompletionChoice(
            index=i, message=message, finish_reason=reason, matched_stop=s.reason.matched if s.reason else None,
            logprobs=chat_logprobs(tt, s.token_ids, s.logprobs, s.top_logprobs, req.top_logprobs or 0)
            if req.logprobs else None))
    resp = ChatCompletionResponse(model=tm.model_name, choices=choices, usage=usage_of([states]))
    return JSONResponse(resp.model_dump())


async def _stream_chat(tm: TokenizerManager, req: ChatCompletionRequest, plan: ChatPlan,
                       gen: AsyncGenerator[ChoiceChunk, None], request: Request) -> Response:
    first, rest = await streaming.first_and_rest(request, gen)
    rid, created, n = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), req.n
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    continuous = include_usage and bool(req.stream_options and req.stream_options.continuous_usage_stats)
    tt = TokenText(tm)
    top = req.top_logprobs or 0

    def chunk(choices: list[ChatCompletionStreamChoice], usage: UsageInfo | None = None) -> str:
        return streaming.sse(chunk_body(ChatCompletionChunk(id=rid, created=created, model=tm.model_name,
                                                            choices=choices, usage=usage)))

    async def events() -> AsyncIterator[str]:
        states = [ChoiceState() for _ in range(n)]
        deltas = [ChatDeltas(plan.output) for _ in range(n)]
        for i in range(n):
            yield chunk([ChatCompletionStreamChoice(index=i, delta=DeltaMessage(role="assistant", content=""))])
        async for c in streaming.chained(first, rest):
            states[c.index].add(c)
            d = deltas[c.index]
            out = d.feed(c.text) if c.text else []
            if c.finish_reason is not None:
                out += d.finish()
            logprobs = chat_logprobs(tt, c.token_ids, c.logprobs, c.top_logprobs, top) \
                if req.logprobs and c.token_ids else None
            if logprobs is not None and not out:
                out = [DeltaMessage()]
            so_far = usage_of([states]) if continuous else None
            for k, delta in enumerate(out):
                yield chunk([ChatCompletionStreamChoice(index=c.index, delta=delta,
                                                        logprobs=logprobs if k == 0 else None)], so_far)
            if c.finish_reason is not None:
                yield chunk([ChatCompletionStreamChoice(
                    index=c.index, delta=DeltaMessage(), finish_reason=d.finish_reason(finish_reason(c.finish_reason)),
                    matched_stop=c.finish_reason.matched)], so_far)
        if include_usage:
            yield chunk([], usage_of([states]))

    return streaming.sse_response(streaming.sse_stream(events(), rest))


# ---- completions ---------------------------------------------------------------------------
def completion_requests(tm: TokenizerManager, req: CompletionRequest) -> list[tuple[GenerateRequest, str]]:
    check_model(tm, req.model)
    if req.suffix:
        raise APIError(400, "suffix is not supported", param="suffix", code="unsupported")
    if req.best_of is not None and req.best_of != req.n:
        raise APIError(400, "best_of must equal n (or be left out)", param="best_of", code="unsupported")
    if req.echo and req.logprobs is not None:
        raise APIError(400, "echo with logprobs is not supported (prompt logprobs are not computed)",
                       param="echo", code="unsupported")
    p = req.prompt
    prompts: list[tuple[list[int], str]]
    tokenize = tm.builder.tokenize
    if isinstance(p, str):
        prompts = [(tokenize(p), p)]
    elif p and all(isinstance(x, int) for x in p):
        ids = [int(x) for x in p]  # type: ignore[arg-type]
        prompts = [(ids, tm.tokenizer.decode(ids))]
    elif p and all(isinstance(x, str) for x in p):
        prompts = [(tokenize(str(x)), str(x)) for x in p]
    elif p and all(isinstance(x, list) for x in p):
        prompts = [([int(t) for t in x], tm.tokenizer.decode(x)) for x in p]  # type: ignore[union-attr]
    else:
        raise APIError(400, "prompt must be a non-empty string, list of strings, token ids or list of token-id lists",
                       param="prompt", code="invalid_value")
    grammar, source = grammar_of(req)
    with grammar_errors(source):
        params = tm.builder.sampling_params(sampling_dict(req, req.max_tokens if req.max_tokens is not None else 16,
                                                          tm.vocab_size, grammar))
        return [(tm.builder.build(ids, params, rid=req.rid if len(prompts) == 1 else None, stream=req.stream,
                                  return_logprob=req.logprobs is not None, top_logprobs_num=req.logprobs or 0,
                                  input_text=text, max_tokens_param=None if req.max_tokens is None else "max_tokens",
                                  priority=req.priority or 0),
                 text) for ids, text in prompts]


def _check_prompt_chars(tm: TokenizerManager, prompt: Any) -> None:
    """Refuse a prompt text that cannot fit the context before any tokenizing (cheap)."""
    texts = [prompt] if isinstance(prompt, str) else [p for p in prompt if isinstance(p, str)] \
        if isinstance(prompt, list) else []
    for t in texts:
        tm.check_prompt_chars(len(t), "prompt")


async def create_completion(tm: TokenizerManager, req: CompletionRequest, request: Request) -> Response:
    _check_prompt_chars(tm, req.prompt)
    grs = await tm.run_blocking(completion_requests, tm, req)  # tokenizing: off the event loop
    if req.stream:
        if len(grs) != 1:
            raise APIError(400, "streaming supports one prompt per request", param="prompt", code="unsupported")
        return await _stream_completion(tm, req, grs[0][0], grs[0][1], request)

    async def run_all() -> list[list[ChoiceState]]:
        return list(await asyncio.gather(*(collect(remapped(tm.generate(gr), constraint_field(req)), len(gr.reqs))
                                           for gr, _ in grs)))

    groups = await streaming.until_disconnect(request, run_all())
    tt = TokenText(tm)
    choices: list[CompletionChoice] = []
    for g, (_, prompt_text) in zip(groups, grs, strict=True):
        for s in g:
            prefix = prompt_text if req.echo else ""
            choices.append(CompletionChoice(
                index=len(choices), text=prefix + s.text, finish_reason=finish_reason(s.reason),
                matched_stop=s.reason.matched if s.reason else None,
                logprobs=completion_logprobs(tt, s.token_ids, s.logprobs, s.top_logprobs, req.logprobs or 0, 0)
                if req.logprobs is not None else None))
    return JSONResponse(CompletionResponse(model=tm.model_name, choices=choices, usage=usage_of(groups)).model_dump())


async def _stream_completion(tm: TokenizerManager, req: CompletionRequest, gr: GenerateRequest, prompt_text: str,
                             request: Request) -> Response:
    first, rest = await streaming.first_and_rest(request, remapped(tm.generate(gr), constraint_field(req)))
    n = len(gr.reqs)
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    continuous = include_usage and bool(req.stream_options and req.stream_options.continuous_usage_stats)
    tt = TokenText(tm)

    def chunk(choices: list[CompletionChoice], usage: UsageInfo | None = None) -> str:
        return streaming.sse(CompletionChunk(id=rid, created=created, model=tm.model_name, choices=choices, usage=usage))

    async def events() -> AsyncIterator[str]:
        states = [ChoiceState() for _ in range(n)]
        offsets = [0] * n
        if req.echo:
            for i in range(n):
                yield chunk([CompletionChoice(index=i, text=prompt_text)])
        async for c in streaming.chained(first, rest):
            states[c.index].add(c)
            if c.text or c.finish_reason is not None or (req.logprobs is not None and c.token_ids):
                lp = None
                if req.logprobs is not None:
                    lp = completion_logprobs(tt, c.token_ids, c.logprobs, c.top_logprobs, req.logprobs,
                                             offsets[c.index])
                    offsets[c.index] += sum(len(t) for t in lp.tokens)
                yield chunk([CompletionChoice(index=c.index, text=c.text, finish_reason=finish_reason(
                    c.finish_reason), matched_stop=c.finish_reason.matched if c.finish_reason else None,
                    logprobs=lp)], usage_of([states]) if continuous else None)
        if include_usage:
            yield chunk([], usage_of([states]))

    return streaming.sse_response(streaming.sse_stream(events(), rest))
