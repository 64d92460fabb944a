"""Scheduler: continuous batching over the prefix cache and the paged KV pools.

One `step()` = pick the next batch (a prefill of waiting requests, else a decode of the running
ones), launch it on the ModelRunner (which samples), process what comes back (finish, release to
the cache, report), and return the outputs. The offline Engine calls `step()` in process; the
server runs the same loop in its scheduler subprocess. The concerns live beside it:
`prefill.PrefillManager` (waiting queue, admission, chunking), `decode.DecodeManager` (running
batch, retraction), `scheduler_output` (finish checks, output packing).

Overlap schedule (steady decode only): processing a step's tokens waits until the next step is
launched, fed by the previous step's ids still on the device, so the host's bookkeeping runs
while the GPU computes. A request that turns out to have finished rode along one step too many:
its surplus token is dropped, and the KV that step wrote (for its last real token) already
belongs to the tree. Anything that needs the tokens first (a prefill, a retraction, an abort,
penalties, logprobs) processes the step in flight before scheduling. Grammars (json_schema,
regex, ebnf) take the step in flight's tokens after the next forward is launched and before it
samples (`_accept_early`), so their token masks stay exact without giving up the overlap.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch.profiler import record_function

from radixserve.cache_events.protocol import EngineLoad
from radixserve.cache_events.tracker import BlockTracker
from radixserve.constrained.base import GrammarError
from radixserve.constrained.manager import GrammarManager
from radixserve.errors import InvalidRequestError
from radixserve.managers.decode import DecodeManager
from radixserve.managers.io_struct import (
    AbortReq,
    BatchTokenIDOut,
    CacheEventsOut,
    CheckMemoryReq,
    CheckMemoryReqOutput,
    FinishReason,
    FlushCacheReq,
    FlushCacheReqOutput,
    GetLoadReq,
    GetLoadReqOutput,
    SchedulerInput,
    TokenizedGenerateReqInput,
)
from radixserve.managers.prefill import PrefillManager
from radixserve.managers.processes import SERVER_ADMISSION_ENV
from radixserve.managers.schedule_batch import Req, ScheduleBatch, check_prompt
from radixserve.managers.scheduler_output import SchedulerStats, check_finished, pack_outputs
from radixserve.mem_cache import RadixCache, make_prefix_cache
from radixserve.model_executor.forward_batch import ForwardMode
from radixserve.model_executor.model_runner import ModelRunner, NextTokens
from radixserve.sampling.sampling_params import SamplingParams
from radixserve.server_args import ServerArgs
from radixserve.utils.detokenize import IncrementalDecoder
from radixserve.utils.kernel_compiles import WATCH as compile_watch
from radixserve.utils.profiler import StepProfiler
from radixserve.utils.step_log import StepLog, batch_shape

logger = logging.getLogger(__name__)

ABORTED = FinishReason("abort", message="aborted by request")


def default_max_queued(max_running_requests: int, max_total_tokens: int) -> int:
    """The default --max-queued-requests (docs/server.md, "Admission")."""
    return max(2 * max_running_requests, max_total_tokens // 256)


@dataclass
class LaunchedStep:
    """A step on the ModelRunner whose tokens are not processed yet."""

    mode: ForwardMode
    reqs: list[Req]  # the sampled requests, in row order
    tokens: NextTokens
    accepted: list[bool | None] | None = None  # grammars fed these tokens early (overlap), per row


class Scheduler:
    def __init__(self, server_args: ServerArgs, model_runner: ModelRunner, tokenizer: Any = None,
                 eos_token_ids: frozenset[int] = frozenset()) -> None:
        self.server_args = server_args
        self.model_runner = model_runner
        self.tokenizer = tokenizer  # finds stop strings; None: stop strings are not checked
        device = model_runner.device
        self.req_to_token_pool = model_runner.req_to_token_pool
        self.token_to_kv_pool = model_runner.token_to_kv_pool
        self.tree_cache = make_prefix_cache(server_args.disable_radix_cache, self.req_to_token_pool,
                                            self.token_to_kv_pool)
        self.prefill = PrefillManager(server_args, self.req_to_token_pool, self.token_to_kv_pool, self.tree_cache,
                                      device)
        self.decode = DecodeManager(self.req_to_token_pool, self.token_to_kv_pool, self.tree_cache, device)
        self.context_len = model_runner.sizes.context_len
        self.max_running_requests = model_runner.sizes.max_running_requests
        # Admission: requests may wait beyond the free running slots up to this many; more are
        # refused (429). The server's default: refill the running batch twice, or one request per
        # 256 KV tokens; the offline Engine queues without limit unless told.
        self.max_queued_requests: int | None = server_args.max_queued_requests
        if self.max_queued_requests is None and os.environ.get(SERVER_ADMISSION_ENV):
            self.max_queued_requests = default_max_queued(self.max_running_requests,
                                                          model_runner.sizes.max_total_tokens)
        self.vocab_size = model_runner.config.vocab_size
        self.eos_token_ids = frozenset(model_runner.config.eos_token_ids) | eos_token_ids
        self.stats = SchedulerStats()
        self._outputs: list[Req] = []
        self._rids: dict[str, Req] = {}
        self._seed_base = server_args.random_seed
        mode = server_args.overlap_schedule
        self.overlap = (mode == "on" or (mode == "auto" and device.type == "cuda")) and model_runner.supports_overlap
        self._inflight: LaunchedStep | None = None
        # Requests with a grammar (json_schema / regex / ebnf) wait here until it is compiled.
        backend = getattr(server_args, "grammar_backend", "xgrammar")
        self.grammar: GrammarManager[Req] | None = None
        if backend != "none" and tokenizer is not None:
            self.grammar = GrammarManager(backend, tokenizer, self.vocab_size, sorted(self.eos_token_ids))
        self.profiler = StepProfiler.from_env(model_runner.world.rank)  # RADIXSERVE_PROFILE_DIR
        self.step_log = StepLog.from_env(f"rank{model_runner.world.rank}")  # RADIXSERVE_STEP_LOG
        compile_watch.install()  # Triton compiles: counted, and warned about after the warm-up
        self._compiles_logged = len(compile_watch.compiles)
        self.block_tracker: BlockTracker | None = None  # cache events: the server's rank 0 only
        self._cache_events_at = 0.0

    @property
    def waiting_queue(self) -> list[Req]:
        return self.prefill.waiting_queue

    @property
    def running_batch(self) -> ScheduleBatch:
        return self.decode.running_batch

    # ---- inputs ------------------------------------------------------------------------------
    def handle(self, msg: SchedulerInput) -> FlushCacheReqOutput | GetLoadReqOutput | CheckMemoryReqOutput | None:
        """Apply one input; control messages return the reply for the TokenizerManager."""
        if isinstance(msg, TokenizedGenerateReqInput):
            try:
                self.add_request(msg)
            except Exception as e:  # a request the checks missed fails alone, never the process
                logger.exception("refused request %r: admitting it failed", msg.rid)
                self._report_unqueued(Req(msg.rid, [], SamplingParams(max_new_tokens=0)), FinishReason(
                    "abort", message=f"the request could not be admitted: {type(e).__name__}: {e}",
                    error="invalid_request"))
        elif isinstance(msg, AbortReq):
            self.abort_request(msg.rid)
        elif isinstance(msg, FlushCacheReq):
            return FlushCacheReqOutput(self.flush_cache())
        elif isinstance(msg, GetLoadReq):
            return GetLoadReqOutput(self.get_load())
        elif isinstance(msg, CheckMemoryReq):
            return self.check_memory_report()
        return None

    def add_request(self, recv: TokenizedGenerateReqInput) -> None:
        params = recv.sampling_params
        req = Req(recv.rid, list(recv.input_ids), params, recv.stream, recv.return_logprob,
                  recv.top_logprobs_num, self.eos_token_ids,
                  logprob_start_len=recv.logprob_start_len, priority=recv.priority)
        refusal = self._refusal(req)
        if refusal is None:
            try:
                params.check_vocab(self.vocab_size)  # stop_token_ids index the logits
            except InvalidRequestError as e:
                refusal = FinishReason("abort", message=e.message, error=e.code)
        if refusal is None and params.grammar is not None and self.grammar is None:
            refusal = FinishReason("abort", message=f"invalid value for {params.grammar[0]!r}: constrained decoding "
                                   "is turned off (--grammar-backend none)", error="invalid_request")
        if refusal is not None:
            self._report_unqueued(req, refusal)
            return
        # Keep prompt + output within the context; SGLang clamps the same way.
        params.max_new_tokens = min(params.max_new_tokens, self.context_len - len(req.origin_input_ids))
        seed = params.seed if params.seed is not None else self._seed_base
        if seed is not None:
            req.generator = torch.Generator(device=self.model_runner.device).manual_seed(seed)
        if params.stop and self.tokenizer is not None:
            req.stop_decoder = IncrementalDecoder(self.tokenizer, params.stop, params.skip_special_tokens)
        # max_new_tokens 0 still runs the prefill (SGLang's way to score a prompt or warm the cache).
        if params.grammar is not None and self.grammar is not None:
            try:
                self.grammar.submit(req, *params.grammar)  # joins the waiting queue once compiled
            except GrammarError as e:
                self._report_unqueued(req, FinishReason("abort", message=str(e), error="invalid_request"))
                return
            self._rids[req.rid] = req
            return
        self._rids[req.rid] = req
        self.waiting_queue.append(req)

    def _refusal(self, req: Req) -> FinishReason | None:
        """Why the request cannot be queued (the front ends check the same, so this is a backstop)."""
        try:
            check_prompt(req.origin_input_ids, self.context_len, self.vocab_size)
            req.sampling_params.validate()
        except InvalidRequestError as e:
            return FinishReason("abort", message=e.message, error=e.code)
        cap = self.max_queued_requests
        if cap is not None and len(self.waiting_queue) + self._grammar_queued() - self.free_running_slots() >= cap:
            return FinishReason("abort", message=f"the queue is full ({cap} requests wait beyond what the engine "
                                "can run now); retry later", error="queue_full")
        if req.rid in self._rids:
            return FinishReason("abort", message=f"request id {req.rid!r} is already in use",
                                error="duplicate_request_id")
        return None

    def free_running_slots(self) -> int:
        """Requests the running batch could still take (max_running_requests minus those running)."""
        running = len(self.running_batch.reqs) + (1 if self.prefill.chunked_req else 0)
        return max(0, self.max_running_requests - running)

    def _report_unqueued(self, req: Req, reason: FinishReason) -> None:
        req.finished_reason = reason
        self._outputs.append(req)

    def abort_request(self, rid: str) -> None:
        req = self._rids.get(rid)
        if req is None:
            return
        if req in self.waiting_queue:
            self.waiting_queue.remove(req)
            self._finish(req, ABORTED)
        elif self.grammar is not None and self.grammar.remove(req):
            self._finish(req, ABORTED)  # its grammar was still compiling
        else:
            req.to_abort = ABORTED  # running or chunked: released at the next step

    def _process_aborts(self) -> None:
        chunked = self.prefill.chunked_req
        if chunked is not None and chunked.to_abort:
            self.prefill.chunked_req = None
            self._finish(chunked, chunked.to_abort)
        for r in self.running_batch.reqs:
            if r.to_abort is not None:
                self._finish(r, r.to_abort)
        self.running_batch.filter([r for r in self.running_batch.reqs if not r.finished])

    # ---- the loop ----------------------------------------------------------------------------
    def has_work(self) -> bool:
        return bool(self.waiting_queue or self.running_batch.reqs or self.prefill.chunked_req or self._outputs
                    or self._inflight is not None or self._grammar_queued())

    def step(self) -> BatchTokenIDOut | None:
        """Run one batch (if any) and return the outputs to report (if any)."""
        started = time.perf_counter()
        self._admit_grammars()
        prev, self._inflight = self._inflight, None
        if prev is not None and not self._overlap_continues():
            self._process(prev)
            prev = None
        self._process_aborts()
        if prev is not None:
            batch: ScheduleBatch | None = self.decode.next_batch(prev.reqs, prev.tokens.device_ids)
            if batch is not None and any(r.grammar is not None for r in prev.reqs):
                # Once this step's forward is launched, and before it samples: the grammars take the
                # previous step's tokens, so this step's masks follow them.
                batch.before_sample = functools.partial(self._accept_early, prev)
            self.stats.num_overlap_steps += 1
        else:
            batch = self._next_batch()
        # Taken before the step runs: processing filters finished requests out of the running batch.
        shape = None if batch is None or self.step_log is None else batch_shape(batch)
        with record_function("scheduler.launch"):
            launched = None if batch is None else self._launch(batch)
        if launched is not None and self.overlap and batch is not None and self._overlappable(batch):
            self._inflight, launched = launched, None
        if prev is not None:
            with record_function("scheduler.process"):
                self._process(prev)  # the host's share, while the GPU runs the step just launched
        if launched is not None:
            self._process(launched)
        if batch is not None and self.profiler is not None:
            self.profiler.tick()
        if shape is not None and self.step_log is not None:
            self.step_log.record(*shape, len(self.running_batch.reqs), len(self.waiting_queue),
                                 self.stats.num_retractions, started)
            for event in compile_watch.compiles[self._compiles_logged:]:
                self.step_log.kernel_compile(event)
            self._compiles_logged = len(compile_watch.compiles)
        return self._collect_outputs()

    def _next_batch(self) -> ScheduleBatch | None:
        prefill = self.prefill.schedule(self.running_batch.reqs, self.max_running_requests,
                                        self.decode.new_token_ratio)
        if prefill is not None and self.server_args.enable_mixed_chunk and self.running_batch.reqs \
                and self.decode.has_room():
            prefill.mix_in_decode(self.running_batch.reqs)
        if prefill is not None or not self.running_batch.reqs:
            return prefill
        for r in self.decode.retract_until_room():
            if r.to_abort:
                self._finish(r, r.to_abort)
            else:
                self.waiting_queue.insert(0, r)
                self.stats.num_retractions += 1
        return self.decode.next_batch() if self.running_batch.reqs else None

    def _launch(self, batch: ScheduleBatch) -> LaunchedStep:
        tokens = self.model_runner.forward(batch)
        st = self.stats
        if batch.forward_mode.is_extend():
            new = len(batch.reqs) - batch.num_mixed_decode  # the rest are running requests' decode rows
            st.num_prefill_batches += 1
            st.num_prefill_seqs += new
            st.num_prefill_tokens += sum(batch.extend_lens_cpu[:new])
            st.num_prefill_cached_tokens += sum(batch.prefix_lens_cpu[:new])
            st.num_decode_tokens += batch.num_mixed_decode
            st.num_mixed_decode_tokens += batch.num_mixed_decode
        else:
            st.num_decode_steps += 1
            st.num_decode_tokens += len(batch.reqs)
        if batch.chunked_req is not None:
            self.tree_cache.cache_unfinished_req(batch.chunked_req)  # later chunks attend to it as a prefix
        return LaunchedStep(batch.forward_mode, batch.sampled_reqs, tokens)

    def _process(self, step: LaunchedStep) -> None:
        """Append each request's new token; finish, release and report what is done."""
        ids, out = step.tokens.tolist(), step.tokens
        for i, r in enumerate(step.reqs):
            if r.finished:
                continue  # finished at the step before: a surplus overlap token
            if r.sampling_params.max_new_tokens == 0:
                self._finish(r, FinishReason("length"))  # the prompt is prefilled (and scored): done
                continue
            if r.grammar is not None:
                early = step.accepted[i] if step.accepted is not None else None
                if not (early if early is not None else r.grammar.accept_token(ids[i])):
                    # The mask allowed only what the grammar accepts: never emit a token it refuses.
                    logger.error("request %s: its grammar rejected sampled token %d", r.rid, ids[i])
                    self._finish(r, FinishReason("abort", message=f"internal error: the grammar rejected the "
                                                 f"sampled token {ids[i]}", error="internal_error"))
                    continue
            r.output_ids.append(ids[i])
            if r.return_logprob and out.logprobs is not None:
                r.output_logprobs.append(out.logprobs[i])
                if r.top_logprobs_num > 0 and out.top_logprobs is not None:
                    r.output_top_logprobs.append(out.top_logprobs[i][: r.top_logprobs_num])
            self._after_token(r)
        if step.mode.is_extend():
            running = {id(r) for r in self.running_batch.reqs}  # mixed batches carry running requests too
            started = [r for r in step.reqs if not r.finished and id(r) not in running]
            for r in started:
                self.tree_cache.cache_unfinished_req(r)  # share the prompt with later requests now
            self.running_batch.filter([r for r in self.running_batch.reqs if not r.finished])
            self.running_batch.reqs.extend(started)
        else:
            self.running_batch.filter([r for r in self.running_batch.reqs if not r.finished])

    def _after_token(self, r: Req) -> None:
        if r.grammar is not None and r.grammar.is_terminated():
            # The grammar is complete: it decides the stop, over ignore_eos and min_new_tokens.
            last = r.output_ids[-1]
            self._finish(r, FinishReason("stop", matched=last if last in r.eos_token_ids else None))
            return
        reason = check_finished(r, self.context_len)
        if reason is not None:
            # Under overlap, kv_len already counts the in-flight step's slot, which holds this
            # request's last token: every token has KV, and the tree takes all of it.
            self._finish(r, reason)
        elif len(r.output_ids) == 1 or (
                r.stream and len(r.output_ids) - r.send_offset >= self.server_args.stream_interval):
            # The first token is reported at once, for a non-streaming request too: the front end
            # measures the time to first token on it (a non-streaming caller gets the rest with
            # the finish).
            self._outputs.append(r)

    def _finish(self, req: Req, reason: FinishReason) -> None:
        """Release the request's KV (if it holds any) to the cache and report it finished."""
        if req.req_pool_idx is not None:
            self.tree_cache.cache_finished_req(req)
        req.finished_reason = reason
        req.grammar = None  # its matcher is done with
        self._rids.pop(req.rid, None)
        self._outputs.append(req)

    def _accept_early(self, step: LaunchedStep) -> None:
        """Overlap: feed the step in flight's tokens to its requests' grammars (waiting for its ids
        on the host, while the next step's forward runs); `_process` then uses the results."""
        ids = step.tokens.tolist()
        step.accepted = [r.grammar.accept_token(ids[i]) if r.grammar is not None and not r.finished else None
                         for i, r in enumerate(step.reqs)]

    def _grammar_queued(self) -> int:
        return len(self.grammar) if self.grammar is not None else 0

    def _admit_grammars(self) -> None:
        """Move requests whose grammar is compiled to the waiting queue (arrival order), with a
        matcher each; a grammar that failed to compile fails its request. All ranks admit the same
        number (the minimum of what each has ready), so their schedules stay the same."""
        if self.grammar is None or not self.grammar.queue:
            return
        idle = not (self.waiting_queue or self.running_batch.reqs or self.prefill.chunked_req
                    or self._inflight is not None or self._outputs)
        for ready in self.grammar.pop_ready(self.model_runner.world.all_reduce_min, wait_s=0.005 if idle else 0.0):
            r = ready.item
            if ready.matcher is None:
                kind = (r.sampling_params.grammar or ("grammar", ""))[0]
                self._finish(r, FinishReason("abort", message=f"invalid value for {kind!r}: the grammar did not "
                                             f"compile: {ready.error}", error="invalid_request"))
            else:
                r.grammar = ready.matcher
                self.waiting_queue.append(r)

    def _collect_outputs(self) -> BatchTokenIDOut | None:
        if not self._outputs:
            return None
        reqs, self._outputs = self._outputs, []
        return pack_outputs(reqs)

    # ---- overlap schedule --------------------------------------------------------------------
    def _overlap_safe(self, r: Req) -> bool:
        """Whether the next step of `r` can be sampled before its last token reaches the host."""
        p = r.sampling_params
        # A grammar is fine: its mask is filled once the next step's forward runs (_accept_early).
        return (not r.return_logprob and p.repetition_penalty == 1.0 and p.frequency_penalty == 0.0
                and p.presence_penalty == 0.0 and len(r.output_ids) >= p.min_new_tokens
                # The surplus step writes position kv_len: it must lie inside the context.
                and len(r.origin_input_ids) + len(r.output_ids) < self.context_len)

    def _overlappable(self, batch: ScheduleBatch) -> bool:
        return batch.forward_mode.is_decode() and all(map(self._overlap_safe, batch.reqs))

    def _overlap_continues(self) -> bool:
        reqs = self.running_batch.reqs
        if not reqs or self.prefill.chunked_req is not None or any(r.to_abort for r in reqs):
            return False
        if not self.decode.has_room():
            return False  # a retraction may be due: decide it on read-back tokens
        if self.prefill.may_admit(reqs, self.max_running_requests, self.decode.new_token_ratio):
            return False
        if all(map(self._ends_in_flight, reqs)):
            return False  # a step launched now would only make surplus tokens
        return all(map(self._overlap_safe, reqs))

    def _ends_in_flight(self, r: Req) -> bool:
        """The step in flight gives `r` its last token by length (max_new_tokens or the context);
        a stop token or string cannot be known before it is read back."""
        n = len(r.output_ids) + 1  # output tokens once the step in flight is processed
        return n >= r.sampling_params.max_new_tokens or len(r.origin_input_ids) + n >= self.context_len

    def _drain_inflight(self) -> None:
        """Process the step in flight; after it the host state is exact again."""
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            self._process(inflight)

    # ---- control -----------------------------------------------------------------------------
    def flush_cache(self) -> bool:
        """Drop every cached prefix; only when no request holds KV."""
        self._drain_inflight()
        if (self.running_batch.reqs or self.prefill.chunked_req
                or any(r.req_pool_idx is not None for r in self.waiting_queue)):
            return False
        self.tree_cache.reset()
        self.token_to_kv_pool.clear()
        self.req_to_token_pool.clear()
        return True

    def get_load(self) -> dict[str, float]:
        used = self.token_to_kv_pool.size - self.token_to_kv_pool.available_size() - self.tree_cache.evictable_size()
        return {
            "num_running_reqs": len(self.running_batch.reqs) + (1 if self.prefill.chunked_req else 0),
            "num_waiting_reqs": len(self.waiting_queue) + self._grammar_queued(),
            "kv_used_tokens": used,
            "kv_cached_tokens": self.tree_cache.total_size(),
            "kv_total_tokens": self.token_to_kv_pool.size,
            "cache_hit_rate": self.tree_cache.stats.hit_rate,
            # Since start: each retraction sends a running request back to the queue to be
            # prefilled again (the KV pool ran out), a stall of its stream.
            "num_retractions": float(self.stats.num_retractions),
            # Since start: Triton kernels compiled after the warm-up, each a stall of every running
            # request (utils/kernel_compiles.py).
            "num_kernel_compiles_after_warmup": float(compile_watch.after_warmup),
        }

    # ---- cache events (docs/router.md, "Cache events") ------------------------------------------
    def enable_cache_events(self) -> None:
        """Record the RadixCache's block changes for `cache_events`; without a radix cache the
        messages carry only the load."""
        self.block_tracker = BlockTracker()
        if isinstance(self.tree_cache, RadixCache):
            self.tree_cache.track_blocks(self.block_tracker)

    def cache_events(self, now: float, heartbeat_s: float = 1.0) -> CacheEventsOut | None:
        """The block events since the last call, with the load: when there are any, else once
        `heartbeat_s` has passed (so a subscriber sees the load, and that we are alive)."""
        tracker = self.block_tracker
        if tracker is None or (not tracker.pending and now - self._cache_events_at < heartbeat_s):
            return None
        self._cache_events_at = now
        load, pool = self.get_load(), self.token_to_kv_pool
        return CacheEventsOut(tracker.drain(), EngineLoad(
            waiting=int(load["num_waiting_reqs"]), running=int(load["num_running_reqs"]),
            # Requests and cache, as the protocol says: a warm cache fills the pool (unlike
            # radixserve:token_usage, which counts evictable cached slots as free).
            kv_usage=1.0 - pool.available_size() / max(1, pool.size),
            cached_tokens=int(load["kv_cached_tokens"]), max_running=self.max_running_requests), time.time())

    def held_slots(self) -> torch.Tensor:
        """KV slots held by requests beyond their cached prefix (for integrity checks)."""
        parts = []
        chunked = self.prefill.chunked_req
        for r in [*self.running_batch.reqs, *([chunked] if chunked else [])]:
            assert r.req_pool_idx is not None
            row = self.req_to_token_pool.req_to_token[r.req_pool_idx]
            own_from = self.tree_cache.req_owned_from(r)
            parts.append(row[own_from : r.kv_len].cpu())
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)

    def check_memory(self) -> None:
        self.tree_cache.check_integrity(self.held_slots())

    def check_memory_report(self) -> CheckMemoryReqOutput:
        """check_memory for a remote caller: a broken invariant is reported, not raised."""
        self._drain_inflight()  # slots of a step in flight are exact only once it is processed
        try:
            self.check_memory()
        except AssertionError as e:
            logger.error("KV integrity check failed: %s", e)
            return CheckMemoryReqOutput(False, f"KV integrity check failed: {e}", self.token_to_kv_pool.size)
        return CheckMemoryReqOutput(True, "every KV slot is free, cached or held by one request, exactly once",
                                    self.token_to_kv_pool.size)
