"""The offline Engine: SGLang-shaped in-process API over the same Scheduler the server runs."""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NotRequired, TypedDict, overload

import torch
from tqdm.auto import tqdm

from radixserve.entrypoints.drivers import InProcessDriver, ProcessDriver, SchedulerDriver
from radixserve.errors import InvalidRequestError, refusal
from radixserve.managers.detokenizer_manager import DetokenizerManager
from radixserve.managers.io_struct import (
    BatchStrOut,
    BatchTokenIDOut,
    FinishReason,
    TokenizedGenerateReqInput,
)
from radixserve.managers.request_builder import RequestBuilder
from radixserve.managers.scheduler_process import build_scheduler
from radixserve.model_loader.source import resolve_model_source
from radixserve.model_loader.tokenizer import load_tokenizer
from radixserve.model_store.local import materialize_model_path
from radixserve.sampling.input_logprobs import format_input_token_logprobs
from radixserve.sampling.sampling_params import SamplingParams
from radixserve.server_args import ServerArgs

logger = logging.getLogger(__name__)

PROGRESS_BAR_MIN_REQUESTS = 32

Params = dict[str, Any] | list[dict[str, Any]] | None
Messages = list[dict[str, Any]]


class MetaInfo(TypedDict):
    id: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    finish_reason: dict[str, Any]
    output_token_logprobs: NotRequired[list[tuple[float, int]]]  # (logprob, token id)
    output_top_logprobs: NotRequired[list[list[tuple[float, int]]]]
    # With logprob_start_len >= 0: (logprob, token id) of prompt positions from there (position 0: None).
    input_token_logprobs: NotRequired[list[tuple[float | None, int]]]


class GenerateOutput(TypedDict):
    text: str
    output_ids: list[int]
    meta_info: MetaInfo


@dataclass
class _Pending:
    text: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    input_logprobs: list[float] = field(default_factory=list)
    final: BatchTokenIDOut | None = None  # the output that finished it
    index: int = 0  # its row in `final`


