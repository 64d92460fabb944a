"""One packed product on CPU by rows: the C integer product (layers/quantization/dot_cpu.py, kernels/cpu/qdot.c)
against torch's int4 kernel (layers/quantization/int4_cpu.py) on the same GGUF-quantized weight (issue 19).

The weight is random, quantized by the gguf package to --type (Q4_1 by default, the embedded model's);
both methods hold the file's codes. Each row count times both methods, alternating, --iters calls per
round, median of --repeats rounds. Below `DENSE_FROM_ROWS` both run their kernel; from there on each
would expand the weight to bf16 for one GEMM, so row counts at or above it time that instead. Writes
JSON to benchmarks/results/.

  python benchmarks/bench_cpu_product.py
  python benchmarks/bench_cpu_product.py --shape 49152x576 --type Q8_0 --rows 1,4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as `python benchmarks/bench_cpu_product.py`
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._common import command_line, machine_info, write_results  # noqa: E402
from radixserve.kernels import cpu_native  # noqa: E402
from radixserve.layers.quantization.base import QuantMethod  # noqa: E402
from radixserve.layers.quantization.dot_cpu import native_method  # noqa: E402
from radixserve.layers.quantization.int4_cpu import Int4PackedWeight  # noqa: E402
from radixserve.model_loader.gguf_quant import gguf_group_quantized  # noqa: E402


def _us(fn: Callable[[], Any], iters: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="1536x576", help="N x K of the weight (default: the embedded model's gate/up)")
    ap.add_argument("--type", default="Q4_1", help="GGUF type the gguf package can quantize to (Q4_0, Q4_1, Q5_0, Q8_0...)")
    ap.add_argument("--rows", default="1,2,4,8,16,31", help="activation rows, comma-separated")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--out", default=None, help="results JSON path (default: results/cpu_product_<time>.json)")
    args = ap.parse_args()
    import gguf
    from gguf.quants import quantize

    n, k = (int(v) for v in args.shape.lower().split("x"))
    rng = np.random.default_rng(0)
    raw = quantize((rng.standard_normal((n, k)) * 0.05).astype(np.float32), gguf.GGMLQuantizationType[args.type])
    w = gguf_group_quantized(raw, args.type, n, k)
    native = native_method(w)
    if native is None:
        sys.exit(f"the C integer product cannot run here: {cpu_native.unavailable_reason()}")
    methods: dict[str, QuantMethod] = {"c_integer_product": native, "torch_int4": Int4PackedWeight(w)}
    rows = [int(r) for r in args.rows.split(",")]
    runs: dict[str, dict[int, list[float]]] = {name: {m: [] for m in rows} for name in methods}
    for m in rows:
        x = torch.randn(m, k)
        for _ in range(args.repeats):
            for name, method in methods.items():
                runs[name][m].append(_us(lambda method=method, x=x: method.apply(x), args.iters))  # type: ignore[misc]
    med = {name: {m: round(statistics.median(v), 1) for m, v in r.items()} for name, r in runs.items()}
    result: dict[str, Any] = {
        "benchmark": "cpu_product", "command": command_line(), "shape": [n, k], "type": args.type,
        "threads": torch.get_num_threads(), "repeats": args.repeats, "iters": args.iters,
        "methods": {name: method.name for name, method in methods.items()},
        "us_median": med, "us_runs": runs,
        "c_over_torch_time": {m: round(med["c_integer_product"][m] / med["torch_int4"][m], 3) for m in rows},
        "machine": machine_info(("torch", "gguf")),
    }
    out = write_results("cpu_product", result, args.out)
    for m in rows:
        print(f"{m:3d} rows: C integer product {med['c_integer_product'][m]:8.1f} us, torch int4 "
              f"{med['torch_int4'][m]:8.1f} us")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
