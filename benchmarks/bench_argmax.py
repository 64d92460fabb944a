"""Greedy argmax over the vocabulary: torch.argmax against the split kernel the sampler uses for up
to 64 rows (radixserve/kernels/argmax.py), GPU time per call from CUDA graphs, with the logits'
bytes over the copy rate measured in the same run as the bound.

    python benchmarks/bench_argmax.py
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import roofline as rl  # noqa: E402
from benchmarks._common import command_line, graph_seconds, machine_info, write_results  # noqa: E402
from radixserve.kernels.argmax import argmax_split  # noqa: E402

CALLS = 50  # per graph: one replay's time over this many calls


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocabs", default="128256,151936")
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--output", default=None, help="JSON path (default: results/argmax_<time>.json)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    copy = rl.measure_copy_bytes_s("cuda")
    rows: list[dict[str, Any]] = []
    for vocab in (int(v) for v in args.vocabs.split(",")):
        for bs in (int(b) for b in args.batches.split(",")):
            logits = torch.randn(bs, vocab, device="cuda")
            assert torch.equal(argmax_split(logits), logits.argmax(dim=-1))
            t_torch = graph_seconds([partial(torch.argmax, logits, dim=-1)] * CALLS) / CALLS
            t_split = graph_seconds([partial(argmax_split, logits)] * CALLS) / CALLS
            bound = logits.numel() * 4 / copy
            row = {"vocab": vocab, "batch": bs, "torch_us": round(t_torch * 1e6, 2),
                   "split_us": round(t_split * 1e6, 2), "speedup": round(t_torch / t_split, 3),
                   "bound_us": round(bound * 1e6, 2)}
            rows.append(row)
            print(row, flush=True)
    machine = machine_info(("torch", "triton", "radixserve"))
    path = write_results("argmax", {"benchmark": "bench_argmax", "command": command_line(),
                                    "device_name": torch.cuda.get_device_name(), "copy_gb_s": round(copy / 1e9, 1),
                                    "versions": machine["versions"], "git_commit": machine["git_commit"],
                                    "machine": machine, "calls_per_graph": CALLS, "rows": rows}, args.output)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
