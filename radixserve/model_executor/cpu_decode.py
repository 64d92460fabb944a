"""Decode steps on CPU as one native call (kernels/cpu/decode.c): the CPU's counterpart of CUDA graphs.

A CUDA graph removes the host's per-kernel launch cost from a decode step; on a CPU the same cost is
Python and the torch dispatcher around ~12 small ops per layer, and at batch 1 it was more than half of
the embedded model's step (the packed products themselves run at memory speed). `CpuDecodeStep` hands
the layers to C instead: the norms, the packed products (qdot.c, on the layers' own `IntDotWeight`
tensors), rotary, the KV store into the pool and the attention over each request's slots. The
embedding lookup and the LM head (the same integer product, `IntDotWeight.apply`) stay in torch, and
prefill keeps the torch path.

It serves a model only where decode.c covers every layer exactly: a dense Llama-family decoder (Llama,
Mistral, Qwen2's qkv bias, Qwen3's q/k norms) in float32 on one CPU process, every linear packed for the
C product, a float32 KV pool. `why_not` names the first thing that rules a model out, and the runner
logs it. RADIXSERVE_CPU_DECODE=0 keeps the torch path (A/B runs); RADIXSERVE_CPU_KERNELS=0 turns off
the C kernels altogether.
"""

from __future__ import annotations

import ctypes
import logging
import os
from typing import TYPE_CHECKING

import torch

from radixserve.kernels import cpu_native
from radixserve.layers.layernorm import RMSNorm
from radixserve.layers.quantization.dot_cpu import DENSE_FROM_ROWS, IntDotWeight
from radixserve.models.llama import LlamaDecoderLayer, LlamaForCausalLM, LlamaMLP, LlamaModel

if TYPE_CHECKING:
    from radixserve.mem_cache.memory_pool import ReqToTokenPool, TokenToKVPool
    from radixserve.model_executor.forward_batch import ForwardBatch

logger = logging.getLogger(__name__)

ENV_SWITCH = "RADIXSERVE_CPU_DECODE"
# Batches up to this size decode natively; larger ones take the torch path, whose products expand the
# weights for one bf16 GEMM from DENSE_FROM_ROWS rows on.
MAX_BATCH = DENSE_FROM_ROWS - 1

_ptr, _i64 = ctypes.c_void_p, ctypes.c_int64


class _QWeight(ctypes.Structure):
    _fields_ = [("codes", _ptr), ("scale", _ptr), ("offset", _ptr), ("n", _i64), ("k", _i64),
                ("group_size", _i64), ("packed4", _i64), ("half", _i64), ("center", _i64)]


class _Layer(ctypes.Structure):
    _fields_ = [("ln1", _ptr), ("ln2", _ptr), ("qkv_bias", _ptr), ("q_norm", _ptr), ("k_norm", _ptr),
                ("k_cache", _ptr), ("v_cache", _ptr), ("qkv", _QWeight), ("o", _QWeight), ("gate_up", _QWeight),
                ("down", _QWeight)]


class _Model(ctypes.Structure):
    _fields_ = [("n_layers", _i64), ("hidden", _i64), ("heads", _i64), ("kv_heads", _i64), ("head_dim", _i64),
                ("inter", _i64), ("eps", ctypes.c_double), ("scale", ctypes.c_double), ("cos", _ptr), ("sin", _ptr),
                ("final_norm", _ptr), ("layers", ctypes.POINTER(_Layer))]


def _f32(t: torch.Tensor | None) -> int | None:
    """The address of a float32 contiguous tensor (None for None)."""
    if t is None:
        return None
    assert t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu"
    return int(t.data_ptr())


def _qweight(w: IntDotWeight) -> _QWeight:
    return _QWeight(w.codes.data_ptr(), w.scale.data_ptr(), w.offset.data_ptr(), w.out_features, w.in_features,
                    w.group_size, int(w.packed4), int(w.half), w.center)


def why_not(model: torch.nn.Module, pool: TokenToKVPool) -> str | None:
    """Why decode.c cannot run this model's decode steps, or None."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return f"{ENV_SWITCH}=0"
    if not isinstance(model, LlamaForCausalLM) or type(model.model) is not LlamaModel:
        return f"{type(model).__name__} is not a dense Llama-family decoder"
    if model.tp.size != 1 or model.pp.size != 1:
        return "tensor or pipeline parallel"
    if pool.dtype != torch.float32:
        return f"a {pool.dtype} KV pool (decode.c reads float32)"
    final = model.model.norm
    if not isinstance(final, RMSNorm):
        return "no final norm in this stage"
    eps = {final.eps}
    for layer in model.model.layers:
        why = _layer_why_not(layer, eps)
        if why is not None:
            return why
    if len(eps) != 1:
        return f"RMSNorms with different epsilons {sorted(eps)}"
    return None


def _layer_why_not(layer: torch.nn.Module, eps: set[float]) -> str | None:
    """Why decode.c cannot run this layer, or None; adds its norms' epsilons to `eps`."""
    if not isinstance(layer, LlamaDecoderLayer) or type(layer.mlp) is not LlamaMLP:  # exactly: no MoE subclass
        return "a layer that is not a dense Llama decoder layer"
    attn, mlp = layer.self_attn, layer.mlp
    assert isinstance(mlp, LlamaMLP)
    for lin in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj):
        if not isinstance(lin.quant, IntDotWeight):
            return f"a linear weight held as {lin.quant.name if lin.quant else 'float'}, not for the C product"
    if attn.o_proj.bias is not None or mlp.gate_up_proj.bias is not None or mlp.down_proj.bias is not None:
        return "a bias outside the qkv projection"
    norms = [layer.input_layernorm, layer.post_attention_layernorm]
    norms += [n for n in (attn.q_norm, attn.k_norm) if n is not None]
    eps.update(n.eps for n in norms)
    if any(n.weight.dtype != torch.float32 for n in norms) or attn.rotary.cos_cache.dtype != torch.float32:
        return "norm or rotary tables not in float32"
    return None


