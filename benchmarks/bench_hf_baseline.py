"""Hugging Face transformers baseline for bench_serving.py: the same requests, in process.

On the CPU with a checkpoint (below), or on a GPU with random weights of a named shape, the form
run_gpu_serving.sh uses for the serving comparison of issue 16 (the same token ids bench_serving
sends with --token-ids; --num-prompts N of a seed are the first N of a larger run of that seed):
  python benchmarks/bench_hf_baseline.py --device cuda --load-format dummy --model-path llama-3-8b \
      --dtype bfloat16 --method generate_batch --dataset random --token-ids --num-prompts 64 \
      --random-input-len 1024 --output-len 256 --ignore-eos --seed 2001

The workload is built by bench_serving.py's own `make_prompts` from the same flags and seed, so both
scripts send identical requests: the same chat messages (the model's chat template applied exactly as
the server does: template text, then tokenized without added special tokens), the same --output-len,
greedy decoding (bench_serving always sends temperature 0), and fixed-length outputs with --ignore-eos.
No server, no HTTP: this measures transformers' generation alone, every request submitted at t=0 (as
bench_serving does with its default --request-rate inf).

Methods (--method), all three work on the CPU with transformers 5.x:
  batched         (default) static batches of --batch-size requests, left-padded, one `model.generate` call
                  each; --ignore-eos sets min_new_tokens=max_new_tokens.
  generate_batch  transformers' continuous batching: the ContinuousBatchingManager behind
                  `model.generate_batch` (paged KV cache, requests join and leave the running batch, prefix
                  block sharing on unless --no-prefix-sharing). Manager setup is timed apart (setup_s).
                  --ignore-eos disables EOS (eos_token_id=-1), since CB drops the min_new_tokens processor.
                  On the CPU it runs sdpa over all the batch's tokens packed into one sequence with a dense
                  mask, so it was 2-4x slower than `batched` here (8 requests of ~770 tokens: 64 s with
                  its default 8192 batch tokens, 34 s with --cb-max-batch-tokens 1024, batched 16 s).
  loop            `model.generate` one request at a time; --ignore-eos as for batched.
The default is the fastest of them on the CPU, so the baseline is transformers at its best.
A failing method raises an error: there is no fallback to another method.

Reports request throughput, input/output/total token throughput, total time and end-to-end latency
percentiles (from t=0 to the request's last token), in the same fields as bench_serving.py. Writes
JSON (method, device, versions, command line, machine) to benchmarks/results/hf_baseline_<time>.json
or --output.

Compare with the server on the same workload:
  radixserve serve &                    # embedded SmolLM2-135M-Instruct on the CPU
  python benchmarks/bench_serving.py --dataset shared-prefix --num-groups 4 --prompts-per-group 8 \\
      --system-prompt-len 256 --question-len 32 --output-len 32 --ignore-eos
  python benchmarks/bench_hf_baseline.py --dataset shared-prefix --num-groups 4 --prompts-per-group 8 \\
      --system-prompt-len 256 --question-len 32 --output-len 32 --ignore-eos
and compare request_throughput / output_token_throughput / duration_s of the two JSON files (stop the
server first, or run on another machine, so that the two do not share the CPU).

As a module: `run(argv)` returns the result dict (and writes it unless --no-save).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as `python benchmarks/bench_hf_baseline.py`
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._common import hf_random_model, machine_info, write_results  # noqa: E402
from benchmarks.bench_serving import BenchConfig, _percentiles, make_prompts  # noqa: E402

METHODS = ("batched", "generate_batch", "loop")
ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# --- model and prompts ---

def load_model(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """(model, tokenizer, name) on --device: the embedded GGUF (as tests/conftest.py's hf_smol_model), an
    HF directory, or (--load-format dummy) a named shape with random weights, as bench_offline's baseline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from radixserve.model_loader.tokenizer import load_tokenizer

    model_path, dtype = args.model_path, DTYPES[args.dtype]
    if args.load_format == "dummy":  # random weights made where they run (16 GB for the 8B shape)
        model = hf_random_model(model_path or "smollm2-135m", dtype, args.device)
        tokenizer = load_tokenizer(args.tokenizer_path) if args.tokenizer_path else None
        return model.eval(), tokenizer, f"{model_path} (random weights)"
    if model_path is None:
        from radixserve.model_loader.default_model import default_model_path
        from radixserve.model_loader.tokenizer import load_tokenizer

        path = default_model_path()
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
        # AutoTokenizer.from_pretrained(dir, gguf_file=...), cached by radixserve: the server's own tokenizer.
        tokenizer = load_tokenizer(path)
        name = path.name
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_path or model_path)
        name = model_path
    return model.to(args.device).eval(), tokenizer, name  # from_pretrained loads on the CPU


