"""The offline Engine: SGLang-shaped in-process API over the same Scheduler the server runs."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from types import TracebackType
from typing import Any, cast

from tqdm.auto import tqdm

from radixserve.entrypoints.drivers import InProcessDriver, ProcessDriver, SchedulerDriver
from radixserve.managers.io_struct import BatchTokenIDOut, TokenizedGenerateReqInput
from radixserve.managers.schedule_batch import check_prompt
from radixserve.managers.scheduler import Scheduler
from radixserve.model_executor.model_runner import ModelRunner
from radixserve.model_loader.source import resolve_model_source
from radixserve.model_loader.tokenizer import load_tokenizer
from radixserve.sampling.sampling_params import SamplingParams
from radixserve.server_args import ServerArgs
from radixserve.utils.detokenize import TokenDecoder, trim_at_stop

logger = logging.getLogger(__name__)

PROGRESS_BAR_MIN_REQUESTS = 32

Prompt = str | list[str] | None
InputIds = list[int] | list[list[int]] | None
Params = dict[str, Any] | list[dict[str, Any]] | None


class Engine:
    """`Engine(model_path=None, **server_args)`; `.generate(...)`, `.chat(...)`, `.shutdown()`.

    With one rank the Scheduler runs in this process; with more (`tp_size` x `pp_size`) the
    scheduler processes of `radixserve serve` are started and driven over the same ZMQ messages.
    """

    def __init__(self, model_path: str | None = None, tp_size: int | None = None, pp_size: int | None = None,
                 **kwargs: Any) -> None:
        if tp_size is not None:
            kwargs["tensor_parallel_size"] = tp_size
        if pp_size is not None:
            kwargs["pipeline_parallel_size"] = pp_size
        self.server_args = ServerArgs(model_path=model_path, **kwargs)
        self.source = resolve_model_source(
            self.server_args.model_path, self.server_args.load_format, self.server_args.tokenizer_path)
        self.tokenizer = load_tokenizer(self.source.tokenizer_source)
        self.decoder = TokenDecoder(self.tokenizer)
        self.model_name = self.server_args.served_model_name or self.source.name
        self._closed = False
        self.driver: SchedulerDriver
        if self.server_args.tensor_parallel_size * self.server_args.pipeline_parallel_size == 1:
            self.model_runner = ModelRunner(self.server_args, self.source)
            eos = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
            self.scheduler = Scheduler(self.server_args, self.model_runner, decode=self.decoder.decode,
                                       eos_token_ids=frozenset(eos))
            self.driver = InProcessDriver(self.scheduler)
            self.context_len, self.vocab_size = self.scheduler.context_len, self.scheduler.vocab_size
        else:
            remote = ProcessDriver(self.server_args)
            self.driver = remote
            self.context_len, self.vocab_size = remote.info["context_length"], remote.info["vocab_size"]

    # ---- API ---------------------------------------------------------------------------------
    def generate(self, prompt: Prompt = None, sampling_params: Params = None, input_ids: InputIds = None,
                 return_logprob: bool = False, top_logprobs_num: int = 0,
                 show_progress: bool | None = None) -> dict[str, Any] | list[dict[str, Any]]:
        """Returns a dict for one prompt (with n == 1), else a list of dicts (n per prompt, in order)."""
        if self._closed:
            raise RuntimeError("the engine is shut down")
        single = isinstance(prompt, str) or (input_ids is not None and bool(input_ids)
                                             and isinstance(input_ids[0], int))
        ids_list = self._tokenize(prompt, input_ids)
        params_list = self._params(sampling_params, len(ids_list))
        if top_logprobs_num < 0:
            raise ValueError("invalid value for 'top_logprobs_num': must be >= 0")
        reqs: list[TokenizedGenerateReqInput] = []
        for i, (ids, params) in enumerate(zip(ids_list, params_list, strict=True)):
            error = check_prompt(ids, self.context_len, self.vocab_size)
            if error is not None:
                raise ValueError(f"invalid value for 'prompt' #{i}: {error}")
            for k in range(params.n):
                d = {k2: v for k2, v in params.__dict__.items() if k2 != "n"}
                if params.seed is not None:
                    d["seed"] = params.seed + k  # n samples of one seeded request differ, reproducibly
                reqs.append(TokenizedGenerateReqInput(
                    rid=uuid.uuid4().hex, input_ids=ids, sampling_params=d,
                    return_logprob=return_logprob, top_logprobs_num=top_logprobs_num))
        results = self._run(reqs, show_progress)
        outs = [self._format(req, results[req.rid]) for req in reqs]
        return outs[0] if single and len(outs) == 1 else outs

    def chat(self, messages: list[dict[str, Any]] | list[list[dict[str, Any]]], sampling_params: Params = None,
             **kwargs: Any) -> dict[str, Any] | list[dict[str, Any]]:
        """OpenAI-style messages (or a list of conversations) through the model's chat template."""
        convs = messages if messages and isinstance(messages[0], list) else [messages]
        ids = [self.apply_chat_template(c) for c in convs]  # type: ignore[arg-type]
        return self.generate(input_ids=ids if len(ids) > 1 else ids[0], sampling_params=sampling_params, **kwargs)

    def apply_chat_template(self, messages: list[dict[str, Any]]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"model {self.model_name!r} has no chat template")
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def shutdown(self) -> None:
        if not self._closed:
            self._closed = True
            self.driver.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown()

    # ---- internals ---------------------------------------------------------------------------
    def _tokenize(self, prompt: Prompt, input_ids: InputIds) -> list[list[int]]:
        if (prompt is None) == (input_ids is None):
            raise ValueError("give exactly one of 'prompt' and 'input_ids'")
        if prompt is not None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            if not all(isinstance(p, str) for p in prompts):
                raise ValueError("invalid value for 'prompt': must be a string or a list of strings")
            return [list(self.tokenizer(p).input_ids) if p else [] for p in prompts]
        assert input_ids is not None
        if input_ids and isinstance(input_ids[0], int):
            return [[int(t) for t in input_ids]]  # type: ignore[union-attr]
        return [list(cast(list[int], x)) for x in input_ids]

    @staticmethod
    def _params(sampling_params: Params, n: int) -> list[SamplingParams]:
        if isinstance(sampling_params, list):
            if len(sampling_params) != n:
                raise ValueError(f"invalid value for 'sampling_params': {len(sampling_params)} entries for {n} prompts")
            return [SamplingParams.from_dict(p) for p in sampling_params]
        return [SamplingParams.from_dict(sampling_params) for _ in range(n)]

    def _run(self, reqs: Sequence[TokenizedGenerateReqInput], show_progress: bool | None) -> dict[str, dict[str, Any]]:
        pending: dict[str, dict[str, Any]] = {r.rid: {"ids": [], "logprobs": [], "top": [], "final": None} for r in reqs}
        self.driver.submit(list(reqs))
        bar = tqdm(total=len(reqs), desc="Generating", unit="req", leave=False,
                   disable=not (show_progress if show_progress is not None else len(reqs) >= PROGRESS_BAR_MIN_REQUESTS))
        left = len(reqs)
        try:
            while left:
                left -= self._absorb(self.driver.next_output(), pending)
                bar.n = len(reqs) - left
                bar.refresh()
        except BaseException:
            self.driver.abort([rid for rid, st in pending.items() if st["final"] is None])
            raise
        finally:
            bar.close()
        return pending

    @staticmethod
    def _absorb(out: BatchTokenIDOut, pending: dict[str, dict[str, Any]]) -> int:
        done = 0
        for i, rid in enumerate(out.rids):
            st = pending.get(rid)
            if st is None:
                continue
            st["ids"].extend(out.new_token_ids[i])
            if out.new_token_logprobs is not None:
                st["logprobs"].extend(out.new_token_logprobs[i])
            if out.new_top_logprobs is not None:
                st["top"].extend(out.new_top_logprobs[i])
            if out.finished_reasons[i] is not None:
                st["final"] = (out.finished_reasons[i], out.prompt_tokens[i], out.completion_tokens[i],
                               out.cached_tokens[i], out.skip_special_tokens[i])
                done += 1
        return done

    def _format(self, req: TokenizedGenerateReqInput, st: dict[str, Any]) -> dict[str, Any]:
        reason, prompt_tokens, completion_tokens, cached, skip = st["final"]
        if reason.type == "abort":
            raise ValueError(f"request failed: {reason.message}")
        ids: list[int] = st["ids"]
        text = self.decoder.decode(ids, skip)
        stops = req.sampling_params.get("stop") or []
        if isinstance(reason.matched, str):
            text = trim_at_stop(text, stops)
        meta: dict[str, Any] = {
            "id": req.rid,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "cached_tokens": cached,
            "finish_reason": reason.to_json(),
        }
        if req.return_logprob:
            meta["output_token_logprobs"] = list(zip(st["logprobs"], ids, strict=False))
            if req.top_logprobs_num:
                meta["output_top_logprobs"] = [[(lp, tid) for tid, lp in row] for row in st["top"]]
        return {"text": text, "output_ids": ids, "meta_info": meta}
