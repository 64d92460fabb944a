"""Achieved memory bandwidth of the Triton kernels against the device-to-device copy roofline.

  python benchmarks/bench_kernels.py            (CUDA only)
Each kernel's bytes are the fewest it must move (inputs read once, outputs written once);
times are medians of triton.testing.do_bench over rotating input sets.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import triton
from tqdm.auto import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as `python benchmarks/bench_kernels.py` from any directory
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._common import machine_info, write_results  # noqa: E402
from radixserve.kernels.fused_ops import add_rmsnorm, rotary_inplace, silu_and_mul  # noqa: E402
from radixserve.kernels.triton_attention import decode_attention, decode_num_splits  # noqa: E402


def bench(fn: Any) -> float:
    return float(triton.testing.do_bench(fn, warmup=50, rep=200, return_mode="median")) / 1e3


def copy_bw() -> float:
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() / bench(lambda: dst.copy_(src))


def decode_case(bs: int, ctx: int, heads: int = 32, kv_heads: int = 8, dim: int = 128) -> tuple[Any, int]:
    dt = torch.bfloat16
    slots = bs * ctx + 1
    k = torch.randn(slots, kv_heads, dim, dtype=dt, device="cuda")
    v = torch.randn_like(k)
    table = (torch.randperm(slots - 1, device="cuda") + 1).view(bs, ctx)
    pool = torch.arange(bs, device="cuda")
    seq = torch.full((bs,), ctx, device="cuda")
    q = torch.randn(bs, heads, dim, dtype=dt, device="cuda")
    o = torch.empty_like(q)
    splits = decode_num_splits(ctx, bs, kv_heads, torch.cuda.get_device_properties(0).multi_processor_count)
    mid_o = torch.empty(bs, heads, 16, dim, dtype=torch.float32, device="cuda")
    mid_lse = torch.empty(bs, heads, 16, dtype=torch.float32, device="cuda")
    nbytes = 2 * bs * ctx * kv_heads * dim * 2 + bs * ctx * 8 + 2 * q.numel() * 2
    return (lambda: decode_attention(q, k, v, o, table, pool, seq, dim**-0.5, splits, mid_o, mid_lse)), nbytes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", default=None, help="JSON path (default: results/bench_kernels_<time>.json)")
    args = ap.parse_args(argv)
    roof = copy_bw()
    rows: list[dict[str, Any]] = []
    cases: list[tuple[str, Any, int]] = []
    for bs, ctx in ((1, 4096), (1, 32768), (16, 2048), (64, 1024)):
        fn, nb = decode_case(bs, ctx)
        cases.append((f"decode_attention bs={bs} ctx={ctx} (32/8 heads, d=128)", fn, nb))
    for rows_n in (1, 64, 4096):
        x = torch.randn(rows_n, 4096, dtype=torch.bfloat16, device="cuda")
        r = torch.randn_like(x)
        w = torch.randn(4096, dtype=torch.bfloat16, device="cuda")
        cases.append((f"add_rmsnorm rows={rows_n} hidden=4096", lambda x=x, r=r, w=w: add_rmsnorm(x, r, w, 1e-5),
                      x.numel() * 2 * 4))
        g = torch.randn(rows_n, 2 * 14336, dtype=torch.bfloat16, device="cuda")
        cases.append((f"silu_and_mul rows={rows_n} inter=14336", lambda g=g: silu_and_mul(g), g.numel() * 2 * 3 // 2))
    for tokens in (1, 64, 4096):
        qkv = torch.randn(tokens, 48 * 128, dtype=torch.bfloat16, device="cuda")
        q = qkv[:, : 32 * 128].view(tokens, 32, 128)
        k = qkv[:, 32 * 128 : 40 * 128].view(tokens, 8, 128)
        pos = torch.randint(0, 8192, (tokens,), device="cuda")
        cos = torch.randn(8192, 128, device="cuda")
        sin = torch.randn(8192, 128, device="cuda")
        cases.append((f"rotary_inplace tokens={tokens} (32+8 heads, d=128)",
                      lambda q=q, k=k, pos=pos, cos=cos, sin=sin: rotary_inplace(q, k, pos, cos, sin),
                      tokens * 40 * 128 * 2 * 2 + tokens * 64 * 4 * 2))
    for name, fn, nbytes in tqdm(cases, desc="kernels"):
        t = bench(fn)
        rows.append({"kernel": name, "us": round(t * 1e6, 2), "bytes": nbytes, "gb_s": round(nbytes / t / 1e9, 1),
                     "fraction_of_copy_roofline": round(nbytes / t / roof, 3)})
    result = {"benchmark": "bench_kernels", "command": " ".join([sys.executable, *sys.argv]),
              "device_name": torch.cuda.get_device_name(), "copy_roofline_gb_s": round(roof / 1e9, 1),
              "machine": machine_info(("torch", "triton")), "kernels": rows}
    path = write_results("bench_kernels_cuda", result, args.output)
    print(f"copy roofline {roof / 1e9:.0f} GB/s")
    for row in rows:
        print(f"{row['kernel']:<55} {row['us']:>9.1f} us {row['gb_s']:>7.0f} GB/s "
              f"{row['fraction_of_copy_roofline']:>6.1%}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
