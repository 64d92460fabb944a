"""Which GPU kernels a batch-1 decode step spends its time in (eager, so the profiler sees each).

  python benchmarks/profile_decode_kernels.py --tokenizer-path TOK [--batch-size 1] [--steps 16]
Prints the kernels by total CUDA time and the sum per step, to set against the graph's step time
and the memory roofline (weight bytes / copy bandwidth).
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from radixserve import Engine
from radixserve.managers.io_struct import TokenizedGenerateReqInput
from radixserve.sampling.sampling_params import SamplingParams


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default="llama-3-8b")
    ap.add_argument("--load-format", default="dummy")
    ap.add_argument("--tokenizer-path", default=None)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=16)
    args = ap.parse_args(argv)
    engine = Engine(model_path=args.model_path, load_format=args.load_format, tokenizer_path=args.tokenizer_path,
                    max_total_tokens=32 * 1024, disable_cuda_graph=True, overlap_schedule="off",
                    log_level="warning")
    sched = engine.scheduler
    for i in range(args.batch_size):
        sched.add_request(TokenizedGenerateReqInput(
            rid=f"r{i}", input_ids=[(7 * i + j) % 1000 + 10 for j in range(args.input_len)],
            sampling_params=SamplingParams(max_new_tokens=2 * args.steps + 8, temperature=0, ignore_eos=True)))
    while sched.waiting_queue:
        sched.step()
    for _ in range(args.steps):  # warm: Triton autotuning, allocator
        sched.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            sched.step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    total_us = sum(e.self_device_time_total for e in events) / args.steps
    print(f"kernel time per decode step: {total_us / 1e3:.3f} ms (batch {args.batch_size})")
    rows = sorted(events, key=lambda e: -e.self_device_time_total)[:20]
    for e in rows:
        per_step = e.self_device_time_total / args.steps
        print(f"{per_step / 1e3:8.3f} ms/step {e.count // args.steps:5d} calls/step  {e.key[:110]}")
    engine.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