def tokenize_prompts(tokenizer: Any, prompts: Sequence[Any], endpoint: str) -> list[list[int]]:
    """Token ids of each bench_serving Prompt, built as radixserve's server builds them for `endpoint`."""
    out: list[list[int]] = []
    for p in prompts:
        if p.ids is not None:  # --token-ids: the ids bench_serving sends
            out.append(list(p.ids))
        elif endpoint == "/v1/chat/completions":
            if not getattr(tokenizer, "chat_template", None):
                raise ValueError("the tokenizer has no chat template: use --endpoint /v1/completions")
            messages = [{"role": "system", "content": p.system}] if p.system else []
            messages.append({"role": "user", "content": p.user})
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            out.append(list(tokenizer(text, add_special_tokens=False).input_ids))
        else:
            out.append(list(tokenizer(f"{p.system}\n{p.user}" if p.system else p.user).input_ids))
    return out


def generation_config(model: Any, output_len: int, ignore_eos: bool, method: str) -> Any:
    """Greedy, `output_len` new tokens; with ignore_eos every output has exactly `output_len` tokens."""
    gc = copy.deepcopy(model.generation_config)
    gc.do_sample = False
    gc.temperature = gc.top_p = gc.top_k = None
    gc.num_beams = 1
    gc.max_new_tokens = output_len
    gc.max_length = None
    if gc.pad_token_id is None:
        gc.pad_token_id = gc.eos_token_id if not isinstance(gc.eos_token_id, list) else gc.eos_token_id[0]
    if gc.pad_token_id is None:  # a config without EOS (random-weight shapes): any id pads
        gc.pad_token_id = 0
    if ignore_eos:
        if method == "generate_batch":
            gc.eos_token_id = -1  # continuous batching: -1 disables EOS (min_new_tokens is not supported there)
        else:
            gc.min_new_tokens = output_len
    return gc


def _eos_ids(gc: Any) -> set[int]:
    eos = gc.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, list) else [eos]) if int(e) >= 0}


def _cut_after_eos(tokens: list[int], eos: set[int]) -> list[int]:
    """Output up to and including the first EOS (what a server returns); the rest of a row is padding."""
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


def cb_page_size(config_cls: Any) -> int:
    """KV tokens per block of transformers' continuous batching: `page_size` since 5.2x, `block_size`
    before (5.17 on the device machines has only that name)."""
    config = config_cls()
    size = getattr(config, "page_size", None) or getattr(config, "block_size", None)
    if not size:
        raise RuntimeError(f"{config_cls.__name__} has neither page_size nor block_size: an unknown transformers API")
    return int(size)


# --- the methods: each returns (per-request output tokens, per-request latency from t=0 in s, info) ---

