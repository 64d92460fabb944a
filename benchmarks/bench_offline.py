"""Offline throughput of radixserve's Engine against Hugging Face transformers' `generate`, same run.

Workloads (each printed and written to JSON under benchmarks/results/):
  batch1       --batch1-prompts prompts one at a time: decode speed at batch 1
  batchN       --batch-size prompts of equal length at once (no padding, so HF runs its best case)
  chat         --chat-prompts chat questions, natural EOS (at most --chat-max-tokens), --batch-size at a
               time: HF runs static left-padded batches, the Engine continuous batching capped at the same size
  throughput   --throughput-requests prompts of --throughput-input tokens, --throughput-output each, all at
               once; HF runs --hf-throughput-requests of them in batches of --hf-batch (its best case)
  sharegpt     --sharegpt-requests requests with ShareGPT-like input/output lengths (benchmarks/workloads.py),
               all at once, each generating its own length (no HF run: static batches would pad them)
  prefill8k    one prompt of --prefill-len tokens (cut to the context length minus one), 1 output token:
               prefill-bound, measured against the matmul roofline
  shared       --groups system prompts x --per-group questions, radix cache on vs off
Greedy outputs of the Engine are compared with HF's for the batch workloads.

Honesty (issue 16): every workload but `shared` and `chat` sends pairwise distinct random-id prompts
(benchmarks/workloads.py); each records the prompt and cached tokens the Engine reports, and a
workload that is not about sharing fails (exit code 2, results still written with `guard_error`)
when more than 1 % of its prompt tokens came from the radix cache. `chat` shares its chat template
on purpose, like real chat traffic, and `shared` shares system prompts: their hit rates are recorded.
Each workload also records its roofline bound (benchmarks/roofline.py: prefill FLOPs over the
measured matmul rate plus decode bytes over the measured copy rate, per GPU with --tp-size) and
achieved_fraction = bound_s / engine_s. On a GPU each workload also gets `achieved_fraction_sustained`:
the same bound at the matmul rate the GPU holds over seconds (--sustained-matmul-s), since an H200
at its power cap cannot keep the burst rate through a prefill phase (benchmarks/roofline.py).

Examples:
  python benchmarks/bench_offline.py                       # embedded SmolLM2-135M on CPU
  python benchmarks/bench_offline.py --device cuda --model-path llama-3-8b --load-format dummy --skip-hf \\
      --workloads throughput,sharegpt,prefill8k --tp-size 2
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as `python benchmarks/bench_offline.py`
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import roofline as rl  # noqa: E402
from benchmarks._common import command_line, hf_random_model, machine_info, write_results  # noqa: E402
from benchmarks.workloads import (  # noqa: E402
    CachedTokensError,
    Request,
    check_cached,
    random_prompts,
    shared_prefix_prompts,
    sharegpt_requests,
)
from radixserve import Engine  # noqa: E402
from radixserve.configs.model_config import ModelConfig  # noqa: E402
from radixserve.utils.kernel_compiles import WATCH as compile_watch  # noqa: E402

# Random ids stay above the lowest ids, where tokenizers keep control and byte tokens.
VOCAB_LO = 100
# One seed offset per workload, so that no two workloads draw the same prompts.
SEEDS = {"warmup": 1000, "batch1": 1, "batchN": 2, "throughput": 3, "sharegpt": 4, "prefill8k": 5, "shared": 6}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# --- the Engine, with one rank in process or TP ranks in their own processes ---

def flush_cache(engine: Engine) -> None:
    """Empty the radix cache, so each workload starts cold: in process, or over the control socket."""
    if hasattr(engine, "scheduler"):
        ok = engine.scheduler.flush_cache()
    else:
        from radixserve.managers.io_struct import FlushCacheReq, FlushCacheReqOutput
        from radixserve.managers.ipc import ENCODER, TOKENIZER_INPUT_DECODER

        driver: Any = engine.driver  # ProcessDriver: rank 0 answers control messages on `control`
        driver.send.send(ENCODER.encode(FlushCacheReq()))
        reply = TOKENIZER_INPUT_DECODER.decode(driver.control.recv())
        ok = isinstance(reply, FlushCacheReqOutput) and reply.success
    if not ok:  # a cold cache is what the guard's numbers assume
        raise RuntimeError("flush_cache failed: requests still running?")


def engine_info(engine: Engine) -> dict[str, Any]:
    """Device, dtype, pool and batch limits: from the in-process runner, or the ranks' ready message."""
    if hasattr(engine, "model_runner"):
        runner = engine.model_runner
        return {"device": runner.device.type, "dtype": str(runner.dtype).removeprefix("torch."),
                "attention_backend": type(runner.attn_backend).__name__,
                "kv_pool_tokens": runner.sizes.max_total_tokens,
                "max_running_requests": runner.sizes.max_running_requests,
                "overlap_schedule": engine.scheduler.overlap}
    info: dict[str, Any] = engine.driver.info  # type: ignore[attr-defined]
    return {"device": str(info["device"]).split(":")[0], "dtype": info["dtype"],
            "attention_backend": info["attention_impl"], "kv_pool_tokens": info["max_total_num_tokens"],
            "max_running_requests": info["max_running_requests"], "overlap_schedule": None}


