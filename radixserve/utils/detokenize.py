"""Token ids to text: whole-sequence decoding for the Engine, and stop-string trimming."""

from __future__ import annotations

from typing import Any


class TokenDecoder:
    """Decodes ids with the tokenizer, dropping ids the tokenizer does not know (dummy models)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.known = len(tokenizer)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        ids = [i for i in ids if 0 <= i < self.known]
        text: str = self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        return text


def trim_at_stop(text: str, stops: list[str]) -> str:
    """Cut text at the earliest stop string (the stop string itself is not returned)."""
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]
