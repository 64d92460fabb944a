"""benchmarks/workloads.py and benchmarks/roofline.py: distinct prompts, the cached-token guard, and
the roofline arithmetic against numbers worked out by hand (issue 16)."""

from __future__ import annotations

import itertools
import math
import random
import statistics
from typing import Any, cast

import pytest
import torch

from benchmarks import roofline as rl
from benchmarks.workloads import (
    DISTINCT_PREFIX,
    SHAREGPT_INPUT_MEAN,
    SHAREGPT_INPUT_SIGMA,
    SHAREGPT_MAX_INPUT,
    SHAREGPT_MAX_OUTPUT,
    SHAREGPT_MIN_LEN,
    SHAREGPT_OUTPUT_MEAN,
    CachedTokensError,
    check_cached,
    check_engine_outputs,
    clipped_lognormal_mean,
    distinct_random_ids,
    random_prompts,
    shared_prefix_prompts,
    sharegpt_lengths,
    sharegpt_requests,
    solve_lognormal_mu,
)
from radixserve.configs.model_config import NAMED_SHAPES, ModelConfig


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


# --- distinct prompts ---

def test_random_prompts_are_pairwise_distinct_and_seeded() -> None:
    prompts = random_prompts(200, 64, 100, 50_000, seed=3)
    assert len(prompts) == 200 and all(len(p) == 64 for p in prompts)
    assert all(100 <= t < 50_000 for p in prompts for t in p)
    # No pair agrees on its first 32 tokens; with 50k ids a chance common prefix is a token or two.
    longest = max(_common_prefix(a, b) for a, b in itertools.combinations(prompts, 2))
    assert longest < 3
    assert random_prompts(200, 64, 100, 50_000, seed=3) == prompts
    assert random_prompts(200, 64, 100, 50_000, seed=4) != prompts


def test_fewer_random_prompts_of_a_seed_are_a_prefix_of_more() -> None:
    """run_gpu_serving.sh runs transformers and the server on the first N of a 500-request run's prompts
    by asking for N prompts of the same seed."""
    assert random_prompts(64, 1024, 100, 32000, 2001) == random_prompts(500, 1024, 100, 32000, 2001)[:64]


def test_distinct_prefix_is_guaranteed_not_left_to_chance() -> None:
    # Two ids and 4-token prompts: exactly 16 distinct prompts exist, so 16 draws must be redrawn
    # until every one appears; a 17th cannot be distinct and is refused.
    prompts = distinct_random_ids([4] * 16, 0, 2, random.Random(0))
    assert len({tuple(p) for p in prompts}) == 16
    with pytest.raises(ValueError, match="distinct first 4"):
        distinct_random_ids([4] * 17, 0, 2, random.Random(0))
    # Mixed lengths: distinct within the shortest prompt's length (here 2 of 32).
    mixed = distinct_random_ids([2, 40, 40, 40], 0, 2, random.Random(1))
    assert len({tuple(p[:2]) for p in mixed}) == 4
    assert [len(p) for p in mixed] == [2, 40, 40, 40]


def test_shared_prefix_prompts_share_only_their_group_prefix() -> None:
    prompts = shared_prefix_prompts(groups=3, per_group=4, prefix_len=50, question_len=10, vocab_lo=10,
                                    vocab_hi=30_000, seed=0)
    assert len(prompts) == 12 and all(len(p) == 60 for p in prompts)
    for i, j in itertools.combinations(range(12), 2):
        common = _common_prefix(prompts[i], prompts[j])
        if i % 3 == j % 3:  # same group: the whole system prefix, then distinct questions
            assert 50 <= common < 50 + DISTINCT_PREFIX
        else:
            assert common < 3
    assert shared_prefix_prompts(3, 4, 50, 10, 10, 30_000, seed=0) == prompts


# --- ShareGPT-like lengths ---

def test_clipped_lognormal_mean_formula_matches_sampling() -> None:
    mu, sigma, lo, hi = 4.5, 1.2, 4.0, 1024.0
    rng = random.Random(0)
    sampled = statistics.mean(min(max(rng.lognormvariate(mu, sigma), lo), hi) for _ in range(40_000))
    assert clipped_lognormal_mean(mu, sigma, lo, hi) == pytest.approx(sampled, rel=0.02)
    solved = solve_lognormal_mu(SHAREGPT_INPUT_MEAN, SHAREGPT_INPUT_SIGMA, SHAREGPT_MIN_LEN, SHAREGPT_MAX_INPUT)
    assert clipped_lognormal_mean(solved, SHAREGPT_INPUT_SIGMA, SHAREGPT_MIN_LEN,
                                  SHAREGPT_MAX_INPUT) == pytest.approx(SHAREGPT_INPUT_MEAN, rel=1e-6)


