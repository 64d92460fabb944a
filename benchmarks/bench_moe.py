"""The fused MoE layer on the GPU: Triton grouped GEMMs against the torch reference loop and the bound.

  python benchmarks/bench_moe.py                 (CUDA only; bf16; writes results/bench_moe_cuda_<time>.json)
  python benchmarks/bench_moe.py --shapes qwen3-30b-a3b --tokens 1,64 --tp 2
  python benchmarks/bench_moe.py --shapes qwen3-30b-a3b --tokens 1,8,256 --fp8 channel --sweep

Per (shape, tokens): median times of
  fused      radixserve.kernels.fused_moe.fused_experts (align + 2 grouped GEMMs + SiLU + top-k sum)
  reference  radixserve.layers.moe.fused_experts_reference (per-expert cuBLAS loop, as on CPU)
  dense      a dense SwiGLU MLP of width top_k * I on the same tokens: the same FLOPs through cuBLAS
  dense_bytes  a dense SwiGLU MLP of width active_experts * I: the same weight bytes through cuBLAS
               (the achievable time where decode is bound by reading the active experts)
and the bound max(bytes / copy rate, FLOPs / GEMM rate), with both rates measured in this run; bytes
are the weights of the experts the routing activates, read once, plus the activations.
With --fp8 channel|block the experts are FP8 (per output row, or 128x128 blocks; weight-only):
`fused` runs them, `fused_bf16` the same experts in the model dtype in the same run, and the bound
counts one byte per weight. --sweep times each GEMM config of SWEEP as well. Routing is
uniform random (the worst case for weight reads; trained routers are skewed). Weights are per TP rank.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import triton
import triton.testing

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as `python benchmarks/bench_moe.py` from any directory
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._common import machine_info, write_results  # noqa: E402
from benchmarks.roofline import measure_copy_bytes_s, measure_matmul_flops  # noqa: E402
from radixserve.configs.model_config import NAMED_SHAPES, ModelConfig  # noqa: E402
from radixserve.kernels.fused_moe import GemmConfig, fused_experts, pick_config  # noqa: E402
from radixserve.layers.moe import fused_experts_reference, quantize_experts_fp8, select_experts  # noqa: E402

SHAPES = ("qwen3-30b-a3b", "mixtral-8x7b", "qwen1.5-moe-a2.7b")
TOKENS = (1, 8, 32, 128, 512, 2048)
# (block_m, block_n, block_k, warps) tried by --sweep
SWEEP = [GemmConfig(16, 64, 128, 4), GemmConfig(16, 128, 128, 4), GemmConfig(16, 64, 256, 4),
         GemmConfig(16, 32, 128, 4), GemmConfig(16, 64, 128, 2), GemmConfig(16, 128, 64, 4),
         GemmConfig(32, 64, 128, 4), GemmConfig(64, 128, 64, 8), GemmConfig(64, 128, 128, 8),
         GemmConfig(16, 64, 128, 4, True), GemmConfig(16, 32, 128, 4, True), GemmConfig(16, 64, 256, 4, True),
         GemmConfig(64, 128, 64, 8, True)]


GRAPH = False  # --graph: time CUDA-graph replays (what the engine runs), not eager launches


def bench(fn: Any) -> float:
    if GRAPH:
        return float(triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")) / 1e3
    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")) / 1e3


DEVICE = "cuda"


def dense_mlp_time(x: torch.Tensor, width: int, gen: torch.Generator) -> float:
    """A dense SwiGLU MLP of `width` on x through cuBLAS."""
    h = x.shape[1]
    up = torch.randn(2 * width, h, device=x.device, dtype=x.dtype, generator=gen) * h**-0.5
    down = torch.randn(h, width, device=x.device, dtype=x.dtype, generator=gen) * width**-0.5

    def dense() -> torch.Tensor:
        gu = x @ up.T
        out: torch.Tensor = (torch.nn.functional.silu(gu[:, :width]) * gu[:, width:]) @ down.T
        return out

    return bench(dense)


def case(cfg: ModelConfig, tokens: int, tp: int, dtype: torch.dtype, rates: tuple[float, float],
         skip_reference: bool, fp8: str | None = None, sweep: bool = False) -> dict[str, Any]:
    e, k, h = cfg.num_experts, cfg.num_experts_per_tok, cfg.hidden_size
    inter = cfg.moe_intermediate_size // tp
    gen = torch.Generator(device=DEVICE).manual_seed(tokens)
    x = torch.randn(tokens, h, device=DEVICE, dtype=dtype, generator=gen)
    w13 = torch.randn(e, 2 * inter, h, device=DEVICE, dtype=dtype, generator=gen) * h**-0.5
    w2 = torch.randn(e, h, inter, device=DEVICE, dtype=dtype, generator=gen) * inter**-0.5
    logits = torch.randn(tokens, e, device=DEVICE, dtype=torch.float32, generator=gen)
    weights, ids = select_experts(logits, k, cfg.norm_topk_prob)
    active = int(torch.unique(ids).numel())
    esize = x.element_size()
    extra: dict[str, Any] = {}
    if fp8 is not None:
        bf16_w13, bf16_w2 = w13, w2
        w13, w2 = (quantize_experts_fp8(w, None if fp8 == "channel" else 128) for w in (bf16_w13, bf16_w2))
        extra["fused_bf16_us"] = round(bench(lambda: fused_experts(x, bf16_w13, bf16_w2, weights, ids)) * 1e6, 2)
    wsize = 1 if fp8 is not None else esize
    nbytes = active * 3 * h * inter * wsize + tokens * h * esize * 2
    flops = 2 * tokens * k * 3 * h * inter
    copy_rate, gemm_rate = rates
    bound = max(nbytes / copy_rate, flops / gemm_rate)
    fused = bench(lambda: fused_experts(x, w13, w2, weights, ids))
    if sweep:
        extra["sweep_us"] = {str([c.block_m, c.block_n, c.block_k, c.num_warps] + (["trans_b"] if c.trans_b else [])):
                             round(bench(lambda c=c: fused_experts(x, w13, w2, weights, ids, c)) * 1e6, 2)
                             for c in SWEEP}
    dense_s = dense_mlp_time(x, k * inter, gen)
    dense_bytes_s = dense_mlp_time(x, active * inter, gen)
    ref_s = None if skip_reference else bench(lambda: fused_experts_reference(x, w13, w2, weights, ids))
    if tokens <= 512:  # the two paths agree (the GPU test checks this thoroughly; here a guard on the numbers)
        got = fused_experts(x, w13, w2, weights, ids).float()
        want = fused_experts_reference(x, w13, w2, weights, ids).float()
        max_err = float((got - want).abs().max())
    else:
        max_err = None
    gc = pick_config(tokens * k, e, dtype)
    return {
        "tokens": tokens, "active_experts": active, "bytes": nbytes, "flops": flops,
        "fused_us": round(fused * 1e6, 2), "reference_us": None if ref_s is None else round(ref_s * 1e6, 2),
        "dense_same_flops_us": round(dense_s * 1e6, 2), "dense_same_bytes_us": round(dense_bytes_s * 1e6, 2),
        "bound_us": round(bound * 1e6, 2),
        "fused_fraction_of_bound": round(bound / fused, 3),
        "speedup_vs_reference": None if ref_s is None else round(ref_s / fused, 2),
        "fused_gb_s": round(nbytes / fused / 1e9, 1), "fused_tflops": round(flops / fused / 1e12, 1),
        "gemm_config": [gc.block_m, gc.block_n, gc.block_k, gc.num_warps], "max_abs_err_vs_reference": max_err,
        **extra,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"named MoE shapes (default: {','.join(SHAPES)})")
    ap.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    ap.add_argument("--tp", type=int, default=1, help="benchmark one rank's slice of every expert at this TP size")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    ap.add_argument("--skip-reference", action="store_true", help="skip the slow per-expert torch loop")
    ap.add_argument("--fp8", default=None, choices=["channel", "block"],
                    help="FP8 experts (weight-only), per output row or in 128x128 blocks, against bf16 in the same run")
    ap.add_argument("--sweep", action="store_true", help="also time each GEMM config of SWEEP")
    ap.add_argument("--graph", action="store_true",
                    help="time CUDA-graph replays (as the engine runs the layer) instead of eager launches")
    ap.add_argument("--output", default=None, help="JSON path (default: results/bench_moe_cuda_<time>.json)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_moe needs a CUDA GPU", file=sys.stderr)
        return 2
    global GRAPH
    GRAPH = args.graph
    dtype = getattr(torch, args.dtype)
    rates = (measure_copy_bytes_s("cuda"), measure_matmul_flops("cuda", dtype))
    rows: list[dict[str, Any]] = []
    for shape in args.shapes.split(","):
        cfg = ModelConfig.from_hf_dict(NAMED_SHAPES[shape], shape)
        for tokens in (int(t) for t in args.tokens.split(",")):
            row = {"shape": shape, "experts": cfg.num_experts, "top_k": cfg.num_experts_per_tok,
                   "hidden": cfg.hidden_size, "inter_per_rank": cfg.moe_intermediate_size // args.tp,
                   **case(cfg, tokens, args.tp, dtype, rates, args.skip_reference, args.fp8, args.sweep)}
            rows.append(row)
            print(f"{shape:<18} T={tokens:<5} fused {row['fused_us']:>9.1f} us  ref {row['reference_us'] or 0:>9.1f} us"
                  f"  dense {row['dense_same_flops_us']:>8.1f}/{row['dense_same_bytes_us']:>8.1f} us"
                  f"  bound {row['bound_us']:>8.1f} us"
                  f"  ({row['fused_fraction_of_bound']:.0%} of bound, {row['fused_gb_s']} GB/s)"
                  f"  bf16 {row.get('fused_bf16_us')}  sweep {row.get('sweep_us')}", flush=True)
    result = {"benchmark": "bench_moe", "command": " ".join([sys.executable, *sys.argv]),
              "device_name": torch.cuda.get_device_name(), "dtype": args.dtype, "tp": args.tp, "fp8": args.fp8,
              "timing": "cuda graph replays" if args.graph else "eager launches",
              "copy_rate_gb_s": round(rates[0] / 1e9, 1), "gemm_tflops": round(rates[1] / 1e12, 1),
              "machine": machine_info(("torch", "triton")), "rows": rows}
    path = write_results("bench_moe_cuda", result, args.output)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
