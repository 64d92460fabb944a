"""One tensor-parallel rank's batch-1 decode step on one GPU, its collectives left out.

  python benchmarks/bench_tp_shard.py --tokenizer-path TOK --configs llama-3-8b:1,2,4,8 llama-3-70b:2,4,8 \\
      --output OUT.json

Where only one GPU is lent, one rank's share of a TP=N step still is: each (shape, TP) is built in a
process of its own as rank 0 of TP=N (its shard of each weight, its KV heads, its slice of the
vocabulary; random weights) in a group whose collectives do nothing but count themselves (the
all-reduces of the embedding and of the attention-output and down products, the LM head's gather).
After an --input-len prompt, the batch-1 decode graph is captured four times (one-row fusion off/on x
programmatic dependent launch off/on) and the four replayed interleaved, between CUDA events; then
each variant's replays under torch.profiler, its kernels by class and the gaps between them.

Each step so timed is a rank's own GPU work: what TP=N would take at batch 1 if its collectives cost
nothing. Beside it, in the same process: the bound (the rank's weight bytes, embedding aside, and KV
bytes over the copy rate measured there), and the collectives of one forward, so that an all-reduce
latency measured where N GPUs are (bench_allreduce.py) turns the step into an estimate for TP=N. The
TP=1 step of the same shape, in the same call, is the speed-ups' peer.

With --all-reduce lamport-local, each all-reduce of up to 64K elements instead runs the one-kernel
all-reduce (kernels/lamport_all_reduce.py) with this rank alone: its launch, clearing, stores, reads
and sum are in the graph where the real one's would be, without NVLink's latency and without peers to
wait for. The step so timed is a floor for TP=N with that all-reduce, closer to it than the step with
no collective kernels at all.

Not measured here: the collectives themselves, and what N GPUs do to the kernels around them (each
rank waits for the slowest at every all-reduce). On the CPU (the test) the step is an eager
Scheduler.step() and the only variant is the layer-by-layer path.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import roofline as rl  # noqa: E402
from benchmarks._common import command_line, machine_info, write_results  # noqa: E402
from radixserve.distributed.parallel_state import ParallelGroup  # noqa: E402


@dataclass
class Collectives:
    all_reduce: int = 0
    gather: int = 0


class LocalAllReduce:
    """The one-kernel all-reduce with this rank as the whole group (world 1): the kernel's full work on
    its own buffer, for messages up to `cap` elements (larger ones, the prompt's, return as they are).
    Built at the first call, which is the eager prompt's, never inside a graph capture."""

    def __init__(self, cap: int = 1 << 16, programs: int = 0) -> None:
        self.cap, self.programs = cap, programs  # programs 0: the kernel's default grid
        self.peers: torch.Tensor | None = None
        self.state: torch.Tensor | None = None
        self.dtype: torch.dtype | None = None
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from radixserve.kernels import lamport_all_reduce as L

        if self.peers is None:
            self.dtype = x.dtype
            self.buf = L.new_buffer(1, self.cap, x.dtype, x.device)
            self.peers = torch.tensor([self.buf.data_ptr()], dtype=torch.int64, device=x.device)
            self.state = L.new_state(x.device, self.programs or L.PROGRAMS)
            L.warm_up(self.peers, 1, self.cap, x.dtype)
        if x.numel() > self.cap or x.dtype != self.dtype:
            return x
        assert self.state is not None
        self.calls += 1
        return L.lamport_all_reduce(x.reshape(-1), self.peers, self.state, 0, 1, self.cap).view(x.shape)


@dataclass(frozen=True)
class SilentGroup(ParallelGroup):
    """Rank `rank` of `size` with no peers: every collective returns this rank's own values and is
    counted. A model built with it holds exactly one rank's shards and runs one rank's kernels. With
    `local`, all-reduces run it (LocalAllReduce) instead of returning the input."""

    counts: Collectives = field(default_factory=Collectives)
    local: LocalAllReduce | None = None

    def broadcast_bytes(self, items: list[bytes] | None) -> list[bytes]:
        return items or []

    def all_reduce_min(self, value: int) -> int:
        return value

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            self.counts.all_reduce += 1
            if self.local is not None:
                return self.local(x)
        return x

    def all_gather_last_dim(self, x: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return x
        self.counts.gather += 1
        return torch.cat([x] * self.size, dim=-1)  # the gather's own output, as large as the real one


def parse_configs(items: list[str]) -> list[tuple[str, int]]:
    """["llama-3-8b:1,2", "PATH:2"] -> [("llama-3-8b", 1), ("llama-3-8b", 2), ("PATH", 2)]."""
    out = []
    for item in items:
        model, _, sizes = item.rpartition(":")
        if not model or not sizes:
            raise SystemExit(f"--configs: {item!r} is not MODEL:TP[,TP...]")
        out += [(model, int(s)) for s in sizes.split(",")]
    return out


def parse_tiles(items: list[str]) -> dict[tuple[str, int, int], tuple[int, int, int, int]]:
    """["rope:3072x4096=8,512,4,1"] -> {("rope", 3072, 4096): (8, 512, 4, 1)}: one-row kernel tiles per weight
    shape (kernels/gemv.py SHAPE_TILES) for a sweep; they replace the shipped ones in the child."""
    out = {}
    for item in items:
        try:
            key, tiles = item.split("=")
            kind, shape = key.split(":")
            n, k = shape.split("x")
            a, b, c, d = (int(v) for v in tiles.split(","))
            out[(kind, int(n), int(k))] = (a, b, c, d)
        except ValueError:
            raise SystemExit(f"--tiles: {item!r} is not KIND:NxK=ROWS,BLOCK_K,WARPS,STAGES") from None
    return out


def _weight_bytes(model: torch.nn.Module) -> int:
    """What a decode step reads of the weights: all but the embedding (one row of it)."""
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embed_tokens" not in n)


def _kernel_classes(graph: torch.cuda.CUDAGraph, reps: int) -> dict[str, Any]:
    """Where one replay of `graph` goes, kernel class by kernel class (torch.profiler over `reps`
    replays): us and launches per step, the span from the first kernel's start to the last's end, and
    the time in it that no kernel ran (gaps: launch latency, tails and waits between kernels)."""
    from benchmarks.profile_decode_breakdown import kernel_classes, profile_replays

    with tempfile.TemporaryDirectory() as tmp:
        return kernel_classes(profile_replays(graph, reps, tmp), reps)


def _graph_steps(sched: Any, rounds: int, reps: int, profile_reps: int = 0
                 ) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """The batch-1 decode graph in each (fusion, PDL) variant at the live request's inputs, replays
    interleaved; ms per replay. With `profile_reps`, also each variant's kernels by class."""
    from benchmarks.profile_decode_breakdown import capture_variants
    from radixserve.model_executor.cuda_graph_runner import CudaGraphRunner

    runner = sched.model_runner
    live = runner.graph_runner
    assert live is not None, "no CUDA graph runner (is --disable-cuda-graph set?)"
    graphs = capture_variants(runner, live, CudaGraphRunner)
    for gr in graphs.values():
        gr.graphs[1].replay()
    torch.cuda.synchronize()
    times: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        for name, gr in graphs.items():
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(reps):
                gr.graphs[1].replay()
            b.record()
            b.synchronize()
            times[name].append(a.elapsed_time(b) / reps)
    kernels = {name: _kernel_classes(gr.graphs[1], profile_reps) for name, gr in graphs.items()} if profile_reps else {}
    return times, kernels


def _eager_steps(sched: Any, steps: int) -> dict[str, list[float]]:
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        sched.step()
        times.append((time.perf_counter() - t) * 1e3)
    return {"layers": times}


def run_one(model_path: str, tp: int, args: argparse.Namespace) -> dict[str, Any]:
    """One (model, TP) in this process: its rank-0 shard's batch-1 decode step."""
    from radixserve.configs.model_config import NAMED_SHAPES
    from radixserve.distributed.parallel_state import NO_PIPELINE, DistGroups
    from radixserve.kernels import gemv
    from radixserve.managers.io_struct import TokenizedGenerateReqInput
    from radixserve.managers.scheduler_process import build_scheduler
    from radixserve.model_loader.source import resolve_model_source
    from radixserve.model_loader.tokenizer import load_tokenizer
    from radixserve.sampling.sampling_params import SamplingParams
    from radixserve.server_args import ServerArgs

    gemv.SHAPE_TILES.update(parse_tiles(args.tiles))
    group = SilentGroup(rank=0, size=tp, local=LocalAllReduce() if args.all_reduce == "lamport-local" else None)
    dummy = model_path in NAMED_SHAPES
    sa = ServerArgs(model_path=model_path, load_format="dummy" if dummy else "auto", device=args.device,
                    dtype=args.dtype, tokenizer_path=args.tokenizer_path, max_total_tokens=args.max_total_tokens,
                    cuda_graph_max_bs=1, disable_custom_all_reduce=True, log_level="warning")
    source = resolve_model_source(sa.model_path, sa.load_format, sa.tokenizer_path)
    sched = build_scheduler(sa, source, load_tokenizer(source.tokenizer_source),
                            DistGroups(tp=group, pp=NO_PIPELINE, world=group))
    runner = sched.model_runner
    device = runner.device
    vocab = sched.vocab_size
    prompt = [1 + (7919 * j) % (vocab - 1) for j in range(args.input_len)]
    sched.add_request(TokenizedGenerateReqInput(
        rid="shard", input_ids=prompt,
        sampling_params=SamplingParams(max_new_tokens=args.steps * 4, temperature=0, ignore_eos=True)))
    group.counts.all_reduce = group.counts.gather = 0
    while sched.waiting_queue or sched.prefill.chunked_req is not None:  # the prompt, eagerly
        sched.step()
    per_forward = Collectives(group.counts.all_reduce, group.counts.gather)
    for _ in range(args.steps):
        sched.step()
    if device.type == "cuda":
        sched._drain_inflight()
        torch.cuda.synchronize()
        context = int(runner.graph_runner.seq_lens[0]) if runner.graph_runner is not None else 0
        times, kernels = _graph_steps(sched, args.rounds, args.reps, args.profile_reps)
    else:
        times, kernels = _eager_steps(sched, args.steps), {}
        req = sched.running_batch.reqs[0]
        context = len(req.origin_input_ids) + len(req.output_ids)
    cfg = runner.config
    pool = runner.token_to_kv_pool
    kv_bytes = context * 2 * runner.model.num_local_layers * runner.model.num_kv_heads_per_rank * cfg.head_dim * \
        torch.empty((), dtype=pool.dtype).element_size()
    weight_bytes = _weight_bytes(runner.model)
    copy_bps = rl.measure_copy_bytes_s(device)
    bound_ms = (weight_bytes + kv_bytes) / copy_bps * 1e3
    out: dict[str, Any] = {
        "model": model_path, "tp": tp, "all_reduce": args.all_reduce,
        "lamport_local_calls": group.local.calls if group.local is not None else 0, "context": context, "tiles": args.tiles, "weight_bytes": weight_bytes, "kv_bytes": kv_bytes,
        "copy_gb_s": round(copy_bps / 1e9, 1), "bound_ms": round(bound_ms, 4),
        "one_row_supported": bool(runner.model.model._one_row_supported(runner.dtype))
        if hasattr(runner.model.model, "_one_row_supported") else False,
        "collectives_per_forward": {"all_reduce": per_forward.all_reduce, "gather": per_forward.gather},
        "variants": {},
    }
    for name, ts in times.items():
        med = statistics.median(ts)
        out["variants"][name] = {"median_ms": round(med, 4), "min_ms": round(min(ts), 4),
                                 "max_ms": round(max(ts), 4), "of_bound": round(bound_ms / med, 4)}
        if name in kernels:
            out["variants"][name]["kernels"] = kernels[name]
    del sched, runner
    gc.collect()
    return out


# What an Engine runs by default (models/llama.py one_row_enabled): the one-row path with PDL where the GPU
# has it, at every TP since 2026-12-03 (before: the layer-by-layer path at TP>1, "fusion0_pdl1").
def default_variant(variants: dict[str, Any]) -> str:
    return "layers" if "layers" in variants else "fusion1_pdl1"


def summarise(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per config: the default and the fastest variant's step, of its bound, and the speed-up of each over
    the same shape's TP=1 default step (where TP=1 ran in the call)."""
    rows = []
    base: dict[str, float] = {}
    for c in configs:  # the first TP=1 run of a shape (a later one is the call's drift check)
        if c.get("tp") == 1 and "variants" in c:
            base.setdefault(c["model"], c["variants"][default_variant(c["variants"])]["median_ms"])
    for c in configs:
        if "variants" not in c:
            rows.append({"model": c["model"], "tp": c["tp"], "error": c.get("error")})
            continue
        default = default_variant(c["variants"])
        best = min(c["variants"], key=lambda v: c["variants"][v]["median_ms"])
        row: dict[str, Any] = {"model": c["model"], "tp": c["tp"], "default": default, "best": best,
                               "collectives_per_step": c["collectives_per_forward"]}
        for label, name in (("default", default), ("best", best)):
            v = c["variants"][name]
            row[f"{label}_ms"] = v["median_ms"]
            row[f"{label}_of_bound"] = v["of_bound"]
            if c["model"] in base:
                row[f"{label}_speedup_vs_tp1"] = round(base[c["model"]] / v["median_ms"], 3)
        rows.append(row)
    return rows


def _child(model: str, tp: int, args: argparse.Namespace, out_path: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", f"{model}:{tp}", "--output", out_path, "--device", args.device,
           "--dtype", args.dtype, "--input-len", str(args.input_len), "--steps", str(args.steps),
           "--rounds", str(args.rounds), "--reps", str(args.reps), "--max-total-tokens", str(args.max_total_tokens),
           "--profile-reps", str(args.profile_reps), "--all-reduce", args.all_reduce, *(["--tiles", *args.tiles] if args.tiles else [])]
    if args.tokenizer_path:
        cmd += ["--tokenizer-path", args.tokenizer_path]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.config_timeout_s)
    if proc.returncode != 0 or not Path(out_path).is_file():
        return {"model": model, "tp": tp, "error": (proc.stderr or proc.stdout)[-3000:]}
    result: dict[str, Any] = json.loads(Path(out_path).read_text())
    result["process_s"] = round(time.perf_counter() - t, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["llama-3-8b:1,2,4,8"],
                    help="MODEL:TP[,TP...] each; MODEL a named shape (random weights) or a checkpoint path")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # one config in this process (a child)
    ap.add_argument("--tokenizer-path", default=None)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=32, help="decode steps before the timing (and timed on CPU)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--max-total-tokens", type=int, default=16384)
    ap.add_argument("--tiles", nargs="*", default=[],
                    help="KIND:NxK=ROWS,BLOCK_K,WARPS,STAGES each: one-row kernel tiles for that weight shape (a sweep)")
    ap.add_argument("--profile-reps", type=int, default=10,
                    help="replays of each variant under torch.profiler for its kernels by class (0: none; GPU only)")
    ap.add_argument("--all-reduce", choices=("none", "lamport-local"), default="none",
                    help="none: collectives return the rank's own values; lamport-local: all-reduces run the "
                         "one-kernel all-reduce with this rank alone (a floor for TP=N with it)")
    ap.add_argument("--config-timeout-s", type=float, default=300.0)
    ap.add_argument("--output", default=None)
    args = ap.parse_args(argv)
    if args.one:
        model, _, tp = args.one.rpartition(":")
        Path(args.output).write_text(json.dumps(run_one(model, int(tp), args)))
        return 0
    results: dict[str, Any] = {
        "benchmark": "bench_tp_shard", "command": command_line(), "machine": machine_info(("torch", "triton")),
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "what": "one TP rank's batch-1 decode step on one GPU, its collectives doing nothing (counted)"
        if args.all_reduce == "none" else "one TP rank's batch-1 decode step on one GPU, its all-reduces the "
        "one-kernel all-reduce with this rank alone (no NVLink latency, no peers)",
        "configs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for i, (model, tp) in enumerate(parse_configs(args.configs)):
            r = _child(model, tp, args, os.path.join(tmp, f"{i}.json"))
            results["configs"].append(r)
            line = r.get("error") or {k: v for k, v in r.items() if k in ("variants", "bound_ms", "one_row_supported",
                                                                          "collectives_per_forward")}
            print(f"{model} TP={tp}: {line}", flush=True)
            results["summary"] = summarise(results["configs"])
            if args.output:
                write_results("bench_tp_shard", results, args.output)
    for row in results["summary"]:
        print(json.dumps(row), flush=True)
    if not args.output:
        print("results:", write_results("bench_tp_shard", results))
    return 0 if all("error" not in c for c in results["configs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
