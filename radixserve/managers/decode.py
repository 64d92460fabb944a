"""DecodeManager: the running batch (one new token per request per step) and making KV room for it."""

from __future__ import annotations

import logging

import torch

from radixserve.managers.prefill import KV_POOL_TOO_SMALL
from radixserve.managers.schedule_batch import Req, ScheduleBatch
from radixserve.mem_cache.base_prefix_cache import BasePrefixCache
from radixserve.mem_cache.memory_pool import ReqToTokenPool, TokenToKVPool
from radixserve.model_executor.forward_batch import ForwardMode
from radixserve.utils.tensors import to_device

logger = logging.getLogger(__name__)

# How much of each running request's max_new_tokens admission reserves: starts high, decays while
# decoding goes well, jumps after a retraction (SGLang's new_token_ratio).
INIT_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO = 0.1
NEW_TOKEN_RATIO_DECAY = (INIT_NEW_TOKEN_RATIO - MIN_NEW_TOKEN_RATIO) / 600


class DecodeManager:
    def __init__(self, req_to_token_pool: ReqToTokenPool, token_to_kv_pool: TokenToKVPool,
                 tree_cache: BasePrefixCache, device: torch.device) -> None:
        self.token_to_kv_pool = token_to_kv_pool
        self.tree_cache = tree_cache
        self.running_batch = ScheduleBatch([], ForwardMode.DECODE, req_to_token_pool, token_to_kv_pool,
                                           tree_cache, device)
        self.new_token_ratio = INIT_NEW_TOKEN_RATIO

    @property
    def reqs(self) -> list[Req]:
        return self.running_batch.reqs

    def has_room(self) -> bool:
        """Every running request can get one more KV slot."""
        return self.token_to_kv_pool.available_size() + self.tree_cache.evictable_size() >= len(self.reqs)

    def next_batch(self, prev_reqs: list[Req] | None = None, prev_ids: torch.Tensor | None = None) -> ScheduleBatch:
        """The next decode step of the running requests. Under the overlap schedule its input ids
        are `prev_ids` (the previous step's samples for `prev_reqs`, still on the device)."""
        batch = self.running_batch
        if prev_reqs is not None and prev_ids is not None:
            rows = {id(r): i for i, r in enumerate(prev_reqs)}
            index = [rows[id(r)] for r in batch.reqs]
            if index != list(range(len(prev_reqs))):
                prev_ids = prev_ids[to_device(index, prev_ids.device)]
        batch.prepare_for_decode(input_ids=prev_ids)
        self.new_token_ratio = max(MIN_NEW_TOKEN_RATIO, self.new_token_ratio - NEW_TOKEN_RATIO_DECAY)
        return batch

    def retract_until_room(self) -> list[Req]:
        """Take the newest requests out until the rest fit; returns them, released, for the
        waiting queue. A lone request that cannot fit is released with `to_abort` set."""
        batch, out = self.running_batch, list[Req]()
        while batch.reqs and not self.has_room():
            if len(batch.reqs) == 1:
                req = batch.reqs[0]
                batch.filter([])
                self.tree_cache.cache_finished_req(req)
                req.to_abort = KV_POOL_TOO_SMALL
                return [*out, req]
            victim = max(batch.reqs, key=lambda r: (r.created, r.rid))
            batch.filter([r for r in batch.reqs if r is not victim])
            self.tree_cache.cache_finished_req(victim)
            victim.reset_for_retract()
            self.new_token_ratio = min(1.0, self.new_token_ratio + 0.2)
            logger.debug("retracted %s (%d output tokens kept)", victim.rid, len(victim.output_ids))
            out.append(victim)
        return out
