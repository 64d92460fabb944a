"""Typed messages between the TokenizerManager, the Scheduler and the Detokenizer.

msgspec structs with a type tag, so one ZMQ socket can carry several message kinds and each
is encoded once. The offline Engine passes the same structs in process.
"""

from __future__ import annotations

from typing import Any

import msgspec


class FinishReason(msgspec.Struct, frozen=True):
    type: str  # "stop" | "length" | "abort"
    matched: int | str | None = None  # the EOS/stop token id or stop string that ended the request
    message: str | None = None  # for aborts: why
    status_code: int | None = None  # for refusals: the HTTP status the API answers with (400, 429, ...)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.matched is not None:
            out["matched"] = self.matched
        if self.message is not None:
            out["message"] = self.message
        return out


# ---- TokenizerManager -> Scheduler ---------------------------------------------------------
class TokenizedGenerateReqInput(msgspec.Struct, tag=True):
    rid: str
    input_ids: list[int]
    sampling_params: dict[str, Any]
    input_text: str | None = None
    stream: bool = False
    return_logprob: bool = False
    top_logprobs_num: int = 0


class AbortReq(msgspec.Struct, tag=True):
    rid: str


class FlushCacheReq(msgspec.Struct, tag=True):
    pass


class GetLoadReq(msgspec.Struct, tag=True):
    pass


# ---- Scheduler -> TokenizerManager (control replies) ---------------------------------------
class FlushCacheReqOutput(msgspec.Struct, tag=True):
    success: bool


class GetLoadReqOutput(msgspec.Struct, tag=True):
    load: dict[str, float]


# ---- Scheduler -> Detokenizer (and the Engine) -------------------------------------------
class BatchTokenIDOut(msgspec.Struct, tag=True):
    rids: list[str]
    new_token_ids: list[list[int]]  # tokens since this request's previous output
    finished_reasons: list[FinishReason | None]
    prompt_tokens: list[int]
    completion_tokens: list[int]
    cached_tokens: list[int]
    skip_special_tokens: list[bool]
    new_token_logprobs: list[list[float]] | None = None
    new_top_logprobs: list[list[list[tuple[int, float]]]] | None = None
    # Stop strings per request: the detokenizer holds back text that may begin one.
    stop_strs: list[list[str]] | None = None


# ---- Detokenizer -> TokenizerManager -----------------------------------------------------
class BatchStrOut(msgspec.Struct, tag=True):
    rids: list[str]
    new_texts: list[str]
    new_token_ids: list[list[int]]
    finished_reasons: list[FinishReason | None]
    prompt_tokens: list[int]
    completion_tokens: list[int]
    cached_tokens: list[int]
    new_token_logprobs: list[list[float]] | None = None
    new_top_logprobs: list[list[list[tuple[int, float]]]] | None = None


SchedulerInput = TokenizedGenerateReqInput | AbortReq | FlushCacheReq | GetLoadReq
TokenizerManagerInput = BatchStrOut | FlushCacheReqOutput | GetLoadReqOutput
