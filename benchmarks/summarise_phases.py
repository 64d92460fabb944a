"""Phase totals of a throughput run from its scheduler step log (RADIXSERVE_STEP_LOG): where the wall
time went (prefill vs decode steps), decode step time by running-batch size, and retractions.

    python benchmarks/summarise_phases.py STEPS.rank0 [STEPS.rank0 ...] [--output summary.json]

With the overlap schedule a decode step's busy time is mostly the wait for the step before it on
the GPU, so per-mode totals are the GPU time of that mode to within one step at each switch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any


def summarise(events: list[dict[str, Any]], bucket: int = 32) -> dict[str, Any]:
    steps = [e for e in events if "mode" in e][1:]  # the first step's dt counts the idle time before it
    out: dict[str, Any] = {"steps": len(steps), "wall_s": round(sum(s["dt_ms"] for s in steps) / 1e3, 3)}
    for mode in sorted({s["mode"] for s in steps}):
        sel = [s for s in steps if s["mode"] == mode]
        out[mode] = {"steps": len(sel), "busy_s": round(sum(s.get("busy_ms", s["dt_ms"]) for s in sel) / 1e3, 3),
                     "wall_s": round(sum(s["dt_ms"] for s in sel) / 1e3, 3),
                     "tokens": sum(s["extend_tokens"] for s in sel)}
    by_size: dict[int, list[float]] = {}
    for s in steps:
        if s["mode"] == "decode":
            by_size.setdefault(s["reqs"] // bucket * bucket, []).append(s.get("busy_ms", s["dt_ms"]))
    out["decode_ms_by_batch"] = {f"{k}-{k + bucket - 1}": {"steps": len(v), "mean_ms": round(statistics.fmean(v), 2),
                                                           "p50_ms": round(statistics.median(v), 2)}
                                 for k, v in sorted(by_size.items())}
    out["retractions"] = max((s.get("retractions", 0) for s in steps), default=0)
    out["max_running"] = max((s["running"] for s in steps), default=0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logs", nargs="+")
    ap.add_argument("--output", default=None)
    args = ap.parse_args(argv)
    result = {}
    for path in args.logs:
        events = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        result[Path(path).name] = summarise(events)
    text = json.dumps(result, indent=1)
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
