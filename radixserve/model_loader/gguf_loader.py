"""GGUF: model config from the file's metadata and weights under HF names.

Weights come out dequantized to float32, or, with `pack=True`, the linear layers' Q4_0 / Q4_1 /
Q4_K / Q5_0 / Q5_1 / Q5_K / Q8_0 tensors come out as `GroupQuantized` (the file's own codes and
scales) for the layers to pack, the LM head included: `output`, or, for a tied head, a second
copy of `token_embd` (the embedding itself stays float for lookups); see docs/quantization.md.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from radixserve.configs.model_config import ModelConfig, UnsupportedModelError
from radixserve.layers.quantization.base import GroupQuantized, UnsupportedQuantizationError
from radixserve.model_loader.gguf_quant import PACKED_TYPES, gguf_group_quantized

logger = logging.getLogger(__name__)

# GGUF general.architecture -> HF architecture we implement.
GGUF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}

_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def open_gguf(path: Path) -> Any:
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises assorted errors on a damaged file
        raise UnsupportedModelError(f"could not read GGUF file {str(path)!r}: {e}") from e


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def gguf_model_config(reader: Any, path: Path) -> ModelConfig:
    arch = _field(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise UnsupportedModelError(
            f"{str(path)!r}: GGUF architecture {arch!r} is not supported; supported: {sorted(GGUF_ARCHITECTURES)}"
        )
    hidden = int(_field(reader, f"{arch}.embedding_length"))
    heads = int(_field(reader, f"{arch}.attention.head_count"))
    names = {t.name for t in reader.tensors}
    vocab = _field(reader, f"{arch}.vocab_size")
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    cfg: dict[str, Any] = {
        "architectures": [GGUF_ARCHITECTURES[arch]],
        "hidden_size": hidden,
        "intermediate_size": int(_field(reader, f"{arch}.feed_forward_length")),
        "num_hidden_layers": int(_field(reader, f"{arch}.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, f"{arch}.attention.head_count_kv", heads)),
        "vocab_size": int(vocab),
        "head_dim": int(_field(reader, f"{arch}.attention.key_length", hidden // heads)),
        "rms_norm_eps": float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(_field(reader, f"{arch}.context_length", 4096)),
        "tie_word_embeddings": "output.weight" not in names,
        "eos_token_id": None if eos is None else int(eos),
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
    }
    scaling = _field(reader, f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise UnsupportedModelError(f"{str(path)!r}: rope scaling {scaling!r} in GGUF is not supported")
    return ModelConfig.from_hf_dict(cfg, source=str(path))


def _unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp's converter interleaves the two rotary halves of each head for llama models;
    # undo it so the weights match the HF (rotate_half) layout our model uses.
    shape = w.shape
    return w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def hf_name(gguf_name: str) -> str | None:
    base, _, suffix = gguf_name.rpartition(".")
    if base in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[base]}.{suffix}"
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.{suffix}"
    return None


# Projections fused into one layer weight: packed all together or not at all (one kernel call per layer).
_FUSED = {"attn_q": "attn_qkv", "attn_k": "attn_qkv", "attn_v": "attn_qkv", "ffn_gate": "ffn_gate_up",
          "ffn_up": "ffn_gate_up"}
_LINEAR = frozenset(("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "output"))


def plan_packing(reader: Any) -> dict[str, str | None]:
    """GGUF tensor name -> None if it will be handed over packed, else why it is dequantized."""
    reasons: dict[str, str | None] = {}
    group_types: dict[str, set[str]] = {}
    for t in reader.tensors:
        base = t.name.rpartition(".")[0]
        parts = base.split(".")
        kind = parts[2] if len(parts) == 3 and parts[0] == "blk" else base
        type_name = t.tensor_type.name
        if type_name in ("F32", "F16", "BF16"):
            reasons[t.name] = "float in the file"
        elif not t.name.endswith(".weight") or kind not in _LINEAR:
            reasons[t.name] = "not a linear layer (the embedding's lookup table stays float)"
        elif type_name not in PACKED_TYPES:
            reasons[t.name] = f"{type_name} has no packed kernel yet"
        else:
            reasons[t.name] = None
        if kind in _FUSED:
            group_types.setdefault(f"{parts[1]}.{_FUSED[kind]}", set()).add(type_name)
    for t in reader.tensors:
        parts = t.name.split(".")
        if reasons[t.name] is None and len(parts) == 4 and parts[2] in _FUSED:
            types = group_types[f"{parts[1]}.{_FUSED[parts[2]]}"]
            if not types <= PACKED_TYPES:
                reasons[t.name] = f"fused with {sorted(types - PACKED_TYPES)} tensors that are not packed"
    return reasons


def _log_plan(reader: Any, reasons: dict[str, str | None]) -> None:
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    packed = Counter(types[n] for n, r in reasons.items() if r is None)
    dense = Counter(f"{types[n]} ({r})" for n, r in reasons.items() if r is not None)
    logger.info("GGUF: %d tensors kept packed %s; %d loaded as float: %s", sum(packed.values()),
                dict(packed), sum(dense.values()), "; ".join(f"{n} x {k}" for k, n in dense.items()))


def iter_gguf_weights(reader: Any, config: ModelConfig,
                      pack: bool = False) -> Iterator[tuple[str, torch.Tensor | GroupQuantized]]:
    """Yield (HF name, tensor) one tensor at a time: float32, dequantized as we go, or with `pack` the
    packable linear weights as GroupQuantized."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    permute = config.architecture == "LlamaForCausalLM"
    reasons = plan_packing(reader) if pack else {}
    if pack:
        _log_plan(reader, reasons)
    tied_head = pack and config.tie_word_embeddings
    for t in reader.tensors:
        name = hf_name(t.name)
        if tied_head and t.name == "token_embd.weight" and t.tensor_type.name in PACKED_TYPES:
            # The tied head multiplies by the embedding table: packed, it reads a quarter of the
            # bytes (the largest single product of a small model's decode step).
            rows, cols = (int(d) for d in reversed(t.shape))
            logger.info("GGUF: the tied LM head is packed from token_embd (%s)", t.tensor_type.name)
            yield "lm_head.weight", gguf_group_quantized(t.data, t.tensor_type.name, rows, cols)
        if t.name == "rope_freqs.weight":
            raise UnsupportedModelError("GGUF rope_freqs (llama3 rope scaling in GGUF) is not supported yet")
        if name is None:
            continue
        n_head = (config.num_attention_heads if name.endswith("q_proj.weight") else
                  config.num_key_value_heads if name.endswith("k_proj.weight") else 0)
        if pack and reasons.get(t.name, "") is None:
            rows, cols = (int(d) for d in reversed(t.shape))
            try:
                q = gguf_group_quantized(t.data, t.tensor_type.name, rows, cols)
            except UnsupportedQuantizationError as e:
                raise UnsupportedModelError(f"{t.name}: {e}") from e
            if permute and n_head:
                codes, scale, offset = (torch.from_numpy(_unpermute_qk(a.numpy(), n_head))
                                        for a in (q.codes, q.scale, q.offset))
                q = GroupQuantized(codes, scale, offset, q.group_size, q.bits, q.source)
            yield name, q
            continue
        if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            arr = np.asarray(t.data, dtype=np.float32)
        else:
            try:
                arr = dequantize(t.data, t.tensor_type)
            except NotImplementedError as e:
                raise UnsupportedModelError(
                    f"{t.name}: GGUF quantization {t.tensor_type.name} is not supported (no packed kernel, and "
                    f"the gguf package cannot dequantize it: {e})") from e
        arr = arr.reshape([int(d) for d in reversed(t.shape)]) if arr.ndim != len(t.shape) else arr
        if permute and n_head:
            arr = _unpermute_qk(arr, n_head)
        yield name, torch.from_numpy(np.array(arr, dtype=np.float32))  # copy: the mmap is read-only