def test_sharegpt_lengths_match_target_means_within_bounds() -> None:
    lengths = sharegpt_lengths(5000, seed=0)
    inputs, outputs = [i for i, _ in lengths], [o for _, o in lengths]
    assert min(inputs) >= SHAREGPT_MIN_LEN and max(inputs) <= SHAREGPT_MAX_INPUT
    assert min(outputs) >= SHAREGPT_MIN_LEN and max(outputs) <= SHAREGPT_MAX_OUTPUT
    # 5000 draws: the sample mean's standard error is about 1.5 % here.
    assert statistics.mean(inputs) == pytest.approx(SHAREGPT_INPUT_MEAN, rel=0.05)
    assert statistics.mean(outputs) == pytest.approx(SHAREGPT_OUTPUT_MEAN, rel=0.05)
    # Skewed like chat traffic: the median prompt is well below the mean, and lengths vary.
    assert statistics.median(inputs) < 0.75 * statistics.mean(inputs)
    assert len(set(inputs)) > 300
    assert sharegpt_lengths(5000, seed=0) == lengths and sharegpt_lengths(50, seed=1) != lengths[:50]


def test_sharegpt_requests_are_distinct_and_respect_smaller_bounds() -> None:
    reqs = sharegpt_requests(300, 100, 128_000, seed=2, max_input=256, max_output=64)
    assert all(SHAREGPT_MIN_LEN <= len(r.prompt) <= 256 and SHAREGPT_MIN_LEN <= r.output_len <= 64 for r in reqs)
    assert len({tuple(r.prompt[:SHAREGPT_MIN_LEN]) for r in reqs}) == 300
    assert [len(r.prompt) for r in reqs] == [min(i, 256) for i, _ in sharegpt_lengths(300, 2, 256, 64)]


# --- the cached-token guard ---

def test_guard_fires_above_one_percent_on_non_shared_workloads_only() -> None:
    assert check_cached("throughput", 1000, 10, shared=False) == pytest.approx(0.01)  # 1 % is allowed
    with pytest.raises(CachedTokensError, match=r"'throughput': 11 of 1000 .*1.10%"):
        check_cached("throughput", 1000, 11, shared=False)
    # The old throughput workload: 1000 identical 1024-token prompts, all but the first cached.
    with pytest.raises(CachedTokensError):
        check_cached("throughput", 1000 * 1024, 999 * 1024, shared=False)
    assert check_cached("shared_prefix", 1000, 910, shared=True) == pytest.approx(0.91)
    assert check_cached("empty", 0, 0, shared=False) == 0.0
    with pytest.raises(ValueError):
        check_cached("broken", 10, 11, shared=True)


def test_engine_outputs_are_summed_and_guarded() -> None:
    def out(prompt: int, cached: int) -> dict[str, dict[str, int]]:
        return {"meta_info": {"prompt_tokens": prompt, "cached_tokens": cached}}

    assert check_engine_outputs("ok", [out(100, 0), out(100, 2)]) == (200, 2)
    with pytest.raises(CachedTokensError, match="'repeated': 99 of 200"):
        check_engine_outputs("repeated", [out(100, 0), out(100, 99)])
    assert check_engine_outputs("shared", [out(100, 0), out(100, 99)], shared=True) == (200, 99)


# --- roofline arithmetic on a tiny config, worked out by hand ---

TINY = ModelConfig(architecture="LlamaForCausalLM", hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                   num_attention_heads=2, num_key_value_heads=1, vocab_size=32, head_dim=4)


def test_model_cost_of_tiny_config() -> None:
    cost = rl.ModelCost.from_config(TINY, dtype_bytes=2)
    # per layer: q 8x8 + k,v 2 x 8x4 + o 8x8 + gate/up/down 3 x 8x16 = 64 + 64 + 64 + 384 = 576
    assert cost.layer_matmul_params == 2 * 576
    assert cost.lm_head_params == 8 * 32
    # norms: 2 per layer + the final one, 8 each: 40; weights (1152 + 256 + 40) x 2 bytes
    assert cost.weight_bytes == 2896
    assert cost.kv_bytes_per_token == 2 * 1 * 4 * 2 * 2  # K and V, 1 KV head of 4, 2 layers, bf16
    # prefill of 3 tokens: 2*1152*3 + 2*256 (last position's logits) + 4*2 layers*8*(1+2+3)
    assert cost.prefill_flops(3) == 6912 + 512 + 384
    # 3 new tokens after 2 cached attend 3*2 + 6 = 12 positions
    assert cost.prefill_flops(3, cached=2) == 6912 + 512 + 4 * 2 * 8 * 12
    assert cost.decode_step_bytes([4, 5]) == 2896 + 32 * 9
    # --quantization int4: the 1152 layer weights at half a byte plus an fp16 scale and zero per 32
    # (576 + 36 x 4 = 720 bytes); head and norms stay bf16.
    int4 = rl.ModelCost.from_config(TINY, dtype_bytes=2, int4_linears=True)
    assert int4.weight_bytes == 720 + (256 + 40) * 2
    # --quantization fp8: 1 byte per layer weight plus a float32 scale per output row (per layer: q 8,
    # k 4, v 4, o 8, gate 16, up 16, down 8 = 64 rows), all at the FP8 rate.
    fp8 = rl.ModelCost.from_config(TINY, dtype_bytes=2, fp8_linears=True)
    assert fp8.weight_bytes == 1152 + 4 * 2 * 64 + (256 + 40) * 2
    assert fp8.fp8_matmul_params == fp8.layer_matmul_params


