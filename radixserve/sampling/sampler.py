"""Batched sampling on the logits' device: penalties, temperature, top-k/top-p/min-p, seeds, logprobs.

Random draws use the exponential-race trick (argmax of p / E, E ~ Exp(1)), so each seeded
request draws its noise from its own generator and its output does not depend on what else
is in the batch. Only the sampled ids (and logprobs when asked) come back to the host.

Order per row: penalties, logit_bias, the min_new_tokens ban on stop ids, the grammar's token
mask (constrained rows only; built on the host by each request's matcher and copied to the
logits' device), then temperature / top-k / top-p / min-p or argmax. Rows without a grammar or a
bias are left bit for bit as they are, so a request's output does not depend on its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from radixserve.constrained.base import GrammarMatcher, allocate_bitmask
from radixserve.sampling.argmax import argmax_rows
from radixserve.sampling.sampling_params import SamplingParams
from radixserve.utils.tensors import to_device


class SamplingReq(Protocol):
    sampling_params: SamplingParams
    origin_input_ids: list[int]
    output_ids: list[int]
    generator: torch.Generator | None
    return_logprob: bool
    top_logprobs_num: int
    grammar: GrammarMatcher | None  # its token mask constrains the next token

    @property
    def stop_ids_for_min_tokens(self) -> list[int]: ...


@dataclass
class LogitBias:
    rows: torch.Tensor  # [n] int64: the row of each (token, bias) entry
    tokens: torch.Tensor  # [n] int64
    values: torch.Tensor  # [n] float32


@dataclass
class VocabMask:
    """The grammar's allowed tokens for the constrained rows only."""

    rows: torch.Tensor  # [k] int64: the constrained rows
    bitmask: torch.Tensor  # [bs, ceil(vocab / 32)] int32, bit j of word i allows token 32 * i + j (other rows unused)


@dataclass
class SamplingBatchInfo:
    # None when every row is greedy: an all-greedy step copies nothing to the device for sampling.
    temperatures: torch.Tensor | None  # [bs, 1]; 1.0 for greedy rows
    greedy: torch.Tensor | None  # [bs] bool
    all_greedy: bool
    top_ps: torch.Tensor | None
    top_ks: torch.Tensor | None
    min_ps: torch.Tensor | None
    repetition: torch.Tensor | None  # [bs, 1]
    frequency: torch.Tensor | None
    presence: torch.Tensor | None
    reqs: Sequence[SamplingReq]
    generators: list[torch.Generator | None]
    need_logprobs: bool
    top_logprobs_num: int
    rows: torch.Tensor | None  # the logits rows to sample (None: all; a chunked prefill's row is not)
    logit_bias: LogitBias | None = None
    vocab_mask: VocabMask | None = None
    constrained: list[bool] | None = None  # per row: a grammar decides its stop tokens

    @classmethod
    def from_reqs(cls, reqs: Sequence[SamplingReq], device: torch.device,
                  rows: list[int] | None = None) -> SamplingBatchInfo:
        ps = [r.sampling_params for r in reqs]

        def col(values: list[float], neutral: float) -> torch.Tensor | None:
            if all(v == neutral for v in values):
                return None
            return to_device(values, device, torch.float32)[:, None]

        greedy_list = [p.is_greedy for p in ps]
        all_greedy = all(greedy_list)
        return cls(
            temperatures=None if all_greedy else to_device(
                [1.0 if g else p.temperature for g, p in zip(greedy_list, ps, strict=True)], device,
                torch.float32)[:, None],
            greedy=None if all_greedy else to_device(greedy_list, device, torch.bool),
            all_greedy=all_greedy,
            top_ps=col([p.top_p for p in ps], 1.0),
            top_ks=None if all(p.top_k == -1 for p in ps) else to_device(
                [p.top_k if p.top_k > 0 else 1 << 30 for p in ps], device)[:, None],
            min_ps=col([p.min_p for p in ps], 0.0),
            repetition=col([p.repetition_penalty for p in ps], 1.0),
            frequency=col([p.frequency_penalty for p in ps], 0.0),
            presence=col([p.presence_penalty for p in ps], 0.0),
            reqs=reqs,
            generators=[r.generator for r in reqs],
            need_logprobs=any(r.return_logprob for r in reqs),
            top_logprobs_num=max((r.top_logprobs_num for r in reqs if r.return_logprob), default=0),
            rows=None if rows is None else to_device(rows, device),
            logit_bias=_logit_bias(ps, device),
            vocab_mask=_vocab_mask(reqs, device),
            constrained=_constrained_rows(reqs),
        )


