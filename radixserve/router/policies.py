"""Routing policies: given the healthy workers and a request's prompt text, pick one.

`cache_aware` follows the algorithm that sgl-router documents (its Rust code was not
used): keep an approximate prefix tree per worker; if the load is imbalanced beyond both
an absolute and a relative threshold, send to the least-loaded worker; otherwise send to
the worker whose tree matches the longest prefix when the matched fraction of the prompt
passes `cache_threshold`, else to the least-loaded worker. The chosen worker's tree
learns the prompt either way.

Load is the number of outstanding requests the router has on each worker.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

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


class Policy(Protocol):
    name: str

    def select(self, workers: Sequence[Worker], text: str | None) -> Choice:
        """Pick one of `workers` (non-empty, all healthy) for a request with prompt `text`."""
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

    def select(self, workers: Sequence[Worker], text: str | None) -> Choice:
        worker = workers[self._next % len(workers)]
        self._next += 1
        return Choice(worker, Decision.ROUND_ROBIN)


class RandomPolicy(_Stateless):
    name = "random"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def select(self, workers: Sequence[Worker], text: str | None) -> Choice:
        return Choice(self._rng.choice(workers), Decision.RANDOM)


class PowerOfTwoPolicy(_Stateless):
    """Two distinct random workers; the one with fewer outstanding requests wins."""

    name = "power_of_two"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def select(self, workers: Sequence[Worker], text: str | None) -> Choice:
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

    def __post_init__(self) -> None:
        if not 0.0 <= self.cache_threshold <= 1.0:
            raise ValueError(f"cache threshold must be in [0, 1], got {self.cache_threshold}")
        if self.balance_abs_threshold < 0 or self.balance_rel_threshold < 1.0:
            raise ValueError("balance thresholds must be >= 0 (absolute) and >= 1.0 (relative)")
        if self.max_tree_size < 0:
            raise ValueError(f"max tree size must be >= 0, got {self.max_tree_size}")


class CacheAwarePolicy:
    name = "cache_aware"

    def __init__(self, config: CacheAwareConfig | None = None, rng: random.Random | None = None) -> None:
        self.config = config or CacheAwareConfig()
        self._rng = rng or random.Random()
        self._trees: dict[str, PrefixTree] = {}

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

    def select(self, workers: Sequence[Worker], text: str | None) -> Choice:
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


POLICIES = ("cache_aware", "round_robin", "random", "power_of_two")


def make_policy(name: str, cache: CacheAwareConfig | None = None, seed: int | None = None) -> Policy:
    rng = random.Random(seed)
    if name == "cache_aware":
        return CacheAwarePolicy(cache, rng)
    if name == "round_robin":
        return RoundRobinPolicy()
    if name == "random":
        return RandomPolicy(rng)
    if name == "power_of_two":
        return PowerOfTwoPolicy(rng)
    raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
