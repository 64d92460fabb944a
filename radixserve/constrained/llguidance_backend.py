"""llguidance: Earley parsing with lazily computed token masks (no grammar precompilation)."""

from __future__ import annotations

import os
from typing import Any

import llguidance
import llguidance.hf
import llguidance.torch
import torch

from radixserve.constrained.base import GrammarBackend, GrammarError, GrammarMatcher

JSON_OPTIONS: Any = {"whitespace_flexible": True, "whitespace_pattern": r"[\x20\x0A\x0D\x09]{0,16}"}
_FORMATS = {"json_schema": "json_schema", "regex": "regex", "ebnf": "ebnf"}


def _grammar(kind: str, source: str) -> str:
    if kind not in _FORMATS:
        raise GrammarError(f"unknown grammar kind {kind!r}")
    try:
        if kind == "json_schema":
            # As with xgrammar: whitespace between tokens, but no unbounded runs of it.
            return llguidance.LLMatcher.grammar_from_json_schema(source, defaults=JSON_OPTIONS)
        grammar: str = llguidance.grammar_from(_FORMATS[kind], source)  # type: ignore[arg-type]
    except Exception as e:  # ValueError: not JSON
        raise GrammarError(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from None
    return grammar


def _check(grammar: str, tokenizer: llguidance.LLTokenizer | None = None) -> None:
    error = llguidance.LLMatcher.validate_grammar(grammar, tokenizer)
    if error:
        raise GrammarError(" ".join(line.strip() for line in error.strip().splitlines()[:3])[:500])


def validate_llguidance(kind: str, source: str) -> None:
    _check(_grammar(kind, source))


class LLGuidanceMatcher(GrammarMatcher):
    def __init__(self, m: llguidance.LLMatcher, vocab_size: int) -> None:
        self.m = m
        self.vocab_size = vocab_size

    def accept_token(self, token: int) -> bool:
        return bool(self.m.consume_token(token)) and not self.m.is_error()

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        llguidance.torch.fill_next_token_bitmask(self.m, bitmask, row)

    def is_terminated(self) -> bool:
        # Stopped: it accepts nothing more but EOS (or took EOS already).
        return bool(self.m.is_stopped())

    @classmethod
    def fill_batch(cls, matchers: list[GrammarMatcher], bitmask: torch.Tensor, rows: list[int]) -> None:
        if len(matchers) == 1:
            matchers[0].fill_bitmask(bitmask, rows[0])
            return
        global _EXECUTOR
        if _EXECUTOR is None:
            _EXECUTOR = llguidance.LLExecutor(num_threads=FILL_THREADS)
        pairs = [(m.m, row) for m, row in zip(matchers, rows, strict=True)]  # type: ignore[attr-defined]
        llguidance.torch.fill_next_token_bitmask_par(_EXECUTOR, pairs, bitmask)


FILL_THREADS = max(1, min(8, (os.cpu_count() or 1) // 2))
_EXECUTOR: llguidance.LLExecutor | None = None


class LLGuidanceBackend(GrammarBackend):
    name = "llguidance"

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int]) -> None:
        super().__init__(tokenizer, vocab_size, stop_token_ids)
        self.lltok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size,
                                                  eos_token=stop_token_ids or None)

    def compile(self, kind: str, source: str) -> Any:
        grammar = _grammar(kind, source)
        _check(grammar, self.lltok)
        m = llguidance.LLMatcher(self.lltok, grammar, log_level=0)
        if m.is_error():
            raise GrammarError(m.get_error())
        return m  # a template: each request's matcher is a copy

    def matcher(self, compiled: Any) -> GrammarMatcher:
        return LLGuidanceMatcher(compiled.deep_copy(), self.vocab_size)
