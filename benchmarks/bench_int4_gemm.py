"""W4A16 (the Triton int4 kernel: GGUF weights, --quantization int4) against bf16, per Llama-3-8B
projection and row count (issue 19), with a sweep of the kernel's tiles.

For each projection [N, K] and row count M, in one process on one GPU: bf16 `F.linear`, and the int4
kernel with each tile configuration of `--tiles` (and its default choice), 4-bit codes (Q4_0/Q4_1/
Q4_K, --quantization int4) and split 8-bit codes (Q8_0/Q6_K). Each timed inside a CUDA graph (as in
decode), against its bound from rates measured in the same call: max(bytes / copy rate, FLOPs /
bf16 matmul rate), where bytes are the weight (2 bytes an element for bf16; half a byte plus an fp16
scale and zero per 32 codes for int4, twice that for split codes) plus activations in and out.

    python benchmarks/bench_int4_gemm.py --output benchmarks/results/bench_int4_gemm_h200.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import roofline as rl
from benchmarks._common import machine_info, write_results
from benchmarks.bench_fp8_gemm import _time
from radixserve.kernels.int4_gemm import _tiles, int4_group_gemm
from radixserve.layers.quantization.int4_gpu import Int4TritonWeight
from tests.kernels.int4_cases import random_group_quantized

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
ROWS = (1, 16, 64, 256, 1024)
# Tiles tried beside the default: narrow ones for decode row counts, square ones for prefill.
# (BLOCK_M, BLOCK_N, groups of 32 bytes per K step, warps, stages); BLOCK_M 1: the GEMV path.
SWEEP_ONE_ROW = ((1, 64, 4, 4, 3), (1, 32, 4, 4, 3), (1, 16, 8, 4, 3), (1, 32, 8, 4, 4), (1, 16, 16, 4, 3),
                 (1, 64, 8, 8, 3), (1, 8, 16, 2, 4), (1, 32, 16, 8, 2))
SWEEP_FEW_ROWS = ((16, 32, 4, 4, 3), (16, 64, 4, 4, 3), (16, 64, 2, 4, 4), (16, 128, 2, 8, 3))
SWEEP_MANY_ROWS = ((64, 64, 2, 4, 3), (64, 128, 2, 4, 3), (128, 128, 2, 8, 3), (128, 64, 4, 4, 3))


def _measure(name: str, w: Int4TritonWeight, m: int, bits: int, rates: rl.DeviceRates) -> dict[str, Any]:
    n, k = w.out_features, w.in_features
    dense = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    io, flops = 2 * m * (k + n), 2 * m * n * k

    def bound(weight_bytes: int) -> float:
        return max((weight_bytes + io) / rates.copy_bytes_s, rates.matmul_seconds(flops))

    bf16_s = _time(lambda: F.linear(x, dense))
    entry: dict[str, Any] = {"shape": name, "n": n, "k": k, "m": m, "bits": bits,
                             "bf16": {"us": round(bf16_s * 1e6, 2), "of_bound": round(bound(2 * n * k) / bf16_s, 3)}}
    variants: dict[str, float] = {}
    sweep = SWEEP_ONE_ROW if m == 1 else SWEEP_FEW_ROWS if m <= 16 else SWEEP_MANY_ROWS
    for tiles in (None, *sweep):
        label = "default" if tiles is None else "x".join(map(str, tiles))
        try:
            variants[label] = _time(lambda t=tiles: int4_group_gemm(x, w.packed, w.scale, w.zero, w.split, t))
        except Exception as e:  # a tile that does not fit the GPU's shared memory: recorded, not fatal
            entry.setdefault("failed", {})[label] = str(e)[:120]
    swept = {k2: v for k2, v in variants.items() if k2 != "default"}
    best_label = min(swept, key=lambda k2: swept[k2]) if swept else None
    if "default" not in variants:
        raise RuntimeError(f"{name} m={m}: the default tiles failed: {entry['failed']['default']}")
    default_s = variants["default"]
    entry["int4"] = {"us": round(default_s * 1e6, 2), "of_bound": round(bound(w.nbytes()) / default_s, 3),
                     "default_tiles": "x".join(map(str, _tiles(m, n, w.packed.shape[1]))),
                     "best_us": round(swept[best_label] * 1e6, 2) if best_label else None, "best_tiles": best_label,
                     "sweep_us": {k2: round(v * 1e6, 2) for k2, v in variants.items()}}
    entry["int4_vs_bf16_speedup"] = round(bf16_s / default_s, 3)
    return entry


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=",".join(map(str, ROWS)), help="row counts M, comma-separated")
    ap.add_argument("--bits", default="4,8", help="code widths: 4 (one nibble) and/or 8 (two, split)")
    ap.add_argument("--output", default=None, help="JSON path (default benchmarks/results/bench_int4_gemm_<time>.json)")
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    rates = rl.measure_rates(dev, torch.bfloat16)
    print("rates", rates.to_json(), flush=True)
    gen = torch.Generator().manual_seed(0)
    table: list[dict[str, Any]] = []
    rows = [int(r) for r in args.rows.split(",")]
    cases = [(name, n, k, m, bits) for name, (n, k) in SHAPES.items() for bits in map(int, args.bits.split(","))
             for m in rows]
    weights: dict[tuple[int, int, int], Int4TritonWeight] = {}
    for name, n, k, m, bits in tqdm(cases, desc="shapes", unit="case"):
        if (n, k, bits) not in weights:
            weights.clear()
            weights[(n, k, bits)] = Int4TritonWeight(random_group_quantized(n, k, bits, gen), dev)
        entry = _measure(name, weights[(n, k, bits)], m, bits, rates)
        table.append(entry)
        print(name, m, bits, entry["bf16"], {k2: entry["int4"][k2] for k2 in ("us", "of_bound", "best_us", "best_tiles")},
              flush=True)
    machine = machine_info(("torch", "triton", "radixserve"))
    result = {"benchmark": "bench_int4_gemm", "command": " ".join([sys.executable, *sys.argv]),
              "device_name": torch.cuda.get_device_name(), **rates.to_json(), "table": table,
              "versions": machine["versions"], "git_commit": machine["git_commit"], "machine": machine}
    print("wrote", write_results("bench_int4_gemm", result, args.output))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
