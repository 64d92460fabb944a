"""When a request is finished, and what a step reports: finish checks and BatchTokenIDOut packing."""

from __future__ import annotations

from dataclasses import dataclass

from radixserve.managers.io_struct import BatchTokenIDOut, DecodeSettings, FinishReason
from radixserve.managers.schedule_batch import Req


@dataclass
class SchedulerStats:
    """Counters since start (warm-up excluded); the scheduler process logs their increments."""

    num_retractions: int = 0
    num_overlap_steps: int = 0  # decode steps launched before the previous one was read back
    num_prefill_batches: int = 0
    num_prefill_seqs: int = 0  # requests (or prompt chunks) in prefill batches
    num_prefill_tokens: int = 0  # prompt tokens computed (not served from the cache)
    num_prefill_cached_tokens: int = 0  # prompt tokens served from the cache or earlier chunks
    num_decode_steps: int = 0
    num_decode_tokens: int = 0  # tokens decoded (one per running request per step)
    num_mixed_decode_tokens: int = 0  # of those, decoded inside prefill batches (--enable-mixed-chunk)


def check_finished(req: Req, context_len: int) -> FinishReason | None:
    """Why `req` is done after its newest token (EOS, stop id, stop string, length), or None."""
    token = req.output_ids[-1]
    params = req.sampling_params
    enough = len(req.output_ids) >= params.min_new_tokens
    if enough and ((not params.ignore_eos and token in req.eos_token_ids) or token in params.stop_token_ids):
        return FinishReason("stop", matched=token)
    if len(req.output_ids) >= params.max_new_tokens:
        return FinishReason("length")
    if req.stop_decoder is not None:
        req.stop_decoder.append([token])
        matched = req.stop_decoder.find_stop() if enough else None
        if matched is not None:
            return FinishReason("stop", matched=matched)
    if len(req.origin_input_ids) + len(req.output_ids) >= context_len:
        return FinishReason("length")
    return None


def pack_outputs(reqs: list[Req]) -> BatchTokenIDOut:
    """Each request's tokens since its previous report; a request's first report carries its
    DecodeSettings."""
    out = BatchTokenIDOut(
        rids=[r.rid for r in reqs],
        new_token_ids=[r.output_ids[r.send_offset :] for r in reqs],
        finished_reasons=[r.finished_reason for r in reqs],
        prompt_tokens=[len(r.origin_input_ids) for r in reqs],
        completion_tokens=[len(r.output_ids) for r in reqs],
        cached_tokens=[r.cached_tokens for r in reqs],
        new_token_logprobs=[r.output_logprobs[r.send_offset :] for r in reqs],
        new_top_logprobs=[r.output_top_logprobs[r.send_offset :] for r in reqs],
        new_reqs=[DecodeSettings(r.rid, r.sampling_params.stop, r.sampling_params.skip_special_tokens)
                  for r in reqs if not r.reported],
        # A request's first report comes once its prompt is prefilled, so its prompt logprobs are complete.
        input_token_logprobs=[r.input_logprobs if not r.reported else [] for r in reqs],
    )
    for r in reqs:
        r.send_offset = len(r.output_ids)
        r.reported = True
    return out
