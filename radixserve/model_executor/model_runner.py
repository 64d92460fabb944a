"""ModelRunner: loads the model, sizes and owns the KV pools, runs a step and samples it.

`forward(batch) -> NextTokens` is the one path from a scheduled batch to sampled ids, for
prefill and decode, with and without the overlap schedule, on every pipeline stage.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm.auto import tqdm

from radixserve.attention.base import AttentionBackend
from radixserve.attention.torch_backend import TorchAttnBackend
from radixserve.configs.model_config import ModelConfig
from radixserve.distributed.parallel_state import NO_PIPELINE, SINGLE, ParallelGroup, PipelineGroup
from radixserve.layers.quantization.int4_cpu import int4_cpu_available
from radixserve.mem_cache.memory_pool import ReqToTokenPool, TokenToKVPool
from radixserve.model_executor.cpu_decode import CpuDecodeStep
from radixserve.model_executor.cuda_graph_runner import CudaGraphRunner
from radixserve.model_executor.forward_batch import ForwardBatch
from radixserve.model_loader.packed_load import load_weights_packed
from radixserve.model_loader.source import ModelSource
from radixserve.models.llama import LlamaForCausalLM
from radixserve.models.registry import MODEL_CLASSES
from radixserve.sampling.input_logprobs import InputLogprobPlan, compute_input_logprobs
from radixserve.sampling.sampler import SamplingBatchInfo, sample
from radixserve.server_args import ServerArgs

logger = logging.getLogger(__name__)

GiB = 1 << 30
# Requests per ReqToTokenPool are capped: each row costs context_len * 8 bytes.
MAX_RUNNING_REQUESTS_CAP = 1024


class KVCacheTooSmallError(RuntimeError):
    pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA device is available")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


@dataclass
class PoolSizes:
    max_total_tokens: int
    max_running_requests: int
    context_len: int


class StepBatch(Protocol):
    """What a step needs of the scheduler's batch (managers.schedule_batch.ScheduleBatch)."""

    input_logprob_plan: InputLogprobPlan | None  # prompt tokens to score (prefill only)

    def get_forward_batch(self, attn_backend: AttentionBackend) -> ForwardBatch: ...
    def sampling_info(self, device: torch.device) -> SamplingBatchInfo: ...
    def record_input_logprobs(self, values: list[float]) -> None: ...


@dataclass
class NextTokens:
    """One step's sampled ids: on the device at once (the overlap schedule feeds them to the
    next step before they reach the host), on the host once `ready` has passed."""

    device_ids: torch.Tensor  # [bs] int64
    host_ids: torch.Tensor  # pinned host copy, written asynchronously on CUDA
    ready: torch.cuda.Event | None  # recorded after the copy (CUDA)
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None

    def tolist(self) -> list[int]:
        if self.ready is not None:
            self.ready.synchronize()
        ids: list[int] = self.host_ids.tolist()
        return ids


