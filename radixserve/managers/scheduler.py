"""Scheduler: continuous batching over the RadixCache and the paged KV pools.

One `step()` = pick the next batch (a prefill of waiting requests, else a decode of the
running ones), run it, sample, update requests, release finished ones to the cache, and
return what to report. The offline Engine calls `step()` in process; the server runs the same
loop in its scheduler subprocess.

Overlap schedule (steady decode only): a decode step is launched with the previous step's
sampled ids still on the device as its input, and only then are the previous step's ids read
back and processed, so the host's bookkeeping runs while the GPU computes. A request that turns
out to have finished rode along one step too many: its surplus token is dropped, and the KV that
step wrote (for its last real token) already belongs to the tree. Anything that needs the tokens
first (a prefill, a retraction, an abort, penalties, logprobs) reads the step back and runs as usual.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from radixserve.managers.io_struct import (
    AbortReq,
    BatchTokenIDOut,
    FinishReason,
    FlushCacheReq,
    FlushCacheReqOutput,
    GetLoadReq,
    GetLoadReqOutput,
    SchedulerInput,
    TokenizedGenerateReqInput,
)
from radixserve.managers.schedule_batch import Req, ScheduleBatch, check_prompt
from radixserve.managers.schedule_policy import (
    AddResult,
    PrefillAdder,
    order_waiting_queue,
    reserved_decode_tokens,
)
from radixserve.mem_cache.radix_cache import ChunkCache, RadixCache
from radixserve.model_executor.forward_batch import ForwardMode
from radixserve.model_executor.model_runner import ModelRunner
from radixserve.sampling.sampler import SampleOutput, SamplingBatchInfo, sample, sample_ids
from radixserve.sampling.sampling_params import SamplingParams
from radixserve.server_args import ServerArgs
from radixserve.utils.tensors import to_device

logger = logging.getLogger(__name__)

INIT_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO = 0.1
NEW_TOKEN_RATIO_DECAY = (INIT_NEW_TOKEN_RATIO - MIN_NEW_TOKEN_RATIO) / 600

DecodeFn = Callable[[list[int], bool], str]


@dataclass
class SchedulerStats:
    num_prompt_tokens: int = 0
    num_generation_tokens: int = 0
    num_cached_tokens: int = 0
    num_retractions: int = 0
    num_finished: int = 0
    num_overlap_steps: int = 0  # decode steps launched before the previous one was read back


@dataclass
class InflightDecode:
    """A decode step launched and not yet read back (overlap schedule)."""

    reqs: list[Req]
    next_ids: torch.Tensor  # [bs] on the device: the input of the step after
    host_ids: torch.Tensor  # where the ids land on the host
    ready: torch.cuda.Event | None  # recorded after the copy (CUDA)


class Scheduler:
    def __init__(self, server_args: ServerArgs, model_runner: ModelRunner,
                 decode: DecodeFn | None = None, eos_token_ids: frozenset[int] = frozenset()) -> None:
        self.server_args = server_args
        self.model_runner = model_runner
        self.device = model_runner.device
        self.req_to_token_pool = model_runner.req_to_token_pool
        self.token_to_kv_pool = model_runner.token_to_kv_pool
        cache_cls = ChunkCache if server_args.disable_radix_cache else RadixCache
        self.tree_cache: RadixCache = cache_cls(self.req_to_token_pool, self.token_to_kv_pool)
        self.context_len = model_runner.sizes.context_len
        self.max_running_requests = model_runner.sizes.max_running_requests
        self.vocab_size = model_runner.config.vocab_size
        self.decode = decode
        self.eos_token_ids = frozenset(model_runner.config.eos_token_ids) | eos_token_ids
        self.waiting_queue: list[Req] = []
        self.running_batch = self._empty_batch(ForwardMode.DECODE)
        self.chunked_req: Req | None = None
        self.new_token_ratio = INIT_NEW_TOKEN_RATIO
        self.stats = SchedulerStats()
        self._outputs: list[Req] = []
        self._rids: dict[str, Req] = {}
        self.forward_ct = 0
        self._seed_base = server_args.random_seed
        mode = server_args.overlap_schedule
        # Pipeline stages exchange sampled ids synchronously: no overlap there.
        self.overlap = (mode == "on" or (mode == "auto" and self.device.type == "cuda")) and model_runner.pp.size == 1
        self._inflight: InflightDecode | None = None

    # ---- inputs ------------------------------------------------------------------------------
    def handle(self, msg: SchedulerInput) -> FlushCacheReqOutput | GetLoadReqOutput | None:
        """Apply one input; control messages return the reply for the TokenizerManager."""
        if isinstance(msg, TokenizedGenerateReqInput):
            self.add_request(msg)
        elif isinstance(msg, AbortReq):
            self.abort_request(msg.rid)
        elif isinstance(msg, FlushCacheReq):
            return FlushCacheReqOutput(self.flush_cache())
        elif isinstance(msg, GetLoadReq):
            return GetLoadReqOutput(self.get_load())
        return None

    def add_request(self, recv: TokenizedGenerateReqInput) -> None:
        try:
            params = SamplingParams.from_dict(recv.sampling_params)
        except ValueError as e:
            self._reject(recv, str(e), status_code=400)
            return
        req = Req(recv.rid, list(recv.input_ids), params, recv.stream, recv.return_logprob,
                  recv.top_logprobs_num, self.eos_token_ids)
        error = self._validate(req)
        if error is not None:
            self._reject(recv, error[1], req, status_code=error[0])
            return
        # Keep prompt + output within the context; SGLang clamps the same way.
        req.sampling_params.max_new_tokens = min(params.max_new_tokens, self.context_len - len(req.origin_input_ids))
        seed = params.seed if params.seed is not None else self._seed_base
        if seed is not None:
            req.generator = torch.Generator(device=self.device).manual_seed(seed)
        if params.max_new_tokens == 0:
            req.finished_reason = FinishReason("length")
            self._outputs.append(req)
            return
        self._rids[req.rid] = req
        self.waiting_queue.append(req)

    def _validate(self, req: Req) -> tuple[int, str] | None:
        """(HTTP status, message) when the request must be refused."""
        error = check_prompt(req.origin_input_ids, self.context_len, self.vocab_size)
        if error is not None:
            return 400, error
        cap = self.server_args.max_queued_requests
        if cap is not None and len(self.waiting_queue) >= cap:
            return 429, f"the queue is full ({cap} waiting requests); retry later"
        if req.rid in self._rids:
            return 400, f"request id {req.rid!r} is already in use"
        return None

    def _reject(self, recv: TokenizedGenerateReqInput, message: str, req: Req | None = None,
                status_code: int | None = None) -> None:
        if req is None:
            req = Req(recv.rid, list(recv.input_ids), SamplingParams())
        req.finished_reason = FinishReason("abort", message=message, status_code=status_code)
        self._outputs.append(req)

    def abort_request(self, rid: str) -> None:
        req = self._rids.get(rid)
        if req is None:
            return
        if req in self.waiting_queue:
            self.waiting_queue.remove(req)
            if req.req_pool_idx is not None:  # a retracted request keeps nothing, but be exact
                self.tree_cache.cache_finished_req(req)
            self._finish(req, FinishReason("abort", message="aborted by request"))
        else:
            req.to_abort = "aborted by request"  # running or chunked: released at the next step

    def _process_aborts(self) -> None:
        if self.chunked_req is not None and self.chunked_req.to_abort:
            req, self.chunked_req = self.chunked_req, None
            self.tree_cache.cache_finished_req(req)
            self._finish(req, FinishReason("abort", message=req.to_abort))
        aborted = [r for r in self.running_batch.reqs if r.to_abort]
        if aborted:
            self.running_batch.filter([r for r in self.running_batch.reqs if not r.to_abort])
            for r in aborted:
                self.tree_cache.cache_finished_req(r)
                self._finish(r, FinishReason("abort", message=r.to_abort))

    # ---- the loop ----------------------------------------------------------------------------
    def has_work(self) -> bool:
        return bool(self.waiting_queue or self.running_batch.reqs or self.chunked_req or self._outputs
                    or self._inflight is not None)

    def step(self) -> BatchTokenIDOut | None:
        """Run one batch (if any) and return the outputs to report (if any)."""
        if self._inflight is not None and not self._overlap_continues():
            self._drain_inflight()
        self._process_aborts()
        if self._inflight is not None:
            prev = self._inflight
            self.new_token_ratio = max(MIN_NEW_TOKEN_RATIO, self.new_token_ratio - NEW_TOKEN_RATIO_DECAY)
            self._inflight = self._launch_decode(self.running_batch, prev)
            self.stats.num_overlap_steps += 1
            self._resolve(prev)  # the host's share, while the GPU runs the step just launched
            return self._collect_outputs()
        batch = self._get_next_batch()
        if batch is not None:
            if self.overlap and batch.forward_mode.is_decode() and all(map(self._overlap_safe, batch.reqs)):
                self._inflight = self._launch(batch)
            else:
                self._run_batch(batch)
        return self._collect_outputs()

    # ---- overlap schedule --------------------------------------------------------------------
    def _overlap_safe(self, r: Req) -> bool:
        """Whether the next step of `r` can be sampled before its last token reaches the host."""
        p = r.sampling_params
        return (not r.return_logprob and p.repetition_penalty == 1.0 and p.frequency_penalty == 0.0
                and p.presence_penalty == 0.0 and len(r.output_ids) >= p.min_new_tokens
                # The surplus step writes position kv_len: it must lie inside the context.
                and len(r.origin_input_ids) + len(r.output_ids) < self.context_len)

    def _overlap_continues(self) -> bool:
        reqs = self.running_batch.reqs
        if not reqs or self.chunked_req is not None or any(r.to_abort for r in reqs):
            return False
        if self.token_to_kv_pool.available_size() + self.tree_cache.evictable_size() < len(reqs):
            return False  # a retraction may be due: decide it on read-back tokens
        if self.waiting_queue and self._may_admit():
            return False
        return all(map(self._overlap_safe, reqs))

    def _may_admit(self) -> bool:
        """A cheap guess whether a prefill could start now (the real check runs once the in-flight
        step is read back; a wrong guess costs one step without overlap, not correctness)."""
        if len(self.running_batch.reqs) >= self.max_running_requests or not self.req_to_token_pool.available_size():
            return False
        room = (self.token_to_kv_pool.available_size() + self.tree_cache.evictable_size()
                - sum(reserved_decode_tokens(r, self.new_token_ratio) for r in self.running_batch.reqs))
        for r in self.waiting_queue[:8]:
            cached = r.prefix_indices.numel() if r.req_pool_idx is None else 0
            if len(r.origin_input_ids) + len(r.output_ids) - cached + reserved_decode_tokens(r, self.new_token_ratio) <= room:
                return True
        return False

    def _launch_decode(self, batch: ScheduleBatch, prev: InflightDecode) -> InflightDecode:
        """The next decode of the running requests, fed by `prev`'s ids still on the device."""
        rows = {id(r): i for i, r in enumerate(prev.reqs)}
        index = [rows[id(r)] for r in batch.reqs]
        ids = prev.next_ids
        if index != list(range(len(prev.reqs))):
            ids = ids[to_device(index, ids.device)]
        batch.prepare_for_decode(input_ids=ids)
        return self._launch(batch)

    def _launch(self, batch: ScheduleBatch) -> InflightDecode:
        logits = self.model_runner.forward(batch.get_forward_batch(self.model_runner.attn_backend))
        assert logits is not None
        self.forward_ct += 1
        for r in batch.reqs:
            r.kv_len += 1
        next_ids = sample_ids(logits, SamplingBatchInfo.from_reqs(batch.reqs, logits.device))
        if next_ids.is_cuda:
            host = torch.empty(next_ids.shape, dtype=next_ids.dtype, pin_memory=True)
            host.copy_(next_ids, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
            return InflightDecode(list(batch.reqs), next_ids, host, ready)
        return InflightDecode(list(batch.reqs), next_ids, next_ids, None)

    def _resolve(self, inflight: InflightDecode) -> None:
        """Read a launched step's ids back and advance its requests."""
        if inflight.ready is not None:
            inflight.ready.synchronize()
        for r, token in zip(inflight.reqs, inflight.host_ids.tolist(), strict=True):
            if r.finished:
                continue  # finished at the step before: a surplus token
            r.output_ids.append(token)
            # On finishing, kv_len already counts the in-flight step's slot, which holds this
            # request's last token: every token has KV, and the tree takes all of it.
            self._after_token(r)
        self.running_batch.filter([r for r in self.running_batch.reqs if not r.finished])

    def _drain_inflight(self) -> None:
        """Read back the step in flight; after it the host state is exact again."""
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            self._resolve(inflight)

    def _empty_batch(self, mode: ForwardMode) -> ScheduleBatch:
        return ScheduleBatch([], mode, self.req_to_token_pool, self.token_to_kv_pool, self.tree_cache, self.device)

    def _get_next_batch(self) -> ScheduleBatch | None:
        prefill = self._get_new_batch_prefill()
        if prefill is not None:
            return prefill
        if not self.running_batch.reqs:
            return None
        self._retract_if_needed()
        if not self.running_batch.reqs:
            return None
        self.running_batch.prepare_for_decode()
        self.new_token_ratio = max(MIN_NEW_TOKEN_RATIO, self.new_token_ratio - NEW_TOKEN_RATIO_DECAY)
        return self.running_batch

    def _get_new_batch_prefill(self) -> ScheduleBatch | None:
        if not self.waiting_queue and self.chunked_req is None:
            return None
        running = len(self.running_batch.reqs)
        reserved = sum(reserved_decode_tokens(r, self.new_token_ratio) for r in self.running_batch.reqs)
        chunk = self.server_args.chunked_prefill_size
        adder = PrefillAdder(
            tree_cache=self.tree_cache,
            kv_budget=self.token_to_kv_pool.available_size() - reserved,
            rem_input_tokens=self.server_args.max_prefill_tokens,
            rem_chunk_tokens=None if chunk == -1 else chunk,
            rem_running=self.max_running_requests - running - (1 if self.chunked_req else 0),
            new_token_ratio=self.new_token_ratio,
            allow_overcommit=running == 0 and self.chunked_req is None,
        )
        if self.chunked_req is not None:
            self.chunked_req.init_next_round_input(self.tree_cache)
            if not adder.add_chunked_req(self.chunked_req):
                # No room for the next chunk: running requests free some as they finish. With
                # none running, no room will ever come.
                if not self.running_batch.reqs:
                    req, self.chunked_req = self.chunked_req, None
                    self.tree_cache.cache_finished_req(req)
                    self._finish(req, FinishReason("abort", status_code=400,
                                                   message="the KV pool is too small for this request"))
                return None
        if self.waiting_queue and adder.new_chunked_req is None:
            order_waiting_queue(self.waiting_queue, self.server_args.schedule_policy, self.tree_cache)
            free_req_slots = self.req_to_token_pool.available_size()
            for req in self.waiting_queue:
                if len(adder.can_run) >= free_req_slots + (1 if self.chunked_req else 0):
                    break
                if adder.add_one_req(req) is AddResult.STOP:
                    break
        if not adder.can_run:
            return None
        admitted = {id(r) for r in adder.can_run}
        self.waiting_queue = [r for r in self.waiting_queue if id(r) not in admitted]
        for r in adder.can_run:
            if r is not self.chunked_req and r.retractions == 0:
                r.cached_tokens = min(r.prefix_indices.numel(), len(r.origin_input_ids))
                self.tree_cache.record_lookup(len(r.origin_input_ids), r.cached_tokens)
        self.chunked_req = adder.new_chunked_req
        batch = self._empty_batch(ForwardMode.EXTEND)
        batch.reqs = adder.can_run
        batch.chunked_req = self.chunked_req
        batch.prepare_for_extend()
        return batch

    def _retract_if_needed(self) -> None:
        """Make sure every running request can get one more KV slot, retracting the newest if not."""
        batch = self.running_batch
        while batch.reqs and (self.token_to_kv_pool.available_size() + self.tree_cache.evictable_size()
                              < len(batch.reqs)):
            if len(batch.reqs) == 1:
                req = batch.reqs[0]
                batch.filter([])
                self.tree_cache.cache_finished_req(req)
                self._finish(req, FinishReason("abort", message="the KV pool is too small for this request",
                                               status_code=400))
                return
            victim = max(batch.reqs, key=lambda r: (r.created, r.rid))
            batch.filter([r for r in batch.reqs if r is not victim])
            self.tree_cache.cache_finished_req(victim)
            victim.reset_for_retract()
            self.waiting_queue.insert(0, victim)
            self.stats.num_retractions += 1
            self.new_token_ratio = min(1.0, self.new_token_ratio + 0.2)
            logger.debug("retracted %s (%d output tokens kept)", victim.rid, len(victim.output_ids))

    # ---- running and results -----------------------------------------------------------------
    def _run_batch(self, batch: ScheduleBatch) -> None:
        fb = batch.get_forward_batch(self.model_runner.attn_backend)
        logits = self.model_runner.forward(fb)
        self.forward_ct += 1
        if batch.forward_mode.is_extend():
            for r, p, e in zip(batch.reqs, batch.prefix_lens_cpu, batch.extend_lens_cpu, strict=True):
                r.kv_len = p + e
            rows = [i for i, r in enumerate(batch.reqs) if r is not batch.chunked_req]
            to_sample = [batch.reqs[i] for i in rows]
            if batch.chunked_req is not None:
                self.tree_cache.cache_unfinished_req(batch.chunked_req)
            if to_sample:
                sel = logits
                if logits is not None and len(rows) != len(batch.reqs):
                    sel = logits[torch.tensor(rows, device=logits.device)]
                self._append_samples(to_sample, sel)
            keep = []
            for r in to_sample:
                if r.finished:
                    continue
                self.tree_cache.cache_unfinished_req(r)  # share the prompt with later requests now
                keep.append(r)
            self.running_batch.reqs.extend(keep)
        else:
            for r in batch.reqs:
                r.kv_len += 1
            self._append_samples(batch.reqs, logits)
            batch.filter([r for r in batch.reqs if not r.finished])

    def _append_samples(self, reqs: list[Req], logits: torch.Tensor | None) -> None:
        """Sample from the logits (None on pipeline stages before the last, which receive the
        last stage's tokens instead) and advance each request."""
        out: SampleOutput | None = None
        if logits is not None:
            out = sample(logits, SamplingBatchInfo.from_reqs(reqs, logits.device))
        out = self.model_runner.pp.broadcast_from_last(out)
        assert out is not None
        for i, r in enumerate(reqs):
            r.output_ids.append(out.next_token_ids[i])
            if r.return_logprob and out.logprobs is not None:
                r.output_logprobs.append(out.logprobs[i])
                if r.top_logprobs_num > 0 and out.top_logprobs is not None:
                    r.output_top_logprobs.append(out.top_logprobs[i][: r.top_logprobs_num])
            self._after_token(r)

    def _after_token(self, r: Req) -> None:
        """A new output token is appended: finish and release the request, or report it."""
        self._check_finished(r)
        if r.finished:
            self.tree_cache.cache_finished_req(r)
            self._finish(r, r.finished_reason)
        elif r.stream and len(r.output_ids) - r.send_offset >= self.server_args.stream_interval:
            self._outputs.append(r)

    def _check_finished(self, req: Req) -> None:
        token = req.output_ids[-1]
        params = req.sampling_params
        enough = len(req.output_ids) >= params.min_new_tokens
        if (enough and not params.ignore_eos and token in req.eos_token_ids) or (enough and token in params.stop_token_ids):
            req.finished_reason = FinishReason("stop", matched=token)
        elif len(req.output_ids) >= params.max_new_tokens:
            req.finished_reason = FinishReason("length")
        elif enough and params.stop and self.decode is not None:
            longest = max(len(s.encode()) for s in params.stop)
            tail = self.decode(req.output_ids[-(longest + 1):], params.skip_special_tokens)
            for s in params.stop:
                if s in tail:
                    req.finished_reason = FinishReason("stop", matched=s)
                    break
        if req.finished_reason is None and len(req.origin_input_ids) + len(req.output_ids) >= self.context_len:
            req.finished_reason = FinishReason("length")

    def _finish(self, req: Req, reason: FinishReason | None) -> None:
        req.finished_reason = reason
        self._rids.pop(req.rid, None)
        self.stats.num_finished += 1
        self._outputs.append(req)

    def _collect_outputs(self) -> BatchTokenIDOut | None:
        if not self._outputs:
            return None
        reqs, self._outputs = self._outputs, []
        out = BatchTokenIDOut([], [], [], [], [], [], [], [], [], [])
        for r in reqs:
            new = r.output_ids[r.send_offset :]
            out.rids.append(r.rid)
            out.new_token_ids.append(new)
            out.finished_reasons.append(r.finished_reason)
            out.prompt_tokens.append(len(r.origin_input_ids))
            out.completion_tokens.append(len(r.output_ids))
            out.cached_tokens.append(r.cached_tokens)
            out.skip_special_tokens.append(r.sampling_params.skip_special_tokens)
            assert out.new_token_logprobs is not None and out.new_top_logprobs is not None
            assert out.stop_strs is not None
            out.stop_strs.append(r.sampling_params.stop)
            out.new_token_logprobs.append(r.output_logprobs[r.send_offset :])
            out.new_top_logprobs.append(r.output_top_logprobs[r.send_offset :])
            self.stats.num_generation_tokens += len(new)
            if r.send_offset == 0 and (new or r.finished):
                self.stats.num_prompt_tokens += len(r.origin_input_ids)
                self.stats.num_cached_tokens += r.cached_tokens
            r.send_offset = len(r.output_ids)
        return out

    # ---- control -----------------------------------------------------------------------------
    def flush_cache(self) -> bool:
        """Drop every cached prefix; only when no request holds KV."""
        self._drain_inflight()
        if self.running_batch.reqs or self.chunked_req or any(r.req_pool_idx is not None for r in self.waiting_queue):
            return False
        self.tree_cache.reset()
        self.token_to_kv_pool.clear()
        self.req_to_token_pool.clear()
        return True

    def get_load(self) -> dict[str, float]:
        used = self.token_to_kv_pool.size - self.token_to_kv_pool.available_size() - self.tree_cache.evictable_size()
        return {
            "num_running_reqs": len(self.running_batch.reqs) + (1 if self.chunked_req else 0),
            "num_waiting_reqs": len(self.waiting_queue),
            "kv_used_tokens": used,
            "kv_cached_tokens": self.tree_cache.total_size(),
            "kv_total_tokens": self.token_to_kv_pool.size,
            "cache_hit_rate": self.tree_cache.stats.hit_rate,
        }

    def held_slots(self) -> torch.Tensor:
        """KV slots held by requests beyond their cached prefix (for integrity checks)."""
        parts = []
        holders = list(self.running_batch.reqs) + ([self.chunked_req] if self.chunked_req else [])
        for r in holders:
            assert r.req_pool_idx is not None
            row = self.req_to_token_pool.req_to_token[r.req_pool_idx]
            own_from = 0 if self.tree_cache.disabled else r.prefix_indices.numel()
            parts.append(row[own_from : r.kv_len].cpu())
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)

    def check_memory(self) -> None:
        self.tree_cache.check_integrity(self.held_slots())
