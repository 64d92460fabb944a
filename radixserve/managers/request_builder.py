"""RequestBuilder: what a front end receives becomes the scheduler's requests.

Tokenize (and apply the chat template), validate against the model, and fan a request with
n > 1 out into n scheduler requests (seed + i each, so n seeded samples differ reproducibly).
The offline Engine and the server's TokenizerManager both build their requests here; errors
are InvalidRequestError naming the field.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import msgspec

from radixserve.errors import InvalidRequestError
from radixserve.managers.io_struct import TokenizedGenerateReqInput
from radixserve.managers.schedule_batch import check_prompt
from radixserve.sampling.sampling_params import SamplingParams

MAX_TOP_LOGPROBS = 20


@dataclass
class GenerateRequest:
    """One API request, validated: its id and its n scheduler requests (`rid` or `rid-i`)."""

    rid: str
    reqs: list[TokenizedGenerateReqInput]


class RequestBuilder:
    def __init__(self, tokenizer: Any, model_name: str, context_len: int, vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.context_len = context_len
        self.vocab_size = vocab_size

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens).input_ids)

    def apply_chat_template(self, messages: list[dict[str, Any]], **template_kwargs: Any) -> tuple[str, list[int]]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise InvalidRequestError(f"model {self.model_name!r} has no chat template; send a plain prompt",
                                      param="messages")
        try:
            text: str = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                           **template_kwargs)
        except Exception as e:  # jinja errors from the template ("roles must alternate", ...)
            raise InvalidRequestError(f"the chat template rejected the messages: {e}", param="messages") from e
        return text, self.tokenize(text, add_special_tokens=False)

    @staticmethod
    def sampling_params(d: dict[str, Any] | None) -> SamplingParams:
        return SamplingParams.from_dict(d)

    def build(self, input_ids: list[int], params: SamplingParams, *, rid: str | None = None, stream: bool = False,
              return_logprob: bool = False, top_logprobs_num: int = 0, input_text: str | None = None,
              prompt_param: str = "prompt", max_tokens_param: str | None = None) -> GenerateRequest:
        """Validate one prompt and fan it out. `max_tokens_param`: the caller set max_new_tokens
        itself (under that name), so prompt + max_new_tokens over the context is an error, not a clamp."""
        if not 0 <= top_logprobs_num <= MAX_TOP_LOGPROBS:
            raise InvalidRequestError(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}]", param="top_logprobs")
        check_prompt(input_ids, self.context_len, self.vocab_size, prompt_param)
        total = len(input_ids) + params.max_new_tokens
        if max_tokens_param is not None and total > self.context_len:
            raise InvalidRequestError(
                f"this model's maximum context length is {self.context_len} tokens; the request asks for {total} "
                f"({len(input_ids)} in the prompt, {params.max_new_tokens} to generate)", param=max_tokens_param,
                code="context_length_exceeded")
        rid = rid or uuid.uuid4().hex
        subs = [rid] if params.n == 1 else [f"{rid}-{i}" for i in range(params.n)]
        return GenerateRequest(rid, [TokenizedGenerateReqInput(
            rid=sub, input_ids=input_ids, input_text=input_text, stream=stream, return_logprob=return_logprob,
            top_logprobs_num=top_logprobs_num,
            sampling_params=msgspec.structs.replace(params, n=1, seed=None if params.seed is None else params.seed + i))
            for i, sub in enumerate(subs)])
