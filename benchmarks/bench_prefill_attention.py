"""Prefill attention: the extend kernel's launch variants against torch's SDPA kernels (flash, cuDNN,
memory-efficient) on the same causal problems, in one process, with the bf16 matmul rate measured
in the same call as the bound.

    python benchmarks/bench_prefill_attention.py [--shapes 8x1024,1x8191,1x8192@8192] [--output OUT.json]

A shape is NxE (N fresh prompts of E tokens, one extend batch) or NxE@P (each with P tokens already
cached, read from the pool through req_to_token: a later chunk of a long prompt). The extend kernel
reads this step's keys from the step's own k, v (`step_kv`, as the engine calls it) and the cached
prefix from a pool whose slots are shuffled. The SDPA peers get contiguous [N, heads, tokens, dim]
tensors with the KV heads repeated to the query heads (made outside the timing); on NxE@P they get
the prefix and the new keys back to back with a lower-right causal mask. Every variant's output is
compared with the first variant's and with the first peer that ran. Times are medians over rounds
in which every variant's CUDA graph (--launches launches each) is replayed in turn, so the clock's
drift under the power cap falls on all of them alike. FLOPs: 4 * heads * head_dim per visible
(query, key) pair. With --device cpu (TRITON_INTERPRET=1) a tiny shape checks the code path; its
times mean nothing.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import roofline as rl  # noqa: E402
from benchmarks._common import captured, command_line, machine_info, write_results  # noqa: E402
from radixserve.kernels.triton_attention import ExtendTiles, extend_attention  # noqa: E402

Fn = Callable[[], Any]

# The first is the reference for the differences; "before" is the kernel as it was before exp2 and
# heavy-first ordering (2026-12-03).
VARIANTS: dict[str, ExtendTiles] = {
    "before_m64n64w4s3": ExtendTiles(64, 64, 4, 3, exp2=False, heavy_first=False),
    "exp2_m64n64w4s3": ExtendTiles(64, 64, 4, 3, exp2=True, heavy_first=False),
    "heavy_first_m64n64w4s3": ExtendTiles(64, 64, 4, 3, exp2=False, heavy_first=True),
    "default": ExtendTiles(),
    "m128n64w8s3": ExtendTiles(128, 64, 8, 3),
    "m128n128w8s2": ExtendTiles(128, 128, 8, 2),
    "m128n128w8s3": ExtendTiles(128, 128, 8, 3),
    "m64n128w4s3": ExtendTiles(64, 128, 4, 3),
    "m128n64w4s3": ExtendTiles(128, 64, 4, 3),
}
PEERS = ("flash", "cudnn", "efficient")


@dataclass(frozen=True)
class Shape:
    prompts: int
    extend: int
    prefix: int = 0

    @classmethod
    def parse(cls, text: str) -> Shape:
        head, _, prefix = text.partition("@")
        n, _, e = head.partition("x")
        return cls(int(n), int(e), int(prefix or 0))

    @property
    def name(self) -> str:
        return f"{self.prompts}x{self.extend}" + (f"@{self.prefix}" if self.prefix else "")

    def visible_pairs(self) -> int:
        return self.prompts * (self.extend * self.prefix + self.extend * (self.extend + 1) // 2)


@dataclass
class Problem:
    """One extend batch: q [tokens, H, D]; the step's k, v [tokens, KVH, D] as views into one qkv
    buffer (as the model hands them over); the pool holding prefix and new keys at shuffled slots."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    k_pool: torch.Tensor
    v_pool: torch.Tensor
    req_to_token: torch.Tensor
    pool_idx: torch.Tensor
    prefix_lens: torch.Tensor
    extend_lens: torch.Tensor
    extend_start: torch.Tensor
    shape: Shape

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.q.shape[-1])