def run_generate_batch(model: Any, inputs: list[list[int]], gc: Any, *, prefix_sharing: bool = True,
                       num_blocks: int | None = None, max_batch_tokens: int | None = None,
                       bar: Any = None) -> tuple[list[list[int]], list[float], dict[str, Any]]:
    """transformers' continuous batching, as `model.generate_batch` drives it, with the setup timed apart."""
    from transformers.generation.configuration_utils import ContinuousBatchingConfig
    from transformers.generation.continuous_batching.utils import WorkloadHints

    page_size = cb_page_size(ContinuousBatchingConfig)
    if num_blocks is None:  # room for every request at once: no eviction, and not 60% of the RAM (CB's CPU default)
        num_blocks = sum(math.ceil((len(ids) + gc.max_new_tokens) / page_size) for ids in inputs) + 2
    cb_config = ContinuousBatchingConfig(num_blocks=num_blocks, max_batch_tokens=max_batch_tokens,
                                         allow_block_sharing=prefix_sharing)
    hints = WorkloadHints(max_prompt_length=max(len(ids) for ids in inputs), max_generated_length=gc.max_new_tokens,
                          num_requests=len(inputs))
    setup_start = time.perf_counter()
    outputs: dict[str, Any] = {}
    latency: dict[str, float] = {}
    with model.continuous_batching_context_manager(generation_config=gc, continuous_batching_config=cb_config,
                                                   block=True, timeout=30, workload_hints=hints) as manager:
        setup_s = time.perf_counter() - setup_start
        info = {"setup_s": round(setup_s, 3), "prefix_sharing": bool(manager._use_prefix_sharing),
                "attn_implementation": model.config._attn_implementation,
                "cb_num_blocks": num_blocks, "cb_page_size": page_size,
                "cb_max_batch_tokens": manager.continuous_batching_config.max_batch_tokens,
                "cb_max_requests_per_batch": manager.continuous_batching_config.max_requests_per_batch}
        start = time.perf_counter()
        ids = manager.add_requests(inputs=inputs, max_new_tokens=gc.max_new_tokens)
        wanted = set(ids)
        while len(outputs) < len(ids):
            result = manager.get_result(timeout=1)
            if result is None:
                fatal = manager.background_thread_status.fatal_error
                if fatal is not None or not manager.is_running():
                    raise RuntimeError(f"generate_batch: the continuous batching loop stopped after "
                                       f"{len(outputs)} of {len(ids)} requests: {fatal!r}") from fatal
                continue
            if result.request_id not in wanted or not result.is_finished():
                continue
            if result.error is not None:
                raise RuntimeError(f"generate_batch: request {result.request_id} failed: {result.error}")
            outputs[result.request_id] = result
            latency[result.request_id] = time.perf_counter() - start
            if bar is not None:
                bar.update(1)
    return [list(outputs[i].generated_tokens) for i in ids], [latency[i] for i in ids], info


def run_batched(model: Any, inputs: list[list[int]], gc: Any, *, batch_size: int,
                bar: Any = None) -> tuple[list[list[int]], list[float], dict[str, Any]]:
    """Static batches, left-padded (as HF documents for decoder-only models), in request order."""
    pad = int(gc.pad_token_id)
    eos = _eos_ids(gc)
    outs: list[list[int]] = []
    latency: list[float] = []
    padded_tokens = 0
    start = time.perf_counter()
    for i in range(0, len(inputs), batch_size):
        chunk = inputs[i : i + batch_size]
        width = max(len(p) for p in chunk)
        padded_tokens += sum(width - len(p) for p in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=model.device)
        with torch.no_grad():
            seq = model.generate(ids, attention_mask=mask, generation_config=gc)
        done = time.perf_counter() - start
        outs.extend(_cut_after_eos(row, eos) for row in seq[:, width:].tolist())
        latency.extend([done] * len(chunk))
        if bar is not None:
            bar.update(len(chunk))
    return outs, latency, {"batch_size": batch_size, "padding_tokens": padded_tokens,
                           "attn_implementation": model.config._attn_implementation}


def run_loop(model: Any, inputs: list[list[int]], gc: Any, *,
             bar: Any = None) -> tuple[list[list[int]], list[float], dict[str, Any]]:
    """`model.generate` on one request at a time."""
    eos = _eos_ids(gc)
    outs: list[list[int]] = []
    latency: list[float] = []
    start = time.perf_counter()
    for p in inputs:
        ids = torch.tensor([p], device=model.device)
        with torch.no_grad():
            seq = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gc)
        outs.append(_cut_after_eos(seq[0, len(p):].tolist(), eos))
        latency.append(time.perf_counter() - start)
        if bar is not None:
            bar.update(1)
    return outs, latency, {"attn_implementation": model.config._attn_implementation}