def model_config(engine: Engine) -> ModelConfig:
    if hasattr(engine, "model_runner"):
        cfg: ModelConfig = engine.model_runner.config
        return cfg
    from radixserve.model_loader.source import resolve_model_source

    sa = engine.server_args
    return resolve_model_source(sa.model_path, sa.load_format, sa.tokenizer_path).config


@dataclass
class Run:
    """One timed Engine run: seconds, output ids and the Engine's token accounting per request."""

    seconds: float
    outputs: list[list[int]]
    prompt_tokens: list[int]
    cached_tokens: list[int]

    @property
    def output_tokens(self) -> int:
        return sum(len(o) for o in self.outputs)


def run_engine(engine: Engine, device: str, prompts: list[list[int]], out_lens: int | list[int],
               one_by_one: bool, desc: str = "", natural_eos: bool = False) -> Run:
    """Generate greedily from a cold cache; fixed lengths (EOS ignored) unless `natural_eos`."""
    lens = out_lens if isinstance(out_lens, list) else [out_lens] * len(prompts)
    params = [{"max_new_tokens": n, "temperature": 0, "ignore_eos": not natural_eos} for n in lens]
    flush_cache(engine)
    sync(device)
    t = time.perf_counter()
    if one_by_one:
        outs = [engine.generate(input_ids=p, sampling_params=sp)
                for p, sp in tqdm(list(zip(prompts, params, strict=True)), desc=desc, leave=False,
                                  disable=not desc)]
    else:
        outs = engine.generate(input_ids=prompts, sampling_params=params, show_progress=bool(desc))
    sync(device)
    seconds = time.perf_counter() - t
    return Run(seconds, [o["output_ids"] for o in outs], [o["meta_info"]["prompt_tokens"] for o in outs],
               [o["meta_info"]["cached_tokens"] for o in outs])


# --- the transformers baseline ---

def load_hf(args: argparse.Namespace, device: str) -> Any:
    from transformers import AutoModelForCausalLM

    from radixserve.model_loader.default_model import default_model_path

    dtype = _dtype_of(args.hf_dtype)
    if args.load_format == "dummy":
        model = hf_random_model(args.model_path or "smollm2-135m", dtype, device)
    elif args.model_path is None:
        path = default_model_path()
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=dtype)
    return model.to(device).eval()


