"""ServerArgs: every knob of the engine and server, validated in one place.

Every field becomes a `radixserve serve` flag (see `add_cli_args`), so the help text lives
next to the default. Validation raises `ServerArgsError` naming the field.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

SCHEDULE_POLICIES = ("lpm", "fcfs")
SAMPLING_DEFAULTS = ("model", "openai")
QUANTIZATIONS = ("fp8", "int4")
KV_CACHE_DTYPES = ("auto", "fp8_e4m3")
LOAD_FORMATS = ("auto", "gguf", "safetensors", "dummy")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
ATTENTION_BACKENDS = ("auto", "torch", "triton")
OVERLAP_MODES = ("auto", "on", "off")
GRAMMAR_BACKENDS = ("xgrammar", "llguidance", "none")
API_KEY_ENV = "RADIXSERVE_API_KEY"


class ServerArgsError(ValueError):
    """A ServerArgs field has an invalid value; the message names the field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"invalid value for {field_name!r}: {message}")
        self.field_name = field_name


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


def _server_help(text: str, **extra: Any) -> dict[str, Any]:
    """Help of a flag that only the HTTP server uses (`radixserve generate` does not list it)."""
    return _help(text, server_only=True, **extra)


@dataclass
class ServerArgs:
    # Model
    model_path: str | None = field(default=None, metadata=_help(
        "GGUF file, HF directory (config.json + *.safetensors + tokenizer files), hf://org/name[@revision] or "
        "s3://bucket/prefix (downloaded first into $RADIXSERVE_MODEL_CACHE, default ~/.cache/radixserve/models; "
        "HF_TOKEN, HF_ENDPOINT, AWS_* apply), or, with --load-format dummy, a named shape (e.g. llama-3-8b). "
        "Empty: the embedded SmolLM2-135M-Instruct."))
    tokenizer_path: str | None = field(default=None, metadata=_help(
        "Directory or GGUF file to take the tokenizer from (default: the model's)."))
    served_model_name: str | None = field(default=None, metadata=_server_help(
        "Model name reported by /v1/models and expected in requests (default: derived from the model path)."))
    load_format: str = field(default="auto", metadata=_help(
        "How to load weights: auto (by path), gguf, safetensors, or dummy (random weights of the model's shape).",
        choices=LOAD_FORMATS))
    context_length: int | None = field(default=None, metadata=_help(
        "Maximum tokens per request, prompt plus output (default: the model's own limit)."))
    dtype: str = field(default="auto", metadata=_help(
        "Weight and activation dtype: auto means float32 on CPU and bfloat16 on CUDA.", choices=DTYPES))
    device: str = field(default="auto", metadata=_help(
        "Device to run on: auto picks cuda when available.", choices=DEVICES))
    gguf_dequantize: bool = field(default=False, metadata=_help(
        "GGUF: expand every quantized tensor to --dtype (the reference path) instead of keeping the linear "
        "weights and the LM head packed (Q4_0/Q4_1/Q4_K/Q5_0/Q5_1/Q5_K/Q6_K/Q8_0; CPU: torch's int4 op, CUDA: "
        "a Triton W4A16 kernel; docs/quantization.md)."))
    quantization: str | None = field(default=None, metadata=_help(
        "fp8: quantize the linear layers' float weights to FP8 (e4m3, one scale per output channel) at load "
        "time and run them as W8A8 with per-token activation scales. int4: 4-bit weight-only, a scale and "
        "offset per 32 input columns, run by the packed kernels GGUF uses (CPU int4 op, CUDA Triton). FP8 "
        "checkpoints (compressed-tensors, fbgemm_fp8, fp8) are detected from their config.json without this "
        "flag (docs/quantization.md).",
        choices=QUANTIZATIONS))
    kv_cache_dtype: str = field(default="auto", metadata=_help(
        "KV cache element type: auto (the model's dtype) or fp8_e4m3 (one byte per element, twice the tokens "
        "in the same memory; K and V stored divided by a scale, 1.0 unless set, and clamped to +-448). "
        "Lossy: about 3 significant bits per element (docs/quantization.md).", choices=KV_CACHE_DTYPES))
    kv_cache_k_scale: float = field(default=1.0, metadata=_help(
        "With --kv-cache-dtype fp8_e4m3: K is stored as K / scale (a per-model calibration; 1.0 as vLLM's default)."))
    kv_cache_v_scale: float = field(default=1.0, metadata=_help(
        "With --kv-cache-dtype fp8_e4m3: V is stored as V / scale."))
    # HTTP
    host: str = field(default="127.0.0.1", metadata=_server_help("Address the HTTP server binds."))
    port: int = field(default=30000, metadata=_server_help("Port the HTTP server binds."))
    grpc_port: int | None = field(default=None, metadata=_server_help(
        "Also serve the gRPC API (radixserve/grpc/radixserve.proto: Generate, Abort, HealthCheck, GetModelInfo, "
        "GetServerInfo; docs/grpc.md) on this port of --host, beside HTTP; 0 picks a free port, which the log "
        "and /get_server_info's grpc_port show (default: no gRPC server)."))
    api_key: str | None = field(default=None, metadata=_server_help(
        f"Require 'Authorization: Bearer KEY' on API routes (default: the {API_KEY_ENV} environment variable)."))
    # Parallelism
    tensor_parallel_size: int = field(default=1, metadata=_help(
        "Tensor-parallel ranks (one process per rank).", flags=("--tp", "--tensor-parallel-size")))
    pipeline_parallel_size: int = field(default=1, metadata=_help(
        "Pipeline-parallel stages: the layers split evenly over this many stages, each its own "
        "tp ranks (tp x pp processes and GPUs).", flags=("--pp", "--pipeline-parallel-size")))
    nnodes: int = field(default=1, metadata=_server_help(
        "Machines (or pods) the tp x pp ranks span; each node runs tp x pp / nnodes of them "
        "(docs/parallelism.md, 'Several nodes')."))
    node_rank: int = field(default=0, metadata=_server_help(
        "This node's index in [0, nnodes): node 0 runs the HTTP server and world rank 0, node R runs "
        "ranks [R x local, (R + 1) x local) and no HTTP server."))
    dist_init_addr: str | None = field(default=None, metadata=_server_help(
        "HOST:PORT of node 0 where the ranks meet (a TCP store node 0 listens on); required with "
        "--nnodes > 1. One node: a file store in the server's private directory, no port."))
    dist_timeout: float = field(default=600.0, metadata=_server_help(
        "With --nnodes > 1: seconds a rank waits for its peers in one collective before it gives up and the "
        "server exits non-zero, for a node that vanished without closing its connections (a peer process that "
        "exits is noticed at once). Joining at start-up waits up to 30 minutes, or this if longer."))
    # Memory
    mem_fraction_static: float = field(default=0.88, metadata=_help(
        "Fraction of GPU memory for weights plus the KV pool (GPU only)."))
    max_total_tokens: int | None = field(default=None, metadata=_help(
        "KV pool size in tokens (overrides the memory-based sizing)."))
    kv_cache_budget_gb: float | None = field(default=None, metadata=_help(
        "CPU: bytes for the KV pool in GiB (default: min(2 GiB, 20%% of available memory))."))
    max_running_requests: int | None = field(default=None, metadata=_help(
        "Most requests decoded together (default: derived from the KV pool size)."))
    max_queued_requests: int | None = field(default=None, metadata=_server_help(
        "Most requests waiting beyond the free running slots (max_running_requests minus those running); "
        "more are refused with HTTP 429 and Retry-After (default: max(2 x max_running_requests, "
        "KV pool tokens / 256), see docs/server.md)."))
    # Scheduling
    schedule_policy: str = field(default="lpm", metadata=_help(
        "Waiting-queue order: lpm (longest cached prefix first) or fcfs.", choices=SCHEDULE_POLICIES))
    chunked_prefill_size: int = field(default=8192, metadata=_help(
        "Longest prefill chunk in tokens; longer prompts are prefilled in pieces (-1 disables chunking)."))
    max_prefill_tokens: int = field(default=16384, metadata=_help(
        "Token budget of one prefill batch."))
    disable_radix_cache: bool = field(default=False, metadata=_help(
        "Do not reuse KV across requests (every request prefills its whole prompt)."))
    attention_backend: str = field(default="auto", metadata=_help(
        "Attention implementation: torch (reference, any device) or triton (CUDA); auto picks triton on CUDA.",
        choices=ATTENTION_BACKENDS))
    disable_cuda_graph: bool = field(default=False, metadata=_help(
        "Do not capture CUDA graphs for decode (CUDA only)."))
    enable_priority_scheduling: bool = field(default=False, metadata=_help(
        "Order the waiting queue by each request's `priority` field first (higher values first; equal "
        "priorities keep the --schedule-policy order). Off: `priority` is accepted and ignored."))
    enable_mixed_chunk: bool = field(default=False, metadata=_help(
        "Run the running requests' decode step inside each prefill batch (SGLang's mixed chunked "
        "prefill): decodes advance while prompts prefill, so a token waits at most one prefill chunk; "
        "pair it with a smaller --chunked-prefill-size to bound inter-token latency. Also faster offline: "
        "the decode rows ride in the prefill's large GEMMs (8B shape on one H200, 1000 prompts at once, "
        "default KV pool: 1.03x the output tok/s without it, same call; docs/gpu.md). Off by default: at saturation every "
        "running request then waits out a whole prefill chunk per token."))
    disable_custom_all_reduce: bool = field(default=False, metadata=_help(
        "Tensor parallelism on CUDA: send every all-reduce through NCCL instead of the peer-memory "
        "one-shot/two-shot kernels used for small messages."))
    overlap_schedule: str = field(default="auto", metadata=_help(
        "Launch the next decode step before reading back the current one's tokens, so scheduling "
        "runs while the GPU works (SGLang's overlap scheduler): auto = on for CUDA, off on CPU.",
        choices=OVERLAP_MODES))
    cuda_graph_max_bs: int = field(default=512, metadata=_help(
        "Largest decode batch captured as a CUDA graph; larger batches run eagerly, which on one H200 "
        "cost a running batch of ~320 8B-shaped requests ~4 ms a step (docs/gpu.md, 'Throughput')."))
    random_seed: int | None = field(default=None, metadata=_help(
        "Seed for sampling of requests that carry no seed of their own."))
    sampling_defaults: str = field(default="model", metadata=_help(
        "Sampling settings for fields a request leaves unset: model = the model's generation config "
        "(generation_config.json, GGUF sampling metadata; the embedded model: temperature 0.2, top_p 0.9), "
        "openai = OpenAI's (temperature 1, top_p 1).", choices=SAMPLING_DEFAULTS))
    grammar_backend: str = field(default="xgrammar", metadata=_help(
        "Grammar-constrained decoding (json_schema, regex, ebnf sampling parameters; response_format): "
        "xgrammar, llguidance, or none (such requests are refused).", choices=GRAMMAR_BACKENDS))
    tool_call_parser: str | None = field(default=None, metadata=_server_help(
        "How tool calls are read from the output with tool_choice auto: llama3, hermes (qwen, qwen25), mistral, "
        "pythonic (default: detected from the chat template; none detected: the output stays content)."))
    reasoning_parser: str | None = field(default=None, metadata=_server_help(
        "Split the model's reasoning into reasoning_content: deepseek-r1 or qwen3 (default: no split)."))
    stream_interval: int = field(default=1, metadata=_server_help(
        "Send streamed output every N tokens."))
    # Operation
    log_level: str = field(default="info", metadata=_help("Log level: debug, info, warning, error."))
    log_requests: bool = field(default=False, metadata=_server_help(
        "Also log each request's body and response (truncated) with its access-log line."))
    stats_log_interval: float = field(default=10.0, metadata=_server_help(
        "Seconds between the scheduler's 'Prefill batch.' / 'Decode batch.' log lines while it works "
        "(0 turns them off)."))
    graceful_shutdown_timeout: float = field(default=30.0, metadata=_server_help(
        "On SIGTERM, seconds to let in-flight requests finish before exiting."))
    request_timeout: float | None = field(default=None, metadata=_server_help(
        "Seconds a request may take in all (queueing included); past it the request is aborted and answers "
        "504, or an error event if streaming (default: no limit)."))
    disable_cache_events: bool = field(default=False, metadata=_server_help(
        "Do not publish the RadixCache's contents and the load on GET /v1/cache/events and "
        "/v1/cache/snapshot (what a cache-aware router subscribes to; docs/router.md)."))

    def __post_init__(self) -> None:
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        self.validate()

    def validate(self) -> None:
        def check(ok: bool, name: str, message: str) -> None:
            if not ok:
                raise ServerArgsError(name, message)

        check(self.load_format in LOAD_FORMATS, "load_format", f"{self.load_format!r} is not one of {LOAD_FORMATS}")
        check(self.dtype in DTYPES, "dtype", f"{self.dtype!r} is not one of {DTYPES}")
        check(self.kv_cache_dtype in KV_CACHE_DTYPES, "kv_cache_dtype",
              f"{self.kv_cache_dtype!r} is not one of {KV_CACHE_DTYPES}")
        for name in ("kv_cache_k_scale", "kv_cache_v_scale"):
            value = getattr(self, name)
            check(isinstance(value, (int, float)) and 0 < value < float("inf"), name,
                  f"must be a positive finite number, got {value!r}")
            check(value == 1.0 or self.kv_cache_dtype == "fp8_e4m3", name, "only with --kv-cache-dtype fp8_e4m3")
        check(self.device in DEVICES, "device", f"{self.device!r} is not one of {DEVICES}")
        check(self.overlap_schedule in OVERLAP_MODES, "overlap_schedule",
              f"{self.overlap_schedule!r} is not one of {OVERLAP_MODES}")
        check(self.sampling_defaults in SAMPLING_DEFAULTS, "sampling_defaults",
              f"{self.sampling_defaults!r} is not one of {SAMPLING_DEFAULTS}")
        check(self.grammar_backend in GRAMMAR_BACKENDS, "grammar_backend",
              f"{self.grammar_backend!r} is not one of {GRAMMAR_BACKENDS}")
        _check_parser(self.tool_call_parser, "tool_call_parser")
        _check_parser(self.reasoning_parser, "reasoning_parser")
        check(self.schedule_policy in SCHEDULE_POLICIES, "schedule_policy",
              f"{self.schedule_policy!r} is not one of {SCHEDULE_POLICIES}")
        check(self.attention_backend in ATTENTION_BACKENDS, "attention_backend",
              f"{self.attention_backend!r} is not one of {ATTENTION_BACKENDS}")
        check(0 < self.port < 65536, "port", f"{self.port} is not a TCP port")
        check(self.grpc_port is None or 0 <= self.grpc_port < 65536, "grpc_port",
              f"{self.grpc_port} is not a TCP port (or 0 for any free one)")
        check(self.tensor_parallel_size >= 1, "tensor_parallel_size", "must be >= 1")
        check(self.pipeline_parallel_size >= 1, "pipeline_parallel_size", "must be >= 1")
        _check_nodes(self)
        check(0.0 < self.mem_fraction_static < 1.0, "mem_fraction_static", "must be in (0, 1)")
        check(self.context_length is None or self.context_length > 1, "context_length", "must be > 1")
        check(self.max_total_tokens is None or self.max_total_tokens >= 16, "max_total_tokens", "must be >= 16")
        check(self.kv_cache_budget_gb is None or self.kv_cache_budget_gb > 0, "kv_cache_budget_gb", "must be > 0")
        check(self.max_running_requests is None or self.max_running_requests >= 1,
              "max_running_requests", "must be >= 1")
        check(self.max_queued_requests is None or self.max_queued_requests >= 1,
              "max_queued_requests", "must be >= 1")
        check(self.chunked_prefill_size == -1 or self.chunked_prefill_size >= 1,
              "chunked_prefill_size", "must be >= 1, or -1 to disable chunking")
        check(self.max_prefill_tokens >= 1, "max_prefill_tokens", "must be >= 1")
        check(self.stream_interval >= 1, "stream_interval", "must be >= 1")
        check(self.cuda_graph_max_bs >= 1, "cuda_graph_max_bs", "must be >= 1")
        check(self.request_timeout is None or self.request_timeout > 0, "request_timeout", "must be > 0")
        check(self.graceful_shutdown_timeout >= 0, "graceful_shutdown_timeout", "must be >= 0")
        check(self.stats_log_interval >= 0, "stats_log_interval", "must be >= 0")
        check(self.log_level.lower() in ("debug", "info", "warning", "error", "critical"),
              "log_level", f"{self.log_level!r} is not a log level")

    # ---- CLI -------------------------------------------------------------------------------
    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser, offline: bool = False) -> None:
        """One flag per field; `offline` leaves out the flags only the HTTP server uses. Defaults
        are shown once, and not at all when None (the help text says what None means)."""
        for f in dataclasses.fields(ServerArgs):
            meta = dict(f.metadata)
            if meta.pop("server_only", False) and offline:
                continue
            flags = meta.pop("flags", ("--" + f.name.replace("_", "-"),))
            kwargs: dict[str, Any] = {"dest": f.name, "default": f.default, **meta}
            if f.type in ("bool", bool):
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs["type"] = _field_type(f)
                kwargs["metavar"] = f.name.upper() if "choices" not in kwargs else None
            if kwargs.get("help") and f.default is not None and f.type not in ("bool", bool):
                kwargs["help"] += " (default: %(default)s)"
            parser.add_argument(*flags, **kwargs)

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> ServerArgs:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})

    def replace(self, **changes: Any) -> ServerArgs:
        return dataclasses.replace(self, **changes)

    @property
    def ranks_per_node(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size // self.nnodes

    @property
    def local_ranks(self) -> range:
        """The world ranks this node runs."""
        return range(self.node_rank * self.ranks_per_node, (self.node_rank + 1) * self.ranks_per_node)


def _check_nodes(args: ServerArgs) -> None:
    """--nnodes / --node-rank / --dist-init-addr: the world splits evenly over the nodes."""
    world = args.tensor_parallel_size * args.pipeline_parallel_size
    if args.nnodes < 1:
        raise ServerArgsError("nnodes", "must be >= 1")
    if world % args.nnodes != 0:
        raise ServerArgsError("nnodes", f"tp x pp = {world} ranks do not split evenly over {args.nnodes} nodes")
    if not 0 <= args.node_rank < args.nnodes:
        raise ServerArgsError("node_rank", f"{args.node_rank} is not in [0, {args.nnodes})")
    if args.dist_timeout <= 0:
        raise ServerArgsError("dist_timeout", "must be > 0")
    if args.dist_init_addr is None:
        if args.nnodes > 1:
            raise ServerArgsError("dist_init_addr", "is required with --nnodes > 1 (HOST:PORT of node 0)")
        return
    host, _, port = args.dist_init_addr.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ServerArgsError("dist_init_addr", f"{args.dist_init_addr!r} is not HOST:PORT")


def _check_parser(name: str | None, field_name: str) -> None:
    """--tool-call-parser / --reasoning-parser: a name radixserve/parsers knows."""
    if name is None:
        return
    from radixserve.parsers.reasoning import get_reasoning_parser
    from radixserve.parsers.tool_calls import get_tool_call_parser

    try:
        (get_tool_call_parser if field_name == "tool_call_parser" else get_reasoning_parser)(name)
    except ValueError as e:
        raise ServerArgsError(field_name, str(e)) from None


def _field_type(f: dataclasses.Field[Any]) -> type:
    text = str(f.type)
    if "int" in text:
        return int
    if "float" in text:
        return float
    return str