METHOD_DETAIL = {
    "generate_batch": "transformers continuous batching (ContinuousBatchingManager, the engine of "
                      "model.generate_batch); all requests submitted at t=0; manager setup excluded (setup_s)",
    "batched": "static batches of --batch-size requests, left-padded, one model.generate call per batch",
    "loop": "model.generate, one request at a time",
}


def run_method(method: str, model: Any, inputs: list[list[int]], gc: Any, args: argparse.Namespace,
               bar: Any = None) -> tuple[list[list[int]], list[float], dict[str, Any]]:
    try:
        if method == "generate_batch":
            return run_generate_batch(model, inputs, gc, prefix_sharing=not args.no_prefix_sharing,
                                      num_blocks=args.cb_num_blocks, max_batch_tokens=args.cb_max_batch_tokens,
                                      bar=bar)
        if method == "batched":
            return run_batched(model, inputs, gc, batch_size=args.batch_size, bar=bar)
        if method == "loop":
            return run_loop(model, inputs, gc, bar=bar)
    except Exception as exc:
        raise RuntimeError(f"--method {method} failed ({type(exc).__name__}: {exc}); no fallback is tried: "
                           f"pick another with --method {{{','.join(METHODS)}}}") from exc
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


# --- the run ---

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_hf_baseline.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("workload (the same flags and meaning as bench_serving.py)")
    g.add_argument("--endpoint", choices=ENDPOINTS, default="/v1/chat/completions",
                   help="prompt format to mirror: chat template applied, or plain '<system>\\n<user>' text")
    g.add_argument("--dataset", choices=("shared-prefix", "random"), default="shared-prefix",
                   help="workload: shared system prompts, or independent random prompts")
    g.add_argument("--num-prompts", type=int, default=200, help="random: number of requests")
    g.add_argument("--random-input-len", type=int, default=256, help="random: prompt length in words")
    g.add_argument("--num-groups", type=int, default=8, help="shared-prefix: distinct system prompts")
    g.add_argument("--prompts-per-group", type=int, default=16, help="shared-prefix: questions per system prompt")
    g.add_argument("--system-prompt-len", type=int, default=1024, help="shared-prefix: system prompt words")
    g.add_argument("--question-len", type=int, default=64, help="shared-prefix: question words")
    g.add_argument("--output-len", type=int, default=64, help="max new tokens of every request (greedy)")
    g.add_argument("--ignore-eos", action="store_true",
                   help="fixed-length outputs of --output-len tokens, like bench_serving's --ignore-eos")
    g.add_argument("--seed", type=int, default=0, help="seed for the prompts (same prompts as bench_serving)")
    g.add_argument("--token-ids", action="store_true",
                   help="random dataset as token ids (bench_serving --token-ids): no tokenizer needed")
    g.add_argument("--vocab-lo", type=int, default=100, help="--token-ids: lowest id")
    g.add_argument("--vocab-hi", type=int, default=32000, help="--token-ids: id bound (exclusive)")
    h = p.add_argument_group("transformers")
    h.add_argument("--method", choices=METHODS, default=METHODS[0],
                   help="batched: static left-padded batches of --batch-size (fastest on the CPU); "
                        "generate_batch: transformers' continuous batching; loop: one request at a time. "
                        "No fallback if it fails")
    h.add_argument("--model-path", default=None,
                   help="HF model directory, or with --load-format dummy a named shape (llama-3-8b); none: the "
                        "embedded SmolLM2-135M-Instruct GGUF")
    h.add_argument("--load-format", choices=("auto", "dummy"), default="auto",
                   help="dummy: random weights of the named shape --model-path (as bench_offline's baseline)")
    h.add_argument("--tokenizer-path", default=None,
                   help="tokenizer directory (default: the model's; with dummy weights none, ids only)")
    h.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where transformers runs")
    h.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="model dtype")
    h.add_argument("--batch-size", type=int, default=32, help="batched: requests per generate call")
    h.add_argument("--no-prefix-sharing", action="store_true",
                   help="generate_batch: disable KV block sharing between requests with a common prefix")
    h.add_argument("--cb-num-blocks", type=int, default=None,
                   help="generate_batch: KV cache blocks of 256 tokens; none: enough for all requests at once")
    h.add_argument("--cb-max-batch-tokens", type=int, default=None,
                   help="generate_batch: max tokens per forward pass; none: transformers' default (8192)")
    h.add_argument("--threads", type=int, default=None, help="torch CPU threads; none: torch's default")
    h.add_argument("--no-warmup", action="store_true",
                   help="skip the untimed 2-request warm-up run of the same method")
    o = p.add_argument_group("output")
    o.add_argument("--output", default=None, help="JSON path; none: benchmarks/results/hf_baseline_<UTC time>.json")
    o.add_argument("--no-save", action="store_true", help="print the result only, write no JSON")
    o.add_argument("--disable-tqdm", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> Any:
    """bench_serving's BenchConfig for the workload fields (base_url is unused: nothing is sent)."""
    return BenchConfig(
        base_url="in-process://transformers", endpoint=args.endpoint, dataset=args.dataset,
        num_prompts=args.num_prompts, random_input_len=args.random_input_len, num_groups=args.num_groups,
        prompts_per_group=args.prompts_per_group, system_prompt_len=args.system_prompt_len,
        question_len=args.question_len, output_len=args.output_len, ignore_eos=args.ignore_eos, seed=args.seed,
        stream=False, disable_tqdm=args.disable_tqdm, token_ids=args.token_ids, vocab_lo=args.vocab_lo,
        vocab_hi=args.vocab_hi,
    )


WORKLOAD_FIELDS = ("endpoint", "dataset", "num_prompts", "random_input_len", "num_groups", "prompts_per_group",
                   "system_prompt_len", "question_len", "output_len", "ignore_eos", "seed", "token_ids", "vocab_lo",
                   "vocab_hi")


def workload_dict(cfg: Any) -> dict[str, Any]:
    """The BenchConfig fields that define the requests (the same keys as in bench_serving's "config")."""
    d = asdict(cfg)
    return {k: d[k] for k in WORKLOAD_FIELDS}


def summarize(prompt_ids: list[list[int]], outputs: list[list[int]], latency: list[float],
              duration_s: float) -> dict[str, Any]:
    """The throughput and latency fields of bench_serving's summary, from exact token counts."""
    prompt_tokens = sum(len(p) for p in prompt_ids)
    completion_tokens = sum(len(o) for o in outputs)
    n = len(outputs)
    return {
        "completed": n,
        "failed": 0,
        "duration_s": round(duration_s, 3),
        "request_throughput": round(n / duration_s, 3),
        "input_token_throughput": round(prompt_tokens / duration_s, 1),
        "output_token_throughput": round(completion_tokens / duration_s, 1),
        "total_token_throughput": round((prompt_tokens + completion_tokens) / duration_s, 1),
        "prompt_tokens_total": prompt_tokens,
        "completion_tokens_total": completion_tokens,
        "e2e_latency_ms": _percentiles(latency),
    }


def _load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def run_baseline(args: argparse.Namespace, command: str | None = None) -> dict[str, Any]:
    """Load the model, run the workload with `args.method`, return the result dict (does not write it)."""
    if args.batch_size < 1 or args.output_len < 1:
        raise ValueError("--batch-size and --output-len must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = _load_average()  # other work on the CPU slows the run: recorded with the result
    cfg = config_from_args(args)
    prompts = make_prompts(cfg)
    if not prompts:
        raise ValueError("the workload has no requests")
    if args.load_format == "dummy" and args.tokenizer_path is None and not args.token_ids:
        raise ValueError("--load-format dummy without --tokenizer-path needs --token-ids (prompts as ids)")
    load_start = time.perf_counter()
    model, tokenizer, model_name = load_model(args)
    load_s = time.perf_counter() - load_start
    inputs = tokenize_prompts(tokenizer, prompts, args.endpoint)
    gc = generation_config(model, args.output_len, args.ignore_eos, args.method)

    warmup_s = None
    if not args.no_warmup:  # first calls allocate and dispatch slowly
        warm_start = time.perf_counter()
        run_method(args.method, model, [ids[:16] for ids in inputs[:2]],
                   generation_config(model, 2, True, args.method), args)
        warmup_s = round(time.perf_counter() - warm_start, 3)

    bar = None if args.disable_tqdm else tqdm(total=len(inputs), desc=f"requests ({args.method})", unit="req")
    outputs, latency, info = run_method(args.method, model, inputs, gc, args, bar)
    # t=0 to the last request's completion (as bench_serving), not counting the manager's teardown.
    duration = max(latency)
    if bar is not None:
        bar.close()
    if len(outputs) != len(inputs):
        raise RuntimeError(f"--method {args.method} returned {len(outputs)} outputs for {len(inputs)} requests")
    short = [len(o) for o in outputs if len(o) != args.output_len]
    if args.ignore_eos and short:
        raise RuntimeError(f"--ignore-eos but {len(short)} outputs are not {args.output_len} tokens long: {short[:5]}")

    machine = machine_info(("radixserve", "torch", "transformers", "tokenizers", "gguf"))
    out: dict[str, Any] = {
        "benchmark": "hf_baseline", "command": command, "method": args.method,
        "method_detail": METHOD_DETAIL[args.method], "config": workload_dict(cfg), "model": model_name,
        "model_path": args.model_path, "load_format": args.load_format, "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else machine["cpu"], "dtype": args.dtype,
        "torch_threads": torch.get_num_threads(), "sampling": "greedy (temperature 0, as bench_serving sends)",
        "load_s": round(load_s, 3), "warmup_s": warmup_s,
        "load_average_1m_before": load_before, "load_average_1m_after": _load_average(),
        "machine": machine,
    }
    out.update(info)
    out.update(summarize(inputs, outputs, latency, duration))
    if tokenizer is not None:
        out["sample_outputs"] = [tokenizer.decode(o, skip_special_tokens=False) for o in outputs[:2]]
    out["output_ids_first"] = outputs[:8]  # to hold against another engine's greedy output on the same requests
    return out


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse `argv`, run, write the JSON unless --no-save; returns the result dict."""
    args = build_parser().parse_args(argv)
    command = " ".join(["benchmarks/bench_hf_baseline.py", *(sys.argv[1:] if argv is None else argv)])
    result = run_baseline(args, command)
    if not args.no_save:
        result["output_file"] = str(write_results("hf_baseline", result, args.output))
    return result


def _print_summary(r: dict[str, Any]) -> None:
    print(f"method {r['method']}: {r['method_detail']}")
    print(f"model {r['model']} on {r['device']} ({r['device_name']}, {r['torch_threads']} threads, {r['dtype']})")
    print(f"completed {r['completed']} requests in {r['duration_s']} s "
          f"({r['prompt_tokens_total']} prompt + {r['completion_tokens_total']} output tokens)")
    print(f"requests/s {r['request_throughput']}, output tokens/s {r['output_token_throughput']}, "
          f"total tokens/s {r['total_token_throughput']}")
    v = r["e2e_latency_ms"]
    print(f"{'e2e_latency_ms':15s} mean {v['mean']}  p50 {v['p50']}  p90 {v['p90']}  p99 {v['p99']}")
    if r.get("output_file"):
        print(f"wrote {r['output_file']}")


def main(argv: Sequence[str] | None = None) -> int:
    _print_summary(run(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
