"""Summarise a scheduler step log (RADIXSERVE_STEP_LOG): where the long steps come from.

    python benchmarks/analyze_step_log.py /tmp/steps.jsonl.rank0 [--output summary.json]

Per step kind (decode, extend, mixed): count and step-time percentiles; the longest steps with
their shape (requests, new prompt tokens, decode rows, queue lengths); the garbage collector's
pauses (count, total, longest). For the detokenizer's and the HTTP process's logs (<path>.detokenizer,
<path>.http): the time each output batch took to handle and the gaps between batches. An inter-token-latency spike is a long step (or a pause
between steps) that every running request waits for: this tells which.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def summarise(events: list[dict[str, Any]], top: int = 15) -> dict[str, Any]:
    steps = [e for e in events if "mode" in e][1:]  # the first step's dt counts the idle time before it
    pauses = [e["gc_ms"] for e in events if "gc_ms" in e]
    by_mode: dict[str, Any] = {}
    for mode in sorted({s["mode"] for s in steps}):
        # busy_ms: the step itself; dt_ms (older logs) also counts the idle wait before it.
        dts = [s.get("busy_ms", s["dt_ms"]) for s in steps if s["mode"] == mode]
        by_mode[mode] = {"steps": len(dts), "mean_ms": round(statistics.fmean(dts), 2),
                         "p50_ms": percentile(dts, 0.5), "p99_ms": percentile(dts, 0.99), "max_ms": max(dts)}
    longest = sorted(steps, key=lambda s: -s.get("busy_ms", s["dt_ms"]))[:top]
    batches = [e for e in events if "outputs" in e][1:]
    outputs: dict[str, Any] = {}
    if batches:
        gaps, handled = [b["since_last_ms"] for b in batches], [b["handle_ms"] for b in batches]
        outputs = {"batches": len(batches), "outputs_per_batch_mean": round(
                       statistics.fmean(b["outputs"] for b in batches), 1),
                   "gap_p50_ms": percentile(gaps, 0.5), "gap_p99_ms": percentile(gaps, 0.99), "gap_max_ms": max(gaps),
                   "handle_p50_ms": percentile(handled, 0.5), "handle_p99_ms": percentile(handled, 0.99),
                   "handle_max_ms": max(handled), "gaps_over_100ms": sum(1 for g in gaps if g > 100)}
    late = [e["loop_late_ms"] for e in events if "loop_late_ms" in e]
    loop = {"late_over_20ms": len(late), "late_max_ms": max(late) if late else 0.0,
            "late_total_ms": round(sum(late), 1)}
    return {"output_batches": outputs, "event_loop": loop,
        "steps": len(steps), "by_mode": by_mode,
        "steps_over_100ms": sum(1 for s in steps if s.get("busy_ms", s["dt_ms"]) > 100),
        "longest": longest,
        "gc": {"pauses_over_1ms": len(pauses), "total_ms": round(sum(pauses), 1),
               "max_ms": max(pauses) if pauses else 0.0,
               "over_50ms": sum(1 for p in pauses if p > 50)},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("log", type=Path)
    p.add_argument("--top", type=int, default=15, help="longest steps to list")
    p.add_argument("--output", type=Path, default=None, help="also write the summary as JSON here")
    args = p.parse_args(argv)
    events = [json.loads(line) for line in args.log.read_text().splitlines() if line.strip()]
    summary = summarise(events, args.top)
    if args.output:
        args.output.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{args.log}: {summary['steps']} steps, {summary['steps_over_100ms']} over 100 ms; gc {summary['gc']}")
    if summary["output_batches"]:
        print(f"  output batches {summary['output_batches']}; event loop {summary['event_loop']}")
    for mode, row in summary["by_mode"].items():
        print(f"  {mode:7s} {row}")
    for s in summary["longest"]:
        print(f"  {s.get('busy_ms', s['dt_ms']):8.1f} ms  {s['mode']:7s} reqs {s['reqs']:4d} new tokens {s['extend_tokens']:6d} "
              f"decode rows {s['mixed_decode']:4d} running {s['running']:4d} waiting {s['waiting']:4d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
