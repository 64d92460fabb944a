"""DetokenizerManager: token ids from the Scheduler become text deltas for the TokenizerManager.

One IncrementalDecoder per request, made from the DecodeSettings that come with the request's
first output and dropped when it finishes. `handle(BatchTokenIDOut) -> BatchStrOut` is pure:
the detokenizer process adds the ZMQ sockets, the offline Engine calls it in process.
"""

from __future__ import annotations

from typing import Any

from radixserve.managers.io_struct import BatchStrOut, BatchTokenIDOut
from radixserve.utils.detokenize import IncrementalDecoder


class DetokenizerManager:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.decoders: dict[str, IncrementalDecoder] = {}

    def handle(self, out: BatchTokenIDOut) -> BatchStrOut:
        for s in out.new_reqs:
            self.decoders[s.rid] = IncrementalDecoder(self.tokenizer, s.stop, s.skip_special_tokens)
        texts: list[str] = []
        for rid, ids, reason in zip(out.rids, out.new_token_ids, out.finished_reasons, strict=True):
            dec = self.decoders.get(rid) or self.decoders.setdefault(rid, IncrementalDecoder(self.tokenizer))
            final = reason is not None
            dec.append(ids, final)
            texts.append(dec.take(final, cut_at_stop=reason is not None and isinstance(reason.matched, str)))
            if final:
                del self.decoders[rid]
        out.new_reqs = []  # settings stay here
        return BatchStrOut(out, texts)