def _constrained_rows(reqs: Sequence[SamplingReq]) -> list[bool] | None:
    rows = [getattr(r, "grammar", None) is not None for r in reqs]
    return rows if any(rows) else None


def _logit_bias(ps: list[SamplingParams], device: torch.device) -> LogitBias | None:
    entries = [(i, t, b) for i, p in enumerate(ps) if p.logit_bias for t, b in p.logit_bias.items()]
    if not entries:
        return None
    rows, tokens, values = zip(*entries, strict=True)
    return LogitBias(to_device(list(rows), device), to_device(list(tokens), device),
                     to_device([float(v) for v in values], device, torch.float32))


def _vocab_mask(reqs: Sequence[SamplingReq], device: torch.device) -> VocabMask | None:
    """Each constrained row's allowed tokens, filled by its matcher on the host (after its last
    token was accepted) and copied to the device. None when no row has a grammar."""
    matchers = [(i, m) for i, r in enumerate(reqs) if (m := getattr(r, "grammar", None)) is not None]
    if not matchers:
        return None
    bitmask = allocate_bitmask(len(reqs), max(m.vocab_size for _, m in matchers))
    by_kind: dict[type[GrammarMatcher], list[tuple[int, GrammarMatcher]]] = {}
    for i, m in matchers:
        if m.is_terminated():
            bitmask[i] = -1  # done (overlap's surplus step, whose token is dropped): no constraint
        else:
            by_kind.setdefault(type(m), []).append((i, m))
    for kind, group in by_kind.items():  # each backend fills its rows on several threads
        kind.fill_batch([m for _, m in group], bitmask, [i for i, _ in group])
    if device.type == "cuda":
        bitmask = bitmask.pin_memory().to(device, non_blocking=True)
    else:
        bitmask = bitmask.to(device)
    return VocabMask(to_device([i for i, _ in matchers], device), bitmask)


@dataclass
class SampleOutput:
    next_token_ids: torch.Tensor  # [bs] int64 on the logits' device
    logprobs: list[float] | None  # on the host, when a request asked for them
    top_logprobs: list[list[tuple[int, float]]] | None


def _padded(rows: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(r) for r in rows))
    ids = torch.zeros((len(rows), width), dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, r in enumerate(rows):
        if r:
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.int64)
            mask[i, : len(r)] = 1.0
    return to_device(ids, device), to_device(mask, device)


