"""Where the GPU time of the 1000 x (1024 in, 256 out) throughput workload goes (issue 16), by phase
and kernel class, and how the attention kernels' launch shapes compare, in one process.

  python benchmarks/profile_throughput.py --output OUT.json [--decode-bs 320] [--layers 32]

The 8B Llama shape with random bf16 weights, its KV pool (400k tokens, as run_gpu_throughput.sh),
the Triton attention backend, driven directly (no scheduler):
1. prefill: one 8192-token chunk of 8 fresh 1024-token prompts, and one 8191-token prompt, eager as
   the engine runs prefill: time per forward (CUDA events) and its kernels by class (torch.profiler).
2. decode: a batch of --decode-bs requests with 1024-1280 tokens of context each (the running batch
   of the throughput workload, slots scattered over the pool), one step replayed as a CUDA graph and
   launched eagerly (the engine runs batches above --cuda-graph-max-bs eagerly), by kernel class.
3. each projection's cuBLAS product at the prefill and decode row counts (TFLOP/s, weight GB/s).
4. attention launch shapes: the decode kernel's KV read rate and the extend kernel's TFLOP/s for
   each ExtendTiles / DecodeTiles variant, with each variant's largest difference to the first.
5. decode_overlap: a decode step's attention and products for the batch in sequence, against two
   half batches whose attention runs beside the other half's products on a second stream.
Rates (bf16 matmul, copy) are measured in the same process. With --device cpu (and
TRITON_INTERPRET=1) a tiny shape runs the same code as a smoke test; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import roofline as rl  # noqa: E402
from benchmarks._common import captured, machine_info  # noqa: E402
from radixserve.attention.triton_backend import MAX_SPLITS, TritonAttnBackend  # noqa: E402
from radixserve.configs.model_config import NAMED_SHAPES, ModelConfig  # noqa: E402
from radixserve.kernels.triton_attention import (  # noqa: E402
    DecodeTiles,
    ExtendTiles,
    decode_attention,
    decode_num_splits,
    extend_attention,
)
from radixserve.mem_cache.memory_pool import ReqToTokenPool, TokenToKVPool  # noqa: E402
from radixserve.model_executor.forward_batch import ForwardBatch, ForwardMode  # noqa: E402
from radixserve.model_executor.model_runner import init_dummy_weights  # noqa: E402
from radixserve.models.llama import LlamaForCausalLM  # noqa: E402

Fn = Callable[[], Any]

# Attention launch shapes to compare; the first of each list is the reference for the differences.
# Extend: (tiles, read this step's K/V from the step's own k, v instead of through the pool).
EXTEND_VARIANTS: dict[str, tuple[ExtendTiles, bool]] = {
    "pool_m64n64w4s2": (ExtendTiles(64, 64, 4, 2), False),  # the tiles before 2026-12-01
    "pool_m64n64w4s3": (ExtendTiles(64, 64, 4, 3), False),  # the default where this step's k, v are not at hand
    "pool_m128n64w8s3": (ExtendTiles(128, 64, 8, 3), False),
    "step_m64n64w4s2": (ExtendTiles(64, 64, 4, 2), True),
    "step_m64n64w4s3": (ExtendTiles(64, 64, 4, 3), True),  # the default
    "step_m64n64w4s4": (ExtendTiles(64, 64, 4, 4), True),
    "step_m128n64w8s3": (ExtendTiles(128, 64, 8, 3), True),
    "step_m128n128w8s3": (ExtendTiles(128, 128, 8, 3), True),
}
DECODE_VARIANTS: dict[str, tuple[DecodeTiles, int]] = {  # (tiles, splits; 0: decode_num_splits' choice)
    "legacy_n64w4_2stage": (DecodeTiles(64, 4, None, direct=False), 0),
    "n64w4": (DecodeTiles(64, 4), 0),
    "n128w4": (DecodeTiles(128, 4), 0),
    "n128w4s2": (DecodeTiles(128, 4, 2), 0),
    "n128w4s4": (DecodeTiles(128, 4, 4), 0),
    "n128w8": (DecodeTiles(128, 8), 0),
    "n256w4s2": (DecodeTiles(256, 4, 2), 0),
    "n256w8s2": (DecodeTiles(256, 8, 2), 0),
    "n128w4_2splits": (DecodeTiles(128, 4), 2),
    # Batch 1 (--decode-bs 1): how many splits, and how long a block, for a short context.
    "n64w4_4splits": (DecodeTiles(64, 4), 4),
    "n64w4_8splits": (DecodeTiles(64, 4), 8),
    "n64w4_16splits": (DecodeTiles(64, 4), 16),
    "n32w4_16splits": (DecodeTiles(32, 4), 16),
    "n32w2_16splits": (DecodeTiles(32, 2), 16),
    "n64w2_16splits": (DecodeTiles(64, 2), 16),
    "n64w4_32splits": (DecodeTiles(64, 4), 32),
    "n32w4_32splits": (DecodeTiles(32, 4), 32),
    "n64w4_64splits": (DecodeTiles(64, 4), 64),
}


@dataclass
class Setup:
    model: LlamaForCausalLM
    config: ModelConfig
    kv: TokenToKVPool
    reqs: ReqToTokenPool
    backend: TritonAttnBackend
    device: torch.device
    gen: torch.Generator


def build(device: torch.device, layers: int, pool_tokens: int, max_reqs: int, tiny: bool) -> Setup:
    cfg_dict = dict(NAMED_SHAPES["llama-3-8b"], num_hidden_layers=layers)
    if tiny:
        cfg_dict.update(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
                        vocab_size=512)
    config = ModelConfig.from_hf_dict(cfg_dict)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    init_dummy_weights(model, device)
    gen = torch.Generator(device=device).manual_seed(1)  # the KV pool's random contents
    model.eval()
    kv = TokenToKVPool(pool_tokens, torch.bfloat16, layers, config.num_key_value_heads, config.head_dim, device)
    for buf in (*kv.k_buffer, *kv.v_buffer):
        buf.normal_(0, 1, generator=gen)
    reqs = ReqToTokenPool(max_reqs, config.max_position_embeddings, device)
    backend = TritonAttnBackend(config.num_attention_heads, config.num_key_value_heads, config.head_dim, device,
                                config.max_position_embeddings)
    return Setup(model, config, kv, reqs, backend, device, gen)


def _slots(s: Setup, n: int) -> torch.Tensor:
    """n distinct KV slots scattered over the pool (a pool that has served a while hands out such)."""
    return (torch.randperm(s.kv.size, device=s.device, generator=s.gen)[:n] + 1).to(torch.int64)


def prefill_batch(s: Setup, lens: list[int]) -> ForwardBatch:
    slots = _slots(s, sum(lens))
    pos, at = [], 0
    for i, n in enumerate(lens):
        s.reqs.req_to_token[i, :n] = slots[at:at + n]
        pos.append(torch.arange(n, device=s.device))
        at += n
    ids = torch.randint(0, s.config.vocab_size, (at,), device=s.device, generator=s.gen)
    return ForwardBatch(ForwardMode.EXTEND, len(lens), ids, torch.cat(pos), torch.arange(len(lens), device=s.device),
                        torch.tensor(lens, device=s.device), slots, list(lens), [0] * len(lens), list(lens),
                        s.reqs, s.kv, s.backend)


def decode_batch(s: Setup, ctx: list[int]) -> ForwardBatch:
    slots = _slots(s, sum(ctx))
    at, last = 0, []
    for i, n in enumerate(ctx):
        s.reqs.req_to_token[i, :n] = slots[at:at + n]
        last.append(at + n - 1)
        at += n
    bs = len(ctx)
    seq = torch.tensor(ctx, device=s.device)
    ids = torch.randint(0, s.config.vocab_size, (bs,), device=s.device, generator=s.gen)
    return ForwardBatch(ForwardMode.DECODE, bs, ids, seq - 1, torch.arange(bs, device=s.device), seq,
                        slots[torch.tensor(last, device=s.device)], list(ctx), [], [], s.reqs, s.kv, s.backend)


# --- timing ---

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def eager_seconds(fn: Fn, device: torch.device, iters: int) -> float:
    """Median wall seconds of fn() with a sync after each (launch overhead included)."""
    fn()
    _sync(device)
    samples = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        _sync(device)
        samples.append(time.perf_counter() - t)
    return float(statistics.median(samples))


def device_seconds(fn: Fn, device: torch.device, iters: int) -> float:
    """Median device seconds of fn() between CUDA events (wall seconds on the CPU), after one warm-up."""
    return float(statistics.median(rl.timed_samples(fn, device, iters, warmup=1)))


KERNEL_CLASSES = (  # (substring of the kernel name, class), first match wins
    ("_extend_kernel", "attention extend"), ("_decode_stage1", "attention decode"),
    ("_decode_stage2", "attention decode merge"), ("_add_rmsnorm", "add+RMSNorm"), ("_rope", "rotary+KV store"),
    ("_silu_mul", "SiLU-and-mul"), ("gemm", "GEMM"), ("nvjet", "GEMM"), ("cutlass", "GEMM"), ("xmma", "GEMM"),
    ("splitK", "GEMM"), ("gemv", "GEMM"), ("argmax", "sampling"), ("reduce", "reductions"),
    ("index", "index/gather"), ("elementwise", "torch elementwise"), ("copy", "copies"), ("Memcpy", "copies"),
    ("Memset", "copies"),
)


def classify(name: str) -> str:
    for key, cls in KERNEL_CLASSES:
        if key in name:
            return cls
    return "other: " + name[:60]


def kernel_table(fn: Fn, device: torch.device, reps: int) -> dict[str, dict[str, float]]:
    """Device microseconds and calls per fn() by kernel class (torch.profiler over `reps` calls)."""
    fn()
    _sync(device)
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(reps):
            fn()
        _sync(device)
    table: dict[str, dict[str, float]] = defaultdict(lambda: {"us": 0.0, "calls": 0.0})
    want = torch.autograd.DeviceType.CUDA if device.type == "cuda" else torch.autograd.DeviceType.CPU
    for evt in prof.key_averages():
        if evt.device_type != want:
            continue
        t = evt.self_device_time_total if device.type == "cuda" else evt.self_cpu_time_total
        row = table[classify(evt.key)]
        row["us"] += t / reps
        row["calls"] += evt.count / reps
    return {k: {"us": round(v["us"], 1), "calls": round(v["calls"], 1)}
            for k, v in sorted(table.items(), key=lambda kv: -kv[1]["us"])}


# --- parts ---

def attention_flops(s: Setup, lens: list[int]) -> float:
    """Causal attention FLOPs of fresh prompts: 4 * heads * head_dim per visible (query, key) pair."""
    c = s.config
    return 4.0 * c.num_attention_heads * c.head_dim * sum(n * (n + 1) / 2 for n in lens) * c.num_hidden_layers


def profile_prefill(s: Setup, lens: list[int], rates: rl.DeviceRates, iters: int) -> dict[str, Any]:
    fb = prefill_batch(s, lens)

    def step() -> None:
        s.backend.init_forward_metadata(fb)
        s.model(fb.input_ids, fb.positions, fb)

    seconds = device_seconds(step, s.device, iters)
    matmul_flops = 2.0 * sum(p.numel() for n, p in s.model.named_parameters()
                             if n.endswith("proj.weight")) * sum(lens)
    matmul_flops += 2.0 * s.config.vocab_size * s.config.hidden_size * len(lens)
    attn = attention_flops(s, lens)
    bound = (matmul_flops + attn) / rates.matmul_flops
    return {"prompts": lens if len(lens) <= 2 else f"{len(lens)} x {lens[0]}", "tokens": sum(lens),
            "forward_ms": round(seconds * 1e3, 3), "bound_ms": round(bound * 1e3, 3),
            "of_bound": round(bound / seconds, 4), "matmul_tflop": round(matmul_flops / 1e12, 2),
            "attention_tflop": round(attn / 1e12, 2),
            "kernels": kernel_table(step, s.device, 2)}


def decode_contexts(bs: int, ctx_range: tuple[int, int], seed: int) -> list[int]:
    """Context lengths of a running batch: uniform over [lo, hi) (1025-1281: prompts of 1024 with 1-256
    tokens generated)."""
    lo, hi = ctx_range
    return [int(x) for x in torch.randint(lo, hi, (bs,), generator=torch.Generator().manual_seed(seed))]


def profile_decode(s: Setup, bs: int, ctx_range: tuple[int, int], rates: rl.DeviceRates,
                   iters: int) -> dict[str, Any]:
    ctx = decode_contexts(bs, ctx_range, 1)
    fb = decode_batch(s, ctx)
    s.backend.init_forward_metadata(fb)

    def step() -> None:
        s.model(fb.input_ids, fb.positions, fb)

    eager = eager_seconds(step, s.device, iters)
    graph = captured(step, s.device)
    replay = device_seconds(graph, s.device, iters)
    c = s.config
    kv_bytes = sum(ctx) * 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 2
    weight_bytes = sum(p.numel() * p.element_size() for p in s.model.parameters()) \
        - s.config.vocab_size * s.config.hidden_size * 2  # the embedding is gathered, not read
    bound = (kv_bytes + weight_bytes) / rates.copy_bytes_s
    gemm_flops = 2.0 * (weight_bytes / 2) * bs
    return {"batch": bs, "mean_context": round(statistics.fmean(ctx), 1),
            "graph_ms": round(replay * 1e3, 3), "eager_wall_ms": round(eager * 1e3, 3),
            "kv_gb": round(kv_bytes / 1e9, 2), "weight_gb": round(weight_bytes / 1e9, 2),
            "bytes_bound_ms": round(bound * 1e3, 3),
            "gemm_flops_bound_ms": round(gemm_flops / rates.matmul_flops * 1e3, 3),
            "splits": s.backend._num_splits, "kernels_graph": kernel_table(graph, s.device, 5)}


def gemm_table(s: Setup, rows: list[int], rates: rl.DeviceRates, iters: int) -> dict[str, Any]:
    """Each projection over all layers' weights (as a step reads them), per product."""
    out: dict[str, Any] = {}
    layers = [s.model.model.layers[i] for i in range(s.config.num_hidden_layers)]
    projs = {"qkv": lambda ly: ly.self_attn.qkv_proj.weight, "o": lambda ly: ly.self_attn.o_proj.weight,
             "gate_up": lambda ly: ly.mlp.gate_up_proj.weight, "down": lambda ly: ly.mlp.down_proj.weight}
    for m in rows:
        for name, get in projs.items():
            ws = [get(ly) for ly in layers]
            n, k = ws[0].shape
            x = torch.randn(m, k, device=s.device, dtype=torch.bfloat16)
            y = torch.empty(m, n, device=s.device, dtype=torch.bfloat16)
            def products(ws: list[torch.Tensor] = ws, x: torch.Tensor = x, y: torch.Tensor = y) -> None:
                for w in ws:
                    torch.mm(x, w.t(), out=y)

            fn = captured(products, s.device)
            t = device_seconds(fn, s.device, iters) / len(ws)
            out[f"{name}_m{m}"] = {"n": n, "k": k, "us": round(t * 1e6, 2),
                                   "tflop_s": round(2 * m * n * k / t / 1e12, 1),
                                   "of_matmul_rate": round(2 * m * n * k / t / rates.matmul_flops, 3),
                                   "weight_gb_s": round(n * k * 2 / t / 1e9, 1)}
    return out


