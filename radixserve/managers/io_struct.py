"""Typed messages between the TokenizerManager, the Scheduler and the Detokenizer.

msgspec structs with a type tag, so one ZMQ socket can carry several message kinds and each
is encoded once. The offline Engine passes the same structs in process.
"""

from __future__ import annotations

from typing import Any

import msgspec

from radixserve.cache_events.protocol import CacheEvent, EngineLoad
from radixserve.sampling.sampling_params import SamplingParams


class FinishReason(msgspec.Struct, frozen=True):
    type: str  # "stop" | "length" | "abort"
    matched: int | str | None = None  # the EOS/stop token id or stop string that ended the request
    message: str | None = None  # for aborts: why
    error: str | None = None  # for refusals: the error code (radixserve.errors.refusal maps it)

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
    sampling_params: SamplingParams  # validated, n == 1 (the builder fans n out)
    input_text: str | None = None
    stream: bool = False
    return_logprob: bool = False
    top_logprobs_num: int = 0
    priority: int = 0  # higher first, with --enable-priority-scheduling (schedule_policy.py)
    # Score the prompt's tokens from this position on (SGLang's logprob_start_len); -1: none.
    logprob_start_len: int = -1


class AbortReq(msgspec.Struct, tag=True):
    rid: str


class FlushCacheReq(msgspec.Struct, tag=True):
    pass


class GetLoadReq(msgspec.Struct, tag=True):
    pass


class CheckMemoryReq(msgspec.Struct, tag=True):
    """Verify the KV slot accounting (Scheduler.check_memory): O(pool size), on demand only."""


# ---- Scheduler -> TokenizerManager (control replies) ---------------------------------------
class FlushCacheReqOutput(msgspec.Struct, tag=True):
    success: bool


class GetLoadReqOutput(msgspec.Struct, tag=True):
    load: dict[str, float]


class CheckMemoryReqOutput(msgspec.Struct, tag=True):
    ok: bool
    message: str
    pool_slots: int


class CacheEventsOut(msgspec.Struct, tag=True):
    """Rank 0's RadixCache changes since its last such message, and its load (docs/router.md,
    "Cache events"): sent after a step that changed the tree, else every second as a heartbeat."""

    events: list[CacheEvent]
    load: EngineLoad
    ts: float  # wall clock, seconds


# ---- Scheduler -> Detokenizer (and the Engine) -------------------------------------------
class DecodeSettings(msgspec.Struct):
    """How to turn one request's ids into text; sent once, with the request's first output."""

    rid: str
    stop: list[str]  # the detokenizer holds back text that may begin one, and cuts at it
    skip_special_tokens: bool = True


class BatchTokenIDOut(msgspec.Struct, tag=True):
    rids: list[str]
    new_token_ids: list[list[int]]  # tokens since this request's previous output
    finished_reasons: list[FinishReason | None]
    prompt_tokens: list[int]
    completion_tokens: list[int]
    cached_tokens: list[int]
    new_token_logprobs: list[list[float]]
    new_top_logprobs: list[list[list[tuple[int, float]]]]
    new_reqs: list[DecodeSettings] = []  # requests reported for the first time
    # Per row: the prompt tokens' logprobs, from position max(logprob_start_len, 1) on; sent
    # once, with the request's first report (empty otherwise or when not asked for).
    input_token_logprobs: list[list[float]] = []


# ---- Detokenizer -> TokenizerManager -----------------------------------------------------
class BatchStrOut(msgspec.Struct, tag=True):
    """The scheduler's output with each request's new text (row i of `new_texts` is `tokens.rids[i]`)."""

    tokens: BatchTokenIDOut
    new_texts: list[str]


SchedulerInput = TokenizedGenerateReqInput | AbortReq | FlushCacheReq | GetLoadReq | CheckMemoryReq
TokenizerManagerInput = (BatchStrOut | FlushCacheReqOutput | GetLoadReqOutput | CheckMemoryReqOutput
                         | CacheEventsOut)