def run_hf(model: Any, prompts: list[list[int]], out_len: int, batch: int, device: str,
           desc: str = "") -> tuple[float, list[list[int]]]:
    outs: list[list[int]] = []
    sync(device)
    t = time.perf_counter()
    for i in tqdm(range(0, len(prompts), batch), desc=desc, leave=False, disable=not desc):
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
    ap.add_argument("--tp-size", type=int, default=1,
                    help="Tensor-parallel ranks of the Engine (one GPU each); the roofline is per GPU.")
    ap.add_argument("--hf-dtype", default="float32", help="dtype for the HF baseline")
    ap.add_argument("--seed", type=int, default=0, help="Seed of the random prompts (each workload adds its own offset).")
    ap.add_argument("--input-len", type=int, default=128, help="Prompt tokens per request (batch1, batchN).")
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
    ap.add_argument("--sharegpt-requests", type=int, default=1000, help="ShareGPT-like workload: requests.")
    ap.add_argument("--prefill-len", type=int, default=8192,
                    help="prefill8k workload: prompt tokens (at most the context length minus the 1 output token).")
    ap.add_argument("--skip-hf", action="store_true", help="Do not run the transformers baseline.")
    ap.add_argument("--workloads", default="batch1,batchN,chat,shared",
                    help="Comma-separated subset of: " + ",".join(WORKLOAD_NAMES))
    ap.add_argument("--max-total-tokens", type=int, default=None, help="KV pool size for the Engine.")
    ap.add_argument("--attention-backend", default="auto", help="Engine attention backend: auto | torch | triton")
    ap.add_argument("--kv-cache-dtype", default=None, choices=["auto", "fp8_e4m3"],
                    help="fp8_e4m3: the Engine's KV cache in e4m3 (twice the tokens per byte); the roofline "
                         "counts KV reads at 1 byte per element.")
    ap.add_argument("--quantization", default=None, choices=["fp8", "int4"],
                    help="fp8: the Engine quantizes the linear layers to FP8 at load (W8A8); the roofline counts "
                         "their weights at 1 byte and their FLOPs at the measured FP8 matmul rate. int4: 4-bit "
                         "weight-only groups of 32 (W4A16); weights at 0.625 bytes, FLOPs at the bf16 rate.")
    ap.add_argument("--mem-fraction-static", type=float, default=None,
                    help="GPU memory fraction for weights plus KV pool (when --max-total-tokens is not given).")
    ap.add_argument("--cuda-graph-max-bs", type=int, default=None, help="Largest decode batch replayed as a CUDA graph.")
    ap.add_argument("--max-running-requests", type=int, default=None, help="Cap on concurrently running requests.")
    ap.add_argument("--overlap-schedule", default=None, help="auto | on | off (default: the engine's auto)")
    ap.add_argument("--sustained-matmul-s", type=float, default=5.0,
                    help="On a GPU: also measure the matmul rate held over this many seconds and report each "
                         "workload's bound at that rate beside the burst-rate one (0: skip). The burst rate "
                         "stays the headline.")
    ap.add_argument("--chunked-prefill-size", type=int, default=None, help="Largest prefill chunk, in tokens.")
    ap.add_argument("--enable-mixed-chunk", action="store_true",
                    help="Run the running requests' decode rows inside each prefill batch.")
    ap.add_argument("--output", default=None, help="JSON path (default: results/bench_offline_<device>_<time>.json)")
    return ap


