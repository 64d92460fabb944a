"""Llama-family decoder (Llama 2/3, Mistral, SmolLM2; Qwen2 qkv bias; Qwen3 q/k norm).

Built from TP-aware layers; `load_weights` maps HF checkpoint names onto the fused parameters.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
from torch import nn

from radixserve.configs.model_config import ModelConfig
from radixserve.distributed.parallel_state import NO_PIPELINE, SINGLE, ParallelGroup, PipelineGroup
from radixserve.layers.layernorm import RMSNorm
from radixserve.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from radixserve.layers.radix_attention import RadixAttention
from radixserve.layers.rotary_embedding import RotaryEmbedding
from radixserve.layers.vocab_embedding import ParallelLMHead, VocabParallelEmbedding
from radixserve.model_executor.forward_batch import ForwardBatch


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig, tp: ParallelGroup, intermediate_size: int | None = None,
                 reduce_results: bool = True) -> None:
        super().__init__()
        # `intermediate_size` and `reduce_results`: MoE models reuse this for their dense layers and
        # shared experts, whose partial sums join the routed experts' before the one all-reduce.
        inter = config.intermediate_size if intermediate_size is None else intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(config.hidden_size, [inter] * 2, bias=False, tp=tp)
        self.down_proj = RowParallelLinear(inter, config.hidden_size, bias=False, tp=tp,
                                           reduce_results=reduce_results)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.gate_up_proj.silu_and_mul(x))  # type: ignore[no-any-return]


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int, rotary: RotaryEmbedding, tp: ParallelGroup) -> None:
        super().__init__()
        d = config.head_dim
        self.qkv_proj = QKVParallelLinear(config.hidden_size, d, config.num_attention_heads,
                                          config.num_key_value_heads, bias=config.attention_bias, tp=tp)
        self.o_proj = RowParallelLinear(config.num_attention_heads * d, config.hidden_size, bias=False, tp=tp)
        self.num_heads = self.qkv_proj.num_heads
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        self.head_dim = d
        self.q_norm = RMSNorm(d, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(d, config.rms_norm_eps) if config.qk_norm else None
        self.rotary = rotary
        self.attn = RadixAttention(layer_id, self.num_heads, self.num_kv_heads, d, d**-0.5)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, fb: ForwardBatch) -> torch.Tensor:
        q, k, v = self.qkv_proj.forward_split(x)
        q = q.reshape(-1, self.num_heads, self.head_dim)
        k = k.reshape(-1, self.num_kv_heads, self.head_dim)
        v = v.reshape(-1, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm.plain(q), self.k_norm.plain(k)
        o = self.attn(q, k, v, positions, self.rotary, fb)
        return self.o_proj(o.reshape(-1, self.num_heads * self.head_dim))  # type: ignore[no-any-return]


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int, rotary: RotaryEmbedding, tp: ParallelGroup,
                 mlp: nn.Module | None = None) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_id, rotary, tp)
        self.mlp = mlp if mlp is not None else LlamaMLP(config, tp)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None,
                fb: ForwardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        x, residual = self.input_layernorm(hidden, residual)
        x = self.self_attn(positions, x, fb)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class OtherStage(nn.Module):
    """A placeholder for a module that lives in another pipeline stage: it keeps layer indices
    (and so checkpoint names) global, and has no parameters."""

    def forward(self, *args: object) -> None:
        raise RuntimeError("this module belongs to another pipeline stage")


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, tp: ParallelGroup, pp: PipelineGroup = NO_PIPELINE) -> None:
        super().__init__()
        self.start_layer, self.end_layer = pp.layer_range(config.num_hidden_layers)
        self.pp = pp
        self.tp_size = tp.size
        # The last stage needs the embedding too when the head is tied to it.
        has_embed = pp.is_first or (pp.is_last and config.tie_word_embeddings)
        self.embed_tokens: nn.Module = (VocabParallelEmbedding(config.vocab_size, config.hidden_size, tp)
                                        if has_embed else OtherStage())
        # One rotary table shared by all layers.
        rotary = RotaryEmbedding(config.head_dim, config.max_position_embeddings, config.rope_theta,
                                 config.rope_scaling)
        # KV-pool layer ids are local to the stage: its pool holds only its own layers; the MLP
        # is chosen by the global index (which layers are MoE is a property of the checkpoint).
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, i - self.start_layer, rotary, tp, self.make_mlp(config, i, tp))
            if self.start_layer <= i < self.end_layer else OtherStage() for i in range(config.num_hidden_layers))
        self.norm: nn.Module = RMSNorm(config.hidden_size, config.rms_norm_eps) if pp.is_last else OtherStage()
        self._one_row_ok: bool | None = None  # whether _forward_one_row covers these layers (decided once)

    @staticmethod
    def make_mlp(config: ModelConfig, layer: int, tp: ParallelGroup) -> nn.Module:
        """The MLP of global layer `layer`; subclasses (models/moe.py) put experts here."""
        return LlamaMLP(config, tp)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, fb: ForwardBatch,
                hidden: torch.Tensor | None = None,
                residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This stage's layers. The first stage embeds `input_ids`; later ones continue from the
        previous stage's (hidden, residual). The last stage returns (normed hidden, None)."""
        if self.pp.is_first:
            hidden = self.embed_tokens(input_ids)
        assert hidden is not None
        if residual is None and self._one_row_fusable(hidden, fb):
            return self._forward_one_row(positions, hidden, fb)
        for i in range(self.start_layer, self.end_layer):
            hidden, residual = self.layers[i](positions, hidden, residual, fb)
        if not self.pp.is_last:
            return hidden, residual
        out, _ = self.norm(hidden, residual)
        return out, None

    def _one_row_fusable(self, hidden: torch.Tensor, fb: ForwardBatch) -> bool:
        """Batch-1 decode on CUDA runs `_forward_one_row` (kernels/gemv.py): six kernels per layer
        instead of ten (eight instead of twelve with tensor parallelism). Only for the plain dense
        float layers those kernels cover, in one pipeline stage. RADIXSERVE_ONE_ROW_FUSION=0 turns
        it off (one_row_enabled)."""
        if not (hidden.is_cuda and hidden.shape[0] == 1 and fb.forward_mode.is_decode()):
            return False
        if self._one_row_ok is None:
            self._one_row_ok = self._one_row_supported(hidden.dtype)
        pool = fb.token_to_kv_pool
        return self._one_row_ok and not pool.is_fp8 and pool.dtype == hidden.dtype and one_row_enabled()

    def _one_row_supported(self, dtype: torch.dtype) -> bool:
        from radixserve.kernels.gemv import fits

        if self.pp.size != 1 or dtype not in (torch.bfloat16, torch.float16):
            return False
        for i in range(self.start_layer, self.end_layer):
            layer = self.layers[i]
            if not isinstance(layer, LlamaDecoderLayer) or type(layer.mlp) is not LlamaMLP:
                return False
            attn, mlp = layer.self_attn, layer.mlp
            linears = (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
            if any(m.quant is not None or m.bias is not None for m in linears):
                return False
            if not (attn.o_proj.reduce_results and mlp.down_proj.reduce_results):
                return False  # another layer sums these partial products (MoE shared experts)
            if attn.q_norm is not None or attn.head_dim % 2:
                return False
            (qkv_n, qkv_k), (o_n, o_k), (gu_n, gu_k), (d_n, d_k) = (m.weight.shape for m in linears)
            if not (fits("rope", qkv_n, qkv_k, attn.head_dim) and fits("residual", o_n, o_k)
                    and fits("silu", gu_n, gu_k) and fits("residual", d_n, d_k)):
                return False
        return True

    def _forward_one_row(self, positions: torch.Tensor, hidden: torch.Tensor,
                         fb: ForwardBatch) -> tuple[torch.Tensor, None]:
        """The layers for one token. `x` is the residual stream (hidden + residual, as the unfused
        path's add_rmsnorm rounds it) and `part` the sums of squares of x that the product which wrote
        it left for the next RMSNorm (None where there are none, the embedding's output or a sum over
        TP ranks: the norm then computes its own from x)."""
        from radixserve.kernels.gemv import norm_gemv_rope, norm_gemv_silu

        x, part = hidden, None
        for i in range(self.start_layer, self.end_layer):
            layer = self.layers[i]
            assert isinstance(layer, LlamaDecoderLayer)
            attn, mlp = layer.self_attn, layer.mlp
            assert isinstance(mlp, LlamaMLP)
            ln1, ln2 = layer.input_layernorm, layer.post_attention_layernorm
            k_buf, v_buf = fb.token_to_kv_pool.get_kv_buffer(attn.attn.layer_id)
            q = norm_gemv_rope(x, part, ln1.weight, ln1.eps, attn.qkv_proj.weight, attn.num_heads, attn.num_kv_heads,
                               positions, attn.rotary.cos_cache, attn.rotary.sin_cache, k_buf, v_buf, fb.out_cache_loc)
            o = fb.attn_backend.forward_decode(q, attn.attn, fb)  # k and v of this token are in the pool
            x, part = _one_row_residual(o.reshape(1, -1), attn.o_proj, x)
            act = norm_gemv_silu(x, part, ln2.weight, ln2.eps, mlp.gate_up_proj.weight)
            x, part = _one_row_residual(act, mlp.down_proj, x)
        out, _ = self.norm(x, None)
        return out, None


def one_row_enabled() -> bool:
    """RADIXSERVE_ONE_ROW_FUSION: "0" off, otherwise on wherever the kernels fit, at every TP size.
    At TP>1 it was on only when asked ("1") until a rank's step was measured (2026-12-03,
    benchmarks/bench_tp_shard.py on one H200): 15-17 % shorter than the layer-by-layer path at the 8B
    shape's TP=2, 1-7 % at the 70B's, with the same all-reduces (docs/gpu.md)."""
    return os.environ.get("RADIXSERVE_ONE_ROW_FUSION", "auto") != "0"


def _one_row_residual(a: torch.Tensor, linear: RowParallelLinear, x: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x + a W^T for the o and down products of `_forward_one_row`. On one rank the product adds
    the residual itself and leaves the next norm its sums of squares. With TP each rank holds a
    partial product and rank 0 adds the residual into its own, so the all-reduce's sum is already
    the new residual (no add kernel after it: two a layer); the next norm sums the squares of x
    itself (the partials of rank 0's product are not those of the sum). The roundings differ from
    the unfused path's bf16(bf16(sum of y) + x) only in where the residual joins the sum."""
    from radixserve.kernels.gemv import gemv_residual

    if linear.tp.size == 1:
        return gemv_residual(a, linear.weight, x)
    y, _ = gemv_residual(a, linear.weight, x if linear.tp.rank == 0 else None)
    return linear.tp.all_reduce(y), None


class LlamaForCausalLM(nn.Module):
    # checkpoint name fragment -> (our parameter fragment, shard id)
    stacked_params = (
        (".q_proj", ".qkv_proj", "q"),
        (".k_proj", ".qkv_proj", "k"),
        (".v_proj", ".qkv_proj", "v"),
        (".gate_proj", ".gate_up_proj", 0),
        (".up_proj", ".gate_up_proj", 1),
    )
    model_cls: type[LlamaModel] = LlamaModel

    def __init__(self, config: ModelConfig, tp: ParallelGroup = SINGLE, pp: PipelineGroup = NO_PIPELINE) -> None:
        super().__init__()
        self.config = config
        self.tp = tp
        self.pp = pp
        self.model = self.model_cls(config, tp, pp)
        first = self.model.layers[self.model.start_layer]
        assert isinstance(first, LlamaDecoderLayer)
        self.num_kv_heads_per_rank = first.self_attn.num_kv_heads
        self.num_local_layers = self.model.end_layer - self.model.start_layer
        self.lm_head: nn.Module = ParallelLMHead(config.vocab_size, config.hidden_size, tp) if pp.is_last else OtherStage()
        if config.tie_word_embeddings and pp.is_last:
            assert isinstance(self.lm_head, ParallelLMHead) and isinstance(self.model.embed_tokens, VocabParallelEmbedding)
            self.lm_head.tie_to(self.model.embed_tokens)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, fb: ForwardBatch) -> torch.Tensor:
        """Returns float32 logits of each request's last token: [bs, vocab] (a single stage)."""
        hidden, _ = self.model(input_ids, positions, fb)
        return self.compute_logits(hidden, fb)

    def forward_stage(self, input_ids: torch.Tensor, positions: torch.Tensor, fb: ForwardBatch,
                      hidden: torch.Tensor | None, residual: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.model(input_ids, positions, fb, hidden, residual)  # type: ignore[no-any-return]

    def compute_logits(self, hidden: torch.Tensor, fb: ForwardBatch) -> torch.Tensor:
        # A decode batch has one row per request: no gather (two kernels fewer in each decode graph).
        last = hidden if fb.forward_mode.is_decode() else hidden[fb.last_token_indices()]
        logits = self.lm_head.compute_logits(last)  # type: ignore[operator]
        if fb.logits_out is not None:
            return fb.logits_out.copy_(logits)  # the float32 cast, into the graphs' shared buffer
        return logits.float()  # type: ignore[no-any-return]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy checkpoint tensors into our (sharded, fused) parameters; returns parameters loaded."""
        params = dict(self.named_parameters(remove_duplicate=False))
        loaded: set[str] = set()
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name:
                continue
            if self.config.tie_word_embeddings and name == "lm_head.weight":
                continue  # tied: the embedding is the head
            if not self._in_this_stage(name):
                continue
            target, shard = name, None
            for ckpt, ours, shard_id in self.stacked_params:
                if ckpt in name:
                    target, shard = name.replace(ckpt, ours), shard_id
                    break
            param = params.get(target)
            if param is None:
                raise ValueError(f"checkpoint tensor {name!r} has no place in {type(self).__name__}")
            loader = getattr(param, "weight_loader", None)
            with torch.no_grad():
                if loader is not None:
                    loader(param, tensor.to(param.dtype), shard)
                else:
                    if param.shape != tensor.shape:
                        raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)} != {tuple(param.shape)}")
                    param.data.copy_(tensor)
            loaded.add(target)
        if self.config.tie_word_embeddings and self.pp.is_last:
            loaded.add("lm_head.weight")
        return loaded

    def _in_this_stage(self, name: str) -> bool:
        """False for checkpoint tensors of modules that live in another pipeline stage."""
        node: nn.Module = self
        for part in name.split(".")[:-1]:
            child = node._modules.get(part)
            if child is None:
                return True  # not ours to judge: the caller reports unknown names
            if isinstance(child, OtherStage):
                return False
            node = child
        return True

    def expected_params(self) -> set[str]:
        return {n for n, _ in self.named_parameters(remove_duplicate=False)}


MODEL_CLASSES: dict[str, type[LlamaForCausalLM]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
}
