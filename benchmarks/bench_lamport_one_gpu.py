"""The one-kernel peer-memory all-reduce (kernels/lamport_all_reduce.py) on ONE GPU: its ranks' kernels
on streams of their own, each rank a chain of `--calls` all-reduces in one CUDA graph, as each GPU of
a TP group runs its own.

This is not an all-reduce over NVLink: the "peer" buffers are local memory, so the figure leaves out
the link's latency and is a floor for what the kernel costs on two GPUs, not a measurement of it
(`bench_allreduce.py --gpus 2` measures the real thing, against NCCL, on a two-GPU machine). It tells
whether the kernel's own cost (its launch, the spin, the clearing) leaves room under NCCL's in-graph
latency (7.7 us at 8 KiB on two H200s, 2026-12-01). Peer in the same run: the same chains with the
all-reduce replaced by a copy of the same size (a kernel that does the least any kernel does), and the
kernel with one rank (nothing to wait for).

    python benchmarks/bench_lamport_one_gpu.py --hidden 4096 --tokens 1,8,32
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._common import machine_info, replay_ms, write_results  # noqa: E402


def _chains(world: int, n: int, calls: int, iters: int, variant: str, programs: int) -> tuple[float, bool]:
    """Microseconds per call of each rank's chain (all ranks' chains run at once), and whether the
    last replay's sums were right."""
    import torch

    from radixserve.kernels import lamport_all_reduce as L

    dtype = torch.bfloat16
    cap = max(n, 8192)
    bufs = [L.new_buffer(world, cap, dtype, "cuda") for _ in range(world)]
    peers = torch.tensor([b.data_ptr() for b in bufs], dtype=torch.int64, device="cuda")
    states = [L.new_state("cuda", programs) for _ in range(world)]
    L.warm_up(peers, world, cap, dtype)  # loaded before any rank spins: a load then would wait on it
    streams = [torch.cuda.Stream() for _ in range(world)]
    xs = [torch.full((n,), float(r + 1), dtype=dtype, device="cuda") for r in range(world)]

    def op(r: int, y: torch.Tensor) -> torch.Tensor:
        if variant == "copy":
            return y.clone()
        return L.lamport_all_reduce(y, peers, states[r], r, world, cap)

    def record() -> list[torch.Tensor]:
        main = torch.cuda.current_stream()
        ends = []
        for r, s in enumerate(streams):
            s.wait_stream(main)
            with torch.cuda.stream(s):
                y = xs[r]
                for _ in range(calls):
                    y = op(r, y) * (1.0 / world)  # bounded values; every call depends on the last
                ends.append(y)
        for s in streams:
            main.wait_stream(s)
        return ends

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        record()  # compiles, and keeps every rank's call count equal
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ends = record()
    us = replay_ms(graph, iters) * 1e3 / calls
    # Every rank starts from r + 1: the first sum is world (world + 1) / 2, then each call keeps it
    # (the sum of world equal values, over world); a copy chain keeps each rank's own value.
    want = [float(world * (world + 1) // 2) / world] * world if variant != "copy" else \
        [float(r + 1) / world ** calls for r in range(world)]
    ok = all(bool(torch.allclose(e.float(), torch.full_like(e.float(), w), rtol=1e-2))
             for e, w in zip(ends, want, strict=True))
    return us, ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=4096, help="hidden width (4096: Llama-3-8B, 8192: 70B)")
    p.add_argument("--tokens", default="1,8,32", help="tokens a message, comma-separated")
    p.add_argument("--world", type=int, default=2, help="ranks, each on a stream of its own")
    p.add_argument("--calls", type=int, default=64, help="all-reduces per rank in one graph (2 per layer)")
    p.add_argument("--iters", type=int, default=50, help="graph replays timed")
    p.add_argument("--programs", default="32", help="grid sizes to compare, comma-separated (the kernel's "
                   "default is radixserve.kernels.lamport_all_reduce.PROGRAMS)")
    p.add_argument("--output", default=None, help="JSON path (default benchmarks/results/lamport_one_gpu_<time>.json)")
    args = p.parse_args(argv)
    import torch
    from tqdm import tqdm

    rows: list[dict[str, Any]] = []
    sizes = [int(t) for t in args.tokens.split(",")]
    for tokens in tqdm(sizes, desc="message sizes"):
        n = tokens * args.hidden
        row: dict[str, Any] = {"tokens": tokens, "bytes": n * 2}
        us, ok = _chains(args.world, n, args.calls, args.iters, "copy", 1)
        row["copy"] = {"us_per_call": round(us, 2), "correct": ok}
        line = f"{tokens:>5} tok {n * 2:>8} B  copy {us:.2f} us"
        for programs in (int(g) for g in args.programs.split(",")):
            for name, world in ((f"lamport_g{programs}", args.world), (f"lamport_one_rank_g{programs}", 1)):
                us, ok = _chains(world, n, args.calls, args.iters, "lamport", programs)
                row[name] = {"us_per_call": round(us, 2), "correct": ok, "programs": programs}
                line += f"  {name} {us:.2f} us{'' if ok else ' WRONG'}"
            row[f"lamport_g{programs}_over_copy_us"] = round(row[f"lamport_g{programs}"]["us_per_call"]
                                                            - row["copy"]["us_per_call"], 2)
        rows.append(row)
        print(line)
    result = {"benchmark": "lamport_one_gpu", "command": " ".join(["bench_lamport_one_gpu.py", *(argv or sys.argv[1:])]),
              "device": torch.cuda.get_device_name(0), "world": args.world, "hidden": args.hidden,
              "calls": args.calls, "iters": args.iters,
              "note": "ranks are streams of one GPU: peer buffers are local memory, no NVLink latency",
              "machine": machine_info(("radixserve", "torch", "triton")), "rows": rows}
    path = write_results("lamport_one_gpu", result, args.output)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