@dataclass
class Bench:
    """One run: the engine, the HF baseline (or None), the roofline inputs and the results being filled in."""

    args: argparse.Namespace
    engine: Engine
    hf: Any
    device: str
    vocab_hi: int
    warm: list[list[int]]
    engine_kwargs: dict[str, Any]
    results: dict[str, Any]
    cost: rl.ModelCost
    rates: rl.DeviceRates
    max_running: int
    guard_errors: list[str]

    def prompts(self, name: str, n: int, length: int) -> list[list[int]]:
        return random_prompts(n, length, VOCAB_LO, self.vocab_hi, self.args.seed + SEEDS[name])

    def account(self, name: str, entry: dict[str, Any], run: Run, max_batch: int, shared: bool) -> None:
        """Add prompt/cached tokens, the roofline bound and achieved fraction; apply the cached guard.

        The bound takes each request's real shape: prompt and cached tokens from the Engine's
        meta_info, output tokens as generated (natural EOS included).
        """
        prompt, cached = sum(run.prompt_tokens), sum(run.cached_tokens)
        entry.update({"prompt_tokens": prompt, "cached_tokens": cached,
                      "cached_fraction": round(cached / prompt, 6) if prompt else 0.0, "shared_on_purpose": shared})
        shapes = [rl.ReqShape(p, len(o), c) for p, o, c in
                  zip(run.prompt_tokens, run.outputs, run.cached_tokens, strict=True)]
        bound = rl.workload_bound(self.cost, self.rates, shapes, max_batch, self.args.tp_size)
        entry["roofline"] = bound.to_json(run.seconds)
        entry["bound_s"] = entry["roofline"]["bound_s"]
        entry["achieved_fraction"] = entry["roofline"]["achieved_fraction"]
        held = self.rates.sustained()
        if held is not None:  # the same bound at the matmul rate the GPU holds over seconds
            at_held = rl.workload_bound(self.cost, held, shapes, max_batch, self.args.tp_size).to_json(run.seconds)
            entry["roofline_sustained"] = {k: at_held[k] for k in ("prefill_s", "decode_s", "bound_s",
                                                                    "achieved_fraction")}
            entry["achieved_fraction_sustained"] = at_held["achieved_fraction"]
        try:
            check_cached(name, prompt, cached, shared)
        except CachedTokensError as e:
            entry["guard_error"] = str(e)
            self.guard_errors.append(str(e))

    def record(self, name: str, n_req: int, out_len: int, ours: Run,
               theirs: tuple[float, list[list[int]]] | None, max_batch: int) -> dict[str, Any]:
        tokens = ours.output_tokens
        entry: dict[str, Any] = {"requests": n_req, "output_len": out_len, "output_tokens": tokens,
                                 "engine_s": round(ours.seconds, 3), "engine_tok_s": round(tokens / ours.seconds, 2)}
        if theirs is not None:
            entry.update({"hf_s": round(theirs[0], 3), "hf_tok_s": round(n_req * out_len / theirs[0], 2),
                          "speedup_vs_hf": round(theirs[0] / ours.seconds, 3)})
            if self.args.load_format != "dummy":  # dummy weights differ between the two models
                entry["greedy_agreement"] = agreement(ours.outputs, theirs[1])
        self.account(name, entry, ours, max_batch, shared=False)
        self.results["workloads"][name] = entry
        print(name, entry, flush=True)
        return entry


