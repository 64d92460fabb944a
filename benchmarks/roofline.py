"""Roofline bounds for offline workloads, from rates measured in the same process.

Two device rates, measured (never taken from a spec sheet):
  matmul rate   one large GEMM in the model's dtype (8192^3 on a GPU, 1024^3 on the CPU), FLOPs
                2*m*n*k over the median of several timed runs (CUDA events on a GPU)
  copy rate     a device-to-device copy (2 GiB on a GPU, 256 MiB on the CPU), bytes read plus
                written over the median time: the memory bandwidth a kernel can actually reach
and, on a GPU where asked (`measure_rates(sustained_s=...)`), a third:
  sustained matmul rate   the same GEMM back to back for seconds, the median rate of the later
                windows. The burst rate above is ~15 ms of work at the clock the GPU starts from; an
                H200 at its 700 W power cap lowers its clock within a second of dense GEMMs (1980 ->
                ~1500 MHz, nvidia-smi's "SW power cap"), and holds ~85 % of the burst rate
                (benchmarks/bench_sustained_rate.py). Bounds from the burst rate stay the headline
                (they cannot flatter); the sustained rate gives a second bound beside them, the one
                the hardware can hold over a workload's tens of seconds of prefill.

Bounds from a ModelConfig, per GPU with `tp` ranks (weights, KV and FLOPs split perfectly over the
ranks; the all-reduces and the logits all-gather that TP adds are not in the bound):
  prefill FLOPs   2 * (layer matmul params) * new tokens + 2 * (lm_head params) per prompt (logits of
                  the last position only) + attention 4 * layers * (heads * head_dim) * ctx per new
                  token, ctx counted causally: a prompt of L new tokens after c cached ones attends
                  L*c + L*(L+1)/2 key positions in all
  decode bytes    per step: all weights once (incl. lm_head; the embedding table only where tied,
                  since untied it is gathered row by row; of a mixture of experts, the experts the
                  step's tokens are expected to use, ModelCost.step_weight_bytes), plus the KV read: for every running
                  request its context (prompt + tokens so far, incl. the new one) * KV bytes per
                  token (2 * layers * kv_heads * head_dim * dtype size)
  decode FLOPs    2 * (layer + lm_head params) per token plus attention over its context
A workload's bound adds prefill and decode (this engine runs them as separate forward passes):
  prefill_s = max(prefill FLOPs / matmul rate, prefill passes * weight bytes / copy rate)
  decode_s  = max(decode FLOPs / matmul rate, (decode steps * weight bytes + KV read) / copy rate)
with decode steps >= max(ceil(sum(out - 1) / max_batch), max(out) - 1): a step serves at most
max_batch requests and a request's tokens after the first come one step at a time (the first comes
from the prefill). Norm weights and biases count as bytes, not FLOPs (a few per million).
achieved_fraction = bound_s / measured_s: 1.0 would be at the roofline.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from radixserve.configs.model_config import ModelConfig

GPU_GEMM_N = 8192
CPU_GEMM_N = 1024
GPU_COPY_BYTES = 2 << 30
CPU_COPY_BYTES = 256 << 20


# --- measured rates ---

def timed_samples(fn: Any, device: torch.device, iters: int, warmup: int) -> list[float]:
    """Seconds per call of `fn`, one sample per call after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t)
    return samples


def measure_matmul_flops(device: torch.device | str, dtype: torch.dtype, n: int | None = None,
                         iters: int = 10) -> float:
    """FLOP/s of an n x n x n GEMM in `dtype`: 2*n^3 over the median time."""
    device = torch.device(device)
    n = n or (GPU_GEMM_N if device.type == "cuda" else CPU_GEMM_N)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    seconds = statistics.median(timed_samples(lambda: torch.mm(a, b, out=out), device, iters, warmup=3))
    return 2 * n**3 / seconds


def sustained_matmul_windows(device: torch.device | str, dtype: torch.dtype, seconds: float, window_s: float = 0.5,
                             m: int = GPU_GEMM_N, k: int = GPU_GEMM_N, n: int = GPU_GEMM_N) -> list[float]:
    """FLOP/s of each `window_s` stretch of back-to-back m x k x n GEMMs over `seconds` (a GPU's clock
    settles at its power cap within the first second or so)."""
    device = torch.device(device)
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    out = torch.empty(m, n, device=device, dtype=dtype)
    flops = 2 * m * k * n
    one = statistics.median(timed_samples(lambda: torch.mm(a, b, out=out), device, iters=3, warmup=1))
    per_sync = max(1, round(0.05 / one))  # ~50 ms of GEMMs per host sync: windows are fine, syncs rare
    rates: list[float] = []
    start = window_start = time.perf_counter()
    window_flops = 0.0
    while time.perf_counter() - start < seconds:
        for _ in range(per_sync):
            torch.mm(a, b, out=out)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        window_flops += per_sync * flops
        now = time.perf_counter()
        if now - window_start >= window_s:
            rates.append(window_flops / (now - window_start))
            window_start, window_flops = now, 0.0
    return rates