def _attn_inputs(s: Setup, fb: ForwardBatch) -> tuple[torch.Tensor, torch.Tensor]:
    c = s.config
    q = torch.randn(fb.input_ids.shape[0], c.num_attention_heads, c.head_dim, device=s.device, dtype=torch.bfloat16)
    return q, torch.empty_like(q)


def step_kv_of(s: Setup, fb: ForwardBatch, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This step's k and v as the model hands them to the backend: strided views into a [tokens, q | k | v]
    buffer, holding what the pool holds at the step's slots."""
    c = s.config
    kv = c.num_key_value_heads * c.head_dim
    qkv = torch.empty(fb.out_cache_loc.shape[0], c.num_attention_heads * c.head_dim + 2 * kv, device=s.device,
                      dtype=torch.bfloat16)
    k = qkv[:, -2 * kv:-kv].view(-1, c.num_key_value_heads, c.head_dim)
    v = qkv[:, -kv:].view(-1, c.num_key_value_heads, c.head_dim)
    kb, vb = s.kv.get_kv_buffer(layer)
    k.copy_(kb[fb.out_cache_loc])
    v.copy_(vb[fb.out_cache_loc])
    return k, v


def extend_variants(s: Setup, lens: list[int], rates: rl.DeviceRates, iters: int) -> dict[str, Any]:
    fb = prefill_batch(s, lens)
    s.backend.init_forward_metadata(fb)
    b = s.backend
    q, o = _attn_inputs(s, fb)
    layers = min(8, s.config.num_hidden_layers)
    step = [step_kv_of(s, fb, layer) for layer in range(layers)]
    flops = attention_flops(s, lens) / s.config.num_hidden_layers * layers
    res: dict[str, Any] = {}
    ref: torch.Tensor | None = None
    for name, (tiles, use_step) in EXTEND_VARIANTS.items():
        def run(tiles: ExtendTiles = tiles, use_step: bool = use_step) -> None:
            for layer in range(layers):
                kb, vb = s.kv.get_kv_buffer(layer)
                extend_attention(q, kb, vb, o, s.reqs.req_to_token, fb.req_pool_indices, b._prefix_lens,
                                 b._extend_lens, b._extend_start, b._max_extend, 0.088, tiles=tiles,
                                 step_kv=step[layer] if use_step else None)
        try:
            t = device_seconds(captured(run, s.device), s.device, iters)
        except Exception as e:  # a launch shape that does not compile or fit is a result, not a crash
            res[name] = {"error": repr(e)[:300]}
            continue
        if ref is None:
            ref = o.clone()
        res[name] = {"us_per_layer": round(t / layers * 1e6, 1), "tflop_s": round(flops / t / 1e12, 1),
                     "of_matmul_rate": round(flops / t / rates.matmul_flops, 3), "step_kv": use_step,
                     "max_abs_diff": float((o.float() - ref.float()).abs().max()), **asdict(tiles)}
    return res


def decode_variants(s: Setup, bs: int, ctx_range: tuple[int, int], rates: rl.DeviceRates,
                    iters: int, names: list[str] | None = None) -> dict[str, Any]:
    ctx = decode_contexts(bs, ctx_range, 2)
    fb = decode_batch(s, ctx)
    s.backend.init_forward_metadata(fb)
    c = s.config
    q, o = _attn_inputs(s, fb)
    layers = min(8, c.num_hidden_layers)
    kv_bytes = sum(ctx) * 2 * c.num_key_value_heads * c.head_dim * 2 * layers
    auto = decode_num_splits(c.max_position_embeddings, bs, c.num_key_value_heads, s.backend.num_sms, MAX_SPLITS)
    chosen = {n: v for n, v in DECODE_VARIANTS.items() if not names or n in names}
    most = max(splits or auto for _, splits in chosen.values())  # scratch for the variants that run
    mid_o = torch.empty(bs, c.num_attention_heads, most, c.head_dim, device=s.device)
    mid_lse = torch.empty(bs, c.num_attention_heads, most, device=s.device)
    res: dict[str, Any] = {"auto_splits": auto}
    ref: torch.Tensor | None = None
    for name, (tiles, splits) in chosen.items():
        def run(tiles: DecodeTiles = tiles, splits: int = splits or auto) -> None:
            for layer in range(layers):
                kb, vb = s.kv.get_kv_buffer(layer)
                decode_attention(q, kb, vb, o, s.reqs.req_to_token, fb.req_pool_indices, fb.seq_lens, 0.088,
                                 splits, mid_o, mid_lse, tiles=tiles)
        try:
            t = device_seconds(captured(run, s.device), s.device, iters)
        except Exception as e:
            res[name] = {"error": repr(e)[:300]}
            continue
        if ref is None:
            ref = o.clone()
        res[name] = {"us_per_layer": round(t / layers * 1e6, 1), "kv_gb_s": round(kv_bytes / t / 1e9, 1),
                     "of_copy_rate": round(kv_bytes / t / rates.copy_bytes_s, 3), "splits": splits or auto,
                     "max_abs_diff": float((o.float() - ref.float()).abs().max()), **asdict(tiles)}
    return res


@dataclass
class _OverlapRig:
    """A decode step's two kinds of work for a set of rows, over the first 8 layers."""

    s: Setup
    fb: ForwardBatch
    q: torch.Tensor
    o: torch.Tensor
    x: torch.Tensor
    mlp_in: torch.Tensor
    index: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, int, torch.Tensor, torch.Tensor]]

    @property
    def layers(self) -> list[Any]:
        return [self.s.model.model.layers[i] for i in range(min(8, self.s.config.num_hidden_layers))]

    def add_rows(self, p: slice) -> None:
        # Each row set its own index copies (aligned, as the engine's) and split buffers: halves run at once.
        c, n = self.s.config, p.stop - p.start
        splits = decode_num_splits(c.max_position_embeddings, n, c.num_key_value_heads, self.s.backend.num_sms, 16)
        self.index[p.start, p.stop] = (self.fb.req_pool_indices[p].clone(), self.fb.seq_lens[p].clone(), splits,
                               torch.empty(n, c.num_attention_heads, 16, c.head_dim, device=self.s.device),
                               torch.empty(n, c.num_attention_heads, 16, device=self.s.device))

    def attention(self, p: slice) -> None:
        rows, lens, splits, mid_o, mid_lse = self.index[p.start, p.stop]
        for i in range(len(self.layers)):
            kb, vb = self.s.kv.get_kv_buffer(i)
            decode_attention(self.q[p], kb, vb, self.o[p], self.s.reqs.req_to_token, rows, lens, 0.088, splits,
                             mid_o, mid_lse)

    def products(self, p: slice) -> None:
        for ly in self.layers:
            torch.mm(self.x[p], ly.self_attn.qkv_proj.weight.t())
            torch.mm(self.x[p], ly.self_attn.o_proj.weight.t())
            torch.mm(self.x[p], ly.mlp.gate_up_proj.weight.t())
            torch.mm(self.mlp_in[p], ly.mlp.down_proj.weight.t())


