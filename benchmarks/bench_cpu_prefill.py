"""Prefill on CPU with GGUF weights packed: the packed kernel for every row count vs the weight expanded
to bf16 for many-row products (DENSE_FROM_ROWS), and the dequantized float32 model, same process
(issue 19).

One request at a time, distinct random prompts, one output token: the wall time is the prefill (time
to first token). Paths: the default packed engine (the C integer product, dot_cpu.py, where it is
built) with the expansion threshold as shipped and with it out of reach (the kernel for every row
count); torch's int4 kernel (int4_cpu.py, an engine built with RADIXSERVE_CPU_KERNELS=0) as shipped;
the dequantized float32 model. Where this CPU has no native bf16 GEMM (base.cpu_gemm_dtype is float32:
AVX2 CPUs), the default path also runs with its expanded GEMMs forced to bf16 (what it did before
2026-12-03). The paths alternate so load from elsewhere hits each alike. Writes JSON to benchmarks/results/.

  python benchmarks/bench_cpu_prefill.py                      # embedded SmolLM2-135M-Instruct Q4_1
  python benchmarks/bench_cpu_prefill.py --lengths 128,1024 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as `python benchmarks/bench_cpu_prefill.py`
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from benchmarks._common import command_line, environment, machine_info, write_results  # noqa: E402
from radixserve import Engine  # noqa: E402
from radixserve.kernels import cpu_native  # noqa: E402
from radixserve.layers.quantization import dot_cpu, int4_cpu  # noqa: E402
from radixserve.layers.quantization.base import cpu_gemm_dtype  # noqa: E402

NEVER = 1 << 62


def _prefill_s(engine: Engine, ids: list[int]) -> float:
    start = time.perf_counter()
    out = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 1, "temperature": 0})
    elapsed = time.perf_counter() - start
    assert isinstance(out, dict) and out["meta_info"]["cached_tokens"] == 0, out["meta_info"]
    return elapsed


def _method(engine: Engine) -> str:
    """The packed method of the first layer's qkv projection (what the path runs)."""
    model: Any = engine.model_runner.model
    return str(model.model.layers[0].self_attn.qkv_proj.quant.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=None, help="GGUF file (default: the embedded SmolLM2 Q4_1)")
    ap.add_argument("--lengths", default="128,512,2048", help="prompt lengths in tokens, comma-separated")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="results JSON path (default: results/cpu_prefill_<time>.json)")
    args = ap.parse_args()
    lengths = [int(n) for n in args.lengths.split(",")]
    shipped = (int4_cpu.DENSE_FROM_ROWS, dot_cpu.DENSE_FROM_ROWS)
    common: dict[str, Any] = {"device": "cpu", "log_level": "warning", "max_total_tokens": max(lengths) + 64}
    engines = {"packed": Engine(model_path=args.model_path, **common),
               "dequantized": Engine(model_path=args.model_path, gguf_dequantize=True, **common)}
    with environment({cpu_native.ENV_SWITCH: "0"}):
        engines["packed_int4"] = Engine(model_path=args.model_path, **common)
    methods = {name: _method(engines[name]) for name in ("packed", "packed_int4")}
    # (path name, engine, expansion thresholds): the in-process scheduler reads the module constants per call.
    paths = [("packed_expanded", "packed", shipped), ("packed_kernel_only", "packed", (NEVER, NEVER)),
             ("packed_int4_expanded", "packed_int4", shipped), ("dequantized", "dequantized", shipped)]
    gemm = cpu_gemm_dtype()
    if gemm != torch.bfloat16:
        paths.append(("packed_expanded_bf16", "packed", shipped))
    gen = torch.Generator().manual_seed(args.seed)
    runs: dict[str, dict[int, list[float]]] = {p: {n: [] for n in lengths} for p, _, _ in paths}
    try:
        for name in engines:  # warm-up
            _prefill_s(engines[name], torch.randint(100, 40000, (64,), generator=gen).tolist())
        with tqdm(total=args.repeats * len(lengths) * len(paths), desc="prefills") as bar:
            for _ in range(args.repeats):
                for n in lengths:
                    for path, name, threshold in paths:
                        int4_cpu.DENSE_FROM_ROWS, dot_cpu.DENSE_FROM_ROWS = threshold
                        forced = torch.bfloat16 if path == "packed_expanded_bf16" else gemm
                        dot_cpu.cpu_gemm_dtype = int4_cpu.cpu_gemm_dtype = lambda d=forced: d  # type: ignore[assignment]
                        # A fresh prompt every run: nothing comes from the radix cache (asserted).
                        ids = torch.randint(100, 40000, (n,), generator=gen).tolist()
                        runs[path][n].append(_prefill_s(engines[name], ids))
                        bar.update()
    finally:
        int4_cpu.DENSE_FROM_ROWS, dot_cpu.DENSE_FROM_ROWS = shipped
        dot_cpu.cpu_gemm_dtype = int4_cpu.cpu_gemm_dtype = cpu_gemm_dtype
        for engine in engines.values():
            engine.shutdown()
    med = {p: {n: statistics.median(v) for n, v in r.items()} for p, r in runs.items()}
    result: dict[str, Any] = {
        "benchmark": "cpu_prefill", "command": command_line(),
        "model": args.model_path or "embedded SmolLM2-135M-Instruct Q4_1", "lengths": lengths,
        "repeats": args.repeats, "dense_from_rows": {"int4_cpu": shipped[0], "dot_cpu": shipped[1]},
        "packed_method": methods["packed"], "packed_int4_method": methods["packed_int4"],
        "threads": torch.get_num_threads(), "gemm_dtype": str(gemm).removeprefix("torch."),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "prefill_s_median": med, "prefill_s_runs": runs,
        "expanded_speedup_over_kernel_only": {n: med["packed_kernel_only"][n] / med["packed_expanded"][n]
                                              for n in lengths},
        "expanded_over_dequantized_time": {n: med["packed_expanded"][n] / med["dequantized"][n] for n in lengths},
        "expanded_over_int4_expanded_time": {n: med["packed_expanded"][n] / med["packed_int4_expanded"][n]
                                             for n in lengths},
        **({"bf16_over_shipped_time": {n: med["packed_expanded_bf16"][n] / med["packed_expanded"][n] for n in lengths}}
           if "packed_expanded_bf16" in med else {}),
        "machine": machine_info(("torch", "gguf")),
    }
    out = write_results("cpu_prefill", result, args.out)
    for n in lengths:
        print(f"{n} tokens: expanded {med['packed_expanded'][n]:.3f} s, kernel only {med['packed_kernel_only'][n]:.3f} s "
              f"({result['expanded_speedup_over_kernel_only'][n]:.2f}x), torch int4 expanded "
              f"{med['packed_int4_expanded'][n]:.3f} s, dequantized float32 {med['dequantized'][n]:.3f} s"
              + (f", expanded in bf16 {med['packed_expanded_bf16'][n]:.3f} s" if "packed_expanded_bf16" in med else ""))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
