"""PrefillManager: the waiting queue and the prompt being prefilled in chunks; picks each prefill batch."""

from __future__ import annotations

import torch

from radixserve.managers.io_struct import FinishReason
from radixserve.managers.schedule_batch import Req, ScheduleBatch
from radixserve.managers.schedule_policy import (
    AddResult,
    PrefillAdder,
    order_waiting_queue,
    reserved_decode_tokens,
)
from radixserve.mem_cache.base_prefix_cache import BasePrefixCache
from radixserve.mem_cache.memory_pool import ReqToTokenPool, TokenToKVPool
from radixserve.model_executor.forward_batch import ForwardMode
from radixserve.server_args import ServerArgs

KV_POOL_TOO_SMALL = FinishReason("abort", message="the KV pool is too small for this request",
                                 error="kv_pool_too_small")


class PrefillManager:
    def __init__(self, server_args: ServerArgs, req_to_token_pool: ReqToTokenPool, token_to_kv_pool: TokenToKVPool,
                 tree_cache: BasePrefixCache, device: torch.device) -> None:
        self.server_args = server_args
        self.req_to_token_pool = req_to_token_pool
        self.token_to_kv_pool = token_to_kv_pool
        self.tree_cache = tree_cache
        self.device = device
        self.waiting_queue: list[Req] = []
        self.chunked_req: Req | None = None  # admitted, its prompt only partly prefilled

    def schedule(self, running: list[Req], max_running: int, new_token_ratio: float) -> ScheduleBatch | None:
        """The next prefill batch, or None. A chunked prompt that can never fit is left in
        `chunked_req` with `to_abort` set, for the scheduler to release."""
        if not self.waiting_queue and self.chunked_req is None:
            return None
        chunk = self.server_args.chunked_prefill_size
        adder = PrefillAdder(
            tree_cache=self.tree_cache,
            kv_budget=self.token_to_kv_pool.available_size() - sum(reserved_decode_tokens(r, new_token_ratio)
                                                                   for r in running),
            rem_input_tokens=self.server_args.max_prefill_tokens,
            rem_chunk_tokens=None if chunk == -1 else chunk,
            rem_running=max_running - len(running) - (1 if self.chunked_req else 0),
            new_token_ratio=new_token_ratio,
            allow_overcommit=not running and self.chunked_req is None,
        )
        if self.chunked_req is not None:
            self.chunked_req.init_next_round_input(self.tree_cache)
            if not adder.add_chunked_req(self.chunked_req):
                # No room for the next chunk: running requests free some as they finish. With
                # none running, no room will ever come.
                if not running:
                    self.chunked_req.to_abort = KV_POOL_TOO_SMALL
                return None
        if self.waiting_queue and adder.new_chunked_req is None:
            self._admit(adder)
        return self._build(adder) if adder.can_run else None

    def _admit(self, adder: PrefillAdder) -> None:
        order_waiting_queue(self.waiting_queue, self.server_args.schedule_policy, self.tree_cache,
                            by_priority=self.server_args.enable_priority_scheduling)
        free_req_slots = self.req_to_token_pool.available_size()
        for req in self.waiting_queue:
            if len(adder.can_run) >= free_req_slots + (1 if self.chunked_req else 0):
                break
            if adder.add_one_req(req) is AddResult.STOP:
                break

    def _build(self, adder: PrefillAdder) -> ScheduleBatch:
        admitted = {id(r) for r in adder.can_run}
        self.waiting_queue = [r for r in self.waiting_queue if id(r) not in admitted]
        for r in adder.can_run:
            if r is not self.chunked_req and r.retractions == 0:
                r.cached_tokens = min(r.prefix_indices.numel(), len(r.origin_input_ids))
                self.tree_cache.record_lookup(len(r.origin_input_ids), r.cached_tokens)
        self.chunked_req = adder.new_chunked_req
        batch = ScheduleBatch(adder.can_run, ForwardMode.EXTEND, self.req_to_token_pool, self.token_to_kv_pool,
                              self.tree_cache, self.device, chunked_req=self.chunked_req)
        batch.prepare_for_extend()
        return batch

    def may_admit(self, running: list[Req], max_running: int, new_token_ratio: float) -> bool:
        """A cheap guess whether a prefill could start now (the real check runs once the in-flight
        step is read back; a wrong guess costs one step without overlap, not correctness)."""
        if not self.waiting_queue or len(running) >= max_running or not self.req_to_token_pool.available_size():
            return False
        room = (self.token_to_kv_pool.available_size() + self.tree_cache.evictable_size()
                - sum(reserved_decode_tokens(r, new_token_ratio) for r in running))
        for r in self.waiting_queue[:8]:
            cached = r.prefix_indices.numel() if r.req_pool_idx is None else 0
            if len(r.origin_input_ids) + len(r.output_ids) - cached + reserved_decode_tokens(r, new_token_ratio) <= room:
                return True
        return False
