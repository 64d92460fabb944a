"""SamplingParams: one request's decoding settings, validated with errors that name the field.

A msgspec struct: it travels inside TokenizedGenerateReqInput as it is, built and checked once
at the edge (RequestBuilder) and read by the scheduler and the sampler.
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec

from radixserve.errors import InvalidRequestError

# Bounds the engine honours; server/protocol.py documents the same ones in /openapi.json.
MAX_INT32 = 2**31 - 1
MAX_TOKENS = MAX_INT32  # max_new_tokens, min_new_tokens (clamped to the context later)
MAX_TOP_K = MAX_INT32
MAX_TOKEN_ID = MAX_INT32
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes int64 (n > 1: seed + i wraps within it)
MAX_N = 128
MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 256
MAX_STOP_TOKEN_IDS = 1024
MAX_REPETITION_PENALTY = 1e4
MAX_LOGIT_BIAS = 1024  # logit_bias entries
MAX_LOGIT_BIAS_VALUE = 100.0  # OpenAI: each bias in [-100, 100]
MAX_GRAMMAR_CHARS = 1 << 20  # json_schema, regex, ebnf
# At most one of these constrains a request's output (radixserve/constrained/).
GRAMMAR_FIELDS = ("json_schema", "regex", "ebnf")


def _is_utf8(s: str) -> bool:
    """False for a str with lone surrogates (JSON allows "\\ud800"), which cannot be sent on."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _int_keys(d: dict[Any, Any]) -> dict[Any, Any]:
    """logit_bias as JSON has string keys ("1234"); token ids are ints. Other keys stay as they
    are, for validate() to refuse."""
    out: dict[Any, Any] = {}
    for k, v in d.items():
        if isinstance(k, str) and k.strip().isdigit() and len(k) <= 12:
            k = int(k)
        out[k] = v
    return out


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
    # Grammar-constrained decoding (SGLang's names): the output matches a JSON schema (given as a
    # JSON string; from_dict also takes an object), a regular expression or an EBNF (GBNF) grammar.
    json_schema: str | None = None
    regex: str | None = None
    ebnf: str | None = None
    # OpenAI: token id -> bias in [-100, 100], added to the logit before sampling.
    logit_bias: dict[int, float] | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SamplingParams:
        if d is not None and not isinstance(d, dict):
            raise SamplingParamsError("sampling_params", f"must be an object, got {type(d).__name__}")
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
        if isinstance(d.get("json_schema"), (dict, bool)):
            d["json_schema"] = json.dumps(d["json_schema"])
        if isinstance(d.get("logit_bias"), dict):
            d["logit_bias"] = _int_keys(d["logit_bias"])
        params = cls(**{k: v for k, v in d.items() if v is not None or k == "seed"})
        params.validate()
        return params

    def validate(self) -> None:
        """Types and bounds the engine can honour (ints within what msgspec and torch carry, finite
        floats, bounded lists and strings). The offline Engine and /generate's dict reach here
        without pydantic, so this is the engine's own check, not a copy of the server's."""
        def check(ok: bool, name: str, message: str) -> None:
            if not ok:
                raise SamplingParamsError(name, message)

        def is_num(x: object) -> bool:  # finite, and small enough for a float32 tensor
            if isinstance(x, bool):
                return False
            return (isinstance(x, int) and abs(x) <= MAX_SEED) or (isinstance(x, float) and math.isfinite(x))

        def is_int(x: object) -> bool:
            return isinstance(x, int) and not isinstance(x, bool)

        def in_range(x: object, lo: float, hi: float) -> bool:
            return is_int(x) and lo <= x <= hi  # type: ignore[operator]

        check(in_range(self.max_new_tokens, 0, MAX_TOKENS), "max_new_tokens",
              f"must be an integer in [0, {MAX_TOKENS}], got {self.max_new_tokens!r}")
        check(is_num(self.temperature) and self.temperature >= 0, "temperature",
              f"must be a finite number >= 0, got {self.temperature!r}")
        check(is_num(self.top_p) and 0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p!r}")
        check(is_int(self.top_k) and (self.top_k == -1 or 1 <= self.top_k <= MAX_TOP_K), "top_k",
              f"must be -1 (no limit) or an integer in [1, {MAX_TOP_K}], got {self.top_k!r}")
        check(is_num(self.min_p) and 0 <= self.min_p <= 1, "min_p", f"must be in [0, 1], got {self.min_p!r}")
        check(is_num(self.repetition_penalty) and 0 < self.repetition_penalty <= MAX_REPETITION_PENALTY,
              "repetition_penalty", f"must be in (0, {MAX_REPETITION_PENALTY}], got {self.repetition_penalty!r}")
        check(is_num(self.frequency_penalty) and -2 <= self.frequency_penalty <= 2, "frequency_penalty",
              f"must be in [-2, 2], got {self.frequency_penalty!r}")
        check(is_num(self.presence_penalty) and -2 <= self.presence_penalty <= 2, "presence_penalty",
              f"must be in [-2, 2], got {self.presence_penalty!r}")
        check(isinstance(self.stop, list) and len(self.stop) <= MAX_STOP_STRINGS
              and all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_STRING_CHARS and _is_utf8(s) for s in self.stop),
              "stop", f"must be a non-empty string or a list of at most {MAX_STOP_STRINGS} non-empty strings of at "
              f"most {MAX_STOP_STRING_CHARS} characters (valid UTF-8)")
        check(isinstance(self.stop_token_ids, list) and len(self.stop_token_ids) <= MAX_STOP_TOKEN_IDS
              and all(in_range(t, 0, MAX_TOKEN_ID) for t in self.stop_token_ids), "stop_token_ids",
              f"must be a list of at most {MAX_STOP_TOKEN_IDS} token ids >= 0")
        check(isinstance(self.ignore_eos, bool), "ignore_eos", f"must be a boolean, got {self.ignore_eos!r}")
        check(isinstance(self.skip_special_tokens, bool), "skip_special_tokens",
              f"must be a boolean, got {self.skip_special_tokens!r}")
        check(self.seed is None or in_range(self.seed, 0, MAX_SEED), "seed",
              f"must be an integer in [0, {MAX_SEED}], got {self.seed!r}")
        check(in_range(self.n, 1, MAX_N), "n", f"must be an integer in [1, {MAX_N}], got {self.n!r}")
        check(in_range(self.min_new_tokens, 0, MAX_TOKENS), "min_new_tokens",
              f"must be an integer in [0, {MAX_TOKENS}], got {self.min_new_tokens!r}")
        for name in GRAMMAR_FIELDS:
            value = getattr(self, name)
            check(value is None or (isinstance(value, str) and 0 < len(value) <= MAX_GRAMMAR_CHARS
                                    and _is_utf8(value)), name,
                  f"must be a non-empty string of at most {MAX_GRAMMAR_CHARS} characters (valid UTF-8)")
        given = [name for name in GRAMMAR_FIELDS if getattr(self, name) is not None]
        check(len(given) <= 1, given[-1] if given else "json_schema",
              f"give at most one of {', '.join(GRAMMAR_FIELDS)}; got {' and '.join(given)}")
        if self.json_schema is not None:
            try:
                schema = json.loads(self.json_schema)
            except ValueError as e:
                raise SamplingParamsError("json_schema", f"not valid JSON: {e}") from None
            check(isinstance(schema, dict), "json_schema", "must be a JSON schema object")
        lb = self.logit_bias
        check(lb is None or (isinstance(lb, dict) and len(lb) <= MAX_LOGIT_BIAS), "logit_bias",
              f"must be an object of at most {MAX_LOGIT_BIAS} token id -> bias entries")
        for t, bias in (lb or {}).items():
            check(in_range(t, 0, MAX_TOKEN_ID), "logit_bias", f"token ids must be integers >= 0, got {t!r}")
            check(is_num(bias) and -MAX_LOGIT_BIAS_VALUE <= bias <= MAX_LOGIT_BIAS_VALUE, "logit_bias",
                  f"biases must be numbers in [-100, 100], got {bias!r} for token {t}")

    def check_vocab(self, vocab_size: int) -> None:
        """Token ids the model has (stop_token_ids index the logits)."""
        if any(t >= vocab_size for t in self.stop_token_ids):
            raise SamplingParamsError("stop_token_ids", f"token ids must be in [0, {vocab_size})")
        if self.logit_bias and max(self.logit_bias) >= vocab_size:
            raise SamplingParamsError("logit_bias", f"token ids must be in [0, {vocab_size}), got "
                                      f"{max(self.logit_bias)}")

    @property
    def grammar(self) -> tuple[str, str] | None:
        """(kind, source) of the grammar the output must match, or None."""
        for name in GRAMMAR_FIELDS:
            value = getattr(self, name)
            if value is not None:
                return name, value
        return None

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1
