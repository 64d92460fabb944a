"""IncrementalDecoder: one request's token ids to text, a few at a time, with stop strings.

The one decoder of the engine: the detokenizer (server and in-process Engine) turns ids into
text deltas with it, and the scheduler finds stop strings with it.

Each step decodes a short window of ids (from a "surrogate" offset a few tokens back, so
byte-level and SentencePiece tokenizers join pieces as they would in the full text) and keeps
only what is new. Text is held back while:
- it ends in U+FFFD: the last token is part of a multi-byte UTF-8 character still coming;
- it ends in a prefix of a stop string: the next token may complete the stop string, and a
  stop string is never shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REPLACEMENT_CHAR = "\ufffd"


def held_stop_prefix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


def trim_at_stop(text: str, stops: Sequence[str]) -> str:
    """Cut text at the earliest stop string (the stop string itself is not returned)."""
    cuts = [i for i in (text.find(s) for s in stops) if i != -1]
    return text[: min(cuts)] if cuts else text


class IncrementalDecoder:
    def __init__(self, tokenizer: Any, stop: Sequence[str] = (), skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.known = len(tokenizer)
        self.stop = list(stop)
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.text = ""  # confirmed text (complete characters)
        self._surr_offset = 0  # window start: decoded only for context
        self._read_offset = 0  # ids before this are in `text`
        self._sent = 0  # characters of `text` already returned by take()
        self._searched = 0  # characters of `text` already searched for stop strings

    def _decode(self, ids: list[int]) -> str:
        # Dummy-weight models can sample ids past the tokenizer's vocabulary; they have no text.
        text: str = self.tokenizer.decode([i for i in ids if 0 <= i < self.known],
                                          skip_special_tokens=self.skip_special_tokens)
        return text

    def append(self, ids: list[int], final: bool = False) -> None:
        """Add ids; `final` also confirms a trailing incomplete character."""
        self.ids.extend(ids)
        if self._read_offset >= len(self.ids):
            return
        prefix = self._decode(self.ids[self._surr_offset : self._read_offset])
        full = self._decode(self.ids[self._surr_offset :])
        if len(full) > len(prefix) and (final or not full.endswith(REPLACEMENT_CHAR)):
            self.text += full[len(prefix) :]
            self._surr_offset = self._read_offset
            self._read_offset = len(self.ids)
        elif final:
            self._read_offset = len(self.ids)

    def find_stop(self) -> str | None:
        """The earliest stop string that ends in text confirmed since the previous call."""
        searched, self._searched = self._searched, len(self.text)
        # A match must end past `searched`: one reported before is not reported again.
        found = [(i, s) for s in self.stop if (i := self.text.find(s, max(0, searched - len(s) + 1))) != -1]
        return min(found)[1] if found else None

    def take(self, final: bool = False, cut_at_stop: bool = False) -> str:
        """Text that became visible since the previous call (at the end, cut at the stop string)."""
        if final and cut_at_stop:
            self.text = trim_at_stop(self.text, self.stop)
        visible = len(self.text) if final else len(self.text) - held_stop_prefix(self.text, self.stop)
        # `visible` can shrink below `_sent` only if a stop string was cut after being shown,
        # which the hold-back rules out; max() keeps the delta well-formed regardless.
        delta = self.text[self._sent : max(self._sent, visible)]
        self._sent = max(self._sent, visible)
        return delta
