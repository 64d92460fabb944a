"""xgrammar (the default backend): compiled grammars with precomputed token masks."""

from __future__ import annotations

import os
from typing import Any

import torch
import xgrammar as xgr

from radixserve.constrained.base import GrammarBackend, GrammarError, GrammarMatcher, clean_message

# JSON output may carry whitespace between tokens (models pretty-print), but not unbounded runs
# of it: a model that keeps emitting spaces would otherwise never finish the object.
MAX_WHITESPACE = 16


# xgrammar (0.2.9) writes the characters of a string with minLength / maxLength as [^"\\\r\n],
# which lets raw control characters (U+0000-U+001F) into a JSON string: the output would not
# parse. The printed grammar round-trips through from_ebnf, so narrow that class there.
_LOOSE_STRING_CHAR = r'[^\"\\\r\n]'
_JSON_STRING_CHAR = r'[^\0-\x1f\"\\]'


def _without_control_chars(grammar: xgr.Grammar) -> xgr.Grammar:
    text = str(grammar)
    if _LOOSE_STRING_CHAR not in text:
        return grammar
    return xgr.Grammar.from_ebnf(text.replace(_LOOSE_STRING_CHAR, _JSON_STRING_CHAR))


def _grammar(kind: str, source: str) -> xgr.Grammar:
    try:
        if kind == "json_schema":
            grammar = xgr.Grammar.from_json_schema(source, any_whitespace=True, max_whitespace_cnt=MAX_WHITESPACE)
            return _without_control_chars(grammar)
        if kind == "regex":
            return xgr.Grammar.from_regex(source)
        if kind == "ebnf":
            return xgr.Grammar.from_ebnf(source)
    except Exception as e:  # RuntimeError (parse errors), InvalidJSONError, ...
        raise GrammarError(clean_message(e)) from None
    raise GrammarError(f"unknown grammar kind {kind!r}")


def validate_xgrammar(kind: str, source: str) -> None:
    _grammar(kind, source)


class XGrammarMatcher(GrammarMatcher):
    def __init__(self, compiled: xgr.CompiledGrammar, vocab_size: int) -> None:
        self.m = xgr.GrammarMatcher(compiled)
        self.vocab_size = vocab_size

    def accept_token(self, token: int) -> bool:
        return bool(self.m.accept_token(token))

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        self.m.fill_next_token_bitmask(bitmask, row)

    def is_terminated(self) -> bool:
        return bool(self.m.is_terminated())

    @classmethod
    def fill_batch(cls, matchers: list[GrammarMatcher], bitmask: torch.Tensor, rows: list[int]) -> None:
        if len(matchers) == 1:
            matchers[0].fill_bitmask(bitmask, rows[0])
            return
        global _BATCH
        if _BATCH is None:
            _BATCH = xgr.BatchGrammarMatcher(max_threads=FILL_THREADS)
        _BATCH.batch_fill_next_token_bitmask([m.m for m in matchers], bitmask,  # type: ignore[attr-defined]
                                             indices=rows)


# Bitmasks of a batch are filled on this many threads (xgrammar's BatchGrammarMatcher).
FILL_THREADS = max(1, min(8, (os.cpu_count() or 1) // 2))
_BATCH: xgr.BatchGrammarMatcher | None = None


class XGrammarBackend(GrammarBackend):
    name = "xgrammar"

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int]) -> None:
        super().__init__(tokenizer, vocab_size, stop_token_ids)
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                       stop_token_ids=stop_token_ids or None)
        # Our own LRU (radixserve/constrained/manager.py) caches compiled grammars.
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)

    def compile(self, kind: str, source: str) -> Any:
        grammar = _grammar(kind, source)
        try:
            return self.compiler.compile_grammar(grammar)
        except Exception as e:
            raise GrammarError(clean_message(e)) from None

    def matcher(self, compiled: Any) -> GrammarMatcher:
        return XGrammarMatcher(compiled, self.vocab_size)
