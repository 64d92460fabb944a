"""SamplingParams: one request's decoding settings, validated with errors that name the field.

A msgspec struct: it travels inside TokenizedGenerateReqInput as it is, built and checked once
at the edge (RequestBuilder) and read by the scheduler and the sampler.
"""

from __future__ import annotations

from typing import Any

import msgspec

from radixserve.errors import InvalidRequestError


class SamplingParamsError(InvalidRequestError):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"invalid sampling parameter {field_name!r}: {message}", param=field_name)
        self.field_name = field_name


class SamplingParams(msgspec.Struct):
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: no limit
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop: list[str] = []
    stop_token_ids: list[int] = []
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    seed: int | None = None
    n: int = 1
    min_new_tokens: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SamplingParams:
        d = dict(d or {})
        known = set(cls.__struct_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise SamplingParamsError(unknown[0], f"unknown parameter; known: {sorted(known)}")
        if isinstance(d.get("stop"), str):
            d["stop"] = [d["stop"]]
        if d.get("stop") is None:
            d.pop("stop", None)
        if d.get("stop_token_ids") is None:
            d.pop("stop_token_ids", None)
        params = cls(**{k: v for k, v in d.items() if v is not None or k == "seed"})
        params.validate()
        return params

    def validate(self) -> None:
        def check(ok: bool, name: str, message: str) -> None:
            if not ok:
                raise SamplingParamsError(name, message)

        def is_num(x: object) -> bool:
            return isinstance(x, int | float) and not isinstance(x, bool)

        def is_int(x: object) -> bool:
            return isinstance(x, int) and not isinstance(x, bool)

        check(is_int(self.max_new_tokens) and self.max_new_tokens >= 0, "max_new_tokens",
              f"must be an integer >= 0, got {self.max_new_tokens!r}")
        check(is_num(self.temperature) and self.temperature >= 0, "temperature",
              f"must be >= 0, got {self.temperature!r}")
        check(is_num(self.top_p) and 0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p!r}")
        check(is_int(self.top_k) and (self.top_k == -1 or self.top_k >= 1), "top_k",
              f"must be -1 (no limit) or >= 1, got {self.top_k!r}")
        check(is_num(self.min_p) and 0 <= self.min_p <= 1, "min_p", f"must be in [0, 1], got {self.min_p!r}")
        check(is_num(self.repetition_penalty) and self.repetition_penalty > 0, "repetition_penalty",
              f"must be > 0, got {self.repetition_penalty!r}")
        check(is_num(self.frequency_penalty) and -2 <= self.frequency_penalty <= 2, "frequency_penalty",
              f"must be in [-2, 2], got {self.frequency_penalty!r}")
        check(is_num(self.presence_penalty) and -2 <= self.presence_penalty <= 2, "presence_penalty",
              f"must be in [-2, 2], got {self.presence_penalty!r}")
        check(isinstance(self.stop, list) and all(isinstance(s, str) and s for s in self.stop), "stop",
              "must be a non-empty string or a list of non-empty strings")
        check(isinstance(self.stop_token_ids, list) and all(is_int(t) and t >= 0 for t in self.stop_token_ids),
              "stop_token_ids", "must be a list of token ids >= 0")
        check(self.seed is None or is_int(self.seed), "seed", f"must be an integer, got {self.seed!r}")
        check(is_int(self.n) and 1 <= self.n <= 128, "n", f"must be an integer in [1, 128], got {self.n!r}")
        check(is_int(self.min_new_tokens) and self.min_new_tokens >= 0, "min_new_tokens", "must be >= 0")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1
