"""The matmul rate a GPU holds over seconds, against the burst rate the roofline measures.

`roofline.measure_rates` times ten 8192^3 GEMMs: about 15 ms of work, at whatever clock the GPU
starts from. A throughput workload runs its GEMMs for tens of seconds, and a GPU at its power limit
lowers its clock. This measures, in one process:

  burst       the roofline's own measurement (`roofline.measure_matmul_flops`)
  windows     back-to-back GEMMs for --seconds, the rate of each --window seconds, for the square
              8192^3 GEMM and for the 8B shape's prefill products (8192 tokens x 4096 -> 28672, the
              gate/up projection; 8192 x 14336 -> 4096, the down projection)

and reports each window's rate as a fraction of the burst rate. Run it beside `nvidia-smi
--query-gpu=clocks.sm,power.draw --format=csv -lms 250` to see the clock behind the figures.

    python benchmarks/bench_sustained_rate.py --seconds 20
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import roofline as rl  # noqa: E402
from benchmarks._common import command_line, machine_info, write_results  # noqa: E402

# (name, m, k, n): C[m, n] = A[m, k] @ B[k, n]
SHAPES = (("square_8192", 8192, 8192, 8192), ("gate_up_8b_8192tok", 8192, 4096, 28672),
          ("down_8b_8192tok", 8192, 14336, 4096))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="How long each shape runs.")
    ap.add_argument("--window", type=float, default=1.0, help="Seconds per reported rate.")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    ap.add_argument("--output", default=None, help="JSON path (default: results/sustained_rate_<time>.json)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU: this measures a GPU's matmul rate at its power cap")
    dtype = getattr(torch, args.dtype)
    burst = rl.measure_matmul_flops("cuda", dtype)
    print(f"burst (roofline) 8192^3: {burst / 1e12:.1f} TFLOP/s", flush=True)
    shapes: dict[str, Any] = {}
    for name, m, k, n in SHAPES:
        rates = rl.sustained_matmul_windows("cuda", dtype, args.seconds, args.window, m, k, n)
        torch.cuda.empty_cache()
        held = rl.held_rate(rates)
        shapes[name] = {
            "m": m, "k": k, "n": n, "window_tflops": [round(r / 1e12, 1) for r in rates],
            "first_window_tflops": round(rates[0] / 1e12, 1),
            "second_half_median_tflops": round(held / 1e12, 1),
            "second_half_of_burst": round(held / burst, 4),
        }
        print(name, shapes[name], flush=True)
    after = rl.measure_matmul_flops("cuda", dtype)
    print(f"burst (roofline) 8192^3 again, right after: {after / 1e12:.1f} TFLOP/s", flush=True)
    result = {
        "benchmark": "sustained_rate", "command": command_line(), "device_name": torch.cuda.get_device_name(),
        "dtype": args.dtype, "seconds": args.seconds, "window_s": args.window,
        "burst_tflops": round(burst / 1e12, 1), "burst_after_tflops": round(after / 1e12, 1),
        "shapes": shapes, "machine": machine_info(("torch", "triton")),
        "torch_cuda": torch.version.cuda,
    }
    print("wrote", write_results("sustained_rate", result, args.output))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