class Engine:
    """`Engine(model_path=None, **server_args)`; `.generate(...)`, `.chat(...)`, `.shutdown()`.

    With one rank the Scheduler runs in this process; with more (`tp_size` x `pp_size`) the
    scheduler processes of `radixserve serve` are started and driven over the same ZMQ messages.
    Requests are built by the server's RequestBuilder and outputs turned into text by its
    DetokenizerManager, in this process.
    """

    def __init__(self, model_path: str | None = None, tp_size: int | None = None, pp_size: int | None = None,
                 **kwargs: Any) -> None:
        if tp_size is not None:
            kwargs["tensor_parallel_size"] = tp_size
        if pp_size is not None:
            kwargs["pipeline_parallel_size"] = pp_size
        # hf:// and s3:// are downloaded into the local model cache first (model_store/local.py).
        model_path, name = materialize_model_path(model_path)
        if name and not kwargs.get("served_model_name"):
            kwargs["served_model_name"] = name
        self.server_args = ServerArgs(model_path=model_path, **kwargs)
        source = resolve_model_source(
            self.server_args.model_path, self.server_args.load_format, self.server_args.tokenizer_path)
        self.tokenizer = load_tokenizer(source.tokenizer_source)
        self.model_name = self.server_args.served_model_name or source.name
        self._closed = False
        self.driver: SchedulerDriver
        if self.server_args.tensor_parallel_size * self.server_args.pipeline_parallel_size == 1:
            self.scheduler = build_scheduler(self.server_args, source, self.tokenizer)
            self.model_runner = self.scheduler.model_runner
            self.driver = InProcessDriver(self.scheduler)
            context_len, vocab_size = self.scheduler.context_len, self.scheduler.vocab_size
        else:
            remote = ProcessDriver(self.server_args)
            self.driver = remote
            context_len, vocab_size = remote.info["context_length"], remote.info["vocab_size"]
        defaults = source.generation_defaults if self.server_args.sampling_defaults == "model" else {}
        self.builder = RequestBuilder(self.tokenizer, self.model_name, context_len, vocab_size, defaults,
                                      grammar_backend=self.server_args.grammar_backend)
        self.detokenizer = DetokenizerManager(self.tokenizer)

    # ---- API ---------------------------------------------------------------------------------
    @overload
    def generate(self, prompt: str, sampling_params: dict[str, Any] | None = None, *, return_logprob: bool = ...,
                 top_logprobs_num: int = ..., show_progress: bool | None = ...,
                 logprob_start_len: int = ...) -> GenerateOutput: ...
    @overload
    def generate(self, prompt: list[str], sampling_params: Params = None, *, return_logprob: bool = ...,
                 top_logprobs_num: int = ..., show_progress: bool | None = ...,
                 logprob_start_len: int = ...) -> list[GenerateOutput]: ...
    @overload
    def generate(self, prompt: None = None, sampling_params: dict[str, Any] | None = None, *, input_ids: list[int],
                 return_logprob: bool = ..., top_logprobs_num: int = ...,
                 show_progress: bool | None = ..., logprob_start_len: int = ...) -> GenerateOutput: ...
    @overload
    def generate(self, prompt: None = None, sampling_params: Params = None, *, input_ids: list[list[int]],
                 return_logprob: bool = ..., top_logprobs_num: int = ...,
                 show_progress: bool | None = ..., logprob_start_len: int = ...) -> list[GenerateOutput]: ...

    def generate(self, prompt: str | list[str] | None = None, sampling_params: Params = None,
                 input_ids: list[int] | list[list[int]] | None = None, return_logprob: bool = False,
                 top_logprobs_num: int = 0, show_progress: bool | None = None,
                 logprob_start_len: int = -1) -> GenerateOutput | list[GenerateOutput]:
        """One prompt (a string or a list of ids) gives one output; a list of prompts gives a list
        with n outputs per prompt, in order. `logprob_start_len` >= 0 adds the prompt tokens'
        logprobs from that position on (`meta_info.input_token_logprobs`; SGLang's parameter)."""
        if self._closed:
            raise RuntimeError("the engine is shut down")
        single = isinstance(prompt, str) or (bool(input_ids) and isinstance(input_ids[0], int))  # type: ignore[index]
        prompts = self._prompts(prompt, input_ids)
        params = self._params(sampling_params, len(prompts))
        if single and params[0].n > 1:
            raise InvalidRequestError("n > 1 gives several outputs: pass the prompt in a list", param="n")
        reqs: list[TokenizedGenerateReqInput] = []
        for i, (ids, p) in enumerate(zip(prompts, params, strict=True)):
            try:
                reqs += self.builder.build(ids, p, return_logprob=return_logprob, top_logprobs_num=top_logprobs_num,
                                           logprob_start_len=logprob_start_len).reqs
            except InvalidRequestError as e:
                raise InvalidRequestError(f"invalid value for {e.param!r} #{i}: {e}", e.param, e.code) from e
        pending = self._run(reqs, show_progress)
        outs = [self._format(req, pending[req.rid]) for req in reqs]
        return outs[0] if single else outs

    @overload
    def chat(self, messages: Messages, sampling_params: dict[str, Any] | None = None,
             **kwargs: Any) -> GenerateOutput: ...
    @overload
    def chat(self, messages: list[Messages], sampling_params: Params = None,
             **kwargs: Any) -> list[GenerateOutput]: ...

    def chat(self, messages: Messages | list[Messages], sampling_params: Params = None,
             **kwargs: Any) -> GenerateOutput | list[GenerateOutput]:
        """OpenAI-style messages (or a list of conversations) through the model's chat template."""
        if messages and isinstance(messages[0], list):
            ids = [self.apply_chat_template(c) for c in messages]
            return self.generate(input_ids=ids, sampling_params=sampling_params, **kwargs)
        one = self.apply_chat_template(messages)  # type: ignore[arg-type]
        return self.generate(input_ids=one, sampling_params=sampling_params, **kwargs)  # type: ignore[arg-type]

    def apply_chat_template(self, messages: Messages) -> list[int]:
        return self.builder.apply_chat_template(messages)[1]

    def shutdown(self) -> None:
        """Stop the scheduler and give its memory back: in this process, the model, the KV pools
        and the CUDA graphs are dropped and the allocator's cache emptied, so another Engine can
        start here (SGLang's Engine behaves the same)."""
        if self._closed:
            return
        self._closed = True
        self.driver.close()
        if isinstance(self.driver, InProcessDriver):
            device = self.model_runner.device
            if self.scheduler.grammar is not None:
                self.scheduler.grammar.shutdown()  # its compile thread
            # The scheduler owns the runner, the pools and the graphs; nothing else refers to them.
            for name in ("scheduler", "model_runner", "driver"):
                self.__dict__.pop(name, None)
            gc.collect()  # the runner and its CUDA graph runner refer to each other
            if device.type == "cuda":
                torch.cuda.empty_cache()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown()

    # ---- internals ---------------------------------------------------------------------------
    def _prompts(self, prompt: str | list[str] | None, input_ids: list[int] | list[list[int]] | None) -> list[list[int]]:
        if (prompt is None) == (input_ids is None):
            raise InvalidRequestError("give exactly one of 'prompt' and 'input_ids'", param="prompt")
        if prompt is not None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            if not all(isinstance(p, str) for p in prompts):
                raise InvalidRequestError("invalid value for 'prompt': must be a string or a list of strings",
                                          param="prompt")
            return [self.builder.tokenize(p) if p else [] for p in prompts]
        assert input_ids is not None
        rows = [input_ids] if input_ids and isinstance(input_ids[0], int) else input_ids
        return [[int(t) for t in row] for row in rows]  # type: ignore[union-attr]

    def _params(self, sampling_params: Params, n: int) -> list[SamplingParams]:
        if isinstance(sampling_params, list):
            if len(sampling_params) != n:
                raise InvalidRequestError(f"invalid value for 'sampling_params': {len(sampling_params)} entries "
                                          f"for {n} prompts", param="sampling_params")
            return [self.builder.sampling_params(p) for p in sampling_params]
        return [self.builder.sampling_params(sampling_params) for _ in range(n)]

    def _run(self, reqs: Sequence[TokenizedGenerateReqInput], show_progress: bool | None) -> dict[str, _Pending]:
        pending = {r.rid: _Pending() for r in reqs}
        self.driver.submit(list(reqs))
        bar = tqdm(total=len(reqs), desc="Generating", unit="req", leave=False,
                   disable=not (show_progress if show_progress is not None else len(reqs) >= PROGRESS_BAR_MIN_REQUESTS))
        left = len(reqs)
        try:
            while left:
                left -= self._absorb(self.detokenizer.handle(self.driver.next_output()), pending)
                bar.n = len(reqs) - left
                bar.refresh()
        except BaseException:
            self.driver.abort([rid for rid, st in pending.items() if st.final is None])
            raise
        finally:
            bar.close()
        return pending

    @staticmethod
    def _absorb(batch: BatchStrOut, pending: dict[str, _Pending]) -> int:
        done, out = 0, batch.tokens
        for i, rid in enumerate(out.rids):
            st = pending.get(rid)
            if st is None:
                continue
            st.text.append(batch.new_texts[i])
            st.ids.extend(out.new_token_ids[i])
            st.logprobs.extend(out.new_token_logprobs[i])
            st.top.extend(out.new_top_logprobs[i])
            if out.input_token_logprobs:
                st.input_logprobs.extend(out.input_token_logprobs[i])
            if out.finished_reasons[i] is not None:
                st.final, st.index = out, i
                done += 1
        return done

    @staticmethod
    def _format(req: TokenizedGenerateReqInput, st: _Pending) -> GenerateOutput:
        assert st.final is not None
        reason: FinishReason | None = st.final.finished_reasons[st.index]
        assert reason is not None
        if reason.type == "abort":
            error = refusal(reason.error or "aborted", f"request failed: {reason.message}")
            raise error
        meta = MetaInfo(id=req.rid, prompt_tokens=st.final.prompt_tokens[st.index],
                        completion_tokens=st.final.completion_tokens[st.index],
                        cached_tokens=st.final.cached_tokens[st.index], finish_reason=reason.to_json())
        if req.logprob_start_len >= 0:
            meta["input_token_logprobs"] = format_input_token_logprobs(req.input_ids, req.logprob_start_len,
                                                                st.input_logprobs)
        if req.return_logprob:
            meta["output_token_logprobs"] = list(zip(st.logprobs, st.ids, strict=False))
            if req.top_logprobs_num:
                meta["output_top_logprobs"] = [[(lp, tid) for tid, lp in row] for row in st.top]
        return GenerateOutput(text="".join(st.text), output_ids=st.ids, meta_info=meta)

