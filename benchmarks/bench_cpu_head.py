"""What the LM head costs in a CPU batch-1 decode step of the embedded model, against other ways
of storing the same [vocab, hidden] weight (issue 19, the batch-1 aim against llama.cpp).

The embedded SmolLM2 file stores its tied head in Q8_0. The packed path runs it as two int4
halves over a doubled K (`Int4PackedWeight`, split codes), which keeps it exact. Here that head,
taken from a loaded model, is timed beside the alternatives on the same shape, with random values
(only the time is compared):
- a bf16 dense weight and a float32 one (F.linear);
- torch's int8 weight-only kernel (`_weight_int8pack_mm`): its scales are per output channel, so
  it cannot hold Q8_0's per-32 block scales exactly;
- a 4-bit weight over K once: what a Q4 head would cost.
The decoder's packed products of one step (every layer's qkv, o, gate_up, down) are timed the
same way, to say what share of the packed work the head is. Variants alternate and each reports
the median of --repeats rounds of --iters calls. Writes JSON to benchmarks/results/.

  python benchmarks/bench_cpu_head.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as `python benchmarks/bench_cpu_head.py`
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks._common import command_line, machine_info, write_results  # noqa: E402
from benchmarks.roofline import timed_samples  # noqa: E402
from radixserve import Engine  # noqa: E402


def _ms(fn: Callable[[], Any], iters: int) -> float:
    """Mean milliseconds per call over `iters` calls."""
    return statistics.mean(timed_samples(fn, torch.device("cpu"), iters, warmup=0)) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--out", default=None, help="results JSON path (default: results/cpu_head_<time>.json)")
    args = ap.parse_args()
    engine = Engine(device="cpu", log_level="warning", max_total_tokens=1024)
    try:
        model: Any = engine.scheduler.model_runner.model  # attributes of the Llama modules
        head = model.lm_head.quant
        assert head is not None, "the LM head is not packed (run without --gguf-dequantize)"
        n, k = head.out_features, head.in_features
        x = torch.randn(1, k)
        layers = model.model.layers
        inter = layers[0].mlp.down_proj.quant.in_features
        x_inter = torch.randn(1, inter)

        def decoder() -> None:
            for layer in layers:
                layer.self_attn.qkv_proj(x)
                layer.self_attn.o_proj(x)
                layer.mlp.gate_up_proj(x)
                layer.mlp.down_proj(x_inter)

        w_bf16 = torch.randn(n, k).to(torch.bfloat16)
        w_f32 = torch.randn(n, k)
        w_int8 = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        s_int8 = torch.rand(n, dtype=torch.bfloat16)
        codes = torch.randint(0, 16, (n + (-n % 16), k), dtype=torch.int32)
        w_int4 = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
        sz_int4 = torch.rand(k // 32, codes.shape[0], 2, dtype=torch.bfloat16)
        variants: dict[str, Callable[[], Any]] = {
            "head_packed_q8_0_as_two_int4_halves": lambda: head.apply(x),
            "head_bf16_dense": lambda: F.linear(x.to(torch.bfloat16), w_bf16),
            "head_float32_dense": lambda: F.linear(x, w_f32),
            "head_int8_per_channel_not_exact": lambda: torch.ops.aten._weight_int8pack_mm(
                x.to(torch.bfloat16), w_int8, s_int8),
            "head_int4_over_k_once": lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(
                x.to(torch.bfloat16), w_int4, 32, sz_int4),
            "decoder_packed_products_one_step": decoder,
        }
        runs: dict[str, list[float]] = {name: [] for name in variants}
        for fn in variants.values():  # warm-up
            _ms(fn, 3)
        for _ in range(args.repeats):
            for name, fn in variants.items():
                runs[name].append(_ms(fn, args.iters))
    finally:
        engine.shutdown()
    med = {name: round(statistics.median(v), 4) for name, v in runs.items()}
    packed_work = med["head_packed_q8_0_as_two_int4_halves"] + med["decoder_packed_products_one_step"]
    result: dict[str, Any] = {
        "benchmark": "cpu_head", "command": command_line(), "shape": [n, k], "threads": torch.get_num_threads(),
        "repeats": args.repeats, "iters": args.iters, "ms": med, "ms_runs": runs,
        "head_share_of_packed_products": round(med["head_packed_q8_0_as_two_int4_halves"] / packed_work, 3),
        "machine": machine_info(("torch", "gguf")),
    }
    out = write_results("cpu_head", result, args.out)
    for name, ms in med.items():
        print(f"{name:40s} {ms:8.3f} ms")
    print(f"head share of the step's packed products: {result['head_share_of_packed_products']:.0%}; wrote {out}")


if __name__ == "__main__":
    main()