TINY_MOE = ModelConfig(architecture="Qwen3MoeForCausalLM", hidden_size=8, intermediate_size=16,
                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, vocab_size=32,
                       head_dim=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=4)


def test_model_cost_of_tiny_moe_in_fp8() -> None:
    # per layer: attention 192; router 8x4 = 32; an expert 3 x 8x4 = 96, of which a token uses 2.
    bf16 = rl.ModelCost.from_config(TINY_MOE, dtype_bytes=2)
    assert bf16.layer_matmul_params == 2 * (192 + 32 + 2 * 96)
    norms = 2 * (2 * 8) + 8  # (this hand-made config has no q/k norms)
    assert bf16.weight_bytes == (2 * (192 + 32) + 256 + norms) * 2 and bf16.expert_bytes == 96 * 2
    fp8 = rl.ModelCost.from_config(TINY_MOE, dtype_bytes=2, fp8_linears=True)
    # Attention at 1 byte + row scales (q 8, k 4, v 4, o 8 rows); the router stays bf16; an expert is 96
    # bytes + row scales (gate 4, up 4, down 8); only attention runs at the FP8 rate (experts: W8A16).
    assert fp8.weight_bytes == 2 * 192 + 4 * 2 * 24 + (2 * 32 + 256 + norms) * 2
    assert fp8.expert_bytes == 96 + 4 * 16
    assert fp8.fp8_matmul_params == 2 * 192


def test_workload_bound_by_hand() -> None:
    cost = rl.ModelCost.from_config(TINY, dtype_bytes=2)
    rates = rl.DeviceRates(matmul_flops=1000.0, copy_bytes_s=100.0, device="test", dtype="bfloat16")
    reqs = rl.uniform(2, input_len=3, output_len=3)
    # One at a time: 2 prefill passes (57.92 s of weight reads beat 15.6 s of FLOPs); 2 decode steps
    # each with contexts 4 and 5 -> 4 steps, KV 2 x 9 x 32 bytes: (4 x 2896 + 576) / 100 = 121.6 s.
    one = rl.workload_bound(cost, rates, reqs, max_batch=1)
    assert (one.prefill_flops, one.prefill_passes, one.decode_steps, one.decode_kv_bytes) == (15616, 2, 4, 576)
    assert one.decode_flops == 2 * (2 * 1408 * 2 + 4 * 2 * 8 * 9)
    assert one.prefill_s == pytest.approx(57.92) and one.decode_s == pytest.approx(121.6)
    assert one.bound_s == pytest.approx(179.52)
    both = rl.workload_bound(cost, rates, reqs, max_batch=2)
    assert both.prefill_s == pytest.approx(28.96) and both.decode_s == pytest.approx(63.68)
    # TP=2: weights, KV and FLOPs halve per GPU.
    tp2 = rl.workload_bound(cost, rates, reqs, max_batch=2, tp=2)
    assert tp2.prefill_s == pytest.approx(14.48) and tp2.decode_s == pytest.approx(31.84)
    assert tp2.to_json(measured_s=92.64)["achieved_fraction"] == pytest.approx(0.5)
    # Compute-bound device: FLOPs decide.
    slow = rl.DeviceRates(matmul_flops=1.0, copy_bytes_s=1e9, device="test", dtype="bfloat16")
    bound = rl.workload_bound(cost, slow, reqs, max_batch=2)
    assert bound.prefill_s == pytest.approx(15616) and bound.decode_s == pytest.approx(12416)
    # Decode steps: never fewer than the longest request's tokens after its first.
    uneven = rl.workload_bound(cost, rates, [rl.ReqShape(3, 9), rl.ReqShape(3, 2)], max_batch=8)
    assert uneven.decode_steps == 8
    assert rl.achieved_fraction(1.0, 4.0) == 0.25