def held_rate(windows: Sequence[float]) -> float:
    """The rate held once the clock has settled: the median of the later half of the windows."""
    if not windows:
        raise ValueError("no window was measured: the run was shorter than one window")
    return statistics.median(windows[len(windows) // 2:])


def measure_sustained_matmul_flops(device: torch.device | str, dtype: torch.dtype, seconds: float) -> float:
    """The matmul rate held over `seconds` of back-to-back GEMMs (`held_rate` of their windows)."""
    return held_rate(sustained_matmul_windows(device, dtype, seconds))


def measure_copy_bytes_s(device: torch.device | str, nbytes: int | None = None, iters: int = 10) -> float:
    """Copy rate: bytes read plus written per second by a `nbytes` device-to-device copy (median)."""
    device = torch.device(device)
    nbytes = nbytes or (GPU_COPY_BYTES if device.type == "cuda" else CPU_COPY_BYTES)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    src.fill_(1)  # touch every page, so the first timed copy does not fault them in
    dst = torch.empty_like(src)
    seconds = statistics.median(timed_samples(lambda: dst.copy_(src), device, iters, warmup=3))
    return 2 * nbytes / seconds


@dataclass(frozen=True)
class DeviceRates:
    """The measured rates of one device (one GPU: with TP the bound is per GPU)."""

    matmul_flops: float  # FLOP/s in `dtype`
    copy_bytes_s: float  # bytes read + written per second
    device: str
    dtype: str
    # FLOP/s of the row-wise scaled FP8 product (torch._scaled_mm), measured when the model's linear
    # layers run in FP8 (--quantization fp8 or an FP8 checkpoint); None otherwise.
    fp8_matmul_flops: float | None = None
    # The matmul rate held over seconds (`measure_sustained_matmul_flops`), where measured; None otherwise.
    sustained_matmul_flops: float | None = None

    def to_json(self) -> dict[str, Any]:
        d = {"matmul_tflops": round(self.matmul_flops / 1e12, 2), "copy_gb_s": round(self.copy_bytes_s / 1e9, 1),
             "rates_device": self.device, "rates_dtype": self.dtype}
        if self.fp8_matmul_flops is not None:
            d["fp8_matmul_tflops"] = round(self.fp8_matmul_flops / 1e12, 2)
        if self.sustained_matmul_flops is not None:
            d["sustained_matmul_tflops"] = round(self.sustained_matmul_flops / 1e12, 2)
            d["sustained_of_burst"] = round(self.sustained_matmul_flops / self.matmul_flops, 4)
        return d

    def sustained(self) -> DeviceRates | None:
        """These rates with the sustained matmul rate in place of the burst one (FP8's scaled by the
        same ratio, not measured apart); None where it was not measured."""
        if self.sustained_matmul_flops is None:
            return None
        ratio = self.sustained_matmul_flops / self.matmul_flops
        fp8 = self.fp8_matmul_flops * ratio if self.fp8_matmul_flops is not None else None
        return replace(self, matmul_flops=self.sustained_matmul_flops, fp8_matmul_flops=fp8,
                       sustained_matmul_flops=None)

    def matmul_seconds(self, flops: float, fp8_flops: float = 0.0) -> float:
        """Time of `flops` of matmuls of which `fp8_flops` run in FP8 (at the FP8 rate when measured)."""
        fp8_rate = self.fp8_matmul_flops or self.matmul_flops
        return (flops - fp8_flops) / self.matmul_flops + fp8_flops / fp8_rate


def measure_fp8_matmul_flops(device: torch.device | str, n: int | None = None, iters: int = 10) -> float:
    """FLOP/s of an n x n x n FP8 (e4m3) product with row-wise scales and bf16 output, as the FP8 linear
    layers run it (activation quantization not included)."""
    device = torch.device(device)
    n = n or (GPU_GEMM_N if device.type == "cuda" else CPU_GEMM_N)
    a = torch.randn(n, n, device=device).to(torch.float8_e4m3fn)
    b = torch.randn(n, n, device=device).to(torch.float8_e4m3fn)
    sa, sb = torch.ones(n, 1, device=device), torch.ones(1, n, device=device)
    seconds = statistics.median(timed_samples(
        lambda: torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16), device, iters,
        warmup=3))
    return 2 * n**3 / seconds


def measure_rates(device: torch.device | str, dtype: torch.dtype, fp8: bool = False,
                  sustained_s: float = 0.0) -> DeviceRates:
    """Both rates on `device` (and the FP8 product's with `fp8`; with `sustained_s` > 0 on a GPU, the
    matmul rate held over that many seconds, measured after the burst ones so that they keep the
    clock the GPU starts from); on a GPU the buffers are freed again before the Engine sizes its pool."""
    device = torch.device(device)
    burst = measure_matmul_flops(device, dtype)
    copy = measure_copy_bytes_s(device)
    fp8_rate = measure_fp8_matmul_flops(device) if fp8 else None
    held = measure_sustained_matmul_flops(device, dtype, sustained_s) if sustained_s > 0 and device.type == "cuda" \
        else None
    rates = DeviceRates(burst, copy, str(device), str(dtype).removeprefix("torch."), fp8_rate, held)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rates


# --- model costs ---

@dataclass(frozen=True)
class ModelCost:
    """What one token costs a model: matmul parameters, weight bytes, KV bytes (whole model, TP=1)."""

    layers: int
    q_dim: int  # heads * head_dim: the width attention's two matmuls run over
    layer_matmul_params: int  # all layers
    lm_head_params: int
    weight_bytes: int  # read once per decode step
    kv_bytes_per_token: int  # all layers, K and V
    fp8_linears: bool = False  # the layers' matmuls run in FP8 (1 byte per weight, the FP8 matmul rate)
    # Of `layer_matmul_params`, those whose products run at the FP8 rate (W8A8 linears; FP8 experts
    # run weight-only, at the model dtype's rate).
    fp8_matmul_params: int = 0

    # Mixture of experts: MoE layers, experts per layer, experts per token, bytes of one expert's
    # three matrices. `layer_matmul_params` then counts the experts a token uses (top-k), and
    # `weight_bytes` the weights without the experts; a step reads the experts its tokens touch.
    moe_layers: int = 0
    experts: int = 0
    top_k: int = 0
    expert_bytes: int = 0

    @classmethod
    def from_config(cls, cfg: ModelConfig, dtype_bytes: int, fp8_linears: bool = False,
                    kv_dtype_bytes: int | None = None, int4_linears: bool = False) -> ModelCost:
        """With `fp8_linears` the decoder's linear weights and the experts count 1 byte each plus a float32
        scale per output row (the experts' products at the model dtype's rate: W8A16); with `int4_linears` (W4A16, --quantization int4) half a byte each plus an fp16 scale and
        zero per 32; the embedding, the LM head and the norms stay in `dtype_bytes`. `kv_dtype_bytes`:
        bytes per KV element when the cache has its own dtype (1 for --kv-cache-dtype fp8_e4m3)."""
        h, hd = cfg.hidden_size, cfg.head_dim
        q_dim, kv_dim = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
        attn = h * q_dim + 2 * h * kv_dim + q_dim * h
        moe_layers = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))
        dense_layers = cfg.num_hidden_layers - moe_layers
        expert = 3 * h * cfg.moe_intermediate_size
        # Per MoE layer, always read: the router and a shared expert (Qwen2-MoE).
        moe_fixed = h * cfg.num_experts + 3 * h * cfg.shared_expert_intermediate_size
        layer_params = (cfg.num_hidden_layers * attn + dense_layers * 3 * h * cfg.intermediate_size
                        + moe_layers * (moe_fixed + cfg.num_experts_per_tok * expert))
        resident = layer_params - moe_layers * cfg.num_experts_per_tok * expert  # all but the experts
        lm_head = h * cfg.vocab_size
        norms = cfg.num_hidden_layers * 2 * h + h + (cfg.num_hidden_layers * 2 * hd if cfg.qk_norm else 0)
        biases = cfg.num_hidden_layers * (q_dim + 2 * kv_dim) if cfg.attention_bias else 0
        if int4_linears and moe_layers:
            raise ValueError("int4 linears with mixture-of-experts layers are not modelled (experts stay bf16)")
        expert_bytes = expert * dtype_bytes
        fp8_params = 0
        if fp8_linears:
            # Quantized: q/k/v/o, dense and shared-expert MLPs (1 byte + a row scale), the experts likewise;
            # the MoE router stays in the model dtype.
            router = moe_layers * h * cfg.num_experts
            shared = cfg.shared_expert_intermediate_size
            rows = (cfg.num_hidden_layers * (q_dim + 2 * kv_dim + h) + dense_layers * (2 * cfg.intermediate_size + h)
                    + moe_layers * (2 * shared + h if shared else 0))
            fp8_params = resident - router
            weight_bytes = fp8_params + 4 * rows + (router + lm_head + norms + biases) * dtype_bytes
            expert_bytes = expert + 4 * (2 * cfg.moe_intermediate_size + h)
        elif int4_linears:
            weight_bytes = layer_params // 2 + layer_params // 32 * 4 + (lm_head + norms + biases) * dtype_bytes
        else:
            weight_bytes = (resident + lm_head + norms + biases) * dtype_bytes
        return cls(layers=cfg.num_hidden_layers, q_dim=q_dim, layer_matmul_params=layer_params,
                   lm_head_params=lm_head, weight_bytes=weight_bytes,
                   kv_bytes_per_token=cfg.kv_bytes_per_token_per_layer * cfg.num_hidden_layers
                   * (kv_dtype_bytes or dtype_bytes),
                   fp8_linears=fp8_linears, fp8_matmul_params=fp8_params, moe_layers=moe_layers,
                   experts=cfg.num_experts, top_k=cfg.num_experts_per_tok, expert_bytes=expert_bytes)

    def step_weight_bytes(self, tokens: int) -> float:
        """Weights one forward pass over `tokens` tokens reads: everything but the experts, plus per MoE
        layer the experts those tokens are expected to use, with routing spread evenly over the experts
        (random weights route that way): E * (1 - (1 - k/E)^tokens). A dense model: all weights."""
        if not self.moe_layers or tokens <= 0:
            return float(self.weight_bytes)
        touched = self.experts * (1 - (1 - self.top_k / self.experts) ** tokens)
        return self.weight_bytes + self.moe_layers * touched * self.expert_bytes

    def attention_flops(self, new: int, cached: int = 0) -> int:
        """QK^T and PV for `new` tokens after `cached` ones: 4 * layers * q_dim per attended position."""
        positions = new * cached + new * (new + 1) // 2
        return 4 * self.layers * self.q_dim * positions

    def prefill_flops(self, new: int, cached: int = 0) -> int:
        """One prompt's prefill: layer matmuls on every new token, lm_head on the last one only."""
        if new <= 0:
            return 0
        return 2 * self.layer_matmul_params * new + 2 * self.lm_head_params + self.attention_flops(new, cached)

    def decode_token_flops(self, ctx: int) -> int:
        """One decode token whose context (incl. itself) is `ctx` positions."""
        return 2 * (self.layer_matmul_params + self.lm_head_params) + 4 * self.layers * self.q_dim * ctx

    def decode_step_bytes(self, contexts: Sequence[int]) -> float:
        """One decode step over running requests with these contexts: the weights it reads plus their KV."""
        return self.step_weight_bytes(len(contexts)) + self.kv_bytes_per_token * sum(contexts)