def batch1(b: Bench) -> None:
    args, engine, hf = b.args, b.engine, b.hf
    prompts = b.prompts("batch1", args.batch1_prompts, args.input_len)
    ours = run_engine(engine, b.device, prompts, args.output_len, one_by_one=True, desc="batch1")
    theirs = run_hf(hf, prompts, args.output_len, 1, b.device) if hf is not None else None
    entry = b.record("batch1", len(prompts), args.output_len, ours, theirs, max_batch=1)
    # Steady batch-1 decode at the mean context, the figure docs/gpu.md compares decode steps with.
    entry["decode_roofline_tok_s"] = round(rl.decode_roofline_tok_s(
        b.cost, b.rates, args.input_len + args.output_len // 2, 1, args.tp_size), 1)
    if args.output_len > 1:
        entry["decode_phase"] = decode_phase(b, prompts, ours)


def decode_phase(b: Bench, prompts: list[list[int]], full: Run) -> dict[str, Any]:
    """Batch-1 decode alone: the same prompts again with one output token each (prefill, first token,
    and the per-request work of submitting and finishing), subtracted from the full run; against the
    decode part of the full run's bound. What serving benchmarks call time per output token, summed."""
    first = run_engine(b.engine, b.device, prompts, 1, one_by_one=True)
    shapes = [rl.ReqShape(p, len(o), c) for p, o, c in
              zip(full.prompt_tokens, full.outputs, full.cached_tokens, strict=True)]
    tokens = sum(len(o) - 1 for o in full.outputs)
    seconds = full.seconds - first.seconds
    out: dict[str, Any] = {"tokens": tokens, "engine_s": round(seconds, 4), "tok_s": round(tokens / seconds, 2),
                           "first_token_s": round(first.seconds, 4)}
    for key, rates in (("", b.rates), ("_sustained", b.rates.sustained())):
        if rates is not None:
            bound = rl.workload_bound(b.cost, rates, shapes, 1, b.args.tp_size).decode_s
            out[f"bound_s{key}"] = round(bound, 6)
            out[f"achieved_fraction{key}"] = round(rl.achieved_fraction(bound, seconds), 4)
    return out


def batch_n(b: Bench) -> None:
    args, engine, hf = b.args, b.engine, b.hf
    prompts = b.prompts("batchN", args.batch_size, args.input_len)
    ours = run_engine(engine, b.device, prompts, args.output_len, one_by_one=False)
    theirs = run_hf(hf, prompts, args.output_len, args.batch_size, b.device) if hf is not None else None
    b.record(f"batch{args.batch_size}", len(prompts), args.output_len, ours, theirs, max_batch=args.batch_size)


def run_engine_chat(b: Bench, prompts: list[list[int]], max_tokens: int, running: int) -> Run:
    """Natural EOS, at most `running` requests at once (in process only: the cap is the scheduler's)."""
    engine = b.engine
    if not hasattr(engine, "scheduler"):
        raise SystemExit("the chat workload caps the running batch in process: run it with --tp-size 1")
    engine.scheduler.max_running_requests, saved = running, engine.scheduler.max_running_requests
    try:
        return run_engine(engine, b.device, prompts, max_tokens, one_by_one=False, natural_eos=True)
    finally:
        engine.scheduler.max_running_requests = saved


def chat(b: Bench) -> None:
    args, engine, hf = b.args, b.engine, b.hf
    prompts = chat_prompts(engine, args.chat_prompts)
    ours = run_engine_chat(b, prompts, args.chat_max_tokens, args.batch_size)
    eos = engine.tokenizer.eos_token_id
    theirs = run_hf_chat(hf, prompts, args.chat_max_tokens, args.batch_size, eos, b.device) if hf else None
    n_ours = ours.output_tokens
    entry: dict[str, Any] = {"requests": len(prompts), "batch": args.batch_size,
                             "engine_output_tokens": n_ours, "engine_s": round(ours.seconds, 3),
                             "engine_tok_s": round(n_ours / ours.seconds, 2)}
    if theirs is not None:
        n_hf = sum(len(o) for o in theirs[1])
        entry.update({"hf_output_tokens": n_hf, "hf_s": round(theirs[0], 3), "hf_tok_s": round(n_hf / theirs[0], 2),
                      "speedup_vs_hf": round((n_ours / ours.seconds) / (n_hf / theirs[0]), 3)})
        if args.load_format != "dummy":
            entry["greedy_agreement"] = agreement(ours.outputs, theirs[1])
    # Every prompt starts with the same chat-template header: that prefix is shared on purpose.
    b.account("chat", entry, ours, args.batch_size, shared=True)
    b.results["workloads"][f"chat_batch{args.batch_size}"] = entry
    print("chat", entry, flush=True)


def throughput(b: Bench) -> None:
    args, engine, hf = b.args, b.engine, b.hf
    prompts = b.prompts("throughput", args.throughput_requests, args.throughput_input)
    ours = run_engine(engine, b.device, prompts, args.throughput_output, one_by_one=False, desc="throughput")
    n_ours = ours.output_tokens
    entry: dict[str, Any] = {
        "requests": len(prompts), "input_len": args.throughput_input, "output_len": args.throughput_output,
        "engine_s": round(ours.seconds, 3), "engine_tok_s": round(n_ours / ours.seconds, 2),
        "engine_total_tok_s": round((sum(ours.prompt_tokens) + n_ours) / ours.seconds, 2)}
    b.account("throughput", entry, ours, b.max_running, shared=False)
    b.results["workloads"]["throughput"] = entry
    print("throughput (engine)", entry, flush=True)
    if hf is not None:
        sub_prompts = prompts[: args.hf_throughput_requests]
        theirs = run_hf(hf, sub_prompts, args.throughput_output, args.hf_batch, b.device, desc="throughput (HF)")
        n_hf = len(sub_prompts) * args.throughput_output
        entry.update({"hf_requests": len(sub_prompts), "hf_batch": args.hf_batch, "hf_s": round(theirs[0], 3),
                      "hf_tok_s": round(n_hf / theirs[0], 2),
                      "speedup_vs_hf": round((n_ours / ours.seconds) / (n_hf / theirs[0]), 3)})
    print("throughput", entry, flush=True)


def sharegpt(b: Bench) -> None:
    args, engine = b.args, b.engine
    # Requests must fit the context: inputs up to 1024 and outputs up to 1024 unless it is shorter.
    half = max(4, (engine.builder.context_len - 1) // 2)
    reqs: list[Request] = sharegpt_requests(args.sharegpt_requests, VOCAB_LO, b.vocab_hi,
                                            args.seed + SEEDS["sharegpt"], min(1024, half), min(1024, half))
    ours = run_engine(engine, b.device, [r.prompt for r in reqs], [r.output_len for r in reqs],
                      one_by_one=False, desc="sharegpt")
    n_ours = ours.output_tokens
    entry: dict[str, Any] = {
        "requests": len(reqs), "mean_input_len": round(sum(len(r.prompt) for r in reqs) / len(reqs), 1),
        "mean_output_len": round(sum(r.output_len for r in reqs) / len(reqs), 1),
        "engine_s": round(ours.seconds, 3), "output_tokens": n_ours, "engine_tok_s": round(n_ours / ours.seconds, 2),
        "engine_total_tok_s": round((sum(ours.prompt_tokens) + n_ours) / ours.seconds, 2),
        "request_throughput": round(len(reqs) / ours.seconds, 3)}
    b.account("sharegpt", entry, ours, b.max_running, shared=False)
    b.results["workloads"]["sharegpt"] = entry
    print("sharegpt", entry, flush=True)


def prefill8k(b: Bench) -> None:
    args, engine = b.args, b.engine
    length = min(args.prefill_len, engine.builder.context_len - 1)  # prompt + 1 output within the context
    prompts = b.prompts("prefill8k", 1, length)
    ours = run_engine(engine, b.device, prompts, 1, one_by_one=False)
    entry: dict[str, Any] = {"requests": 1, "input_len": length, "output_len": 1,
                             "engine_s": round(ours.seconds, 4),
                             "prefill_tok_s": round(length / ours.seconds, 1)}
    b.account("prefill8k", entry, ours, 1, shared=False)
    b.results["workloads"]["prefill8k"] = entry
    print("prefill8k", entry, flush=True)


def shared(b: Bench) -> None:
    args, engine = b.args, b.engine
    prompts = shared_prefix_prompts(args.groups, args.per_group, args.prefix_len, args.question_len, VOCAB_LO,
                                    b.vocab_hi, args.seed + SEEDS["shared"])
    on = run_engine(engine, b.device, prompts, args.shared_output_len, one_by_one=False)
    b.hf = None  # free the baseline's memory for the second engine
    gc.collect()
    off_engine = Engine(model_path=args.model_path, disable_radix_cache=True, **b.engine_kwargs)
    try:
        run_engine(off_engine, b.device, b.warm, 4, one_by_one=False)
        off = run_engine(off_engine, b.device, prompts, args.shared_output_len, one_by_one=False)
    finally:
        off_engine.shutdown()
    tokens = len(prompts) * args.shared_output_len
    entry: dict[str, Any] = {
        "requests": len(prompts), "prefix_len": args.prefix_len, "groups": args.groups,
        "cache_on_s": round(on.seconds, 3), "cache_off_s": round(off.seconds, 3),
        "cache_on_tok_s": round(tokens / on.seconds, 2), "cache_off_tok_s": round(tokens / off.seconds, 2),
        "speedup_from_cache": round(off.seconds / on.seconds, 3),
        "outputs_identical": sum(x == y for x, y in zip(on.outputs, off.outputs, strict=True)),
    }
    # Sharing is the point with the cache on; with it off nothing may come from a cache.
    b.account("shared_prefix", entry, on, b.max_running, shared=True)
    off_entry: dict[str, Any] = {}
    b.account("shared_prefix_cache_off", off_entry, off, b.max_running, shared=False)
    entry["cache_hit_rate"] = entry["cached_fraction"]
    entry["cache_off"] = off_entry
    b.results["workloads"]["shared_prefix"] = entry
    print("shared_prefix", entry, flush=True)


WORKLOADS = {"batch1": batch1, "batchN": batch_n, "chat": chat, "throughput": throughput, "sharegpt": sharegpt,
             "prefill8k": prefill8k, "shared": shared}
WORKLOAD_NAMES = tuple(WORKLOADS)


def _dtype_of(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def run_workloads(bench: Bench, workloads: list[str]) -> None:
    # From here a Triton compile lands inside a timed workload: each entry lists its own (in this
    # process, so at tp_size 1; the ranks of a larger Engine warn in their logs).
    compile_watch.mark_warmed_up()
    results = bench.results["workloads"]
    for name in tqdm(workloads, desc="workloads"):
        before, compiled = set(results), len(compile_watch.compiles)
        WORKLOADS[name](bench)
        for key in set(results) - before:
            results[key]["kernel_compiles"] = [{"kernel": c.kernel, "ms": c.ms}
                                               for c in compile_watch.compiles[compiled:]]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    workloads = args.workloads.split(",")
    unknown = sorted(set(workloads) - set(WORKLOADS))
    if unknown:
        raise SystemExit(f"unknown workloads {unknown}; choose from {', '.join(WORKLOAD_NAMES)}")

    engine_kwargs: dict[str, Any] = {"load_format": args.load_format, "device": args.device, "dtype": args.dtype,
                                     "log_level": "warning", "max_total_tokens": args.max_total_tokens,
                                     "attention_backend": args.attention_backend,
                                     "tokenizer_path": args.tokenizer_path, "tp_size": args.tp_size}
    for name in ("mem_fraction_static", "cuda_graph_max_bs", "max_running_requests", "overlap_schedule",
                 "quantization", "kv_cache_dtype", "chunked_prefill_size"):
        if getattr(args, name) is not None:
            engine_kwargs[name] = getattr(args, name)
    if args.enable_mixed_chunk:
        engine_kwargs["enable_mixed_chunk"] = True
    # The rates are measured before the Engine takes its share of GPU memory for the KV pool, in
    # the dtype the Engine will run (its `auto`: bfloat16 on CUDA, float32 on the CPU).
    want_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    rate_dtype = _dtype_of(args.dtype) if args.dtype != "auto" else (torch.bfloat16 if want_cuda else torch.float32)
    rates = rl.measure_rates("cuda" if want_cuda else "cpu", rate_dtype, fp8=args.quantization == "fp8",
                             sustained_s=args.sustained_matmul_s)
    print("rates", rates.to_json(), flush=True)
    engine = Engine(model_path=args.model_path, **engine_kwargs)
    info = engine_info(engine)
    device = info["device"]
    if (device == "cuda") != want_cuda:
        raise SystemExit(f"the Engine runs on {device}, the rates were measured on the other device")
    cfg = model_config(engine)
    dtype_bytes = _dtype_of(info["dtype"]).itemsize
    cost = rl.ModelCost.from_config(cfg, dtype_bytes, fp8_linears=args.quantization == "fp8",
                                    kv_dtype_bytes=1 if args.kv_cache_dtype == "fp8_e4m3" else None,
                                    int4_linears=args.quantization == "int4")
    # A checkpoint's packed weights (GGUF) are read as packed: counting them at the engine's dtype made
    # the bound longer than the run (achieved_fraction > 1 on the embedded model before 2026-12-02).
    packed = rl.packed_step_weight_bytes(engine.model_runner.model) \
        if hasattr(engine, "model_runner") and args.quantization is None and not cost.moe_layers else None
    if packed is not None:
        cost = replace(cost, weight_bytes=packed)
    # Random ids stay in the base vocabulary: added/special tokens sit above it.
    vocab_hi = min(cfg.vocab_size, getattr(engine.tokenizer, "vocab_size", None) or len(engine.tokenizer))
    machine = machine_info(("torch", "transformers", "triton", "radixserve"))
    results: dict[str, Any] = {
        "benchmark": "bench_offline", "command": command_line(),
        "model": engine.model_name, "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else machine["cpu"],
        "gpu_count": torch.cuda.device_count() if device == "cuda" else 0,
        "tp_size": args.tp_size, "engine_dtype": info["dtype"], "hf_dtype": args.hf_dtype,
        "quantization": args.quantization, "kv_cache_dtype": args.kv_cache_dtype or "auto",
        "versions": machine["versions"], "git_commit": machine["git_commit"], "machine": machine,
        "torch_threads": torch.get_num_threads(), "prompts": "distinct random ids (benchmarks/workloads.py)",
        **{k: v for k, v in info.items() if k not in ("device", "dtype")},
        **rates.to_json(),
        # Name the figures docs/gpu.md and run_gpu_checks.sh read (copy rate in GB/s) kept as before.
        "copy_bandwidth_gb_s": rates.to_json()["copy_gb_s"],
        "roofline_model": {"weight_bytes": cost.weight_bytes, "kv_bytes_per_token": cost.kv_bytes_per_token,
                           "layer_matmul_params": cost.layer_matmul_params, "lm_head_params": cost.lm_head_params,
                           "definition": "benchmarks/roofline.py; per GPU with tp_size ranks, communication excluded",
                           "weight_bytes_from": "packed weights as loaded" if packed is not None else "model config",
                           **({"moe_layers": cost.moe_layers, "experts": cost.experts, "top_k": cost.top_k,
                               "expert_bytes": cost.expert_bytes,
                               "batch1_step_weight_bytes": round(cost.step_weight_bytes(1))}
                              if cost.moe_layers else {})},
        "workloads": {},
    }
    if hasattr(engine, "model_runner"):  # the count the bound uses, against the tensors actually loaded
        model = engine.model_runner.model
        results["roofline_model"]["loaded_parameter_bytes"] = sum(
            p.numel() * p.element_size() for p in model.parameters()) + sum(  # plus FP8 / packed weights
            q.nbytes() for q in (getattr(m, "quant", None) for m in model.modules()) if q is not None) + sum(
            e.nbytes() for m in model.modules() for e in (getattr(m, "w13_fp8", None), getattr(m, "w2_fp8", None))
            if e is not None)  # FP8 experts
    hf = None if args.skip_hf else load_hf(args, device)
    # warm up both (first calls allocate and dispatch slowly); these prompts are no workload's
    warm = random_prompts(2, 16, VOCAB_LO, vocab_hi, args.seed + SEEDS["warmup"])
    run_engine(engine, device, warm, 4, one_by_one=False)
    # And one prompt of the workloads' length: kernels are compiled per tile config on first use, and
    # prefill picks larger tiles than 16-token prompts do; compiling those inside a timed workload
    # cost the first FP8 MoE measurement ~0.8 s (docs/engine.md).
    long_warm = random_prompts(1, min(args.input_len, engine.builder.context_len - 8), VOCAB_LO, vocab_hi,
                               args.seed + SEEDS["warmup"] + 1)
    run_engine(engine, device, long_warm, 2, one_by_one=False)
    if hf is not None:
        run_hf(hf, warm, 4, 2, device)
    bench = Bench(args, engine, hf, device, vocab_hi, warm, engine_kwargs, results, cost, rates,
                  int(info["max_running_requests"]), [])
    del hf  # the shared workload drops the baseline: hold no other reference to it
    try:
        run_workloads(bench, workloads)
    finally:
        if bench.guard_errors:
            results["guard_error"] = bench.guard_errors
        path = write_results(f"bench_offline_{device}", results, args.output or None)
        print(f"wrote {path}")
        engine.shutdown()
    if bench.guard_errors:
        print("\n".join(["cached-token guard failed:", *bench.guard_errors]), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
