"""Where a batch-1 decode step of the 8B shape goes on the GPU, kernel class by kernel class, against
each class's own bound (its bytes over the copy rate measured in the same process), with the
one-row fusion (kernels/gemv.py) off and on.

  python benchmarks/profile_decode_breakdown.py --tokenizer-path TOK --output OUT.json [--skip-micro]

1. micro: each projection at one row, timed in CUDA graphs over rotating weight copies (more bytes
   than the L2 holds, as in a step): cuBLAS alone, the unfused sequence it sits in (add+RMSNorm,
   product, rotary+KV store or SiLU), and the fused kernel over a sweep of tiles; the best tiles per
   shape are kept for part 2 and checked against the torch references at those shapes.
2. engine: for RADIXSERVE_ONE_ROW_FUSION 0 and 1 (and 1 with RADIXSERVE_PDL=1: programmatic
   dependent launch, kernels/pdl.py; the other two run with RADIXSERVE_PDL=0), an Engine (random weights, CUDA graph of batch 1)
   decodes one request after a --input-len prompt: whole Scheduler.step() time (the overlap
   schedule on), graph replay time (CUDA events), the graph's kernels by class (torch.profiler over
   replays: time per step, calls, gaps between kernels) and the kernels a step runs outside the
   graph. With fusion on, the eager one-row forward is compared with the layer-by-layer one.
3. graph_ab: the four variants' decode graphs captured in one Engine and replayed interleaved (the
   fair comparison of step times: same weights, memory and context, alternating in time).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import roofline as rl  # noqa: E402
from benchmarks._common import environment, graph_seconds, machine_info  # noqa: E402

H, INTER, HEADS, KV_HEADS, DIM, VOCAB, LAYERS = 4096, 14336, 32, 8, 128, 128256, 32
SHAPES = {"qkv": ((HEADS + 2 * KV_HEADS) * DIM, H), "o": (H, HEADS * DIM), "gate_up": (2 * INTER, H),
          "down": (H, INTER), "lm_head": (VOCAB, H)}
RES_CANDS = [(4, 512, 4, 1), (8, 512, 4, 1), (8, 256, 4, 1), (8, 1024, 4, 1), (16, 512, 4, 1), (16, 256, 4, 1),
             (4, 1024, 4, 1), (8, 512, 4, 3), (16, 512, 8, 1), (32, 256, 4, 1), (2, 2048, 4, 1)]
PAIR_CANDS = [(8, 512, 4, 1), (16, 512, 4, 1), (16, 256, 4, 1), (16, 1024, 8, 1), (32, 256, 4, 1), (32, 512, 8, 1),
              (8, 1024, 4, 1), (16, 512, 4, 3), (4, 1024, 4, 1)]
Tiles = tuple[int, int, int, int]
LM_CANDS = [(8, 512, 4, 1), (16, 512, 4, 1), (8, 1024, 4, 1), (16, 256, 4, 1)]


@dataclass
class MicroInputs:
    """The activations, norm weight, rotary tables and pool the one-row products read."""

    h: torch.Tensor
    res: torch.Tensor
    gamma: torch.Tensor
    part: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    pos: torch.Tensor
    loc: torch.Tensor
    k_buf: torch.Tensor
    v_buf: torch.Tensor


def micro_inputs(gen: torch.Generator) -> MicroInputs:
    from radixserve.kernels import gemv
    from radixserve.layers.rotary_embedding import RotaryEmbedding

    dt, dev = torch.bfloat16, "cuda"
    res = torch.randn(1, H, dtype=dt, device=dev, generator=gen)
    _, part = gemv.gemv_residual(torch.randn(1, H, dtype=dt, device=dev, generator=gen),
                                 torch.randn(H, H, dtype=dt, device=dev, generator=gen) * 0.02, res)
    rope = RotaryEmbedding(DIM, 8192, 500000.0).to(dev)
    k_buf = torch.zeros(64, KV_HEADS, DIM, dtype=dt, device=dev)
    return MicroInputs(torch.randn(1, H, dtype=dt, device=dev, generator=gen), res,
                       (1 + 0.1 * torch.randn(H, device=dev, generator=gen)).to(dt), part, rope.cos_cache,
                       rope.sin_cache, torch.full((1,), 700, dtype=torch.int64, device=dev),
                       torch.full((1,), 5, dtype=torch.int64, device=dev), k_buf, torch.zeros_like(k_buf))


Maker = Callable[[torch.Tensor], Callable[[], Any]]


def unfused_sequence(name: str, m: MicroInputs) -> tuple[str, Maker | None]:
    """What the layer-by-layer path runs around this product (None: the product alone)."""
    from radixserve.kernels.fused_ops import add_rmsnorm, rotary_inplace, silu_and_mul

    if name == "qkv":
        def qkv(w: torch.Tensor) -> Callable[[], Any]:
            def run() -> None:
                x, _ = add_rmsnorm(m.h, m.res, m.gamma, 1e-5)
                q, k, v = F.linear(x, w).split([HEADS * DIM, KV_HEADS * DIM, KV_HEADS * DIM], dim=-1)
                rotary_inplace(q.view(1, HEADS, DIM), k.view(1, KV_HEADS, DIM), m.pos, m.cos, m.sin,
                               store=(v.view(1, KV_HEADS, DIM), m.k_buf, m.v_buf, m.loc))
            return run
        return "add_rmsnorm + cuBLAS + rotary/KV store", qkv
    if name == "gate_up":
        def gate_up(w: torch.Tensor) -> Callable[[], Any]:
            return lambda: silu_and_mul(F.linear(add_rmsnorm(m.h, m.res, m.gamma, 1e-5)[0], w))
        return "add_rmsnorm + cuBLAS + silu_and_mul", gate_up
    return "cuBLAS (its residual add runs in the next add_rmsnorm)", None


def fused_product(name: str, m: MicroInputs, a: torch.Tensor) -> tuple[str, list[Tiles], Maker]:
    from radixserve.kernels import gemv

    if name == "qkv":
        return "rope", PAIR_CANDS, lambda w: lambda: gemv.norm_gemv_rope(
            m.res, m.part, m.gamma, 1e-5, w, HEADS, KV_HEADS, m.pos, m.cos, m.sin, m.k_buf, m.v_buf, m.loc)
    if name == "gate_up":
        return "silu", PAIR_CANDS, lambda w: lambda: gemv.norm_gemv_silu(m.res, m.part, m.gamma, 1e-5, w)
    if name in ("o", "down"):
        return "residual", RES_CANDS, lambda w: lambda: gemv.gemv_residual(a, w, m.res)
    return "residual", LM_CANDS, lambda w: lambda: gemv.gemv_residual(a, w, None)


def tiles_fit(kind: str, t: Tiles, n: int, k: int) -> bool:
    return k % t[1] == 0 and (n % t[0] == 0 if kind == "residual" else (n // 2) % (t[0] // 2) == 0)


def bench_shape(name: str, n: int, k: int, m: MicroInputs, copy_bps: float, gen: torch.Generator) -> dict[str, Any]:
    from radixserve.kernels import gemv

    nbytes = n * k * 2
    copies = max(1, math.ceil((512 << 20) / nbytes))
    ws = [torch.empty(n, k, dtype=torch.bfloat16, device="cuda").uniform_(-0.02, 0.02, generator=gen)
          for _ in range(copies)]
    a = torch.randn(1, k, dtype=torch.bfloat16, device="cuda", generator=gen)
    bound_us = nbytes / copy_bps * 1e6
    row: dict[str, Any] = {"n": n, "k": k, "bytes": nbytes, "bound_us": round(bound_us, 2), "copies": copies}

    def timed(make: Maker) -> float:
        return round(graph_seconds([make(w) for w in ws]) / copies * 1e6, 2)

    row["cublas_us"] = timed(lambda w: lambda: F.linear(a, w))
    row["unfused_seq"], unfused = unfused_sequence(name, m)
    row["unfused_us"] = timed(unfused) if unfused is not None else row["cublas_us"]
    kind, cands, fused = fused_product(name, m, a)
    sweep: dict[str, float | str] = {}
    for t in cands:
        if not tiles_fit(kind, t, n, k):
            continue
        gemv.SHAPE_TILES[(kind, n, k)] = t
        try:
            sweep[str(t)] = timed(fused)
        except Exception as e:  # a tile that does not compile or run: recorded, skipped
            sweep[str(t)] = f"error: {type(e).__name__}: {str(e)[:200]}"
    timings = {t: v for t, v in sweep.items() if isinstance(v, float)}
    best = min(timings, key=lambda t: timings[t])
    best_tiles = parse_tiles(best)
    # The plain Triton product (no fusion, a few tiles) against cuBLAS.
    plain: dict[str, float] = {}
    for t in LM_CANDS + ([best_tiles] if kind == "residual" else []):
        if tiles_fit("residual", t, n, k):
            gemv.SHAPE_TILES[("residual", n, k)] = t
            plain[str(t)] = timed(lambda w: lambda: gemv.gemv_residual(a, w, None))
    gemv.SHAPE_TILES.pop(("residual", n, k), None)
    if name != "lm_head":  # the model's LM head stays on cuBLAS
        gemv.SHAPE_TILES[(kind, n, k)] = best_tiles
    row.update({"kind": kind, "sweep_us": sweep, "best_tiles": best, "fused_us": timings[best],
                "fused_of_bound": round(bound_us / timings[best], 3),
                "cublas_of_bound": round(bound_us / row["cublas_us"], 3),
                "triton_plain_us": plain, "triton_plain_best_us": min(plain.values()) if plain else None})
    print(f"{name:8s} n={n:6d} k={k:5d} bound {row['bound_us']:8.2f} us  cuBLAS {row['cublas_us']:8.2f}  "
          f"unfused seq {row['unfused_us']:8.2f}  fused {timings[best]:8.2f} {best}  plain triton "
          f"{row['triton_plain_best_us']}", flush=True)
    return row


def micro(copy_bps: float) -> dict[str, Any]:
    from radixserve.kernels import gemv

    gen = torch.Generator(device="cuda").manual_seed(0)
    m = micro_inputs(gen)
    out: dict[str, Any] = {}
    for name, (n, k) in SHAPES.items():
        out[name] = bench_shape(name, n, k, m, copy_bps, gen)
        torch.cuda.empty_cache()
    out["chosen_tiles"] = {f"{key[0]}:{key[1]}x{key[2]}": v for key, v in gemv.SHAPE_TILES.items()}
    return out


def parse_tiles(text: str) -> tuple[int, int, int, int]:
    a, b, c, d = (int(x) for x in text.strip("()").split(","))
    return a, b, c, d


def check_at_8b_shapes() -> str:
    from tests.kernels.gemv_cases import check_gemv

    for seed in (1, 2):
        check_gemv("cuda", torch.bfloat16, torch.Generator().manual_seed(seed), hidden=H, inter=INTER, heads=HEADS,
                   kv_heads=KV_HEADS, dim=DIM)
    return "passed"


# ---- engine ----

def classify(name: str) -> str:
    n = name.lower()
    for key, cls in (("_norm_gemv_rope", "qkv+norm+rotary (fused)"), ("_norm_gemv_silu", "gate_up+norm+silu (fused)"),
                     ("_gemv_residual", "o/down+residual (fused)"), ("_add_rmsnorm", "add_rmsnorm"),
                     ("_rope_kernel", "rotary+kv store"), ("_decode_stage1", "attention stage 1"),
                     ("_decode_stage2", "attention stage 2"), ("_silu_mul", "silu_and_mul"),
                     ("cudafunctor_add", "add (torch)"), ("catarray", "cat (torch)")):
        if key in n:
            return cls
    if "reduce" in n and ("splitk" in n or "cublas" in n or "gemm" in n):
        return "cuBLAS split-K reduce"
    if any(s in n for s in ("gemv", "gemm", "nvjet", "cutlass", "xmma", "cublas", "sm90_")):
        return "cuBLAS product"
    if "index" in n or "embedding" in n:
        return "embedding/index"
    if "argmax" in n or "reduce_kernel" in n:
        return "argmax/reduce"
    if "memcpy" in n or "memset" in n:
        return "memcpy/memset"
    return "other: " + name[:60]


def kernels_of(trace_path: str) -> list[dict[str, Any]]:
    ev = json.loads(Path(trace_path).read_text())["traceEvents"]
    ks = [e for e in ev if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e]
    ks.sort(key=lambda e: e["ts"])
    return ks


def kernel_classes(ks: list[dict[str, Any]], reps: int) -> dict[str, Any]:
    """Where one replay of a graph goes, from `ks`, the kernels of `reps` replays in start order
    (chrome-trace events: name, ts and dur in us): us and launches per step by class (the most time
    first), the span from the first kernel's start to the last's end, and the time in it that no kernel
    ran (gaps: launch latency, tails and waits between kernels)."""
    per = len(ks) // reps
    if per == 0 or per * reps != len(ks):
        raise ValueError(f"{len(ks)} kernels do not split into {reps} replays")
    classes: dict[str, dict[str, float]] = defaultdict(lambda: {"calls": 0.0, "us": 0.0})
    spans, busy = [], []
    for r in range(reps):
        chunk = ks[r * per: (r + 1) * per]
        spans.append(chunk[-1]["ts"] + chunk[-1]["dur"] - chunk[0]["ts"])
        busy.append(sum(k["dur"] for k in chunk))
        for k in chunk:
            c = classes[classify(k["name"])]
            c["calls"] += 1 / reps
            c["us"] += k["dur"] / reps
    return {"kernels_per_step": per, "span_us": round(statistics.median(spans), 1),
            "busy_us": round(statistics.median(busy), 1),
            "gaps_us": round(statistics.median(spans) - statistics.median(busy), 1),
            "classes": {name: {"calls": round(v["calls"], 1), "us": round(v["us"], 1)}
                        for name, v in sorted(classes.items(), key=lambda kv: -kv[1]["us"])}}


def label_products(kernels: list[dict[str, Any]], layers: int) -> list[str | None]:
    """Which projection each product kernel serves, by its place in the step (reduce kernels join
    the product before them)."""
    order = ["qkv", "o", "gate_up", "down"]
    labels: list[str | None] = []
    call = -1
    for k in kernels:
        cls = classify(k["name"])
        if cls == "cuBLAS split-K reduce":
            labels.append(labels[-1] if labels else None)
            continue
        if cls.startswith("cuBLAS product") or "(fused)" in cls:
            call += 1
            labels.append(order[call % 4] if call < 4 * layers else "lm_head")
        else:
            labels.append(None)
    return labels


def profile_replays(graph: torch.cuda.CUDAGraph, reps: int, tmp: str) -> list[dict[str, Any]]:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            graph.replay()
        torch.cuda.synchronize()
    path = os.path.join(tmp, "replays.json")
    prof.export_chrome_trace(path)
    return kernels_of(path)


def engine_run(fusion: bool, pdl: bool, args: argparse.Namespace, copy_bps: float) -> dict[str, Any]:
    from radixserve import Engine
    from radixserve.kernels import pdl as pdl_mod
    from radixserve.managers.io_struct import TokenizedGenerateReqInput
    from radixserve.sampling.sampling_params import SamplingParams

    os.environ["RADIXSERVE_ONE_ROW_FUSION"] = "1" if fusion else "0"
    os.environ["RADIXSERVE_PDL"] = "1" if pdl else "0"
    t0 = time.perf_counter()
    engine = Engine(model_path="llama-3-8b", load_format="dummy", tokenizer_path=args.tokenizer_path,
                    max_total_tokens=32 * 1024, cuda_graph_max_bs=1, log_level="warning")
    out: dict[str, Any] = {"fusion": fusion, "pdl_asked": pdl, "pdl_active": pdl_mod.enabled(torch.device("cuda")),
                           "engine_start_s": round(time.perf_counter() - t0, 1)}
    sched = engine.scheduler
    runner = engine.model_runner
    model: Any = runner.model
    weight_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embed_tokens" not in n)
    if model.config.tie_word_embeddings:  # a tied table is read whole, as the LM head
        table = model.lm_head.weight
        weight_bytes += table.numel() * table.element_size()
    steps = args.steps
    sched.add_request(TokenizedGenerateReqInput(
        rid="r0", input_ids=[(7 * j) % 1000 + 10 for j in range(args.input_len)],
        sampling_params=SamplingParams(max_new_tokens=steps + 400, temperature=0, ignore_eos=True)))
    while sched.waiting_queue or sched.prefill.chunked_req is not None:
        sched.step()
    for _ in range(8):
        sched.step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        sched.step()
    torch.cuda.synchronize()
    step_s = (time.perf_counter() - t) / steps
    # The KV read at the timed steps' middle context.
    kv_bytes = (args.input_len + 8 + steps // 2) * 2 * LAYERS * KV_HEADS * DIM * 2
    bound = (weight_bytes + kv_bytes) / copy_bps
    out.update({"whole_step_ms": round(step_s * 1e3, 4), "tok_s": round(1 / step_s, 1),
                "weight_bytes_per_step": weight_bytes, "kv_bytes_per_step": kv_bytes,
                "bound_ms": round(bound * 1e3, 4), "of_bound": round(bound / step_s, 4), "overlap": sched.overlap})
    sched._drain_inflight()
    assert runner.graph_runner is not None
    graph = runner.graph_runner.graphs[1]
    samples = []
    for _ in range(5):
        graph.replay()
    for _ in range(50):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        samples.append(a.elapsed_time(b))
    out["graph_replay_ms"] = round(statistics.median(samples), 4)
    with tempfile.TemporaryDirectory() as tmp:
        reps = 10
        ks = profile_replays(graph, reps, tmp)
        summary = kernel_classes(ks, reps)
        per = summary["kernels_per_step"]
        out["graph_kernels_per_step"] = per
        labels = label_products(ks[:per], LAYERS)
        products: dict[str, dict[str, float]] = defaultdict(lambda: {"calls": 0, "us": 0.0})
        for r in range(reps):
            for k, lab in zip(ks[r * per : (r + 1) * per], labels, strict=True):
                if lab is not None:
                    products[lab]["calls"] += 1 / reps
                    products[lab]["us"] += k["dur"] / reps
        out["graph_span_us"], out["graph_busy_us"], out["graph_gaps_us"] = (
            summary["span_us"], summary["busy_us"], summary["gaps_us"])
        nbytes = {name: n * k * 2 * (LAYERS if name != "lm_head" else 1) for name, (n, k) in SHAPES.items()}
        out["products"] = {name: {"calls": round(v["calls"], 1), "us": round(v["us"], 1),
                                  "bound_us": round(nbytes[name] / copy_bps * 1e6, 1),
                                  "of_bound": round(nbytes[name] / copy_bps * 1e6 / v["us"], 3)}
                           for name, v in products.items()}
        out["classes"] = summary["classes"]
        out["classes"].get("attention stage 1", {})["kv_bound_us"] = round(kv_bytes / copy_bps * 1e6, 1)
        out["first_layer_kernels"] = [(classify(k["name"]), lab, round(k["dur"], 2), k["name"][:90]) for k, lab in
                                      zip(ks[: min(per, 14)], labels[:14], strict=False)]
        # A whole step: the kernels outside the graph (inputs, sampling) and the GPU's idle time.
        from torch.profiler import ProfilerActivity, profile

        n_steps = 10
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(n_steps):
                sched.step()
            torch.cuda.synchronize()
        path = os.path.join(tmp, "steps.json")
        prof.export_chrome_trace(path)
        sk = kernels_of(path)
        graph_names = Counter(k["name"] for k in ks[:per])
        step_names = Counter(k["name"] for k in sk)
        outside = {name: round(c / n_steps - graph_names.get(name, 0), 2) for name, c in step_names.items()
                   if c / n_steps - graph_names.get(name, 0) > 0.5}
        out_us = sum(k["dur"] for k in sk) / n_steps - out["graph_busy_us"]
        out["outside_graph_kernels_per_step"] = outside
        out["outside_graph_kernel_us_per_step"] = round(out_us, 1)
        out["profiled_steps_span_us_per_step"] = round((sk[-1]["ts"] + sk[-1]["dur"] - sk[0]["ts"]) / n_steps, 1)
        out["profiled_steps_busy_us_per_step"] = round(sum(k["dur"] for k in sk) / n_steps, 1)
    if fusion:
        out["eager_one_row_vs_layers"] = compare_eager(runner)
    engine.shutdown()
    del engine, sched, runner, model
    gc.collect()
    torch.cuda.empty_cache()
    return out


@torch.inference_mode()
def capture_variants(runner: Any, live: Any, graph_runner_cls: Any) -> dict[str, Any]:
    """The batch-1 graph runner for each (fusion, PDL), its static inputs those of the live graph
    (the runner holds them: it must outlive its graph's replays)."""
    graphs: dict[str, Any] = {}
    for fusion in (0, 1):
        for pdl in (0, 1):
            with environment({"RADIXSERVE_ONE_ROW_FUSION": str(fusion), "RADIXSERVE_PDL": str(pdl)}):
                gr = graph_runner_cls(runner, runner.attn_backend, 1)
            for name in ("input_ids", "positions", "out_cache_loc", "req_pool_indices", "seq_lens"):
                getattr(gr, name).copy_(getattr(live, name))
            graphs[f"fusion{fusion}_pdl{pdl}"] = gr
    return graphs


def graph_ab(args: argparse.Namespace, copy_bps: float, rounds: int = 15, reps: int = 20) -> dict[str, Any]:
    """The batch-1 decode graph captured four times in one Engine (one-row fusion off/on x PDL off/on)
    at the same inputs (a request after --input-len tokens), replays timed interleaved: round after
    round, `reps` replays of each variant between CUDA events. A decode step is GPU-bound under the
    overlap schedule (whole step = replay time within 1 %), so these are step times at equal context."""
    from radixserve import Engine
    from radixserve.managers.io_struct import TokenizedGenerateReqInput
    from radixserve.model_executor.cuda_graph_runner import CudaGraphRunner
    from radixserve.sampling.sampling_params import SamplingParams

    engine = Engine(model_path="llama-3-8b", load_format="dummy", tokenizer_path=args.tokenizer_path,
                    max_total_tokens=32 * 1024, cuda_graph_max_bs=1, log_level="warning")
    sched, runner = engine.scheduler, engine.model_runner
    sched.add_request(TokenizedGenerateReqInput(
        rid="ab", input_ids=[(11 * j) % 1000 + 10 for j in range(args.input_len)],
        sampling_params=SamplingParams(max_new_tokens=64, temperature=0, ignore_eos=True)))
    while sched.waiting_queue or sched.prefill.chunked_req is not None:
        sched.step()
    for _ in range(args.steps // 2):
        sched.step()
    sched._drain_inflight()
    torch.cuda.synchronize()
    live = runner.graph_runner
    assert live is not None
    context = int(live.seq_lens[0])
    graphs = capture_variants(runner, live, CudaGraphRunner)
    times: dict[str, list[float]] = defaultdict(list)
    for gr in graphs.values():
        gr.graphs[1].replay()
    torch.cuda.synchronize()
    for _ in range(rounds):
        for name, gr in graphs.items():
            g = gr.graphs[1]
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(reps):
                g.replay()
            b.record()
            b.synchronize()
            times[name].append(a.elapsed_time(b) / reps)
    weight_bytes = sum(p.numel() * p.element_size() for n, p in runner.model.named_parameters()
                       if "embed_tokens" not in n)
    kv_bytes = context * 2 * LAYERS * KV_HEADS * DIM * 2
    bound_ms = (weight_bytes + kv_bytes) / copy_bps * 1e3
    out: dict[str, Any] = {"context": context, "rounds": rounds, "reps": reps, "bound_ms": round(bound_ms, 4)}
    for name, ts in times.items():
        med = statistics.median(ts)
        out[name] = {"median_ms": round(med, 4), "min_ms": round(min(ts), 4), "max_ms": round(max(ts), 4),
                     "tok_s": round(1e3 / med, 1), "of_bound": round(bound_ms / med, 4)}
        print(f"graph A/B {name:16s} {med:.4f} ms (min {min(ts):.4f}, max {max(ts):.4f}) = {1e3 / med:.1f} tok/s, "
              f"{bound_ms / med:.1%} of the {bound_ms:.4f} ms bound", flush=True)
    del graphs
    engine.shutdown()
    del engine, sched, runner, live
    gc.collect()
    torch.cuda.empty_cache()
    return out


@torch.inference_mode()
def compare_eager(runner: Any) -> dict[str, Any]:
    """Logits of the graph's last inputs, eager, one-row path against the layer-by-layer one."""
    gr = runner.graph_runner
    fb = gr._forward_batch(1)
    res = {}
    logits = {}
    for mode in ("0", "1"):
        os.environ["RADIXSERVE_ONE_ROW_FUSION"] = mode
        runner.attn_backend.prepare_graph_decode(gr.max_bs, 1, runner.sizes.context_len)
        logits[mode] = runner.model(fb.input_ids, fb.positions, fb).float()
    os.environ["RADIXSERVE_ONE_ROW_FUSION"] = "1"
    a, b = logits["1"], logits["0"]
    res["rel_max_err"] = float((a - b).abs().max() / b.abs().max())
    res["same_argmax"] = bool(a.argmax() == b.argmax())
    res["top5_overlap"] = len(set(a.topk(5).indices[0].tolist()) & set(b.topk(5).indices[0].tolist()))
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer-path", default=None)
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--skip-micro", action="store_true")
    ap.add_argument("--output", required=True)
    args = ap.parse_args(argv)
    results: dict[str, Any] = {"benchmark": "profile_decode_breakdown", "command": " ".join([sys.executable, *sys.argv]),
                               "device_name": torch.cuda.get_device_name(), "machine": machine_info(("torch", "triton")),
                               "micro_pdl": os.environ.get("RADIXSERVE_PDL", "1") != "0"}
    copy_bps = rl.measure_copy_bytes_s("cuda")
    results["copy_gb_s"] = round(copy_bps / 1e9, 1)
    print("copy GB/s", results["copy_gb_s"], flush=True)

    def save() -> None:
        Path(args.output).write_text(json.dumps(results, indent=1))

    sections: list[tuple[str, Callable[[], Any]]] = []
    if not args.skip_micro:
        sections += [("micro", lambda: micro(copy_bps)), ("check_8b_shapes", check_at_8b_shapes)]
    engines = {"engine_fusion_off": (False, False), "engine_fusion_on": (True, False),
               "engine_fusion_on_pdl": (True, True)}
    sections += [(name, functools.partial(engine_run, f, p, args, copy_bps)) for name, (f, p) in engines.items()]
    sections.append(("graph_ab", functools.partial(graph_ab, args, copy_bps)))
    for name, fn in sections:
        t = time.perf_counter()
        try:
            results[name] = fn()
        except Exception as e:
            import traceback

            traceback.print_exc()
            results[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
        print(f"[{name}] {time.perf_counter() - t:.1f}s", flush=True)
        save()
    for name in engines:
        r = results.get(name, {})
        if "error" in r or not r:
            continue
        print(f"\n== {name}: whole step {r['whole_step_ms']} ms ({r['tok_s']} tok/s), bound {r['bound_ms']} ms, "
              f"{r['of_bound']:.1%} of bound; graph replay {r['graph_replay_ms']} ms = kernels "
              f"{r['graph_busy_us']} us + gaps {r['graph_gaps_us']} us; {r['graph_kernels_per_step']} kernels; "
              f"outside the graph {r['outside_graph_kernel_us_per_step']} us of kernels")
        for c, v in r["classes"].items():
            print(f"   {c:40s} {v['calls']:6.1f} calls {v['us']:9.1f} us")
        for p, v in r["products"].items():
            print(f"   product {p:10s} {v['us']:9.1f} us vs bound {v['bound_us']:9.1f} ({v['of_bound']:.1%})")
        print("   outside graph:", r["outside_graph_kernels_per_step"])
        if "eager_one_row_vs_layers" in r:
            print("   eager one-row vs layers:", r["eager_one_row_vs_layers"])
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
