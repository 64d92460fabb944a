"""What grammar-constrained decoding costs: offline throughput with 0 %, 50 % and 100 % of the
requests under a JSON schema, and grammar compile time (cold and cached), in one process.

Throughput: --requests distinct random prompts (benchmarks/workloads.py) of --input-len tokens,
--output-len tokens each, all submitted at once through the Engine, greedy. A constrained request
gets SCHEMA (an object holding an array of free strings, long enough that the grammar does not end
before --output-len) and `ignore_eos`, so it produces about as many tokens as the others; the
figure is output tokens per second, constrained tokens included, and each run's ratio to the
0 % run is reported. Compile time: a --schema-props-property object schema compiled by the
backend cold (a fresh backend, its first compile) and through the engine's cache (the same
source again). Writes benchmarks/results/grammar_<time>.json or --output.

    python benchmarks/bench_grammar.py                                  # embedded SmolLM2 on CPU
    python benchmarks/bench_grammar.py --device cuda --model-path llama-3-8b --load-format dummy \\
        --tokenizer-path .gpu_assets/tokenizer --requests 256 --output-len 128
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._common import machine_info, write_results  # noqa: E402
from benchmarks.workloads import check_engine_outputs, random_prompts  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {"notes": {"type": "array", "items": {"type": "string", "maxLength": 64}, "minItems": 1}},
    "required": ["notes"],
}


def large_schema(props: int) -> dict[str, Any]:
    """An object of `props` typed properties (strings with patterns, bounded numbers, enums, nested
    arrays of objects): the kind of schema a form-filling or extraction agent sends."""
    properties: dict[str, Any] = {}
    for i in range(props):
        kind = i % 4
        if kind == 0:
            properties[f"field_{i}"] = {"type": "string", "pattern": "^[A-Z][a-z]{1,12}$"}
        elif kind == 1:
            properties[f"field_{i}"] = {"type": "integer", "minimum": 0, "maximum": 10_000}
        elif kind == 2:
            properties[f"field_{i}"] = {"enum": ["low", "medium", "high", f"level_{i}"]}
        else:
            properties[f"field_{i}"] = {"type": "array", "maxItems": 4, "items": {
                "type": "object", "properties": {"name": {"type": "string"}, "score": {"type": "number"}},
                "required": ["name"]}}
    return {"type": "object", "properties": properties, "required": list(properties)[: props // 2]}


def run_mix(engine: Any, prompts: list[list[int]], output_len: int, fraction: float) -> dict[str, Any]:
    n_constrained = round(len(prompts) * fraction)
    base = {"max_new_tokens": output_len, "temperature": 0, "ignore_eos": True}
    # Constrained requests spread evenly over the batch (every other one at 50 %).
    params: list[dict[str, Any]] = [base] * len(prompts)
    step = len(prompts) / n_constrained if n_constrained else 0.0
    for k in range(n_constrained):
        params[int(k * step)] = {**base, "json_schema": json.dumps(SCHEMA)}
    start = time.perf_counter()
    outs = engine.generate(input_ids=prompts, sampling_params=params)
    elapsed = time.perf_counter() - start
    tokens = sum(len(o["output_ids"]) for o in outs)
    prompt_tokens, cached = check_engine_outputs(f"constrained_{fraction:.0%}", outs)
    valid = 0
    for o, p in zip(outs, params, strict=True):
        if "json_schema" in p and o["meta_info"]["finish_reason"].get("type") == "stop":
            json.loads(o["text"])  # a finished constrained output parses, or the run fails here
            valid += 1
    return {"constrained_fraction": fraction, "constrained_requests": n_constrained, "seconds": round(elapsed, 3),
            "output_tokens": tokens, "output_tok_s": round(tokens / elapsed, 2), "prompt_tokens": prompt_tokens,
            "cached_tokens": cached, "constrained_finished_and_parsed": valid}


def compile_times(tokenizer: Any, vocab_size: int, backend: str, props: int, repeats: int) -> dict[str, Any]:
    from radixserve.constrained.base import make_backend
    from radixserve.constrained.manager import GrammarManager

    source = json.dumps(large_schema(props))
    t = time.perf_counter()
    fresh = make_backend(backend, tokenizer, vocab_size, [])
    backend_s = time.perf_counter() - t
    cold = []
    for i in range(repeats):  # distinct sources: a compile each, nothing cached
        variant = json.dumps({**large_schema(props), "description": f"variant {i}"})
        t = time.perf_counter()
        fresh.compile("json_schema", variant)
        cold.append(time.perf_counter() - t)
    manager: GrammarManager[int] = GrammarManager(backend, tokenizer, vocab_size, [])
    manager.compiled("json_schema", source).result()
    cached = []
    for _ in range(repeats):
        t = time.perf_counter()
        manager.compiled("json_schema", source).result()
        cached.append(time.perf_counter() - t)
    manager.shutdown()
    return {"backend": backend, "schema_properties": props, "schema_bytes": len(source),
            "backend_setup_s": round(backend_s, 4), "cold_compile_ms_median": round(statistics.median(cold) * 1e3, 3),
            "cached_lookup_ms_median": round(statistics.median(cached) * 1e3, 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", default=None, help="model, or a named shape with --load-format dummy")
    p.add_argument("--load-format", default="auto")
    p.add_argument("--tokenizer-path", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--grammar-backend", default="xgrammar", help="xgrammar | llguidance")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=48)
    p.add_argument("--fractions", default="0,0.5,1", help="constrained shares to run, comma-separated")
    p.add_argument("--schema-props", type=int, default=200, help="properties of the compile-time schema")
    p.add_argument("--compile-repeats", type=int, default=5)
    p.add_argument("--max-total-tokens", type=int, default=None)
    p.add_argument("--output", default=None, help="JSON path (default benchmarks/results/grammar_<time>.json)")
    args = p.parse_args(argv)

    import torch
    from tqdm.auto import tqdm

    from radixserve import Engine

    extra = {"max_total_tokens": args.max_total_tokens} if args.max_total_tokens else {}
    engine = Engine(model_path=args.model_path, load_format=args.load_format, tokenizer_path=args.tokenizer_path,
                    device=args.device, grammar_backend=args.grammar_backend, log_level="warning", **extra)
    try:
        vocab = engine.model_runner.config.vocab_size
        prompts = random_prompts(args.requests, args.input_len, 100, min(vocab, 32000), seed=0)
        warm = random_prompts(2, args.input_len, 100, min(vocab, 32000), seed=99)
        run_mix(engine, warm, 4, 0.5)  # compiles SCHEMA and warms the paths (not timed)
        runs = []
        for frac in tqdm([float(f) for f in args.fractions.split(",")], desc="mixes", unit="run"):
            engine.scheduler.flush_cache()  # every run starts cold: distinct prompts, nothing cached
            runs.append(run_mix(engine, prompts, args.output_len, frac))
        base = next((r for r in runs if r["constrained_fraction"] == 0), None)
        for r in runs:
            r["throughput_vs_unconstrained"] = round(r["output_tok_s"] / base["output_tok_s"], 3) if base else None
        compile_info = compile_times(engine.tokenizer, vocab, args.grammar_backend, args.schema_props,
                                     args.compile_repeats)
        device = engine.model_runner.device
    finally:
        engine.shutdown()
    result = {"benchmark": "grammar", "command": " ".join(["bench_grammar.py", *(argv or sys.argv[1:])]),
              "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
              "config": vars(args), "schema": SCHEMA,
              "machine": machine_info(("radixserve", "torch", "xgrammar", "llguidance")),
              "runs": runs, "compile": compile_info}
    path = write_results("grammar", result, args.output)
    for r in runs:
        print(f"{r['constrained_fraction']:.0%} constrained: {r['output_tok_s']} out tok/s "
              f"(x{r['throughput_vs_unconstrained']} of unconstrained)")
    print(f"compile ({args.schema_props} properties, {compile_info['schema_bytes']} bytes): cold "
          f"{compile_info['cold_compile_ms_median']} ms, cached {compile_info['cached_lookup_ms_median']} ms; "
          f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
