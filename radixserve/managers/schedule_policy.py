"""Waiting-queue order (lpm / fcfs) and PrefillAdder: which waiting requests fit in the next prefill."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, auto

from radixserve.managers.schedule_batch import Req
from radixserve.mem_cache.base_prefix_cache import BasePrefixCache

# Matching every waiting request against the tree costs O(queue * prompt); past this queue
# length lpm falls back to fcfs, as SGLang does.
LPM_MAX_QUEUE = 128
# Cap on the decode tokens one request is assumed to still need when reserving KV for it.
MAX_RESERVE_PER_REQ = 4096
# A waiting request whose first tokens equal those of a request already in this prefill batch,
# and that has no longer cached prefix, waits one round: after this batch its prefix is cached.
IN_BATCH_PREFIX_TOKENS = 32


class AddResult(Enum):
    ADDED = auto()
    DEFERRED = auto()  # skip this one, keep scanning
    STOP = auto()  # nothing more fits in this batch


def order_waiting_queue(queue: list[Req], policy: str, tree_cache: BasePrefixCache,
                        by_priority: bool = False) -> None:
    """Compute each request's cached prefix and sort the queue in place by the policy.

    `by_priority` (--enable-priority-scheduling): higher `Req.priority` first, as SGLang's default
    (vLLM ranks the other way); within one priority the policy's order stands (stable sort).
    Waiting requests are only reordered, running ones are never preempted, so a steady stream
    of high-priority work can starve lower priorities: the router's per-key limits bound that.
    """
    if policy == "lpm" and len(queue) <= LPM_MAX_QUEUE and tree_cache.shares_prefixes:
        for r in queue:
            r.init_next_round_input(tree_cache)
        # Stable sort: equal prefixes keep arrival order.
        queue.sort(key=lambda r: -r.prefix_indices.numel())
    else:
        for r in queue:
            r.init_next_round_input(tree_cache)
    if by_priority:
        queue.sort(key=lambda r: -r.priority)


def reserved_decode_tokens(req: Req, new_token_ratio: float) -> int:
    left = max(0, req.sampling_params.max_new_tokens - len(req.output_ids))
    return int(min(left, MAX_RESERVE_PER_REQ) * new_token_ratio)


@dataclass
class PrefillAdder:
    """Admits requests while they fit the token budget, the KV pool and the running limit."""

    tree_cache: BasePrefixCache
    # Free KV slots minus what running requests will still need. Evictable slots are added live
    # (rem_total_tokens): locking an admitted request's prefix makes those slots unevictable.
    kv_budget: int
    rem_input_tokens: int  # prefill token budget of this batch
    rem_chunk_tokens: int | None  # chunk budget (None: chunking disabled)
    rem_running: int  # more requests the running batch may hold
    new_token_ratio: float
    allow_overcommit: bool  # nothing else runs: admit a prompt that fits even without decode reserve
    can_run: list[Req] = field(default_factory=list)
    new_chunked_req: Req | None = None
    _batch_heads: set[tuple[int, ...]] = field(default_factory=set)
    _used: int = 0  # slots promised to this batch (prefill plus decode reserve)

    @property
    def rem_total_tokens(self) -> int:
        return self.kv_budget + self.tree_cache.evictable_size() - self._used

    def add_chunked_req(self, req: Req) -> bool:
        """Continue the request whose prompt is being prefilled in chunks, if KV room is left."""
        room = min(self._chunk_budget(), self.rem_total_tokens)
        if room <= 0:
            return False
        self._take(req, truncate_to=room)
        return True

    def _chunk_budget(self) -> int:
        budget = self.rem_input_tokens
        if self.rem_chunk_tokens is not None:
            budget = min(budget, self.rem_chunk_tokens)
        return budget

    def _take(self, req: Req, truncate_to: int) -> None:
        if req.extend_input_len > truncate_to:
            req.extend_input_len = truncate_to
            self.new_chunked_req = req
        self.can_run.append(req)
        self.rem_input_tokens -= req.extend_input_len
        if self.rem_chunk_tokens is not None:
            self.rem_chunk_tokens -= req.extend_input_len
        self._used += req.extend_input_len

    def add_one_req(self, req: Req) -> AddResult:
        """Try to admit `req`."""
        if self.rem_running <= 0 or self.new_chunked_req is not None:
            return AddResult.STOP
        head = tuple(req.fill_ids[:IN_BATCH_PREFIX_TOKENS])
        if (self.tree_cache.shares_prefixes and len(head) == IN_BATCH_PREFIX_TOKENS
                and req.prefix_indices.numel() < IN_BATCH_PREFIX_TOKENS and head in self._batch_heads):
            return AddResult.DEFERRED
        result = self._admit(req)
        if result is AddResult.ADDED:
            self._batch_heads.add(head)
        return result

    def _admit(self, req: Req) -> AddResult:
        budget = self._chunk_budget()
        if budget <= 0:
            return AddResult.STOP
        if req.extend_input_len > budget and self.rem_chunk_tokens is None and self.can_run:
            return AddResult.STOP  # unchunkable and the batch already has work: next round
        # Lock the prefix before counting: its slots cannot be evicted to make room for itself.
        if req.last_node is not None:
            self.tree_cache.inc_lock_ref(req.last_node)
        need = req.extend_input_len + reserved_decode_tokens(req, self.new_token_ratio)
        # With nothing else running, a prompt that fits may go without its decode reserve: it
        # cannot starve anyone, and if decode runs dry it ends with a clear error, not a hang.
        lone_fit = self.allow_overcommit and not self.can_run and req.extend_input_len <= self.rem_total_tokens
        if need > self.rem_total_tokens and not lone_fit:
            if req.last_node is not None:
                self.tree_cache.dec_lock_ref(req.last_node)
            return AddResult.STOP
        self.rem_running -= 1
        self._take(req, truncate_to=budget if self.rem_chunk_tokens is not None else req.extend_input_len)
        self._used += reserved_decode_tokens(req, self.new_token_ratio)
        return AddResult.ADDED