def make_problem(shape: Shape, heads: int, kv_heads: int, dim: int, dtype: torch.dtype, device: torch.device,
                 gen: torch.Generator) -> Problem:
    n, e, p = shape.prompts, shape.extend, shape.prefix
    tokens, seq = n * e, e + p
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim, generator=gen).to(device, dtype)
    q = qkv[:, :heads * dim].view(tokens, heads, dim)
    k = qkv[:, heads * dim:(heads + kv_heads) * dim].view(tokens, kv_heads, dim)
    v = qkv[:, (heads + kv_heads) * dim:].view(tokens, kv_heads, dim)
    slots = (torch.randperm(n * seq, generator=gen) + 1).to(device)  # slot 0 stays the pool's padding row
    k_pool = torch.zeros(n * seq + 1, kv_heads, dim, dtype=dtype, device=device)
    v_pool = torch.zeros_like(k_pool)
    table = slots.view(n, seq)
    prefix_kv = torch.randn(2, n * p, kv_heads, dim, generator=gen).to(device, dtype) if p else None
    if prefix_kv is not None:
        k_pool[table[:, :p].reshape(-1)] = prefix_kv[0]
        v_pool[table[:, :p].reshape(-1)] = prefix_kv[1]
    k_pool[table[:, p:].reshape(-1)] = k
    v_pool[table[:, p:].reshape(-1)] = v
    lens = torch.full((n,), e, device=device)
    return Problem(q, k, v, k_pool, v_pool, table.to(torch.int32).contiguous(), torch.arange(n, device=device),
                   torch.full((n,), p, device=device), lens, torch.arange(n, device=device) * e, shape)


def ours(pb: Problem, tiles: ExtendTiles, out: torch.Tensor) -> Fn:
    def run() -> None:
        extend_attention(pb.q, pb.k_pool, pb.v_pool, out, pb.req_to_token, pb.pool_idx, pb.prefix_lens,
                         pb.extend_lens, pb.extend_start, pb.shape.extend, pb.scale, tiles=tiles,
                         step_kv=(pb.k, pb.v))
    return run


def peer(pb: Problem, backend: str, out: torch.Tensor) -> Fn:
    """torch SDPA with one backend forced, on [N, H, S, D] tensors made here (outside the timing)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.bias import causal_lower_right

    n, e, p = pb.shape.prompts, pb.shape.extend, pb.shape.prefix
    heads, dim = pb.q.shape[1:]
    group = heads // pb.k.shape[1]
    q = pb.q.reshape(n, e, heads, dim).transpose(1, 2).contiguous()
    rows = pb.req_to_token.long()
    k = pb.k_pool[rows].repeat_interleave(group, dim=2).transpose(1, 2).contiguous()  # [N, H, P+E, D]
    v = pb.v_pool[rows].repeat_interleave(group, dim=2).transpose(1, 2).contiguous()
    chosen = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
              "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[backend]
    mask = causal_lower_right(e, e + p) if p else None
    out4 = out.view(n, e, heads, dim)

    def run() -> None:
        with sdpa_kernel([chosen]):
            o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=not p,
                                                                 scale=pb.scale)
        out4.copy_(o.transpose(1, 2))
    return run


def interleaved_seconds(fns: dict[str, Fn], launches: int, rounds: int, device: torch.device) -> dict[str, float]:
    """Median seconds per launch of each fn, the fns replayed in turn in every round."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in tqdm(range(rounds), desc="rounds", leave=False):
        for name, fn in fns.items():
            samples[name].append(rl.timed_samples(fn, device, 1, warmup=0)[0] / launches)
    return {name: float(statistics.median(s)) for name, s in samples.items()}