class CpuDecodeStep:
    """The model's decode steps through decode.c. It holds the C structs that point into the model's and
    the pool's tensors, which live as long as the model runner."""

    def __init__(self, lib: ctypes.CDLL, model: LlamaForCausalLM, pool: TokenToKVPool,
                 req_to_token_pool: ReqToTokenPool) -> None:
        self._lib = lib
        self.model = model
        self._table = req_to_token_pool.req_to_token
        assert self._table.dtype == torch.int64 and self._table.is_contiguous()
        layers = [layer for layer in model.model.layers if isinstance(layer, LlamaDecoderLayer)]
        first = layers[0].self_attn
        rotary = first.rotary
        self._max_position = int(rotary.cos_cache.shape[0])
        self._layers = (_Layer * len(layers))()
        for i, layer in enumerate(layers):
            attn, mlp = layer.self_attn, layer.mlp
            assert isinstance(mlp, LlamaMLP)
            k_buf, v_buf = pool.get_kv_buffer(attn.attn.layer_id)
            qkv_bias = attn.qkv_proj.bias
            self._layers[i] = _Layer(
                _f32(layer.input_layernorm.weight), _f32(layer.post_attention_layernorm.weight),
                _f32(qkv_bias.data if qkv_bias is not None else None),
                _f32(attn.q_norm.weight if attn.q_norm is not None else None),
                _f32(attn.k_norm.weight if attn.k_norm is not None else None),
                _f32(k_buf), _f32(v_buf), *(_qweight(lin.quant) for lin in (  # type: ignore[arg-type]
                    attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)))
        final = model.model.norm
        assert isinstance(final, RMSNorm)
        mlp0 = layers[0].mlp
        assert isinstance(mlp0, LlamaMLP)
        inter = mlp0.down_proj.in_per_rank
        self._struct = _Model(len(layers), model.config.hidden_size, first.num_heads, first.num_kv_heads,
                              first.head_dim, inter, float(final.eps), float(first.attn.scaling),
                              _f32(rotary.cos_cache), _f32(rotary.sin_cache), _f32(final.weight), self._layers)

    @classmethod
    def build(cls, model: torch.nn.Module, pool: TokenToKVPool,
              req_to_token_pool: ReqToTokenPool) -> CpuDecodeStep | None:
        """The native step for `model`, or None (the reason logged) where it cannot serve it."""
        why, lib = why_not(model, pool), None
        if why is None:
            lib = cpu_native.load()
            if lib is None:
                why = f"the CPU kernels are unavailable: {cpu_native.unavailable_reason()}"
        if lib is None:
            logger.info("decode steps run layer by layer in torch: %s", why)
            return None
        assert isinstance(model, LlamaForCausalLM)
        logger.info("decode steps of up to %d requests run natively (kernels/cpu/decode.c)", MAX_BATCH)
        return cls(lib, model, pool, req_to_token_pool)

    def can_run(self, fb: ForwardBatch) -> bool:
        return (fb.forward_mode.is_decode() and 0 < fb.batch_size <= MAX_BATCH
                and max(fb.seq_lens_cpu) <= self._max_position)

    def logits(self, fb: ForwardBatch) -> torch.Tensor:
        """Float32 logits [bs, vocab] of one decode step; its k and v land in the pool as on the torch path."""
        hidden = self.model.model.embed_tokens(fb.input_ids).float().contiguous()
        ints = [t.to(torch.int64).contiguous() for t in (fb.positions, fb.out_cache_loc, fb.req_pool_indices,
                                                           fb.seq_lens)]
        positions, out_loc, rows, seq_lens = ints
        rc = self._lib.rs_decode(ctypes.byref(self._struct), fb.batch_size, positions.data_ptr(), out_loc.data_ptr(),
                                 self._table.data_ptr(), self._table.stride(0), rows.data_ptr(), seq_lens.data_ptr(),
                                 hidden.data_ptr(), torch.get_num_threads())
        if rc != 0:
            raise RuntimeError(f"decode.c failed ({rc}) on a batch of {fb.batch_size}")
        return self.model.compute_logits(hidden, fb)
