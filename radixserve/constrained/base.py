"""The grammar backend interface: compile once per (kind, source), one matcher per request.

A backend is built for one tokenizer and one logits width (`vocab_size`, which may exceed the
tokenizer's own vocabulary: those padding ids are never allowed). Matchers fill one row of a
shared token bitmask (int32, bit j of word i allows token 32 * i + j: the layout xgrammar and
llguidance share), accept each sampled token, and say when the grammar is done.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

GRAMMAR_BACKENDS = ("xgrammar", "llguidance", "none")


class GrammarError(ValueError):
    """The grammar source is invalid or uses a feature the backend does not support."""


def bitmask_width(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def allocate_bitmask(rows: int, vocab_size: int) -> torch.Tensor:
    """All tokens disallowed until a matcher fills its row."""
    return torch.zeros((rows, bitmask_width(vocab_size)), dtype=torch.int32)


class GrammarMatcher(ABC):
    """One request's position in its grammar."""

    vocab_size: int  # the width of its bitmask row, in tokens

    @abstractmethod
    def accept_token(self, token: int) -> bool:
        """Advance by a sampled token; False (state unchanged or broken) if the grammar forbids it."""

    @abstractmethod
    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the tokens allowed next into `bitmask[row]` (a CPU int32 tensor)."""

    @classmethod
    def fill_batch(cls, matchers: list[GrammarMatcher], bitmask: torch.Tensor, rows: list[int]) -> None:
        """Fill `bitmask[rows[i]]` for each matcher (all of this class); backends override this
        to fill them on several threads at once."""
        for m, row in zip(matchers, rows, strict=True):
            m.fill_bitmask(bitmask, row)

    @abstractmethod
    def is_terminated(self) -> bool:
        """The grammar is complete and accepts nothing more (it ended with a stop token, or
        cannot go on): the request stops here."""


class GrammarBackend(ABC):
    name: str

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_token_ids = stop_token_ids

    @abstractmethod
    def compile(self, kind: str, source: str) -> Any:
        """A compiled grammar (shared by every matcher made from it); raises GrammarError."""

    @abstractmethod
    def matcher(self, compiled: Any) -> GrammarMatcher: ...


def validate_grammar(backend: str, kind: str, source: str) -> None:
    """Check a grammar's syntax without a tokenizer (cheap enough for the request's edge); raises
    GrammarError with the backend's message."""
    if backend == "xgrammar":
        from radixserve.constrained.xgrammar_backend import validate_xgrammar

        validate_xgrammar(kind, source)
    elif backend == "llguidance":
        from radixserve.constrained.llguidance_backend import validate_llguidance

        validate_llguidance(kind, source)
    else:
        raise ValueError(f"no grammar backend {backend!r}")


def make_backend(name: str, tokenizer: Any, vocab_size: int, stop_token_ids: list[int]) -> GrammarBackend:
    if name == "xgrammar":
        from radixserve.constrained.xgrammar_backend import XGrammarBackend

        return XGrammarBackend(tokenizer, vocab_size, stop_token_ids)
    if name == "llguidance":
        from radixserve.constrained.llguidance_backend import LLGuidanceBackend

        return LLGuidanceBackend(tokenizer, vocab_size, stop_token_ids)
    raise ValueError(f"no grammar backend {name!r}; choose one of {GRAMMAR_BACKENDS[:2]}")


def clean_message(e: BaseException) -> str:
    """The backend's message without C++ source locations ("[12:00:00] /project/cpp/x.cc:94: ...")."""
    text = str(e).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    first = lines[0] if lines else type(e).__name__
    if first.startswith("[") and ": " in first:
        parts = first.split(": ", 1)
        if ".cc:" in parts[0] or ".h:" in parts[0]:
            first = parts[1]
        if ".cc:" in first.split(": ", 1)[0]:
            first = first.split(": ", 1)[-1]
    return first[:500]