def bench_shape(shape: Shape, args: argparse.Namespace, device: torch.device, rates: rl.DeviceRates,
                gen: torch.Generator) -> dict[str, Any]:
    dtype = getattr(torch, args.dtype)
    pb = make_problem(shape, args.heads, args.kv_heads, args.head_dim, dtype, device, gen)
    flops = 4.0 * args.heads * args.head_dim * shape.visible_pairs()
    outs: dict[str, torch.Tensor] = {}
    graphs: dict[str, Fn] = {}
    errors: dict[str, str] = {}
    names = [n for n in VARIANTS if not args.variants or n in args.variants.split(",")]
    kinds = {**{n: "ours" for n in names}, **{p: "peer" for p in args.peers.split(",") if p}}
    for name, kind in kinds.items():
        out = torch.full(pb.q.shape, float("nan"), dtype=dtype, device=device)
        print(f"{shape.name}: {name}", flush=True)
        try:
            fn = ours(pb, VARIANTS[name], out) if kind == "ours" else peer(pb, name, out)
            graphs[name] = captured(fn, device, args.launches)
            graphs[name]()
            if device.type == "cuda":
                torch.cuda.synchronize()
        except Exception as e:  # a variant that does not compile or fit, or a peer torch lacks, is a result
            errors[name] = repr(e)[:300]
            graphs.pop(name, None)
            continue
        outs[name] = out
    seconds = interleaved_seconds(graphs, args.launches, args.rounds, device)
    first_ours = next((n for n in outs if kinds[n] == "ours"), None)
    first_peer = next((n for n in outs if kinds[n] == "peer"), None)
    rows: dict[str, Any] = {}
    for name, t in seconds.items():
        row: dict[str, Any] = {"kind": kinds[name], "us": round(t * 1e6, 1), "tflop_s": round(flops / t / 1e12, 1),
                               "of_matmul_rate": round(flops / t / rates.matmul_flops, 3)}
        for ref_name in (first_ours, first_peer):
            if ref_name is not None and ref_name != name:
                diff = (outs[name].float() - outs[ref_name].float()).abs().max()
                row[f"max_abs_diff_vs_{ref_name}"] = float(diff)
        if kinds[name] == "ours":
            row["tiles"] = asdict(VARIANTS[name])
        rows[name] = row
    peer_times = [seconds[n] for n in seconds if kinds[n] == "peer"]
    best_peer = min(peer_times) if peer_times else None
    for name, row in rows.items():
        if best_peer is not None:
            row["speed_vs_best_peer"] = round(best_peer / seconds[name], 3)
    res = {"shape": shape.name, "tflop": round(flops / 1e12, 3), "results": rows, "errors": errors}
    print(shape.name, {n: (r["us"], r["tflop_s"]) for n, r in rows.items()}, errors or "", flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shapes", default="8x1024,1x8191,1x8192@8192",
                    help="NxE (N fresh prompts of E tokens) or NxE@P (P tokens cached), comma-separated")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--variants", default="", help=f"extend launch variants (default all: {', '.join(VARIANTS)})")
    ap.add_argument("--peers", default=",".join(PEERS), help="torch SDPA backends: flash, cudnn, efficient, math")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--launches", type=int, default=4, help="launches per CUDA graph")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", default=None, help="JSON path (default: results/prefill_attention_<time>.json)")
    args = ap.parse_args(argv)
    unknown = [n for n in args.variants.split(",") if n and n not in VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {', '.join(unknown)}")
    device = torch.device(args.device)
    if device.type == "cuda":
        rates = rl.measure_rates(device, getattr(torch, args.dtype))
    else:  # the interpreter's smoke test: the rates only scale the (meaningless) fractions
        rates = rl.DeviceRates(1e12, 1e10, "cpu", args.dtype)
    gen = torch.Generator().manual_seed(args.seed)
    shapes = [Shape.parse(s) for s in args.shapes.split(",") if s]
    with torch.inference_mode():
        results = [bench_shape(s, args, device, rates, gen) for s in shapes]
    machine = machine_info(("torch", "triton", "radixserve"))
    path = write_results("prefill_attention", {
        "benchmark": "bench_prefill_attention", "command": command_line(), "machine": machine,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "versions": machine["versions"], "git_commit": machine["git_commit"], **rates.to_json(),
        "heads": args.heads, "kv_heads": args.kv_heads, "head_dim": args.head_dim,
        "launches_per_graph": args.launches, "rounds": args.rounds, "shapes": results}, args.output)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
