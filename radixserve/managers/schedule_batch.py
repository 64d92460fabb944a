"""Req (one request's state) and ScheduleBatch (the scheduler's view of one step).

ScheduleBatch.prepare_for_extend / prepare_for_decode allocate KV slots, fill the
ReqToTokenPool, advance each request's kv_len and build the step's tensors in one place;
get_forward_batch and sampling_info hand the ModelRunner what it runs and samples.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from radixserve.errors import InvalidRequestError
from radixserve.managers.io_struct import FinishReason
from radixserve.model_executor.forward_batch import ForwardBatch, ForwardMode
from radixserve.sampling.input_logprobs import InputLogprobPlan
from radixserve.sampling.sampler import SamplingBatchInfo
from radixserve.sampling.sampling_params import SamplingParams
from radixserve.utils.detokenize import IncrementalDecoder
from radixserve.utils.tensors import to_device

if TYPE_CHECKING:
    from collections.abc import Callable

    from radixserve.attention.base import AttentionBackend
    from radixserve.constrained.base import GrammarMatcher
    from radixserve.mem_cache.base_prefix_cache import BasePrefixCache
    from radixserve.mem_cache.memory_pool import ReqToTokenPool, TokenToKVPool
    from radixserve.mem_cache.radix_cache import TreeNode


class OutOfKVMemory(RuntimeError):
    pass


@dataclass(eq=False)
class Req:
    rid: str
    origin_input_ids: list[int]
    sampling_params: SamplingParams
    stream: bool = False
    return_logprob: bool = False
    top_logprobs_num: int = 0
    eos_token_ids: frozenset[int] = frozenset()
    logprob_start_len: int = -1  # score the prompt from this position (-1: not at all)
    priority: int = 0  # waiting-queue rank with --enable-priority-scheduling: higher first

    output_ids: list[int] = field(default_factory=list)
    # KV state
    fill_ids: list[int] = field(default_factory=list)  # tokens whose KV exists after this step
    prefix_indices: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    last_node: TreeNode | None = None
    req_pool_idx: int | None = None
    kv_len: int = 0
    extend_input_len: int = 0
    # bookkeeping
    cached_tokens: int = 0  # prompt tokens served from the cache (max over admissions)
    finished_reason: FinishReason | None = None
    to_abort: FinishReason | None = None  # set while it holds KV; released at the next step
    generator: torch.Generator | None = None
    output_logprobs: list[float] = field(default_factory=list)
    output_top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    # Logprobs of the prompt tokens at positions max(logprob_start_len, 1), ... (position 0 has none).
    input_logprobs: list[float] = field(default_factory=list)
    send_offset: int = 0  # output tokens already reported
    reported: bool = False  # its DecodeSettings went out with a first output
    stop_decoder: IncrementalDecoder | None = None  # finds stop strings in the output text
    # Its grammar's state (json_schema / regex / ebnf): masks its next token, accepts each one.
    grammar: GrammarMatcher | None = None
    retractions: int = 0
    created: float = field(default_factory=time.monotonic)

    @property
    def stop_ids_for_min_tokens(self) -> list[int]:
        return sorted(self.eos_token_ids | set(self.sampling_params.stop_token_ids))

    @property
    def finished(self) -> bool:
        return self.finished_reason is not None

    def input_logprob_row(self) -> int | None:
        """The prompt position whose logits score the next unscored prompt token; None when no
        (more) prompt logprobs are wanted."""
        if self.logprob_start_len < 0:
            return None
        row = max(self.logprob_start_len, 1) - 1 + len(self.input_logprobs)
        return row if row < len(self.origin_input_ids) - 1 else None

    def init_next_round_input(self, tree_cache: BasePrefixCache) -> None:
        """Match the cache for the tokens still to compute; at least one token is left to run.
        A prompt still to be scored is matched only up to its first scored row: a cached token's
        logits are gone, so the forward must recompute from there."""
        self.fill_ids = self.origin_input_ids + self.output_ids
        if self.req_pool_idx is None:
            key = self.fill_ids[:-1]
            row = self.input_logprob_row()
            if row is not None:
                key = key[:row]
            self.prefix_indices, node = tree_cache.match_prefix(key)
            self.last_node = node
        self.extend_input_len = len(self.fill_ids) - self.prefix_indices.numel()

    def reset_for_retract(self) -> None:
        self.fill_ids = []
        self.prefix_indices = torch.empty(0, dtype=torch.int64)
        self.last_node = None
        self.req_pool_idx = None
        self.kv_len = 0
        self.extend_input_len = 0
        self.retractions += 1


@dataclass
class ScheduleBatch:
    reqs: list[Req]
    forward_mode: ForwardMode
    req_to_token_pool: ReqToTokenPool
    token_to_kv_pool: TokenToKVPool
    tree_cache: BasePrefixCache
    device: torch.device
    chunked_req: Req | None = None  # the request of this batch whose prompt is not complete yet
    input_ids: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    out_cache_loc: torch.Tensor | None = None
    req_pool_indices: torch.Tensor | None = None
    seq_lens: torch.Tensor | None = None
    decode_index: torch.Tensor | None = None  # DECODE: the four vectors above as one [4, bs] tensor
    seq_lens_cpu: list[int] = field(default_factory=list)
    prefix_lens_cpu: list[int] = field(default_factory=list)
    extend_lens_cpu: list[int] = field(default_factory=list)
    # Run once right before this step samples (after its forward is launched): the overlap schedule
    # feeds the previous step's tokens to the grammars here, so their masks are up to date.
    before_sample: Callable[[], None] | None = None
    num_mixed_decode: int = 0  # running requests whose decode step rides in this prefill batch (last rows)
    input_logprob_plan: InputLogprobPlan | None = None  # prompt tokens this prefill scores

    def alloc_token_slots(self, n: int) -> torch.Tensor:
        out = self.token_to_kv_pool.alloc(n)
        if out is None:
            self.tree_cache.evict(n - self.token_to_kv_pool.available_size())
            out = self.token_to_kv_pool.alloc(n)
        if out is None:
            raise OutOfKVMemory(f"need {n} KV slots, {self.token_to_kv_pool.available_size()} free "
                                f"and {self.tree_cache.evictable_size()} evictable")
        return out

    def _write_req_to_token(self, lens: list[int], starts: list[int], loc: torch.Tensor,
                            reqs: list[Req] | None = None) -> torch.Tensor:
        """Point each request's rows [start, start + len) at the slots `loc`; returns the requests'
        pool indices on the device."""
        pools = torch.tensor([r.req_pool_idx for r in (self.reqs if reqs is None else reqs)], dtype=torch.int64)
        if all(n == 1 for n in lens):  # decode: one slot a request (no expansion: ~0.3 ms a CPU step less)
            rows, cols = pools, torch.tensor(starts, dtype=torch.int64)
        else:
            lens_t = torch.tensor(lens, dtype=torch.int64)
            rows = torch.repeat_interleave(pools, lens_t)
            starts_t = torch.repeat_interleave(torch.tensor(starts, dtype=torch.int64), lens_t)
            cols = starts_t + torch.arange(int(lens_t.sum())) - torch.repeat_interleave(torch.cumsum(lens_t, 0) - lens_t,
                                                                                        lens_t)
        dev = self.req_to_token_pool.req_to_token.device
        self.req_to_token_pool.req_to_token[to_device(rows, dev), to_device(cols, dev)] = loc.to(dev)
        self.req_pool_indices = to_device(pools, self.device)
        return self.req_pool_indices

    def prepare_for_extend(self) -> None:
        self.forward_mode = ForwardMode.EXTEND
        for r in self.reqs:
            if r.req_pool_idx is None:
                idx = self.req_to_token_pool.alloc()
                if idx is None:
                    raise OutOfKVMemory("no free request slot in ReqToTokenPool")
                r.req_pool_idx = idx
                row = self.req_to_token_pool.req_to_token[idx]
                row[: r.prefix_indices.numel()] = r.prefix_indices.to(row.device)
        self.prefix_lens_cpu = [r.prefix_indices.numel() for r in self.reqs]
        self.extend_lens_cpu = [r.extend_input_len for r in self.reqs]
        self.seq_lens_cpu = [p + e for p, e in zip(self.prefix_lens_cpu, self.extend_lens_cpu, strict=True)]
        tokens: list[int] = []
        spans: list[tuple[int, list[int]]] = []
        for r, p, s in zip(self.reqs, self.prefix_lens_cpu, self.seq_lens_cpu, strict=True):
            r.fill_ids = r.fill_ids[:s]
            r.kv_len = s
            spans.append(_scored_span(r, p, s, len(tokens)))
            tokens.extend(r.fill_ids[p:s])
        self.input_logprob_plan = InputLogprobPlan.build(spans, self.device)
        loc = self.alloc_token_slots(len(tokens))
        self._write_req_to_token(self.extend_lens_cpu, self.prefix_lens_cpu, loc)
        lens_t = torch.tensor(self.extend_lens_cpu, dtype=torch.int64)
        starts = torch.repeat_interleave(torch.tensor(self.prefix_lens_cpu, dtype=torch.int64), lens_t)
        offsets = torch.arange(len(tokens)) - torch.repeat_interleave(torch.cumsum(lens_t, 0) - lens_t, lens_t)
        self.input_ids = to_device(tokens, self.device)
        self.positions = to_device(starts + offsets, self.device)
        self.out_cache_loc = loc.to(self.device)
        self.seq_lens = to_device(self.seq_lens_cpu, self.device)

    def prepare_for_decode(self, input_ids: torch.Tensor | None = None) -> None:
        """One new token per request: its last output token, or `input_ids` already on the device
        (the overlap schedule feeds the previous step's samples before they reach the host)."""
        self.forward_mode = ForwardMode.DECODE
        self.input_logprob_plan = None
        bs = len(self.reqs)
        loc = self.alloc_token_slots(bs)
        kv_lens = [r.kv_len for r in self.reqs]
        for r in self.reqs:
            r.kv_len += 1
        self.seq_lens_cpu = [n + 1 for n in kv_lens]
        # The step's four index vectors (DECODE_INDEX_ROWS) as the rows of one tensor: the three
        # the host knows in one copy, the slots (the free list lives on the device: reading them
        # here would wait for the GPU) in another. At batch 1 each small copy or kernel outside
        # the CUDA graph costs the GPU a few microseconds a step.
        index = torch.empty((4, bs), dtype=torch.int64, device=self.device)
        index[:3].copy_(torch.tensor([[r.req_pool_idx for r in self.reqs], kv_lens, self.seq_lens_cpu],
                                     dtype=torch.int64), non_blocking=True)  # staged before copy_ returns
        index[3].copy_(loc, non_blocking=True)
        self.decode_index = index
        self.req_pool_indices, self.positions, self.seq_lens, self.out_cache_loc = index.unbind(0)
        self.req_to_token_pool.req_to_token[index[0], index[1]] = index[3]  # the table is on self.device
        if input_ids is None:
            input_ids = to_device([r.output_ids[-1] for r in self.reqs], self.device)
        self.input_ids = input_ids
        self.prefix_lens_cpu, self.extend_lens_cpu = [], []

    def mix_in_decode(self, running: list[Req]) -> None:
        """Append the running requests' decode step to this prefill batch (mixed chunked prefill):
        each becomes an extend row of one token (its last output) over its KV so far, so decodes
        advance while prompts prefill instead of waiting for the whole prefill phase."""
        assert self.forward_mode.is_extend() and self.input_ids is not None and self.positions is not None
        assert self.out_cache_loc is not None and self.req_pool_indices is not None and self.seq_lens is not None
        extend_pools = self.req_pool_indices
        loc = self.alloc_token_slots(len(running))
        kv_lens = [r.kv_len for r in running]
        for r in running:
            r.kv_len += 1
        pools = self._write_req_to_token([1] * len(running), kv_lens, loc, running)
        ends = [n + 1 for n in kv_lens]
        self.num_mixed_decode = len(running)
        self.req_pool_indices = torch.cat([extend_pools, pools])
        self.reqs = self.reqs + running
        self.prefix_lens_cpu = self.prefix_lens_cpu + kv_lens
        self.extend_lens_cpu = self.extend_lens_cpu + [1] * len(running)
        self.seq_lens_cpu = self.seq_lens_cpu + ends
        self.input_ids = torch.cat([self.input_ids, to_device([r.output_ids[-1] for r in running], self.device)])
        self.positions = torch.cat([self.positions, to_device(kv_lens, self.device)])
        self.out_cache_loc = torch.cat([self.out_cache_loc, loc.to(self.device)])
        self.seq_lens = torch.cat([self.seq_lens, to_device(ends, self.device)])

    def filter(self, keep: list[Req]) -> None:
        self.reqs = keep

    def record_input_logprobs(self, values: list[float]) -> None:
        """Hand each request its share of the prompt logprobs this step computed (plan order)."""
        assert self.input_logprob_plan is not None
        at = 0
        for r, n in zip(self.reqs, self.input_logprob_plan.counts, strict=False):
            r.input_logprobs.extend(values[at : at + n])
            at += n

    @property
    def sampled_reqs(self) -> list[Req]:
        """Requests that get a token from this step: all but a prompt still being chunked."""
        return [r for r in self.reqs if r is not self.chunked_req]

    def sampling_info(self, device: torch.device) -> SamplingBatchInfo:
        if self.before_sample is not None:
            hook, self.before_sample = self.before_sample, None
            hook()
        reqs = self.sampled_reqs
        rows = None if len(reqs) == len(self.reqs) else [i for i, r in enumerate(self.reqs) if r is not self.chunked_req]
        return SamplingBatchInfo.from_reqs(reqs, device, rows)

    def get_forward_batch(self, attn_backend: AttentionBackend) -> ForwardBatch:
        assert self.input_ids is not None and self.positions is not None and self.out_cache_loc is not None
        assert self.req_pool_indices is not None and self.seq_lens is not None
        return ForwardBatch(
            forward_mode=self.forward_mode,
            batch_size=len(self.reqs),
            input_ids=self.input_ids,
            positions=self.positions,
            req_pool_indices=self.req_pool_indices,
            seq_lens=self.seq_lens,
            out_cache_loc=self.out_cache_loc,
            seq_lens_cpu=self.seq_lens_cpu,
            extend_prefix_lens_cpu=self.prefix_lens_cpu,
            extend_seq_lens_cpu=self.extend_lens_cpu,
            req_to_token_pool=self.req_to_token_pool,
            token_to_kv_pool=self.token_to_kv_pool,
            attn_backend=attn_backend,
            num_decode_rows=self.num_mixed_decode,
            decode_index=self.decode_index if self.forward_mode.is_decode() else None,
        )


def _scored_span(req: Req, prefix_len: int, seq_len: int, first_row: int) -> tuple[int, list[int]]:
    """The rows of this step (its tokens start at flattened row `first_row`) that score `req`'s
    prompt, as (first row, tokens they predict); empty when none. The cache match was capped at
    the first wanted position, so the wanted positions start inside this step's tokens."""
    row = req.input_logprob_row()
    if row is None or row < prefix_len:
        return first_row, []
    end = min(seq_len, len(req.origin_input_ids) - 1)  # the last prompt row predicts the output
    return first_row + row - prefix_len, req.origin_input_ids[row + 1 : end + 1] if end > row else []


def check_prompt(input_ids: list[int], context_len: int, vocab_size: int, param: str = "prompt") -> None:
    """Raise InvalidRequestError when a prompt cannot run. Shared by the Scheduler and the front ends."""
    if not input_ids:
        raise InvalidRequestError("the prompt is empty", param, "empty_prompt")
    if len(input_ids) >= context_len:
        raise InvalidRequestError(f"the prompt has {len(input_ids)} tokens, the context length is {context_len} "
                                  "(at least one token must be left for the output)", param,
                                  "context_length_exceeded")
    if min(input_ids) < 0 or max(input_ids) >= vocab_size:
        raise InvalidRequestError(f"token id out of range: the prompt's token ids must be in [0, {vocab_size})", param,
                                  "invalid_token_id")