# --- workload bounds ---

@dataclass(frozen=True)
class ReqShape:
    """One request as the bound sees it: prompt tokens (cached ones included), output tokens, cache hits."""

    input_len: int
    output_len: int
    cached_len: int = 0


@dataclass(frozen=True)
class Bound:
    prefill_flops: int
    prefill_passes: int
    decode_flops: int
    decode_steps: int
    decode_kv_bytes: int
    weight_bytes: int
    tp: int
    prefill_s: float
    decode_s: float

    @property
    def bound_s(self) -> float:
        return self.prefill_s + self.decode_s

    def to_json(self, measured_s: float | None = None) -> dict[str, Any]:
        d: dict[str, Any] = asdict(self)
        d["prefill_s"], d["decode_s"] = round(self.prefill_s, 6), round(self.decode_s, 6)
        d["bound_s"] = round(self.bound_s, 6)
        if measured_s is not None:
            d["achieved_fraction"] = round(achieved_fraction(self.bound_s, measured_s), 4)
        return d


def workload_bound(cost: ModelCost, rates: DeviceRates, reqs: Sequence[ReqShape], max_batch: int,
                   tp: int = 1) -> Bound:
    """Lower bound on the time of `reqs` run with at most `max_batch` requests at once (module docstring).

    Per GPU with `tp` ranks: FLOPs, weight bytes and KV bytes divided by tp, rates of one GPU.
    """
    if max_batch < 1 or tp < 1:
        raise ValueError("max_batch and tp must be at least 1")
    reqs = [r for r in reqs if r.input_len > 0]
    if not reqs:
        return Bound(0, 0, 0, 0, 0, cost.weight_bytes // tp, tp, 0.0, 0.0)
    prefill_flops = sum(cost.prefill_flops(r.input_len - r.cached_len, r.cached_len) for r in reqs)
    prefill_passes = math.ceil(len(reqs) / max_batch)
    decode_flops = 0
    kv_bytes = 0
    for r in reqs:
        steps = max(r.output_len - 1, 0)
        # Decode step j (1..steps) runs with context input_len + j: the prompt, the j-1 tokens
        # decoded before and the new one. Sum over j: steps*input_len + steps*(steps+1)/2.
        ctx_sum = steps * r.input_len + steps * (steps + 1) // 2
        decode_flops += 2 * (cost.layer_matmul_params + cost.lm_head_params) * steps
        decode_flops += 4 * cost.layers * cost.q_dim * ctx_sum
        kv_bytes += cost.kv_bytes_per_token * ctx_sum
    total_decode_tokens = sum(max(r.output_len - 1, 0) for r in reqs)
    decode_steps = max(math.ceil(total_decode_tokens / max_batch), max(max(r.output_len - 1, 0) for r in reqs))
    # Weights per pass: a prefill pass runs its prompts' tokens at once (every expert of an MoE layer, for
    # any real prompt); a decode step runs up to max_batch tokens (for MoE: the experts they touch).
    w = cost.step_weight_bytes(sum(r.input_len - r.cached_len for r in reqs[:max_batch])) / tp
    w_decode = cost.step_weight_bytes(min(max_batch, len(reqs))) / tp
    # The layers' matmul FLOPs (2 per weight per token) run at the FP8 rate when the linears are FP8.
    fp8_share = 2 * cost.fp8_matmul_params
    prefill_fp8 = fp8_share * sum(r.input_len - r.cached_len for r in reqs)
    prefill_s = max(rates.matmul_seconds(prefill_flops, prefill_fp8) / tp, prefill_passes * w / rates.copy_bytes_s)
    decode_s = max(rates.matmul_seconds(decode_flops, fp8_share * total_decode_tokens) / tp,
                   (decode_steps * w_decode + kv_bytes / tp) / rates.copy_bytes_s)
    return Bound(prefill_flops=prefill_flops // tp, prefill_passes=prefill_passes, decode_flops=decode_flops // tp,
                 decode_steps=decode_steps, decode_kv_bytes=kv_bytes // tp, weight_bytes=int(w), tp=tp,
                 prefill_s=prefill_s if prefill_flops else 0.0, decode_s=decode_s if decode_steps else 0.0)


def packed_step_weight_bytes(model: torch.nn.Module) -> int | None:
    """Bytes of weights a decode step reads from a model whose linear layers compute from packed copies
    (`module.quant`, e.g. GGUF blocks on the CPU): each packed copy, every other parameter except the
    embedding table (gathered row by row), and the LM head's table where it has no packed copy (a tied
    head then reads the embedding's). None where nothing is packed: ModelConfig's count holds."""
    from radixserve.layers.vocab_embedding import ParallelLMHead, VocabParallelEmbedding

    modules = list(model.modules())
    if not any(getattr(m, "quant", None) is not None for m in modules):
        return None
    total, counted = 0, set()
    for m in modules:
        quant = getattr(m, "quant", None)
        if quant is not None:
            total += quant.nbytes()
        if isinstance(m, VocabParallelEmbedding) and (quant is not None or not isinstance(m, ParallelLMHead)):
            continue  # a lookup table, or a head that multiplies by its packed copy
        for p in m.parameters(recurse=False):
            if id(p) not in counted:
                counted.add(id(p))
                total += p.numel() * p.element_size()  # a packed layer's dropped dense weight counts 0
    return total


def uniform(n: int, input_len: int, output_len: int, cached_len: int = 0) -> list[ReqShape]:
    """`n` requests of the same shape."""
    return [ReqShape(input_len, output_len, cached_len)] * n


def achieved_fraction(bound_s: float, measured_s: float) -> float:
    """bound / measured: the share of the roofline the run reached."""
    if measured_s <= 0:
        raise ValueError("measured time must be positive")
    return bound_s / measured_s


def decode_roofline_tok_s(cost: ModelCost, rates: DeviceRates, ctx: int, batch: int = 1, tp: int = 1) -> float:
    """Steady decode tokens/s at `batch` requests of context `ctx`: bytes bound or FLOPs bound, the slower."""
    step_bytes = cost.decode_step_bytes([ctx] * batch) / tp
    step_flops = batch * cost.decode_token_flops(ctx)
    fp8_flops = batch * 2 * cost.fp8_matmul_params
    step_s = max(step_bytes / rates.copy_bytes_s, rates.matmul_seconds(step_flops, fp8_flops) / tp)
    return batch / step_s