def apply_penalties(logits: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
    bs, vocab = logits.shape
    if info.repetition is not None:
        # HF semantics: tokens seen in the prompt or the output have positive logits divided,
        # negative ones multiplied, by the penalty.
        ids, mask = _padded([r.origin_input_ids + r.output_ids for r in info.reqs], logits.device)
        seen = torch.zeros((bs, vocab), dtype=torch.float32, device=logits.device).scatter_(1, ids, mask) > 0
        penalized = torch.where(logits > 0, logits / info.repetition, logits * info.repetition)
        logits = torch.where(seen, penalized, logits)
    if info.frequency is not None or info.presence is not None:
        # OpenAI semantics: counts over generated tokens only.
        ids, mask = _padded([r.output_ids for r in info.reqs], logits.device)
        counts = torch.zeros((bs, vocab), dtype=torch.float32, device=logits.device).scatter_add_(1, ids, mask)
        if info.frequency is not None:
            logits = logits - info.frequency * counts
        if info.presence is not None:
            logits = logits - info.presence * (counts > 0).float()
    return logits


def apply_logit_bias(logits: torch.Tensor, bias: LogitBias | None) -> torch.Tensor:
    if bias is None:
        return logits
    logits = logits.clone()  # the raw logits still serve the logprobs
    logits.index_put_((bias.rows, bias.tokens), bias.values, accumulate=True)
    return logits


def unpack_bitmask(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """[k, words] int32 -> [k, vocab] bool (True: allowed); ids past the bitmask are not allowed."""
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    bits = ((bitmask[:, :, None] >> shifts) & 1).bool().reshape(bitmask.shape[0], -1)
    if bits.shape[1] >= vocab:
        return bits[:, :vocab]
    pad = torch.zeros((bits.shape[0], vocab - bits.shape[1]), dtype=torch.bool, device=bits.device)
    return torch.cat([bits, pad], dim=1)


def apply_vocab_mask(logits: torch.Tensor, mask: VocabMask | None) -> torch.Tensor:
    """-inf for the tokens a constrained row's grammar forbids; the other rows are untouched."""
    if mask is None:
        return logits
    logits = logits.clone()  # the raw logits still serve the logprobs
    vocab, covered = logits.shape[1], mask.bitmask.shape[1] * 32
    if logits.device.type == "cpu" and logits.dtype == torch.float32:
        # xgrammar's CPU kernel (the bitmask layout is the same for both backends): ~8x the torch path.
        import xgrammar

        xgrammar.apply_token_bitmask_inplace(logits, mask.bitmask, vocab_size=min(vocab, covered),
                                             indices=mask.rows.tolist())
        if vocab > covered:
            logits[mask.rows, covered:] = float("-inf")
        return logits
    allowed = unpack_bitmask(mask.bitmask[mask.rows], vocab)
    logits[mask.rows] = logits[mask.rows].masked_fill(~allowed, float("-inf"))
    return logits


def _mask_min_tokens(logits: torch.Tensor, reqs: Sequence[SamplingReq],
                     constrained: list[bool] | None = None) -> torch.Tensor:
    """Ban the stop ids until min_new_tokens are out. A grammar overrides it: when its grammar
    may end, a constrained row may stop (its mask alone decides)."""
    rows = [(i, r.stop_ids_for_min_tokens) for i, r in enumerate(reqs)
            if len(r.output_ids) < r.sampling_params.min_new_tokens and r.stop_ids_for_min_tokens
            and not (constrained and constrained[i])]
    if rows:
        logits = logits.clone()  # the raw logits still serve the logprobs
    for i, ids in rows:
        logits[i, ids] = float("-inf")
    return logits


def _filter_probs(probs: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
    if info.min_ps is not None:
        probs = probs.masked_fill(probs < info.min_ps * probs.max(dim=-1, keepdim=True).values, 0.0)
    if info.top_ks is None and info.top_ps is None:
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)
    if info.top_ks is not None:
        rank = torch.arange(probs.shape[-1], device=probs.device)[None, :]
        sorted_p = sorted_p.masked_fill(rank >= info.top_ks, 0.0)
    if info.top_ps is not None:
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        before = torch.cumsum(sorted_p, dim=-1) - sorted_p
        total = sorted_p.sum(dim=-1, keepdim=True)
        sorted_p = sorted_p.masked_fill(before > info.top_ps * total, 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_p)


def _exponential_noise(shape: tuple[int, int], generators: list[torch.Generator | None],
                       device: torch.device) -> torch.Tensor:
    noise = torch.empty(shape, dtype=torch.float32, device=device).exponential_()
    for i, g in enumerate(generators):
        if g is not None:
            noise[i].exponential_(generator=g)
    return noise


def _sample_ids(logits: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
    logits = apply_penalties(logits, info)
    logits = apply_logit_bias(logits, info.logit_bias)
    logits = _mask_min_tokens(logits, info.reqs, info.constrained)
    logits = apply_vocab_mask(logits, info.vocab_mask)
    greedy_ids = argmax_rows(logits)
    if info.all_greedy:
        return greedy_ids
    assert info.temperatures is not None and info.greedy is not None
    probs = torch.softmax(logits / info.temperatures, dim=-1)
    probs = _filter_probs(probs, info)
    noise = _exponential_noise((probs.shape[0], probs.shape[1]), info.generators, probs.device)
    sampled = argmax_rows(probs / noise)
    return torch.where(info.greedy, greedy_ids, sampled)


@torch.inference_mode()
def sample(logits: torch.Tensor, info: SamplingBatchInfo) -> SampleOutput:
    """logits: [bs, vocab] float32 of each request's last position. The ids stay on the device;
    only logprobs, when asked for, come to the host here."""
    if info.rows is not None:
        logits = logits[info.rows]
    next_ids = _sample_ids(logits, info)
    logprobs = top = None
    if info.need_logprobs:
        lp = torch.log_softmax(logits, dim=-1)
        logprobs = lp.gather(1, next_ids[:, None]).squeeze(1).tolist()
        if info.top_logprobs_num > 0:
            vals, idx = lp.topk(info.top_logprobs_num, dim=-1)
            top = [list(zip(i, v, strict=True)) for i, v in zip(idx.tolist(), vals.tolist(), strict=True)]
    return SampleOutput(next_ids, logprobs, top)
