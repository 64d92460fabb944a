"""Tensor and pipeline parallelism on this machine: TP=N and PP=M vs one rank, and the
communication per decode step.

1. The same offline workload (--batch prompts of --input-len random ids, --output-len greedy
   tokens with ignore_eos) through `Engine(tp_size=1)` and `Engine(tp_size=N)` in turn, on
   random weights of a named shape (default qwen2.5-0.5b: 14 heads, 2 KV heads).
2. The collectives one TP decode step issues, timed alone in N gloo processes: two all-reduces
   of [batch, hidden] per layer (attention output and MLP output) and one all-gather of the
   logits shard [batch, vocab / N].

3. With --pp M (default 2), the same workload through `Engine(pp_size=M)`: stages run one after
   another (no micro-batching), so PP adds hand-offs and buys memory capacity, not speed.

On CPU, ranks share the machine's cores, so no speed-up is expected; the point is what TP costs.

    python benchmarks/bench_tp.py --tp 2 --pp 2 --batch 8 --output-len 32
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._common import command_line, environment, machine_info, write_results  # noqa: E402
from benchmarks.workloads import check_engine_outputs, random_prompts  # noqa: E402

COMM_ITERS = 50


def _comm_rank(rank: int, size: int, store: str, batch: int, hidden: int, vocab_shard: int, layers: int,
               out: Any) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size)
    x = torch.randn(batch, hidden)
    logits = torch.randn(batch, vocab_shard)
    parts = [torch.empty_like(logits) for _ in range(size)]
    for _ in range(5):
        dist.all_reduce(x)
    dist.barrier()
    t = time.perf_counter()
    for _ in range(COMM_ITERS):
        dist.all_reduce(x)
    ar = (time.perf_counter() - t) / COMM_ITERS
    dist.barrier()
    t = time.perf_counter()
    for _ in range(COMM_ITERS):
        dist.all_gather(parts, logits)
    ag = (time.perf_counter() - t) / COMM_ITERS
    if rank == 0:
        out.put({"all_reduce_ms": ar * 1e3, "all_gather_logits_ms": ag * 1e3,
                 "per_decode_step_ms": (2 * layers * ar + ag) * 1e3, "all_reduces_per_step": 2 * layers})
    dist.destroy_process_group()


def comm_cost(size: int, batch: int, hidden: int, vocab: int, layers: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with tempfile.TemporaryDirectory() as d:
        store = os.path.join(d, "store")
        procs = [ctx.Process(target=_comm_rank, args=(r, size, store, batch, hidden, vocab // size, layers, out))
                 for r in range(size)]
        for p in procs:
            p.start()
        result: dict[str, Any] = out.get(timeout=300)
        for p in procs:
            p.join(60)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}


def run_engine(tp: int, args: argparse.Namespace, pp: int = 1, env: dict[str, str] | None = None,
               **extra: Any) -> dict[str, Any]:
    from radixserve import Engine
    from radixserve.utils.profiler import DIR_ENV

    tag = "_nccl" if extra else "_lamport" if env else ""
    if os.environ.get(DIR_ENV):  # one profile folder per configuration
        os.environ[DIR_ENV] = str(Path(os.environ[DIR_ENV]).parent / f"tp{tp}_pp{pp}{tag}")
    prompts = random_prompts(args.batch, args.input_len, 100, 5000, seed=0)
    params = {"max_new_tokens": args.output_len, "temperature": 0, "ignore_eos": True}
    with environment(env or {}), \
            Engine(model_path=args.shape, load_format="dummy", tp_size=tp, pp_size=pp,
                   max_total_tokens=args.max_total_tokens, log_level="warning", tokenizer_path=args.tokenizer_path,
                   **extra) as engine:
        # Warm-up on ids outside the prompts' range: nothing of it can be a cached prefix later.
        warm = random_prompts(1, args.input_len, 5000, 6000, seed=1)
        engine.generate(input_ids=warm, sampling_params={**params, "max_new_tokens": 2})
        t = time.perf_counter()
        outs = engine.generate(input_ids=prompts, sampling_params=params)
        elapsed = time.perf_counter() - t
    tokens = sum(len(o["output_ids"]) for o in outs)
    prompt_tokens, cached = check_engine_outputs(f"tp{tp}_pp{pp}", outs)  # distinct prompts: nothing cached
    return {"tp": tp, "pp": pp, **extra, **({"env": env} if env else {}), "prompt_tokens": prompt_tokens, "cached_tokens": cached,
            "seconds": round(elapsed, 3), "output_tokens": tokens,
            "output_tokens_per_s": round(tokens / elapsed, 2)}


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="qwen2.5-0.5b", help="named model shape (random weights)")
    p.add_argument("--tokenizer-path", default=None, help="tokenizer (default: the embedded model's)")
    p.add_argument("--tp", type=int, default=2, help="tensor-parallel size to compare with TP=1")
    p.add_argument("--pp", type=int, default=2, help="pipeline stages to compare with one rank (1: skip)")
    p.add_argument("--batch", type=int, default=8, help="prompts decoded together")
    p.add_argument("--input-len", type=int, default=64, help="prompt length in tokens")
    p.add_argument("--output-len", type=int, default=32, help="tokens generated per prompt")
    p.add_argument("--max-total-tokens", type=int, default=4096, help="KV pool size")
    p.add_argument("--nccl-too", action="store_true",
                   help="also run TP=N with --disable-custom-all-reduce (every all-reduce through NCCL)")
    p.add_argument("--lamport-too", default=None, metavar="BYTES",
                   help="also run TP=N with the one-kernel peer-memory all-reduce for messages up to BYTES "
                        "(RADIXSERVE_ALLREDUCE_LAMPORT_MAX, e.g. 64K)")
    p.add_argument("--skip-comm", action="store_true", help="skip the gloo collective timing")
    p.add_argument("--output", default=None, help="JSON path (default benchmarks/results/tp_<time>.json)")
    args = p.parse_args(argv)
    from radixserve.configs.model_config import NAMED_SHAPES, ModelConfig

    cfg = ModelConfig.from_hf_dict(NAMED_SHAPES[args.shape], args.shape)
    runs = [run_engine(1, args), run_engine(args.tp, args)]
    if args.pp > 1:
        runs.append(run_engine(1, args, pp=args.pp))
    if args.nccl_too:
        runs.append(run_engine(args.tp, args, disable_custom_all_reduce=True))
        print(f"TP={args.tp} all-reduce through NCCL only: {runs[-1]['output_tokens_per_s']} tok/s")
    if args.lamport_too:
        from radixserve.distributed.device_comm import LAMPORT_ENV

        runs.append(run_engine(args.tp, args, env={LAMPORT_ENV: args.lamport_too}))
        print(f"TP={args.tp} with the Lamport all-reduce up to {args.lamport_too}: "
              f"{runs[-1]['output_tokens_per_s']} tok/s")
    comm = comm_cost(args.tp, args.batch, cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers) \
        if not args.skip_comm else {"per_decode_step_ms": float("nan")}
    step_ms = 1e3 * runs[1]["seconds"] / args.output_len
    result = {"benchmark": "tensor_parallel", "command": command_line() if argv is None else " ".join(["bench_tp.py", *argv]),
              "config": vars(args), "machine": machine_info(("radixserve", "torch", "triton")),
              "device": _device_name(), "runs": runs,
              "throughput_tp_over_tp1": round(runs[1]["output_tokens_per_s"] / runs[0]["output_tokens_per_s"], 3),
              **({"throughput_pp_over_pp1": round(runs[2]["output_tokens_per_s"] / runs[0]["output_tokens_per_s"], 3)}
                 if args.pp > 1 else {}),
              "communication": comm,
              "communication_share_of_tp_step": round(comm["per_decode_step_ms"] / step_ms, 3)}
    path = write_results("tp", result, args.output)
    print(f"TP=1 {runs[0]['output_tokens_per_s']} tok/s, TP={args.tp} {runs[1]['output_tokens_per_s']} tok/s "
          f"(x{result['throughput_tp_over_tp1']}); collectives {comm['per_decode_step_ms']} ms per decode step "
          f"({result['communication_share_of_tp_step']:.0%} of a TP step); wrote {path}")
    if args.pp > 1:
        print(f"PP={args.pp} {runs[2]['output_tokens_per_s']} tok/s (x{result['throughput_pp_over_pp1']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