class ModelRunner:
    def __init__(self, server_args: ServerArgs, source: ModelSource, tp: ParallelGroup = SINGLE,
                 pp: PipelineGroup = NO_PIPELINE, world: ParallelGroup | None = None) -> None:
        self.server_args = server_args
        self.source = source
        self.config: ModelConfig = source.config
        self.pp = pp
        self.device = resolve_device(server_args.device)
        self.dtype = resolve_dtype(server_args.dtype, self.device)
        self.kv_dtype = torch.float8_e4m3fn if server_args.kv_cache_dtype == "fp8_e4m3" else self.dtype
        if tp.size > 1 and self.device.type == "cuda" and not server_args.disable_custom_all_reduce:
            from radixserve.distributed.device_comm import DeviceAllReduce

            tp = dataclasses.replace(tp, device_comm=DeviceAllReduce(tp.group, self.device, self.dtype))
        self.tp = tp
        self.world = world if world is not None else tp  # without pipeline stages the TP group is the world
        self.model = self._load_model()
        self.sizes = self._pool_sizes()
        self.req_to_token_pool = ReqToTokenPool(
            self.sizes.max_running_requests + 1, self.sizes.context_len, self.device)
        self.token_to_kv_pool = TokenToKVPool(
            self.sizes.max_total_tokens, self.kv_dtype, self.model.num_local_layers,
            self.model.num_kv_heads_per_rank, self.config.head_dim, self.device,
            server_args.kv_cache_k_scale, server_args.kv_cache_v_scale)
        if self.token_to_kv_pool.is_fp8:
            self._apply_kv_scales()
        self.attn_backend: AttentionBackend = self._attention_backend()
        self.graph_runner: CudaGraphRunner | None = None
        if self.device.type == "cuda" and not server_args.disable_cuda_graph and pp.size > 1:
            # Stages exchange hidden states between their graphs' inputs and outputs; not captured yet.
            logger.info("CUDA graphs are not used with pipeline parallelism; decoding eagerly")
        elif self.device.type == "cuda" and not server_args.disable_cuda_graph:
            from radixserve.attention.triton_backend import TritonAttnBackend

            if isinstance(self.attn_backend, TritonAttnBackend):
                max_bs = min(server_args.cuda_graph_max_bs, self.sizes.max_running_requests)
                self.graph_runner = CudaGraphRunner(self, self.attn_backend, max_bs)
            else:
                logger.info("CUDA graphs need the triton attention backend; decoding eagerly")
        self.cpu_decode: CpuDecodeStep | None = None
        if self.device.type == "cpu":
            self.cpu_decode = CpuDecodeStep.build(self.model, self.token_to_kv_pool, self.req_to_token_pool)
        logger.info("KV pool: %d tokens, %d running requests max, context %d",
                    self.sizes.max_total_tokens, self.sizes.max_running_requests, self.sizes.context_len)

    # ---- loading -----------------------------------------------------------------------------
    def _load_model(self) -> LlamaForCausalLM:
        cls = MODEL_CLASSES[self.config.architecture]
        start = time.monotonic()
        prev = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device(self.device):
                model = cls(self.config, self.tp, self.pp)
        finally:
            torch.set_default_dtype(prev)
        if self.source.kind == "dummy":
            init_dummy_weights(model, self.device)
        else:
            total = self.source.num_weight_files or None
            pack = self._pack_quantized()
            weights = tqdm(self.source.iter_weights(pack_quantized=pack), total=total, desc="Loading weights",
                           unit="tensor", disable=self.world.rank != 0, leave=False)
            loaded = load_weights_packed(model, weights) if pack else model.load_weights(weights)
            missing = sorted(model.expected_params() - loaded)
            if missing:
                raise ValueError(f"{self.source.path}: checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")
        if self.server_args.quantization == "fp8":
            from radixserve.layers.quantization.online import quantize_linears_fp8

            n = quantize_linears_fp8(model)
            logger.info("--quantization fp8: %d linear and expert layers quantized to FP8 at load", n)
        elif self.server_args.quantization == "int4":
            from radixserve.layers.quantization.online import quantize_linears_int4

            n = quantize_linears_int4(model)
            logger.info("--quantization int4: %d linear layers quantized to 4-bit groups of 32 at load", n)
        model.eval()
        logger.info("loaded %s (%s) in %.1fs on %s as %s", self.source.name, self.config.architecture,
                    time.monotonic() - start, self.device, self.dtype)
        return model

    def _pack_quantized(self) -> bool:
        """FP8 checkpoints stay FP8 (W8A8 on CUDA, the float32 reference on CPU). GGUF's quantized linear
        weights stay packed (CPU: torch's int4 op; CUDA: the Triton W4A16 kernel) unless told not to."""
        if self.source.fp8 is not None:
            logger.info("%s checkpoint: linear weights stay FP8%s", self.source.fp8.describe(),
                        "; its static input scales are ignored (dynamic per-token activations)"
                        if self.source.fp8.static_activations else "")
            return True
        if self.source.kind != "gguf":
            return False
        if self.server_args.gguf_dequantize:
            logger.info("GGUF: --gguf-dequantize: every quantized tensor is expanded to %s", self.dtype)
            return False
        if self.device.type == "cuda":
            return True
        if self.device.type != "cpu":
            logger.info("GGUF on %s: quantized tensors are expanded to %s (packed kernels: CPU and CUDA)",
                        self.device.type, self.dtype)
            return False
        if not int4_cpu_available():
            logger.info("GGUF: torch %s lacks the CPU int4 ops; quantized tensors are expanded to %s",
                        torch.__version__, self.dtype)
            return False
        return True

    def _attention_backend(self) -> AttentionBackend:
        name = self.server_args.attention_backend
        if name == "auto":
            name = "triton" if self.device.type == "cuda" else "torch"
        if name == "triton":
            if self.device.type != "cuda":
                raise ValueError("invalid value for 'attention_backend': triton needs --device cuda")
            from radixserve.attention.triton_backend import TritonAttnBackend

            heads = self.config.num_attention_heads // self.tp.size
            return TritonAttnBackend(heads, self.model.num_kv_heads_per_rank, self.config.head_dim, self.device,
                                     self.sizes.context_len)
        return TorchAttnBackend()

    def _apply_kv_scales(self) -> None:
        """An FP8 KV cache takes the checkpoint's per-layer K/V scales where it publishes them
        (kv_scales.py); layers without keep --kv-cache-k-scale / --kv-cache-v-scale."""
        published = self.source.kv_cache_scales()  # {} for a source that cannot carry any (GGUF, dummy)
        if not published:
            logger.info("FP8 KV cache: the checkpoint has no KV scales; using k_scale %s, v_scale %s for every layer",
                        self.server_args.kv_cache_k_scale, self.server_args.kv_cache_v_scale)
            return
        start = getattr(getattr(self.model, "model", None), "start_layer", 0)  # pipeline stages hold a slice
        used = 0
        for local in range(self.model.num_local_layers):
            scales = published.get(start + local)
            if scales is not None:
                self.token_to_kv_pool.set_scales(local, *scales)
                used += 1
        logger.info("FP8 KV cache: K/V scales of %d of %d layers from the checkpoint", used,
                    self.model.num_local_layers)

    # ---- sizing ------------------------------------------------------------------------------
    def _pool_sizes(self) -> PoolSizes:
        sa = self.server_args
        per_token = TokenToKVPool.bytes_per_token(
            self.model.num_local_layers, self.model.num_kv_heads_per_rank,
            self.config.head_dim, self.kv_dtype)
        if sa.max_total_tokens is not None:
            tokens = sa.max_total_tokens
        elif self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            budget = free - total * (1 - sa.mem_fraction_static)
            tokens = int(budget // per_token)
        else:
            budget_bytes = (sa.kv_cache_budget_gb * GiB) if sa.kv_cache_budget_gb else min(2 * GiB, _available() * 0.2)
            tokens = int(budget_bytes // per_token)
        context_len = sa.context_length or self.config.max_position_embeddings
        if context_len > self.config.max_position_embeddings:
            raise ValueError(f"context_length {context_len} exceeds the model's "
                             f"max_position_embeddings {self.config.max_position_embeddings}")
        # Every rank of every stage schedules the same batches: one pool size for all.
        tokens = self.world.all_reduce_min(tokens)
        if tokens < 16:
            raise KVCacheTooSmallError(
                f"the KV pool would hold only {tokens} tokens ({per_token} bytes each); "
                "raise mem_fraction_static / kv_cache_budget_gb or use a smaller model")
        running = sa.max_running_requests or max(16, min(MAX_RUNNING_REQUESTS_CAP, tokens // 64))
        return PoolSizes(tokens, running, context_len)

    # ---- running -----------------------------------------------------------------------------
    @property
    def supports_overlap(self) -> bool:
        """Pipeline stages exchange sampled ids synchronously: no overlap schedule there."""
        return self.pp.size == 1

    @torch.inference_mode()
    def forward(self, batch: StepBatch) -> NextTokens:
        """Run the model on the batch and sample each request's next token."""
        fb = batch.get_forward_batch(self.attn_backend)
        plan = batch.input_logprob_plan
        logits, input_logprobs = self._logits(fb, plan)
        out = None if logits is None else sample(logits, batch.sampling_info(self.device))
        if self.pp.size > 1:
            # Every stage gets the last stage's samples now, so all ranks stay in step.
            sent = None if out is None else (out.next_token_ids.tolist(), out.logprobs, out.top_logprobs,
                                             input_logprobs)
            host_ids, logprobs, top, input_logprobs = self.pp.broadcast_from_last(sent)
            if plan is not None and input_logprobs is not None:
                batch.record_input_logprobs(input_logprobs)
            ids = torch.tensor(host_ids, dtype=torch.int64)
            return NextTokens(ids.to(self.device), ids, None, logprobs, top)
        assert out is not None
        if plan is not None and input_logprobs is not None:
            batch.record_input_logprobs(input_logprobs)
        ids = out.next_token_ids
        if not ids.is_cuda:
            return NextTokens(ids, ids, None, out.logprobs, out.top_logprobs)
        host = torch.empty(ids.shape, dtype=ids.dtype, pin_memory=True)
        host.copy_(ids, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return NextTokens(ids, host, ready, out.logprobs, out.top_logprobs)

    def _logits(self, fb: ForwardBatch, plan: InputLogprobPlan | None = None
                ) -> tuple[torch.Tensor | None, list[float] | None]:
        """Logits of each request's last token, and the planned prompt logprobs; (None, None) on
        pipeline stages other than the last."""
        if self.graph_runner is not None and self.graph_runner.can_run(fb):
            return self.graph_runner.replay(fb), None
        if self.cpu_decode is not None and plan is None and self.cpu_decode.can_run(fb):
            return self.cpu_decode.logits(fb), None
        self.attn_backend.init_forward_metadata(fb)
        if self.pp.size == 1 and plan is None:
            return self.model(fb.input_ids, fb.positions, fb), None
        hidden = residual = None
        if not self.pp.is_first:
            shape = (fb.input_ids.shape[0], self.config.hidden_size)
            hidden, residual = self.pp.recv_prev([shape, shape], self.dtype, self.device)
        hidden, residual = self.model.forward_stage(fb.input_ids, fb.positions, fb, hidden, residual)
        if not self.pp.is_last:
            assert residual is not None
            self.pp.send_next([hidden, residual])
            return None, None
        # The prompt rows' hidden states are at hand only here: score them before they are dropped.
        input_logprobs = None if plan is None else compute_input_logprobs(hidden, plan, self._lm_head)
        return self.model.compute_logits(hidden, fb), input_logprobs

    def _lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head.compute_logits(hidden)  # type: ignore[operator,no-any-return]


def init_dummy_weights(model: torch.nn.Module, device: torch.device) -> None:
    """--load-format dummy: norms 1, everything else small seeded uniform values."""
    # Seeded on the model's device: drawing 8B numbers on the CPU would take minutes.
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                # Small uniform weights keep activations finite through many layers.
                p.uniform_(-0.02, 0.02, generator=gen)


def _available() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 8.0 * GiB
