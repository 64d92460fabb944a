"""All-reduce latency on this machine's GPUs, per implementation and message size, inside CUDA graphs.

A TP decode step issues two all-reduces of [batch, hidden] per layer; at small batches each
is a few kilobytes and its latency, not bandwidth, is what costs. This measures, for the
message sizes of a model's hidden width (--hidden) at several token counts:

  nccl_eager      torch.distributed.all_reduce launched from Python, one call at a time
  nccl_graph      the same call captured --calls times in one CUDA graph and replayed
  symm_one_shot   radixserve's DeviceAllReduce with the one-shot kernel (every rank reads every
                  peer's buffer over NVLink, torch symmetric memory, no multicast), in a graph
  symm_two_shot   the same with reduce-scatter + all-gather over peer memory
  lamport         the one-kernel all-reduce (kernels/lamport_all_reduce.py): each rank stores its
                  input into every peer's buffer, and sums its own as the elements arrive; no barrier
                  and no staging copy (sizes up to --lamport-max)
  auto            DeviceAllReduce's own choice per size (what the engine runs)

Each variant's result is checked against the exact sum before it is timed. NVLink multicast
stays off (NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1) in every rank.

    python benchmarks/bench_allreduce.py --gpus 2 --hidden 4096
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._common import machine_info, replay_ms, write_results  # noqa: E402
from radixserve.distributed.device_comm import NO_MULTICAST_ENV  # noqa: E402

TOKENS = (1, 8, 32, 128, 256, 512, 1024, 4096, 8192)
VARIANTS = ("nccl_eager", "nccl_graph", "symm_one_shot", "symm_two_shot", "lamport", "auto")


def _time_eager(fn: Any, buf: Any, calls: int, iters: int) -> float:
    """Microseconds per call, launched one by one from Python."""
    import torch

    for _ in range(3):
        fn(buf.fill_(1.0))
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls * iters):
        fn(buf)
    end.record()
    torch.cuda.synchronize()
    return float(start.elapsed_time(end) * 1e3 / (calls * iters))


def _time_graph(fn: Any, buf: Any, calls: int, iters: int) -> float:
    """Microseconds per call, `calls` of them captured back to back in one CUDA graph."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn(buf)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = buf
        for _ in range(calls):
            y = fn(y) * 0.5  # bounded values, and every call depends on the last
    return replay_ms(graph, iters) * 1e3 / calls


def _rank(rank: int, size: int, store: str, hidden: int, calls: int, iters: int, lamport_max: int, out: Any) -> None:
    import torch
    import torch.distributed as dist

    from radixserve.distributed.device_comm import AllReducePlan, DeviceAllReduce

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{store}", rank=rank, world_size=size,
                            device_id=torch.device("cuda", rank))
    group = dist.group.WORLD
    # Stage every size measured here; each variant is forced below.
    plan = AllReducePlan(lamport_max=lamport_max, one_shot_max=max(TOKENS) * hidden * 2, two_shot_min=0,
                         two_shot_max=max(TOKENS) * hidden * 2)
    comm = DeviceAllReduce(group, torch.device("cuda", rank), torch.bfloat16, plan)
    results: list[dict[str, Any]] = []
    for tokens in TOKENS:
        x = torch.full((tokens, hidden), float(rank + 1), dtype=torch.bfloat16, device="cuda")
        expect = float(size * (size + 1) // 2)

        def run(variant: str, t: torch.Tensor) -> torch.Tensor:
            if variant.startswith("nccl"):
                dist.all_reduce(t, group=group)
                return t
            mode = {"symm_one_shot": "one_shot", "symm_two_shot": "two_shot", "lamport": "lamport"}.get(variant)
            if mode is None:  # auto: the engine's default plan (its buffer is smaller than this one)
                engine = AllReducePlan.measured(size)
                mode = engine.choose(t.numel() * t.element_size(), engine.staging_bytes)
            return comm.all_reduce(t, force=mode)

        row: dict[str, Any] = {"tokens": tokens, "bytes": tokens * hidden * 2}
        for variant in VARIANTS:
            if (not variant.startswith("nccl") and not comm.can_use(x)) or \
                    (variant == "lamport" and x.numel() * x.element_size() > comm.lamport_bytes):
                row[variant] = None
                continue
            try:
                ok = bool(torch.all(run(variant, x.clone()) == expect))
                timer = _time_eager if variant == "nccl_eager" else _time_graph
                us = timer(lambda t, v=variant: run(v, t), x.clone(), calls, iters)
                row[variant] = {"us_per_call": round(us, 2), "correct": ok}
            except Exception as e:  # a variant this machine cannot run is recorded, not fatal
                row[variant] = {"error": f"{type(e).__name__}: {e}"[:300]}
        results.append(row)
        dist.barrier()
    if rank == 0:
        out.put({"rows": results, "plan": comm.describe(), "engine_plan": vars(AllReducePlan.measured(size))})
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", type=int, default=2, help="ranks (one GPU each)")
    p.add_argument("--hidden", type=int, default=4096, help="hidden width (4096: Llama-3-8B, 8192: 70B)")
    p.add_argument("--calls", type=int, default=64, help="all-reduces per captured graph (2 per layer)")
    p.add_argument("--iters", type=int, default=20, help="graph replays timed")
    p.add_argument("--lamport-max", type=int, default=2 << 20,
                   help="bytes up to which the lamport variant is measured (its buffer: 3 x GPUs x this)")
    p.add_argument("--output", default=None, help="JSON path (default benchmarks/results/allreduce_<time>.json)")
    args = p.parse_args(argv)
    for k, v in NO_MULTICAST_ENV.items():
        os.environ[k] = v  # spawned ranks inherit it
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    with tempfile.TemporaryDirectory() as d:
        procs = [ctx.Process(target=_rank, args=(r, args.gpus, os.path.join(d, "store"), args.hidden, args.calls,
                                                 args.iters, args.lamport_max, q)) for r in range(args.gpus)]
        for pr in procs:
            pr.start()
        res = q.get(timeout=540)
        for pr in procs:
            pr.join(60)
    import torch

    result = {"benchmark": "allreduce", "command": " ".join(["bench_allreduce.py", *(argv or sys.argv[1:])]),
              "device": torch.cuda.get_device_name(0), "gpus": args.gpus, "hidden": args.hidden,
              "machine": machine_info(("radixserve", "torch", "triton")), **res}
    path = write_results("allreduce", result, args.output)
    for row in res["rows"]:
        cells = []
        for v in VARIANTS:
            c = row.get(v)
            cells.append(f"{v}=" + ("-" if c is None else str(c.get("us_per_call", c.get("error", "?")))[:40]))
        print(f"{row['tokens']:>5} tok {row['bytes']:>9} B  " + "  ".join(cells))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
