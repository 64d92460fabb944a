"""Seeded benchmark workloads that cannot be served from the radix cache by accident.

Issue 16: `bench_offline.py` once cut every prompt from one periodic text, so the 1000 prompts of
its throughput workload were one token sequence and every prefill after the first came from the
radix cache. The generators here give token-id prompts that are pairwise distinct from their first
token on, and `check_cached` turns a cache hit rate above 1 % on a workload that is not about
sharing into an error, so such a figure cannot be published again.

  random_prompts          n prompts of uniform random ids, pairwise distinct first min(32, len) tokens
  sharegpt_lengths        (input, output) lengths with ShareGPT-like means (see below)
  sharegpt_requests       those lengths with distinct random prompts
  shared_prefix_prompts   groups x per-group prompts behind a common system prefix (sharing on purpose)
  check_cached            the cached-token guard

ShareGPT-like lengths. The ShareGPT dataset cannot be downloaded on the machines this project runs
on, so its lengths are modelled, not sampled. Target means (what is matched): 229.7 input and 203.1
output tokens per request, from vLLM's own run of `vllm bench serve` on 1000 ShareGPT requests with
the Llama-3.1-8B-Instruct tokenizer (229,711 input and 203,068 generated tokens;
https://github.com/vllm-project/vllm/pull/18566). Those requests pass vLLM's ShareGPT filter
(prompt and output at least 4 tokens, prompt at most 1024, prompt plus output at most 2048): here
inputs are clipped to [4, 1024] and outputs to [4, 1024], which keeps every request within 2048.
Both lengths are log-normal; the spreads (sigma 1.2 for inputs, 0.9 for outputs: ShareGPT's
prompts are more skewed than its answers) are assumptions, not fits to the data, and mu is solved
so that the mean of the clipped distribution equals the target. So the means match the published
run and the shapes are an approximation; no other statistic of ShareGPT is claimed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Prompts must differ within their first this many tokens (or the whole prompt if it is shorter).
DISTINCT_PREFIX = 32
# A workload that is not about sharing may have at most this fraction of its prompt tokens cached:
# random ids collide on a first token by chance (1000 prompts over a 128k vocabulary share a first
# token about 4 times), which caches a handful of tokens, never 1 %.
MAX_CACHED_FRACTION = 0.01

# ShareGPT-like lengths: see the module docstring for the source and what is assumed.
SHAREGPT_INPUT_MEAN = 229.7
SHAREGPT_OUTPUT_MEAN = 203.1
SHAREGPT_INPUT_SIGMA = 1.2
SHAREGPT_OUTPUT_SIGMA = 0.9
SHAREGPT_MIN_LEN = 4
SHAREGPT_MAX_INPUT = 1024
SHAREGPT_MAX_OUTPUT = 1024
SHAREGPT_SOURCE = "https://github.com/vllm-project/vllm/pull/18566 (1000 ShareGPT requests, Llama-3.1 tokenizer)"


class CachedTokensError(RuntimeError):
    """A workload meant to be uncached was served from the prefix cache beyond chance."""


@dataclass(frozen=True)
class Request:
    """One offline request: prompt token ids and the number of tokens to generate."""

    prompt: list[int]
    output_len: int


def _check_vocab(vocab_lo: int, vocab_hi: int) -> None:
    if not 0 <= vocab_lo < vocab_hi:
        raise ValueError(f"need 0 <= vocab_lo < vocab_hi, got [{vocab_lo}, {vocab_hi})")


def distinct_random_ids(lengths: Sequence[int], vocab_lo: int, vocab_hi: int, rng: random.Random,
                        distinct_prefix: int = DISTINCT_PREFIX) -> list[list[int]]:
    """One prompt of uniform random ids in [vocab_lo, vocab_hi) per length, pairwise distinct in
    their first k = min(distinct_prefix, shortest length) tokens.

    Distinct first k tokens make any two prompts differ within their first min(32, len) tokens,
    whatever their lengths, so the radix cache can match at most a chance prefix shorter than k.
    A prompt whose first k tokens repeat an earlier one is drawn again (with k >= 4 over a real
    vocabulary that almost never happens, but it is checked, not assumed).
    """
    _check_vocab(vocab_lo, vocab_hi)
    if not lengths:
        return []
    if min(lengths) < 1:
        raise ValueError("every prompt needs at least one token")
    k = min(distinct_prefix, min(lengths))
    if (vocab_hi - vocab_lo) ** k < len(lengths):
        raise ValueError(f"{len(lengths)} prompts cannot have distinct first {k} tokens over "
                         f"{vocab_hi - vocab_lo} ids")
    population = range(vocab_lo, vocab_hi)
    seen: set[tuple[int, ...]] = set()
    out: list[list[int]] = []
    for length in lengths:
        while True:
            ids = rng.choices(population, k=length)
            key = tuple(ids[:k])
            if key not in seen:
                seen.add(key)
                out.append(ids)
                break
    return out


def random_prompts(n: int, input_len: int, vocab_lo: int, vocab_hi: int, seed: int) -> list[list[int]]:
    """`n` prompts of `input_len` uniform random ids, pairwise distinct first min(32, input_len) tokens."""
    return distinct_random_ids([input_len] * n, vocab_lo, vocab_hi, random.Random(seed))


def _std_normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def clipped_lognormal_mean(mu: float, sigma: float, lo: float, hi: float) -> float:
    """E[min(max(X, lo), hi)] for X = exp(N(mu, sigma^2)).

    The part between lo and hi is the log-normal partial expectation
    exp(mu + sigma^2/2) * [Phi((ln hi - mu - sigma^2)/sigma) - Phi((ln lo - mu - sigma^2)/sigma)];
    the tails contribute lo * P(X < lo) and hi * P(X > hi).
    """
    a, b = math.log(lo), math.log(hi)
    below = _std_normal_cdf((a - mu) / sigma)
    above = 1.0 - _std_normal_cdf((b - mu) / sigma)
    middle = math.exp(mu + sigma**2 / 2) * (_std_normal_cdf((b - mu - sigma**2) / sigma)
                                            - _std_normal_cdf((a - mu - sigma**2) / sigma))
    return lo * below + middle + hi * above


def solve_lognormal_mu(target_mean: float, sigma: float, lo: float, hi: float) -> float:
    """The mu whose clipped log-normal has mean `target_mean` (bisection: the mean rises with mu)."""
    if not lo < target_mean < hi:
        raise ValueError(f"target mean {target_mean} must lie strictly inside [{lo}, {hi}]")
    left, right = math.log(lo) - 10 * sigma, math.log(hi) + 10 * sigma
    for _ in range(200):
        mid = (left + right) / 2
        if clipped_lognormal_mean(mid, sigma, lo, hi) < target_mean:
            left = mid
        else:
            right = mid
    return (left + right) / 2


def sharegpt_lengths(n: int, seed: int, max_input: int = SHAREGPT_MAX_INPUT,
                     max_output: int = SHAREGPT_MAX_OUTPUT) -> list[tuple[int, int]]:
    """`n` (input_len, output_len) pairs, log-normal with ShareGPT's published means (module docstring).

    The means are matched for the default clipping bounds; smaller bounds (a short context) keep
    the same log-normal and clip harder, so their means are lower.
    """
    if max_input < SHAREGPT_MIN_LEN or max_output < SHAREGPT_MIN_LEN:
        raise ValueError(f"length bounds must be at least {SHAREGPT_MIN_LEN}")
    mu_in = solve_lognormal_mu(SHAREGPT_INPUT_MEAN, SHAREGPT_INPUT_SIGMA, SHAREGPT_MIN_LEN, SHAREGPT_MAX_INPUT)
    mu_out = solve_lognormal_mu(SHAREGPT_OUTPUT_MEAN, SHAREGPT_OUTPUT_SIGMA, SHAREGPT_MIN_LEN, SHAREGPT_MAX_OUTPUT)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        i = round(rng.lognormvariate(mu_in, SHAREGPT_INPUT_SIGMA))
        o = round(rng.lognormvariate(mu_out, SHAREGPT_OUTPUT_SIGMA))
        out.append((min(max(i, SHAREGPT_MIN_LEN), max_input), min(max(o, SHAREGPT_MIN_LEN), max_output)))
    return out


def sharegpt_requests(n: int, vocab_lo: int, vocab_hi: int, seed: int, max_input: int = SHAREGPT_MAX_INPUT,
                      max_output: int = SHAREGPT_MAX_OUTPUT) -> list[Request]:
    """ShareGPT-like lengths (sharegpt_lengths) with distinct random-id prompts of those lengths."""
    lengths = sharegpt_lengths(n, seed, max_input, max_output)
    # The ids get their own stream, so the lengths for a seed do not depend on the vocabulary.
    prompts = distinct_random_ids([i for i, _ in lengths], vocab_lo, vocab_hi, random.Random(seed + 7919))
    return [Request(p, o) for p, (_, o) in zip(prompts, lengths, strict=True)]


def shared_prefix_prompts(groups: int, per_group: int, prefix_len: int, question_len: int, vocab_lo: int,
                          vocab_hi: int, seed: int) -> list[list[int]]:
    """`groups` distinct system prefixes of `prefix_len` ids, each followed by `per_group` distinct
    questions of `question_len` ids; prompt i belongs to group i % groups, so the groups interleave
    as independent users would. This workload shares on purpose: pass shared=True to check_cached."""
    rng = random.Random(seed)
    systems = distinct_random_ids([prefix_len] * groups, vocab_lo, vocab_hi, rng)
    questions = distinct_random_ids([question_len] * (groups * per_group), vocab_lo, vocab_hi, rng)
    return [systems[i % groups] + questions[i] for i in range(groups * per_group)]


def cached_fraction(prompt_tokens: int, cached_tokens: int) -> float:
    """Cached share of the prompt tokens (0 for an empty workload)."""
    if cached_tokens < 0 or prompt_tokens < 0:
        raise ValueError("token counts cannot be negative")
    if cached_tokens > prompt_tokens:
        raise ValueError(f"{cached_tokens} cached tokens out of only {prompt_tokens} prompt tokens")
    return cached_tokens / prompt_tokens if prompt_tokens else 0.0


def check_cached(workload_name: str, prompt_tokens: int, cached_tokens: int, shared: bool,
                 max_fraction: float = MAX_CACHED_FRACTION) -> float:
    """Return the cached fraction; raise CachedTokensError if a workload that is not about sharing
    (`shared` False) had more than `max_fraction` of its prompt tokens served from the cache.

    Counts come from the Engine's meta_info["prompt_tokens"] / ["cached_tokens"] or the server's
    usage.prompt_tokens / usage.prompt_tokens_details.cached_tokens, summed over the workload.
    """
    fraction = cached_fraction(prompt_tokens, cached_tokens)
    if not shared and fraction > max_fraction:
        raise CachedTokensError(
            f"workload {workload_name!r}: {cached_tokens} of {prompt_tokens} prompt tokens "
            f"({fraction:.2%}) came from the prefix cache, above the {max_fraction:.0%} allowed for a "
            f"workload that is not about sharing: its prompts repeat (or share a long common prefix, "
            f"e.g. a chat template), so its throughput would measure the cache, not prefill (issue 16)")
    return fraction


def check_engine_outputs(workload_name: str, outs: Sequence[Mapping[str, Any]],
                         shared: bool = False) -> tuple[int, int]:
    """Sum the Engine outputs' prompt and cached tokens (meta_info) and apply `check_cached`;
    returns (prompt_tokens, cached_tokens)."""
    prompt_tokens = sum(int(o["meta_info"]["prompt_tokens"]) for o in outs)
    cached = sum(int(o["meta_info"]["cached_tokens"]) for o in outs)
    check_cached(workload_name, prompt_tokens, cached, shared)
    return prompt_tokens, cached
