"""Where a decode step's time goes on the GPU: host-side scheduling, the forward (graph replay) with
sampling (ModelRunner.forward), and processing the tokens.

  python benchmarks/profile_decode_step.py --model-path llama-3-8b --load-format dummy --batch-size 1
Prints per-phase milliseconds (median over the steps) and the top Python functions by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time
from typing import Any

import torch

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
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--max-total-tokens", type=int, default=64 * 1024)
    ap.add_argument("--whole-steps", action="store_true",
                    help="Time whole Scheduler.step() calls (the overlap schedule included) instead of phases.")
    ap.add_argument("--overlap-schedule", default="auto", help="auto | on | off")
    args = ap.parse_args(argv)
    engine = Engine(model_path=args.model_path, load_format=args.load_format, tokenizer_path=args.tokenizer_path,
                    max_total_tokens=args.max_total_tokens, overlap_schedule=args.overlap_schedule,
                    log_level="warning")
    sched = engine.scheduler
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for i in range(args.batch_size):
        sched.add_request(TokenizedGenerateReqInput(
            rid=f"r{i}", input_ids=[(7 * i + j) % 1000 + 10 for j in range(args.input_len)],
            sampling_params=SamplingParams(max_new_tokens=args.steps + 32, temperature=0, ignore_eos=True)))
    while sched.waiting_queue or sched.prefill.chunked_req is not None:  # prefill every request
        sched.step()
    if args.whole_steps:
        for _ in range(8):
            sched.step()
        bs = len(sched.running_batch.reqs)
        sync()
        t = time.perf_counter()
        for _ in range(args.steps):
            sched.step()
        sync()
        ms = (time.perf_counter() - t) / args.steps * 1e3
        assert len(sched.running_batch.reqs) == bs, "a request finished inside the timed steps"
        print(f"whole decode step: {ms:.3f} ms ({1e3 / ms * bs:.1f} tok/s) at batch {bs}, overlap {sched.overlap}")
        return 0
    sched._drain_inflight()  # the phases below run the plain (non-overlapped) step
    phases: dict[str, list[float]] = {"schedule": [], "forward+sample": [], "process": [], "step_total": []}
    prof = cProfile.Profile()
    for _ in range(args.steps):
        sync()
        t0 = time.perf_counter()
        prof.enable()
        batch = sched._next_batch()
        assert batch is not None
        t1 = time.perf_counter()
        launched = sched._launch(batch)
        sync()
        t2 = time.perf_counter()
        sched._process(launched)
        sched._collect_outputs()
        prof.disable()
        t3 = time.perf_counter()
        for name, dt in (("schedule", t1 - t0), ("forward+sample", t2 - t1), ("process", t3 - t2),
                         ("step_total", t3 - t0)):
            phases[name].append(dt * 1e3)
    summary: dict[str, Any] = {k: round(statistics.median(v), 3) for k, v in phases.items()}
    summary["batch_size"] = len(sched.running_batch.reqs)
    summary["host_share"] = round(1 - summary["forward+sample"] / summary["step_total"], 3)
    print("median ms per decode step:", summary)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(18)
    print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