def decode_overlap(s: Setup, bs: int, ctx_range: tuple[int, int], iters: int) -> dict[str, Any]:
    """Whether a decode step's KV reads and its products can share the GPU: per layer (8), attention
    and the four projections for `bs` rows in sequence (as a step runs now), the same for two halves
    of the batch in sequence, and the halves overlapped on two streams (one half's attention beside
    the other half's products, then the other way round: a two-micro-batch decode step's pattern,
    without its data dependencies). CUDA only (streams)."""
    if s.device.type != "cuda":
        return {"skipped": "needs CUDA streams"}
    ctx = torch.randint(*ctx_range, (bs,), generator=torch.Generator().manual_seed(3)).tolist()
    fb = decode_batch(s, ctx)
    c = s.config
    q, o = _attn_inputs(s, fb)
    rig = _OverlapRig(s, fb, q, o, torch.randn(bs, c.hidden_size, device=s.device, dtype=torch.bfloat16),
                      torch.randn(bs, c.intermediate_size, device=s.device, dtype=torch.bfloat16), {})
    full, a, b = slice(0, bs), slice(0, bs // 2), slice(bs // 2, bs)
    for p in (full, a, b):
        rig.add_rows(p)
    side = torch.cuda.Stream(s.device)

    def overlapped() -> None:
        for first, second in ((a, b), (b, a)):
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                rig.products(second)
            rig.attention(first)
            torch.cuda.current_stream().wait_stream(side)

    def serial(*ps: slice) -> Fn:
        def run() -> None:
            for p in ps:
                rig.attention(p)
                rig.products(p)
        return run

    runs: dict[str, Fn] = {
        "attention_only": lambda: rig.attention(full), "products_only": lambda: rig.products(full),
        "serial_full": serial(full), "serial_halves": serial(a, b), "overlapped_halves": overlapped}
    res: dict[str, Any] = {"batch": bs, "layers": len(rig.layers), "mean_context": round(statistics.fmean(ctx), 1),
                           "splits": {"full": rig.index[0, bs][2], "half": rig.index[0, bs // 2][2]}}
    for name, fn in runs.items():
        res[f"{name}_ms_per_layer"] = round(device_seconds(captured(fn, s.device), s.device, iters)
                                            / len(rig.layers) * 1e3, 4)
    res["overlapped_over_serial_full"] = round(res["overlapped_halves_ms_per_layer"]
                                               / res["serial_full_ms_per_layer"], 4)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--pool-tokens", type=int, default=400_000)
    ap.add_argument("--decode-bs", type=int, default=320)
    ap.add_argument("--decode-ctx", default="1025,1281", help="Decode contexts: uniform over [lo, hi).")
    ap.add_argument("--prefill-prompts", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=1024)
    ap.add_argument("--long-prompt", type=int, default=8191)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--parts", default="prefill,decode,gemm,extend_variants,decode_variants",
                    help="Which parts to run (prefixes of: prefill_chunk, prefill_long, decode, gemm, "
                         "extend_variants_chunk, extend_variants_long, decode_variants, decode_overlap).")
    ap.add_argument("--decode-variants", default="",
                    help=f"decode_variants: the names to run, comma-separated (default all: {', '.join(DECODE_VARIANTS)})")
    ap.add_argument("--output", default=None)
    args = ap.parse_args(argv)
    variant_names = [n for n in args.decode_variants.split(",") if n]
    unknown = [n for n in variant_names if n not in DECODE_VARIANTS]
    if unknown:
        ap.error(f"--decode-variants: unknown {', '.join(unknown)}")
    device = torch.device(args.device)
    tiny = device.type != "cuda"
    parts = set(args.parts.split(","))
    lo, hi = (int(x) for x in args.decode_ctx.split(","))
    result: dict[str, Any] = {"benchmark": "profile_throughput", "command": " ".join(sys.argv),
                              "machine": machine_info(), "args": vars(args)}
    if device.type == "cuda":
        result["device_name"] = torch.cuda.get_device_name(device)
        rates = rl.measure_rates(device, torch.bfloat16)
    else:
        rates = rl.DeviceRates(1e12, 1e10, "cpu", "bfloat16")
    result.update(rates.to_json())
    s = build(device, args.layers, args.pool_tokens, max(args.decode_bs, args.prefill_prompts) + 1, tiny)
    result["kv_pool_tokens"] = s.kv.size
    chunk = [args.prompt_len] * args.prefill_prompts
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("prefill_chunk", lambda: profile_prefill(s, chunk, rates, args.iters)),
        ("prefill_long", lambda: profile_prefill(s, [args.long_prompt], rates, args.iters)),
        ("decode", lambda: profile_decode(s, args.decode_bs, (lo, hi), rates, args.iters)),
        ("gemm", lambda: gemm_table(s, [args.prompt_len * args.prefill_prompts, args.decode_bs], rates, args.iters)),
        ("extend_variants_chunk", lambda: extend_variants(s, chunk, rates, args.iters)),
        ("extend_variants_long", lambda: extend_variants(s, [args.long_prompt], rates, args.iters)),
        ("decode_variants", lambda: decode_variants(s, args.decode_bs, (lo, hi), rates, args.iters, variant_names)),
        ("decode_overlap", lambda: decode_overlap(s, args.decode_bs, (lo, hi), args.iters)),
    ]
    for name, run in steps:
        if not any(name.startswith(p) for p in parts):
            continue
        t = time.perf_counter()
        try:
            with torch.inference_mode():
                result[name] = run()
        except Exception as e:  # keep the other parts' results
            result[name] = {"error": repr(e)[:500]}
        print(f"[{name}] {time.perf_counter() - t:.1f}s", json.dumps(result[name])[:3000], flush=True)
    out = Path(args.output or f"profile_throughput_{device.type}.json")
    out.write_text(json.dumps(result, indent=1))
    print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
