"""Routing policies: given the healthy workers and a request's prompt text, pick one.

`cache_aware` follows the algorithm that sgl-router documents (its Rust code was not
used): keep an approximate prefix tree per worker; if the load is imbalanced beyond both
an absolute and a relative threshold, send to the least-loaded worker; otherwise send to
the worker whose tree matches the longest prefix when the matched fraction of the prompt
passes `cache_threshold`, else to the least-loaded worker. The chosen worker's tree
learns the prompt either way.

Load is the number of outstanding requests the router has on each worker.

With cache events (radixserve/router/kv_index.py) `cache_aware` matches exactly for every worker
whose event stream is live: the request's prompt tokens, cut into the engine's blocks, against
the blocks the engine reports it holds, and load is what the engine reports (queue and KV usage)
as well as the router's own count. Workers without live events keep the approximate tree, and
every worker's tree keeps learning, so that a worker whose stream dies falls back on a warm
tree. The exact path makes no random choice: ties go by load, then by a rendezvous hash of the
URL and the prompt's first uncached block, so router replicas fed the same streams agree, and
distinct new prefixes spread over the workers while repeats of one stick to one.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from radixserve.cache_events.protocol import BLOCK_TOKENS, block_hash
from radixserve.router.kv_index import KvIndex, WorkerIndex
from radixserve.router.tokenize import RoutedPrompt
from radixserve.router.tree import PrefixTree
from radixserve.router.workers import Worker


class Decision(StrEnum):
    CACHE_HIT = "cache_hit"  # longest prefix match passed the threshold
    CACHE_MISS = "cache_miss"  # no good match: least-loaded worker
    BALANCE = "balance"  # load imbalance overrode cache affinity
    ROUND_ROBIN = "round_robin"
    RANDOM = "random"
    POWER_OF_TWO = "power_of_two"


@dataclass(frozen=True, slots=True)
class Choice:
    worker: Worker
    decision: Decision
    match_ratio: float = 0.0
    matched_tokens: int | None = None  # exact match on the chosen worker; None when by the tree


class Policy(Protocol):
    name: str

    def select(self, workers: Sequence[Worker], text: str | None, prompt: RoutedPrompt | None = None) -> Choice:
        """Pick one of `workers` (non-empty, all healthy) for a request with prompt `text`
        (and its tokens in `prompt`, for policies that match exactly)."""
        ...

    def remove_worker(self, worker: Worker) -> None: ...

    def evict(self) -> None:
        """Periodic housekeeping (tree size caps); cheap for policies without state."""
        ...

    def tree_sizes(self) -> dict[str, int]: ...


class _Stateless:
    name = ""

    def remove_worker(self, worker: Worker) -> None:
        return None

    def evict(self) -> None:
        return None

    def tree_sizes(self) -> dict[str, int]:
        return {}


class RoundRobinPolicy(_Stateless):
    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def select(self, workers: Sequence[Worker], text: str | None, prompt: RoutedPrompt | None = None) -> Choice:
        worker = workers[self._next % len(workers)]
        self._next += 1
        return Choice(worker, Decision.ROUND_ROBIN)


class RandomPolicy(_Stateless):
    name = "random"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def select(self, workers: Sequence[Worker], text: str | None, prompt: RoutedPrompt | None = None) -> Choice:
        return Choice(self._rng.choice(workers), Decision.RANDOM)


class PowerOfTwoPolicy(_Stateless):
    """Two distinct random workers; the one with fewer outstanding requests wins."""

    name = "power_of_two"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def select(self, workers: Sequence[Worker], text: str | None, prompt: RoutedPrompt | None = None) -> Choice:
        if len(workers) == 1:
            return Choice(workers[0], Decision.POWER_OF_TWO)
        a, b = self._rng.sample(workers, 2)
        return Choice(b if b.outstanding < a.outstanding else a, Decision.POWER_OF_TWO)


@dataclass(frozen=True)
class CacheAwareConfig:
    # Defaults of sglang-router 0.3.2 (`python -m sglang_router.launch_router --help`).
    cache_threshold: float = 0.3
    balance_abs_threshold: int = 64
    balance_rel_threshold: float = 1.5
    max_tree_size: int = 2**26  # characters per worker tree
    # Exact routing: KV usage (0..1, engine-reported) is imbalanced when max - min exceeds this and
    # max > min * balance_rel_threshold. A warm RadixCache fills the pool, so warm workers sit near
    # 1.0 and never trip it; it spreads content while caches warm up (or one restarted).
    kv_balance_abs_threshold: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.cache_threshold <= 1.0:
            raise ValueError(f"cache threshold must be in [0, 1], got {self.cache_threshold}")
        if self.balance_abs_threshold < 0 or self.balance_rel_threshold < 1.0:
            raise ValueError("balance thresholds must be >= 0 (absolute) and >= 1.0 (relative)")
        if self.max_tree_size < 0:
            raise ValueError(f"max tree size must be >= 0, got {self.max_tree_size}")
        if not 0.0 <= self.kv_balance_abs_threshold <= 1.0:
            raise ValueError(f"KV balance threshold must be in [0, 1], got {self.kv_balance_abs_threshold}")


@dataclass(frozen=True, slots=True)
class _WorkerView:
    """What exact routing weighs for one worker."""

    ratio: float  # matched fraction of the prompt (tokens when exact, characters by the tree)
    matched: int | None  # matched prompt tokens; None for a worker routed by the tree
    load: int  # requests: engine-reported waiting + running, or the router's own count
    kv: float | None  # engine-reported KV usage; None when unknown


class CacheAwarePolicy:
    name = "cache_aware"

    def __init__(self, config: CacheAwareConfig | None = None, rng: random.Random | None = None,
                 index: KvIndex | None = None) -> None:
        self.config = config or CacheAwareConfig()
        self._rng = rng or random.Random()
        self._trees: dict[str, PrefixTree] = {}
        self.index = index  # cache events of the workers that have them; None: the tree only
        self.on_exact_match: Callable[[int], None] | None = None  # matched tokens of exact choices
        self.exact_choices = 0

    def tree(self, worker: Worker) -> PrefixTree:
        tree = self._trees.get(worker.url)
        if tree is None:
            tree = self._trees[worker.url] = PrefixTree()
        return tree

    def is_imbalanced(self, workers: Sequence[Worker]) -> bool:
        """Both thresholds must be exceeded, so that small absolute gaps never override affinity."""
        loads = [w.outstanding for w in workers]
        hi, lo = max(loads), min(loads)
        return hi - lo > self.config.balance_abs_threshold and hi > lo * self.config.balance_rel_threshold

    def _least_loaded(self, workers: Sequence[Worker]) -> Worker:
        # Ties (common when idle) go to the smallest tree, as sgl-router does for misses,
        # so that new prefixes spread over workers; then at random.
        best_load = min(w.outstanding for w in workers)
        tied = [w for w in workers if w.outstanding == best_load]
        if len(tied) == 1:
            return tied[0]
        smallest = min(self.tree(w).size for w in tied)
        tied = [w for w in tied if self.tree(w).size == smallest]
        return tied[0] if len(tied) == 1 else self._rng.choice(tied)

    def select(self, workers: Sequence[Worker], text: str | None, prompt: RoutedPrompt | None = None) -> Choice:
        if self.index is not None and prompt is not None:
            choice = self._select_exact(self.index, workers, text, prompt)
            if choice is not None:
                return choice
        if not text:
            return Choice(self._least_loaded(workers), Decision.CACHE_MISS)
        if len(workers) > 1 and self.is_imbalanced(workers):
            worker = self._least_loaded(workers)
            self._learn(worker, text)
            return Choice(worker, Decision.BALANCE)
        best_len = -1
        best: list[Worker] = []
        for w in workers:
            matched = self.tree(w).match(text)
            if matched > best_len:
                best_len, best = matched, [w]
            elif matched == best_len:
                best.append(w)
        ratio = best_len / len(text)
        if ratio > self.config.cache_threshold:
            worker = best[0] if len(best) == 1 else min(best, key=lambda w: w.outstanding)
            decision = Decision.CACHE_HIT
        else:
            worker = self._least_loaded(workers)
            decision = Decision.CACHE_MISS
        self._learn(worker, text)
        return Choice(worker, decision, ratio)

    def _select_exact(self, index: KvIndex, workers: Sequence[Worker], text: str | None,
                      prompt: RoutedPrompt) -> Choice | None:
        """Route on the engines' reported caches and load; None when no worker has live events
        or the prompt has no tokens (then the tree decides, as without events)."""
        live = {w.url: idx for w in workers if (idx := index.get(w.url)) is not None and idx.live}
        if not live:
            return None
        tokens = prompt.tokens
        if not tokens:
            return None
        view = {w.url: self._exact_view(w, live.get(w.url), len(tokens), text, prompt) for w in workers}
        hashes = prompt.block_hashes(BLOCK_TOKENS)
        # Rendezvous key: the prompt's first block that no worker holds (or its last block), so
        # that a new prefix goes to one worker whichever router sees it first.
        best_blocks = max((v.matched or 0 for v in view.values()), default=0) // BLOCK_TOKENS
        key = hashes[min(best_blocks, len(hashes) - 1)] if hashes else block_hash(0, tokens)

        def by_load(w: Worker) -> tuple[int, float, int]:
            v = view[w.url]
            return v.load, v.kv if v.kv is not None else 0.0, -_rendezvous(w.url, key)

        def by_kv(w: Worker) -> tuple[float, int, int]:
            v = view[w.url]
            return v.kv if v.kv is not None else 1.0, v.load, -_rendezvous(w.url, key)

        best = max(v.ratio for v in view.values())
        kv = [v.kv for v in view.values() if v.kv is not None]
        # A weak hit (only a preamble every prompt shares, e.g. a third of it) does not hold a prompt
        # where the cache is crowded: that is how SGLang's threshold piles every prompt onto one replica.
        # A strong hit (the prompt's own long prefix) does: sending it away to even out cache occupancy
        # only loses the prefix (seen on three real replicas, tests/router/test_real_replicas.py).
        strong = best >= min(1.0, 2 * self.config.cache_threshold)
        if len(workers) > 1 and self._loads_imbalanced(v.load for v in view.values()):
            worker, decision = min(workers, key=by_load), Decision.BALANCE
        elif best > self.config.cache_threshold and (strong or len(kv) < 2 or not self._kv_imbalanced(kv)):
            worker = min((w for w in workers if view[w.url].ratio == best), key=by_load)
            decision = Decision.CACHE_HIT
        elif len(kv) > 1 and self._kv_imbalanced(kv):
            worker, decision = min(workers, key=by_kv), Decision.BALANCE
        else:
            # A prefix nobody holds goes where the cache has the most room (SGLang's tree policy sends it
            # to the smallest tree), so tenants spread instead of evicting each other on one replica.
            worker, decision = min(workers, key=by_kv), Decision.CACHE_MISS
        if text:
            self._learn(worker, text)  # keeps the fallback warm should this worker's stream die
        chosen = view[worker.url]
        if chosen.matched is not None:
            self.exact_choices += 1
            if self.on_exact_match is not None:
                self.on_exact_match(chosen.matched)
        return Choice(worker, decision, chosen.ratio, chosen.matched)

    def _exact_view(self, worker: Worker, idx: WorkerIndex | None, n_tokens: int, text: str | None,
                    prompt: RoutedPrompt) -> _WorkerView:
        if idx is None:  # no live events: the tree's character ratio stands in
            ratio = self.tree(worker).match(text) / len(text) if text else 0.0
            return _WorkerView(ratio, None, worker.outstanding, None)
        bt = idx.block_tokens or BLOCK_TOKENS
        matched = idx.matched_blocks(prompt.block_hashes(bt)) * bt
        load = idx.load
        if load is None:
            return _WorkerView(matched / n_tokens, matched, worker.outstanding, None)
        # The engine's report lags our own sends by up to a batch: a burst from this router shows
        # in `outstanding` at once, the other routers' load in the report.
        return _WorkerView(matched / n_tokens, matched, max(load.waiting + load.running, worker.outstanding),
                           load.kv_usage)

    def _loads_imbalanced(self, loads: Iterable[int]) -> bool:
        values = list(loads)
        hi, lo = max(values), min(values)
        return hi - lo > self.config.balance_abs_threshold and hi > lo * self.config.balance_rel_threshold

    def _kv_imbalanced(self, usage: Iterable[float]) -> bool:
        values = list(usage)
        hi, lo = max(values), min(values)
        return hi - lo > self.config.kv_balance_abs_threshold and hi > lo * self.config.balance_rel_threshold

    def _learn(self, worker: Worker, text: str) -> None:
        tree = self.tree(worker)
        tree.insert(text)
        # Eviction runs on a timer; this bounds memory if a burst outpaces it.
        if tree.size > 2 * self.config.max_tree_size:
            tree.evict(self.config.max_tree_size)

    def remove_worker(self, worker: Worker) -> None:
        self._trees.pop(worker.url, None)

    def evict(self) -> None:
        for tree in list(self._trees.values()):
            tree.evict(self.config.max_tree_size)

    def tree_sizes(self) -> dict[str, int]:
        return {url: tree.size for url, tree in self._trees.items()}


def _rendezvous(url: str, key: int) -> int:
    """A stable (not per-process salted) weight of a worker for a key: the highest weight wins ties."""
    h = hashlib.blake2b(key.to_bytes(8, "little"), digest_size=8, key=url.encode()[-64:])
    return int.from_bytes(h.digest(), "little")


POLICIES = ("cache_aware", "round_robin", "random", "power_of_two")


def make_policy(name: str, cache: CacheAwareConfig | None = None, seed: int | None = None,
                index: KvIndex | None = None) -> Policy:
    rng = random.Random(seed)
    if name == "cache_aware":
        return CacheAwarePolicy(cache, rng, index)
    if name == "round_robin":
        return RoundRobinPolicy()
    if name == "random":
        return RandomPolicy(rng)
    if name == "power_of_two":
        return PowerOfTwoPolicy(rng)
    raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
