"""FP8 W8A8 linear layers against bf16, per Llama-3-8B projection and row count (issue 19).

For each projection shape [N, K] and each row count M, in one process on one GPU:
- bf16 `F.linear`;
- FP8 per channel: activation quantization + `torch._scaled_mm` (what `Fp8Linear` runs);
- FP8 128x128 blocks: activation quantization per 128 columns + the Triton block kernel;
each timed as the GPU runs it inside a CUDA graph (as in decode: no launch overhead), with its bound from rates measured in the same call:
max(bytes / copy rate, FLOPs / matmul rate), where bytes are the weight (2 or 1 per element) plus
activations in and out, and the matmul rate is bf16's or the FP8 product's. Results as JSON.

    python benchmarks/bench_fp8_gemm.py --output benchmarks/results/bench_fp8_gemm_h200.json
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import roofline as rl
from benchmarks._common import graph_seconds, machine_info, write_results
from radixserve.kernels.fp8_gemm import channel_fp8_matmul, quantize_fp8
from radixserve.layers.quantization.fp8 import Fp8Linear, Fp8Weight, quantize_weight_per_channel

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
# --shapes qwen3-30b-a3b: its attention projections (the experts are measured by bench_moe.py --fp8).
NAMED = {"llama-3-8b": SHAPES, "qwen3-30b-a3b": {"qkv": (5120, 2048), "o": (2048, 4096)}}
ROWS = (1, 16, 64, 256, 1024, 4096)


def _time(fn: Any, iters: int = 50, replays: int = 20) -> float:
    """GPU time of one call: `replays` calls captured in one CUDA graph (as the decode step runs them, so
    no launch overhead), the graph replayed `iters` times; the median per call."""
    return graph_seconds([fn] * replays, iters) / replays


def _block_weight(w: torch.Tensor) -> Fp8Weight:
    n, k = w.shape
    blocks = w.float().view(n // 128, 128, k // 128, 128)
    scale = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12) / 448.0
    codes = (blocks / scale[:, None, :, None]).clamp(-448, 448).to(torch.float8_e4m3fn).view(n, k)
    return Fp8Weight(codes, scale, (128, 128), "bench")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", default=None, help="JSON path (default: results/bench_fp8_gemm_<time>.json)")
    ap.add_argument("--rows", default=",".join(map(str, ROWS)), help="Comma-separated row counts M.")
    ap.add_argument("--shapes", default="llama-3-8b", choices=sorted(NAMED), help="whose projections to time")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_fp8_gemm needs a CUDA GPU")
    dev = torch.device("cuda")
    rates = rl.measure_rates(dev, torch.bfloat16, fp8=True)
    assert rates.fp8_matmul_flops is not None
    rows = [int(m) for m in args.rows.split(",")]
    table: list[dict[str, Any]] = []
    gen = torch.Generator(device=dev).manual_seed(0)
    for name, (n, k) in tqdm(NAMED[args.shapes].items(), desc="shapes"):
        w = torch.empty(n, k, device=dev, dtype=torch.bfloat16).uniform_(-0.02, 0.02, generator=gen)
        channel = Fp8Linear(quantize_weight_per_channel(w), dev)
        block = Fp8Linear(_block_weight(w), dev)
        for m in rows:
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16, generator=gen)
            flops = 2 * m * n * k
            act = 2 * (m * k + m * n)
            entry: dict[str, Any] = {"shape": name, "n": n, "k": k, "m": m}
            def scaled_mm(x: torch.Tensor = x, channel: Fp8Linear = channel) -> torch.Tensor:
                xq, xs = quantize_fp8(x)
                return torch._scaled_mm(xq, channel.codes.t(), scale_a=xs, scale_b=channel.scale,
                                        out_dtype=torch.bfloat16)

            def triton_channel(x: torch.Tensor = x, channel: Fp8Linear = channel) -> torch.Tensor:
                xq, xs = quantize_fp8(x)
                return channel_fp8_matmul(xq, xs, channel.codes, channel.scale, torch.bfloat16)

            fp8_bytes = n * k + 4 * n
            variants: list[tuple[str, Any, int, float]] = [
                ("bf16", functools.partial(F.linear, x, w), 2 * n * k, rates.matmul_flops),
                # What Fp8Linear runs (Triton up to CHANNEL_TRITON_MAX_ROWS rows, torch._scaled_mm above),
                # and each of the two products on every row count.
                ("fp8_channel", functools.partial(channel.apply, x), fp8_bytes, rates.fp8_matmul_flops),
                ("fp8_channel_scaled_mm", scaled_mm, fp8_bytes, rates.fp8_matmul_flops),
                ("fp8_channel_triton", triton_channel, fp8_bytes, rates.fp8_matmul_flops),
                ("fp8_block", functools.partial(block.apply, x), n * k + 4 * (n // 128) * (k // 128),
                 rates.fp8_matmul_flops)]
            for variant, fn, wbytes, rate in variants:
                seconds = _time(fn)
                bound = max((wbytes + act) / rates.copy_bytes_s, flops / rate)
                entry[variant] = {"us": round(seconds * 1e6, 2), "bound_us": round(bound * 1e6, 2),
                                  "of_bound": round(bound / seconds, 3)}
            entry["fp8_quantize_us"] = round(_time(functools.partial(quantize_fp8, x)) * 1e6, 2)
            entry["fp8_channel_speedup"] = round(entry["bf16"]["us"] / entry["fp8_channel"]["us"], 3)
            entry["fp8_block_speedup"] = round(entry["bf16"]["us"] / entry["fp8_block"]["us"], 3)
            table.append(entry)
            print(entry, flush=True)
    machine = machine_info(("torch", "triton", "radixserve"))
    result = {"benchmark": "bench_fp8_gemm", "shapes": args.shapes, "command": " ".join([sys.executable, *sys.argv]),
              "device_name": torch.cuda.get_device_name(), "versions": machine["versions"],
              "git_commit": machine["git_commit"], "machine": machine, **rates.to_json(),
              "definition": "GPU time per call: 20 calls captured in a CUDA graph, median of 50 replays; "
                            "bound = max(bytes / copy rate, FLOPs / matmul rate); FP8 variants include the "
                            "dynamic activation quantization",
              "table": table}
    path = write_results("bench_fp8_gemm", result, args.output)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
