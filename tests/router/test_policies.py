"""Each policy's choices, with threshold edge cases."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radixserve.router.policies import (
    CacheAwareConfig,
    CacheAwarePolicy,
    Decision,
    PowerOfTwoPolicy,
    RandomPolicy,
    RoundRobinPolicy,
    make_policy,
)
from radixserve.router.workers import Worker, WorkerSource, WorkerState


def workers(*loads: int) -> list[Worker]:
    return [Worker(url=f"http://w{i}", source=WorkerSource.STATIC, state=WorkerState.HEALTHY, outstanding=load)
            for i, load in enumerate(loads)]


def cache_aware(threshold: float = 0.5, abs_t: int = 4, rel_t: float = 1.5, max_tree: int = 10_000) -> CacheAwarePolicy:
    return CacheAwarePolicy(CacheAwareConfig(threshold, abs_t, rel_t, max_tree), random.Random(0))


def test_round_robin_cycles_in_order() -> None:
    ws = workers(0, 0, 0)
    policy = RoundRobinPolicy()
    picks = [policy.select(ws, "x").worker.url for _ in range(6)]
    assert picks == [w.url for w in ws] * 2


def test_random_reaches_every_worker() -> None:
    ws = workers(0, 0, 0, 0)
    policy = RandomPolicy(random.Random(1))
    counts = Counter(policy.select(ws, None).worker.url for _ in range(400))
    assert set(counts) == {w.url for w in ws}
    assert min(counts.values()) > 50  # roughly uniform


def test_power_of_two_picks_the_less_loaded_of_its_pair() -> None:
    ws = workers(5, 1)
    policy = PowerOfTwoPolicy(random.Random(2))
    assert {policy.select(ws, None).worker.url for _ in range(20)} == {"http://w1"}
    # With three workers the most loaded can never win: it always loses its pair.
    ws3 = workers(9, 1, 2)
    assert "http://w0" not in {policy.select(ws3, None).worker.url for _ in range(200)}
    assert policy.select(workers(3), None).worker.url == "http://w0"


def test_cache_aware_hit_requires_ratio_strictly_above_threshold() -> None:
    ws = workers(0, 0)
    policy = cache_aware(threshold=0.5)
    policy.tree(ws[1]).insert("abcd")
    ws[0].outstanding = 0
    ws[1].outstanding = 1  # a miss would go to w0, the least loaded
    at = policy.select(ws, "abcdefgh")  # matched 4/8 = 0.5: not above
    assert (at.decision, at.worker.url, at.match_ratio) == (Decision.CACHE_MISS, "http://w0", 0.5)
    policy = cache_aware(threshold=0.5)
    policy.tree(ws[1]).insert("abcd")
    above = policy.select(ws, "abcdefg")  # matched 4/7 > 0.5
    assert (above.decision, above.worker.url) == (Decision.CACHE_HIT, "http://w1")


def test_cache_aware_learns_the_routed_prompt() -> None:
    ws = workers(0, 0, 0)
    policy = cache_aware()
    first = policy.select(ws, "system prompt one; question a")
    again = policy.select(ws, "system prompt one; question b")
    assert again.decision is Decision.CACHE_HIT and again.worker is first.worker
    other = policy.select(ws, "a different system prompt; q")
    assert other.decision is Decision.CACHE_MISS and other.worker is not first.worker  # smallest tree wins ties


def test_cache_aware_balance_needs_both_thresholds() -> None:
    policy = cache_aware(abs_t=4, rel_t=1.5)
    ws = workers(0, 0)
    policy.tree(ws[0]).insert("prefix shared by all")
    text = "prefix shared by all, then more"
    ws[0].outstanding, ws[1].outstanding = 14, 10  # diff 4 == abs: not imbalanced
    assert policy.select(ws, text).decision is Decision.CACHE_HIT
    ws[0].outstanding, ws[1].outstanding = 16, 11  # diff 5 > 4 but 16 <= 11 * 1.5
    assert policy.select(ws, text).decision is Decision.CACHE_HIT
    ws[0].outstanding, ws[1].outstanding = 17, 11  # diff 6 > 4 and 17 > 16.5: balance wins
    choice = policy.select(ws, text)
    assert (choice.decision, choice.worker.url) == (Decision.BALANCE, "http://w1")
    # The balanced-to worker learns the prompt too.
    assert policy.tree(ws[1]).match(text) == len(text)


def test_cache_aware_hit_ties_go_to_the_less_loaded() -> None:
    policy = cache_aware()
    ws = workers(3, 1, 0)
    for w in ws[:2]:
        policy.tree(w).insert("same prompt")
    choice = policy.select(ws, "same prompt")
    assert (choice.decision, choice.worker.url) == (Decision.CACHE_HIT, "http://w1")


def test_cache_aware_without_text_takes_least_loaded() -> None:
    policy = cache_aware()
    ws = workers(2, 0, 1)
    assert policy.select(ws, None).worker.url == "http://w1"
    assert policy.select(ws, "").worker.url == "http://w1"
    assert policy.tree_sizes().get("http://w1", 0) == 0  # nothing learnt from no text


def test_cache_aware_remove_and_evict() -> None:
    policy = cache_aware(max_tree=10)
    ws = workers(0, 0)
    for i in range(5):
        policy.tree(ws[0]).insert(f"text number {i}")
    assert policy.tree_sizes()["http://w0"] > 10
    policy.evict()
    assert policy.tree_sizes()["http://w0"] <= 10
    policy.remove_worker(ws[0])
    assert "http://w0" not in policy.tree_sizes()


def test_cache_aware_bounds_trees_between_evictions() -> None:
    policy = cache_aware(threshold=0.99, max_tree=100)
    ws = workers(0)
    for i in range(100):
        policy.select(ws, f"{i:04d}" + "z" * 40)
        assert policy.tree_sizes()["http://w0"] <= 2 * 100 + 44


def test_make_policy_names_and_config_validation() -> None:
    for name in ("cache_aware", "round_robin", "random", "power_of_two"):
        assert make_policy(name).name == name
    with pytest.raises(ValueError):
        make_policy("fastest")
    with pytest.raises(ValueError):
        CacheAwareConfig(cache_threshold=1.5)
    with pytest.raises(ValueError):
        CacheAwareConfig(balance_rel_threshold=0.5)


@settings(max_examples=300, deadline=None)
@given(
    loads=st.lists(st.integers(min_value=0, max_value=100), min_size=1, max_size=6),
    stored=st.lists(st.text(alphabet="ab", max_size=8), min_size=0, max_size=6),
    query=st.text(alphabet="ab", min_size=1, max_size=8),
    threshold=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
    abs_t=st.integers(min_value=0, max_value=10),
    rel_t=st.sampled_from([1.0, 1.0001, 1.5, 3.0]),
)
def test_cache_aware_choice_matches_its_specification(loads: list[int], stored: list[str], query: str,
                                                      threshold: float, abs_t: int, rel_t: float) -> None:
    ws = workers(*loads)
    policy = cache_aware(threshold, abs_t, rel_t)
    for i, text in enumerate(stored):
        policy.tree(ws[i % len(ws)]).insert(text)
    matches = {w.url: policy.tree(w).match(query) for w in ws}
    hi, lo = max(loads), min(loads)
    choice = policy.select(ws, query)
    if len(ws) > 1 and hi - lo > abs_t and hi > lo * rel_t:
        assert choice.decision is Decision.BALANCE
        assert choice.worker.outstanding == lo
    elif max(matches.values()) / len(query) > threshold:
        assert choice.decision is Decision.CACHE_HIT
        assert matches[choice.worker.url] == max(matches.values())
        assert choice.worker.outstanding == min(w.outstanding for w in ws if matches[w.url] == max(matches.values()))
    else:
        assert choice.decision is Decision.CACHE_MISS
        assert choice.worker.outstanding == lo
    assert policy.tree(choice.worker).match(query) == len(query)