def test_model_cost_matches_published_parameter_counts() -> None:
    # Llama-3-8B: 8,030,261,248 parameters (Meta's count); the bound reads all but the untied
    # embedding table, which a decode step gathers row by row.
    llama = ModelConfig.from_hf_dict(NAMED_SHAPES["llama-3-8b"])
    cost = rl.ModelCost.from_config(llama, dtype_bytes=2)
    assert cost.weight_bytes // 2 + 4096 * 128_256 == 8_030_261_248
    # SmolLM2-135M (tied): the Engine loads 134,515,008 parameters, all of which the bound reads.
    smol = ModelConfig.from_hf_dict(NAMED_SHAPES["smollm2-135m"])
    assert rl.ModelCost.from_config(smol, dtype_bytes=4).weight_bytes == 134_515_008 * 4
    # Batch-1 decode at 8B is memory-bound: weights over the copy rate.
    rates = rl.DeviceRates(matmul_flops=800e12, copy_bytes_s=4e12, device="test", dtype="bfloat16")
    tok_s = rl.decode_roofline_tok_s(cost, rates, ctx=0)
    assert tok_s == pytest.approx(4e12 / cost.weight_bytes)


def test_rates_are_measured_on_the_cpu() -> None:
    flops = rl.measure_matmul_flops("cpu", torch.float32, n=128, iters=3)
    copy = rl.measure_copy_bytes_s("cpu", nbytes=1 << 20, iters=3)
    assert math.isfinite(flops) and flops > 1e6
    assert math.isfinite(copy) and copy > 1e6


def test_sustained_rate_gives_a_second_bound_beside_the_burst_one() -> None:
    cost = rl.ModelCost.from_config(TINY, dtype_bytes=2)
    burst = rl.DeviceRates(matmul_flops=1.0, copy_bytes_s=1e9, device="test", dtype="bfloat16",
                           fp8_matmul_flops=2.0, sustained_matmul_flops=0.8)
    held = burst.sustained()
    assert held is not None and held.sustained() is None
    assert (held.matmul_flops, held.copy_bytes_s) == (0.8, 1e9)
    assert held.fp8_matmul_flops == pytest.approx(1.6)
    assert burst.to_json()["sustained_of_burst"] == 0.8
    assert rl.DeviceRates(1.0, 1.0, "test", "bfloat16").sustained() is None
    reqs = rl.uniform(2, input_len=3, output_len=3)
    # Compute-bound here: both phases take FLOPs over the matmul rate, so the held rate's bound is longer
    # by exactly burst / held.
    fast, slow = rl.workload_bound(cost, burst, reqs, 2), rl.workload_bound(cost, held, reqs, 2)
    assert slow.bound_s == pytest.approx(fast.bound_s / 0.8)


def test_the_held_rate_is_the_median_of_the_later_windows() -> None:
    # The first windows run at the clock the GPU starts from; the later ones at the clock it holds.
    assert rl.held_rate([9.0, 8.0, 5.0, 6.0, 4.0]) == 5.0  # later half: [5, 6, 4]
    assert rl.held_rate([7.0]) == 7.0
    with pytest.raises(ValueError, match="no window"):
        rl.held_rate([])


def test_sustained_windows_are_measured_on_the_cpu() -> None:
    rates = rl.sustained_matmul_windows("cpu", torch.float32, seconds=0.3, window_s=0.05, m=64, k=64, n=64)
    assert len(rates) >= 2 and all(math.isfinite(r) and r > 1e6 for r in rates)
    # measure_rates leaves the CPU's sustained rate unmeasured: only a GPU lowers its clock at a power cap.
    assert rl.measure_rates("cpu", torch.float32, sustained_s=1.0).sustained_matmul_flops is None


class _Packed:
    """A packed weight as the roofline sees it: only its size."""

    def __init__(self, nbytes: int) -> None:
        self._nbytes = nbytes

    def nbytes(self) -> int:
        return self._nbytes


class _PackedLinear(torch.nn.Module):
    def __init__(self, nbytes: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)  # the dense copy, dropped
        self.quant = _Packed(nbytes)


def test_packed_weights_count_as_loaded_for_the_decode_bound() -> None:
    from radixserve.layers.vocab_embedding import ParallelLMHead, VocabParallelEmbedding

    model = torch.nn.Module()
    model.embed = VocabParallelEmbedding(10, 4)  # 160 bytes in float32, gathered row by row: never counted
    model.head = ParallelLMHead(10, 4)
    model.head.tie_to(model.embed)
    model.proj = _PackedLinear(100)
    model.norm = torch.nn.Parameter(torch.ones(4), requires_grad=False)  # 16 bytes
    # A tied head without a packed copy multiplies by the embedding's table: it counts, once.
    assert rl.packed_step_weight_bytes(model) == 100 + 16 + 160
    model.head.quant = cast(Any, _Packed(50))  # now the head reads its packed copy
    assert rl.packed_step_weight_bytes(model) == 100 + 16 + 50
    plain = torch.nn.Linear(4, 4)
    assert rl.packed_step_weight_bytes(plain) is None  # nothing packed: ModelConfig's count holds
