"""DetokenizerManager: token ids from the Scheduler become text deltas for the TokenizerManager.

Incremental detokenization decodes a short window of ids (from a "surrogate" offset a few
tokens back, so byte-level and SentencePiece tokenizers join pieces as they would in the full
text) and emits only what is new. Text is held back while:
- it ends in U+FFFD: the last token is part of a multi-byte UTF-8 character still coming;
- it ends in a prefix of a stop string: the next token may complete the stop string, and a
  stop string is never shown.
When the request finishes, the rest is flushed, cut at the stop string that ended it.

`DetokenizerManager.handle(BatchTokenIDOut) -> BatchStrOut` is pure and tested in process; the
subprocess in `radixserve.server.detokenizer_process` only adds the ZMQ sockets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from radixserve.managers.io_struct import BatchStrOut, BatchTokenIDOut
from radixserve.utils.detokenize import trim_at_stop

REPLACEMENT_CHAR = "\ufffd"


@dataclass
class DecodeStatus:
    ids: list[int] = field(default_factory=list)
    surr_offset: int = 0  # window start: decoded only for context
    read_offset: int = 0  # ids before this are in `text`
    text: str = ""  # confirmed text (complete characters)
    sent: int = 0  # characters of `text` already emitted


def held_stop_prefix(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


class DetokenizerManager:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.known = len(tokenizer)
        self.status: dict[str, DecodeStatus] = {}

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        # Dummy-weight models can sample ids past the tokenizer's vocabulary; they have no text.
        text: str = self.tokenizer.decode([i for i in ids if 0 <= i < self.known],
                                          skip_special_tokens=skip_special_tokens)
        return text

    def handle(self, out: BatchTokenIDOut) -> BatchStrOut:
        texts: list[str] = []
        for i, rid in enumerate(out.rids):
            st = self.status.get(rid)
            if st is None:
                st = self.status[rid] = DecodeStatus()
            st.ids.extend(out.new_token_ids[i])
            skip = out.skip_special_tokens[i]
            stops = out.stop_strs[i] if out.stop_strs is not None else []
            reason = out.finished_reasons[i]
            self._advance(st, skip, final=reason is not None)
            if reason is None:
                visible = len(st.text) - held_stop_prefix(st.text, stops) if stops else len(st.text)
            else:
                final_text = trim_at_stop(st.text, stops) if isinstance(reason.matched, str) else st.text
                visible = len(final_text)
                st.text = final_text
                del self.status[rid]
            # `visible` can shrink below `sent` only if a stop string was cut after being shown,
            # which the hold-back rules out; max() keeps the delta well-formed regardless.
            texts.append(st.text[st.sent : max(st.sent, visible)])
            st.sent = max(st.sent, visible)
        return BatchStrOut(
            rids=out.rids, new_texts=texts, new_token_ids=out.new_token_ids,
            finished_reasons=out.finished_reasons, prompt_tokens=out.prompt_tokens,
            completion_tokens=out.completion_tokens, cached_tokens=out.cached_tokens,
            new_token_logprobs=out.new_token_logprobs, new_top_logprobs=out.new_top_logprobs)

    def _advance(self, st: DecodeStatus, skip: bool, final: bool) -> None:
        if st.read_offset >= len(st.ids):
            return
        prefix = self._decode(st.ids[st.surr_offset : st.read_offset], skip)
        full = self._decode(st.ids[st.surr_offset :], skip)
        if len(full) > len(prefix) and (final or not full.endswith(REPLACEMENT_CHAR)):
            st.text += full[len(prefix) :]
            st.surr_offset = st.read_offset
            st.read_offset = len(st.ids)
        elif final:
            st.read_offset = len(st.ids)
