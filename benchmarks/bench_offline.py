"""Offline throughput of radixserve's Engine against Hugging Face transformers' `generate`, same run.

Workloads (each printed and written to JSON under benchmarks/results/):
  batch1       prompts one at a time: decode speed at batch 1
  batchN       --batch-size prompts of equal length at once (no padding, so HF runs its best case)
  chat         --chat-prompts chat questions, natural EOS (at most --chat-max-tokens), --batch-size at a
               time: HF runs static left-padded batches, the Engine continuous batching capped at the same size
  shared       --groups system prompts x --per-group questions, radix cache on vs off
  throughput   --throughput-requests prompts of --throughput-input tokens, --throughput-output each, all at
               once; HF runs --hf-throughput-requests of them in batches of --hf-batch (its best case)
Greedy outputs of the Engine are compared with HF's for the batch workloads.

Examples:
  python benchmarks/bench_offline.py                       # embedded SmolLM2-135M on CPU
  python benchmarks/bench_offline.py --device cuda --model-path llama-3-8b --load-format dummy --skip-hf
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as `python benchmarks/bench_offline.py`
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._common import machine_info, write_results  # noqa: E402
from radixserve import Engine  # noqa: E402

TEXT = (
    "Rivers shape the land they cross. Over thousands of years, water carves valleys, carries sediment "
    "to the sea and builds deltas where it slows. Civilizations grew along rivers because they offered "
    "water for crops, fish for food and routes for trade. The Nile, the Tigris and Euphrates, the Indus "
    "and the Yellow River all cradled early cities. Today rivers still power turbines, cool factories "
    "and carry barges, while engineers balance these uses against floods, droughts and the health of "
    "the ecosystems that depend on clean, flowing water. "
)


def make_prompts(tokenizer: Any, n: int, length: int, vocab: int) -> list[list[int]]:
    base = list(tokenizer(TEXT * 8).input_ids)
    out = []
    for i in range(n):
        start = (i * 37) % max(1, len(base) - length)
        ids = (base * (1 + length // len(base)))[start : start + length]
        out.append([t % vocab for t in ids])
    return out


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_engine(engine: Engine, prompts: list[list[int]], out_len: int, one_by_one: bool) -> tuple[float, list[list[int]]]:
    params = {"max_new_tokens": out_len, "temperature": 0, "ignore_eos": True}
    engine.scheduler.flush_cache()
    sync(engine.model_runner.device.type)
    t = time.perf_counter()
    if one_by_one:
        outs = [engine.generate(input_ids=p, sampling_params=params)["output_ids"] for p in prompts]
    else:
        outs = [o["output_ids"] for o in engine.generate(input_ids=prompts, sampling_params=params)]
    sync(engine.model_runner.device.type)
    return time.perf_counter() - t, outs


def load_hf(args: argparse.Namespace, device: str) -> Any:
    from transformers import AutoModelForCausalLM

    from radixserve.model_loader.default_model import default_model_path

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.hf_dtype]
    if args.load_format == "dummy":
        from transformers import AutoConfig

        from radixserve.configs.model_config import NAMED_SHAPES

        shape = dict(NAMED_SHAPES[args.model_path or "smollm2-135m"])
        arch = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}[
            shape.pop("architectures")[0]]
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(arch, **shape), dtype=dtype)
    elif args.model_path is None:
        path = default_model_path()
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=dtype)
    return model.to(device).eval()


def run_hf(model: Any, prompts: list[list[int]], out_len: int, batch: int, device: str) -> tuple[float, list[list[int]]]:
    outs: list[list[int]] = []
    sync(device)
    t = time.perf_counter()
    for i in range(0, len(prompts), batch):
        chunk = torch.tensor(prompts[i : i + batch], device=device)
        with torch.no_grad():
            seq = model.generate(chunk, attention_mask=torch.ones_like(chunk), max_new_tokens=out_len,
                                 min_new_tokens=out_len, do_sample=False, eos_token_id=None, pad_token_id=0)
        outs.extend(seq[:, chunk.shape[1]:].tolist())
    sync(device)
    return time.perf_counter() - t, outs


QUESTIONS = [
    "What is the capital of France?", "Write a haiku about autumn.", "Explain recursion in one sentence.",
    "List three uses of copper.", "What does HTTP stand for?", "Give me a synonym for happy.",
    "How many legs does a spider have?", "Write a Python function that adds two numbers.",
    "What is photosynthesis?", "Name a famous painting by Leonardo da Vinci.", "Translate 'thank you' into Spanish.",
    "Why is the sky blue?", "What is 12 times 12?", "Suggest a name for a pet goldfish.",
    "Describe the taste of a lemon.", "What is the boiling point of water in Celsius?",
]


def chat_prompts(engine: Engine, n: int) -> list[list[int]]:
    return [engine.apply_chat_template([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]
                                          + ("" if i < len(QUESTIONS) else f" (variant {i})")}])
            for i in range(n)]


def run_engine_chat(engine: Engine, prompts: list[list[int]], max_tokens: int,
                    running: int) -> tuple[float, list[list[int]]]:
    engine.scheduler.flush_cache()
    engine.scheduler.max_running_requests, saved = running, engine.scheduler.max_running_requests
    try:
        t = time.perf_counter()
        outs = engine.generate(input_ids=prompts, sampling_params={"max_new_tokens": max_tokens, "temperature": 0})
        sync(engine.model_runner.device.type)
        return time.perf_counter() - t, [o["output_ids"] for o in outs]
    finally:
        engine.scheduler.max_running_requests = saved


def run_hf_chat(model: Any, prompts: list[list[int]], max_tokens: int, batch: int, eos: int,
                device: str) -> tuple[float, list[list[int]]]:
    """Static batches, left-padded as HF documents for decoder-only generation; outputs cut after EOS."""
    outs: list[list[int]] = []
    t = time.perf_counter()
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[eos] * (width - len(p)) + p for p in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        with torch.no_grad():
            seq = model.generate(ids, attention_mask=mask, max_new_tokens=max_tokens, do_sample=False,
                                 eos_token_id=eos, pad_token_id=eos)
        for row in seq[:, width:].tolist():
            outs.append(row[: row.index(eos) + 1] if eos in row else row)
    sync(device)
    return time.perf_counter() - t, outs


def copy_bandwidth(nbytes: int = 1 << 31) -> float:
    """Device-to-device copy rate, bytes read plus written per second (the memory roofline)."""
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    return float(2 * src.numel() * 10 / (start.elapsed_time(end) / 1e3))


def roofline(engine: Engine, args: argparse.Namespace, bandwidth: float) -> dict[str, Any]:
    """Batch-1 decode bound: every step reads all weights once plus the KV written so far."""
    runner = engine.model_runner
    weight_bytes = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    cfg = runner.config
    kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * runner.dtype.itemsize
    mean_ctx = args.input_len + args.output_len / 2
    step_bytes = weight_bytes + kv_per_token * mean_ctx
    return {"weight_bytes": weight_bytes, "kv_bytes_per_step": int(kv_per_token * mean_ctx),
            "roofline_tok_s": round(bandwidth / step_bytes, 1)}


def agreement(ours: list[list[int]], theirs: list[list[int]]) -> dict[str, Any]:
    same = sum(a == b for a, b in zip(ours, theirs, strict=True))
    firsts = [next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
              for a, b in zip(ours, theirs, strict=True)]
    return {"identical": same, "of": len(ours), "first_divergence_steps": [f for f in firsts if f is not None]}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=None, help="Model path or (with --load-format dummy) a named shape.")
    ap.add_argument("--load-format", default="auto", help="auto | gguf | safetensors | dummy")
    ap.add_argument("--tokenizer-path", default=None, help="Tokenizer directory or GGUF (default: the model's).")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--dtype", default="auto", help="Engine dtype: auto | float32 | bfloat16 | float16")
    ap.add_argument("--hf-dtype", default="float32", help="dtype for the HF baseline")
    ap.add_argument("--input-len", type=int, default=128, help="Prompt tokens per request.")
    ap.add_argument("--output-len", type=int, default=64, help="Generated tokens per request (EOS ignored).")
    ap.add_argument("--batch1-prompts", type=int, default=4, help="Prompts for the batch-1 workload.")
    ap.add_argument("--batch-size", type=int, default=16, help="Batch size of the batched workload.")
    ap.add_argument("--groups", type=int, default=4, help="Shared-prefix workload: distinct system prompts.")
    ap.add_argument("--per-group", type=int, default=16, help="Shared-prefix workload: questions per prompt.")
    ap.add_argument("--prefix-len", type=int, default=512, help="Shared-prefix workload: system prompt tokens.")
    ap.add_argument("--question-len", type=int, default=16, help="Shared-prefix workload: question tokens.")
    ap.add_argument("--shared-output-len", type=int, default=16, help="Shared-prefix workload: output tokens.")
    ap.add_argument("--chat-prompts", type=int, default=32, help="Chat workload: number of requests.")
    ap.add_argument("--chat-max-tokens", type=int, default=96, help="Chat workload: max_new_tokens.")
    ap.add_argument("--throughput-requests", type=int, default=1000, help="Throughput workload: requests.")
    ap.add_argument("--throughput-input", type=int, default=1024, help="Throughput workload: prompt tokens.")
    ap.add_argument("--throughput-output", type=int, default=256, help="Throughput workload: output tokens.")
    ap.add_argument("--hf-throughput-requests", type=int, default=64, help="Throughput workload: requests HF runs.")
    ap.add_argument("--hf-batch", type=int, default=64, help="Throughput workload: HF batch size.")
    ap.add_argument("--skip-hf", action="store_true", help="Do not run the transformers baseline.")
    ap.add_argument("--workloads", default="batch1,batchN,chat,shared", help="Comma-separated subset to run.")
    ap.add_argument("--max-total-tokens", type=int, default=None, help="KV pool size for the Engine.")
    ap.add_argument("--attention-backend", default="auto", help="Engine attention backend: auto | torch | triton")
    ap.add_argument("--mem-fraction-static", type=float, default=None,
                    help="GPU memory fraction for weights plus KV pool (when --max-total-tokens is not given).")
    ap.add_argument("--cuda-graph-max-bs", type=int, default=None, help="Largest decode batch replayed as a CUDA graph.")
    ap.add_argument("--max-running-requests", type=int, default=None, help="Cap on concurrently running requests.")
    ap.add_argument("--overlap-schedule", default=None, help="auto | on | off (default: the engine's auto)")
    ap.add_argument("--output", default=None, help="JSON path (default: results/bench_offline_<device>_<time>.json)")
    return ap


@dataclass
class Bench:
    """One run: the engine, the HF baseline (or None) and the results being filled in."""

    args: argparse.Namespace
    engine: Engine
    hf: Any
    device: str
    vocab: int
    warm: list[list[int]]
    engine_kwargs: dict[str, Any]
    results: dict[str, Any]

    def record(self, name: str, n_req: int, out_len: int, ours: tuple[float, list[list[int]]],
               theirs: tuple[float, list[list[int]]] | None) -> None:
        tokens = n_req * out_len
        entry: dict[str, Any] = {"requests": n_req, "output_tokens": tokens, "engine_s": round(ours[0], 3),
                                 "engine_tok_s": round(tokens / ours[0], 2)}
        if theirs is not None:
            entry.update({"hf_s": round(theirs[0], 3), "hf_tok_s": round(tokens / theirs[0], 2),
                          "speedup_vs_hf": round(theirs[0] / ours[0], 3)})
            if self.args.load_format != "dummy":  # dummy weights differ between the two models
                entry["greedy_agreement"] = agreement(ours[1], theirs[1])
        self.results["workloads"][name] = entry
        print(name, entry, flush=True)


def batch1(b: Bench) -> None:
    args, engine, hf = b.args, b.engine, b.hf
    prompts = make_prompts(engine.tokenizer, args.batch1_prompts, args.input_len, b.vocab)
    ours = run_engine(engine, prompts, args.output_len, one_by_one=True)
    theirs = run_hf(hf, prompts, args.output_len, 1, b.device) if hf is not None else None
    b.record("batch1", len(prompts), args.output_len, ours, theirs)
    if b.device == "cuda":
        b.results["workloads"]["batch1"]["roofline"] = roofline(engine, args,
                                                                b.results["copy_bandwidth_gb_s"] * 1e9)


def batch_n(b: Bench) -> None:
    args, engine, hf = b.args, b.engine, b.hf
    prompts = make_prompts(engine.tokenizer, args.batch_size, args.input_len, b.vocab)
    ours = run_engine(engine, prompts, args.output_len, one_by_one=False)
    theirs = run_hf(hf, prompts, args.output_len, args.batch_size, b.device) if hf is not None else None
    b.record(f"batch{args.batch_size}", len(prompts), args.output_len, ours, theirs)


def chat(b: Bench) -> None:
    args, engine, hf = b.args, b.engine, b.hf
    prompts = chat_prompts(engine, args.chat_prompts)
    ours = run_engine_chat(engine, prompts, args.chat_max_tokens, args.batch_size)
    eos = engine.tokenizer.eos_token_id
    theirs = run_hf_chat(hf, prompts, args.chat_max_tokens, args.batch_size, eos, b.device) if hf else None
    n_ours = sum(len(o) for o in ours[1])
    entry: dict[str, Any] = {"requests": len(prompts), "batch": args.batch_size,
                             "engine_output_tokens": n_ours, "engine_s": round(ours[0], 3),
                             "engine_tok_s": round(n_ours / ours[0], 2)}
    if theirs is not None:
        n_hf = sum(len(o) for o in theirs[1])
        entry.update({"hf_output_tokens": n_hf, "hf_s": round(theirs[0], 3), "hf_tok_s": round(n_hf / theirs[0], 2),
                      "speedup_vs_hf": round((n_ours / ours[0]) / (n_hf / theirs[0]), 3)})
        if args.load_format != "dummy":
            entry["greedy_agreement"] = agreement(ours[1], theirs[1])
    b.results["workloads"][f"chat_batch{args.batch_size}"] = entry
    print("chat", entry, flush=True)


def throughput(b: Bench) -> None:
    args, engine, hf = b.args, b.engine, b.hf
    prompts = make_prompts(engine.tokenizer, args.throughput_requests, args.throughput_input, b.vocab)
    ours = run_engine(engine, prompts, args.throughput_output, one_by_one=False)
    n_ours = len(prompts) * args.throughput_output
    entry: dict[str, Any] = {
        "requests": len(prompts), "input_len": args.throughput_input, "output_len": args.throughput_output,
        "engine_s": round(ours[0], 3), "engine_tok_s": round(n_ours / ours[0], 2),
        "engine_total_tok_s": round(len(prompts) * (args.throughput_input + args.throughput_output) / ours[0], 2)}
    b.results["workloads"]["throughput"] = entry
    print("throughput (engine)", entry, flush=True)
    if hf is not None:
        sub_prompts = prompts[: args.hf_throughput_requests]
        theirs = run_hf(hf, sub_prompts, args.throughput_output, args.hf_batch, b.device)
        n_hf = len(sub_prompts) * args.throughput_output
        entry.update({"hf_requests": len(sub_prompts), "hf_batch": args.hf_batch, "hf_s": round(theirs[0], 3),
                      "hf_tok_s": round(n_hf / theirs[0], 2),
                      "speedup_vs_hf": round((n_ours / ours[0]) / (n_hf / theirs[0]), 3)})
    print("throughput", entry, flush=True)


def shared(b: Bench) -> None:
    args, engine = b.args, b.engine
    systems = make_prompts(engine.tokenizer, args.groups, args.prefix_len, b.vocab)
    questions = make_prompts(engine.tokenizer, args.groups * args.per_group, args.question_len + 7, b.vocab)
    prompts = [systems[i % args.groups] + questions[i][7:] for i in range(args.groups * args.per_group)]
    on = run_engine(engine, prompts, args.shared_output_len, one_by_one=False)
    b.hf = None  # free the baseline's memory for the second engine
    gc.collect()
    off_engine = Engine(model_path=args.model_path, disable_radix_cache=True, **b.engine_kwargs)
    run_engine(off_engine, b.warm, 4, one_by_one=False)
    off = run_engine(off_engine, prompts, args.shared_output_len, one_by_one=False)
    tokens = len(prompts) * args.shared_output_len
    entry = {
        "requests": len(prompts), "prefix_len": args.prefix_len, "groups": args.groups,
        "cache_on_s": round(on[0], 3), "cache_off_s": round(off[0], 3),
        "cache_on_tok_s": round(tokens / on[0], 2), "cache_off_tok_s": round(tokens / off[0], 2),
        "speedup_from_cache": round(off[0] / on[0], 3),
        "outputs_identical": sum(a == b for a, b in zip(on[1], off[1], strict=True)),
        "cache_hit_rate": round(engine.scheduler.tree_cache.stats.hit_rate, 4),
    }
    b.results["workloads"]["shared_prefix"] = entry
    print("shared_prefix", entry, flush=True)


WORKLOADS = {"batch1": batch1, "batchN": batch_n, "chat": chat, "throughput": throughput, "shared": shared}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    workloads = set(args.workloads.split(","))

    engine_kwargs: dict[str, Any] = {"load_format": args.load_format, "device": args.device, "dtype": args.dtype,
                                     "log_level": "warning", "max_total_tokens": args.max_total_tokens,
                                     "attention_backend": args.attention_backend,
                                     "tokenizer_path": args.tokenizer_path}
    for name in ("mem_fraction_static", "cuda_graph_max_bs", "max_running_requests", "overlap_schedule"):
        if getattr(args, name) is not None:
            engine_kwargs[name] = getattr(args, name)
    # Measured before the Engine takes its share of GPU memory for the KV pool.
    copy_gb_s = None
    if args.device == "cuda":
        copy_gb_s = round(copy_bandwidth() / 1e9, 1)
        torch.cuda.empty_cache()
    engine = Engine(model_path=args.model_path, **engine_kwargs)
    device = engine.model_runner.device.type
    vocab = min(engine.model_runner.config.vocab_size, len(engine.tokenizer))
    results: dict[str, Any] = {
        "benchmark": "bench_offline", "command": " ".join([sys.executable, *sys.argv]),
        "model": engine.model_name, "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else machine_info()["cpu"],
        "engine_dtype": str(engine.model_runner.dtype), "hf_dtype": args.hf_dtype,
        "machine": machine_info(("torch", "transformers", "triton", "radixserve")),
        "torch_threads": torch.get_num_threads(), "workloads": {},
        "attention_backend": type(engine.model_runner.attn_backend).__name__,
        "kv_pool_tokens": engine.model_runner.sizes.max_total_tokens,
        "max_running_requests": engine.model_runner.sizes.max_running_requests,
        "overlap_schedule": engine.scheduler.overlap,
    }
    if device == "cuda":
        results["copy_bandwidth_gb_s"] = copy_gb_s if copy_gb_s is not None else round(copy_bandwidth() / 1e9, 1)
    hf = None if args.skip_hf else load_hf(args, device)
    bar = tqdm(total=len(workloads), desc="workloads")
    # warm up both (first calls allocate and dispatch slowly)
    warm = make_prompts(engine.tokenizer, 2, 16, vocab)
    run_engine(engine, warm, 4, one_by_one=False)
    if hf is not None:
        run_hf(hf, warm, 4, 2, device)
    bench = Bench(args, engine, hf, device, vocab, warm, engine_kwargs, results)
    del hf  # the shared workload drops the baseline: hold no other reference to it
    for name, run in WORKLOADS.items():
        if name in workloads:
            run(bench)
            bar.update()

    bar.close()
    path = write_results(f"bench_offline_{device}", results, args.output or None)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
