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
GGUF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                      "qwen2moe": "Qwen2MoeForCausalLM", "qwen3moe": "Qwen3MoeForCausalLM"}
# Mixtral is "llama" with an expert count.
_MIXTRAL = "MixtralForCausalLM"
# Whether the top-k routing weights are renormalised to sum to 1 where the file does not say
# (`{arch}.expert_weights_norm`): what llama.cpp's graph for each architecture does.
_NORM_TOPK = {"llama": True, "qwen3moe": True, "qwen2moe": False}
# Architectures that are mixtures of experts by name (llama is one only when its file has experts).
_MOE_ONLY = frozenset(a for a in _NORM_TOPK if a != "llama")

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
    # Mixture of experts: the router, and Qwen2-MoE's shared expert with its sigmoid gate. The
    # experts themselves (ffn_{gate,up,down}_exps, one tensor for all experts) go through
    # `expert_names` and `_split_experts`.
    "ffn_gate_inp": "mlp.gate",
    "ffn_gate_inp_shexp": "mlp.shared_expert_gate",
    "ffn_gate_shexp": "mlp.shared_expert.gate_proj",
    "ffn_up_shexp": "mlp.shared_expert.up_proj",
    "ffn_down_shexp": "mlp.shared_expert.down_proj",
}
# Stacked expert tensors [E, rows, cols] -> the per-expert projection names MoeForCausalLM loads.
_EXPERT_STACKS = {"ffn_gate_exps": "gate_proj", "ffn_up_exps": "up_proj", "ffn_down_exps": "down_proj"}
# Older Mixtral files: one tensor per expert, blk.N.ffn_gate.E.weight.
_EXPERT_SINGLES = {"ffn_gate": "gate_proj", "ffn_up": "up_proj", "ffn_down": "down_proj"}


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
    moe = _moe_config(reader, arch, names, path)
    ffn = _field(reader, f"{arch}.feed_forward_length", moe.get("moe_intermediate_size"))
    if ffn is None:
        raise UnsupportedModelError(f"{str(path)!r}: the GGUF metadata lacks {arch}.feed_forward_length")
    cfg: dict[str, Any] = {
        "architectures": [_MIXTRAL if arch == "llama" and moe else GGUF_ARCHITECTURES[arch]],
        **moe,
        "hidden_size": hidden,
        "intermediate_size": int(ffn),
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


def _moe_config(reader: Any, arch: str, names: set[str], path: Path) -> dict[str, Any]:
    """The HF config's mixture-of-experts fields from the GGUF metadata ({} for a dense model)."""
    experts = int(_field(reader, f"{arch}.expert_count", 0) or 0)
    if not experts:
        if arch in _MOE_ONLY:
            raise UnsupportedModelError(f"{str(path)!r}: a {arch} GGUF file without {arch}.expert_count")
        return {}
    if arch not in _NORM_TOPK:
        raise UnsupportedModelError(f"{str(path)!r}: a {arch} GGUF file with {experts} experts: mixture-of-experts "
                                    f"GGUF is supported for {sorted(_NORM_TOPK)}")
    cfg: dict[str, Any] = {"num_experts": experts,
                           "num_experts_per_tok": int(_field(reader, f"{arch}.expert_used_count", 0) or 0)}
    if arch == "llama":  # Mixtral: experts as wide as feed_forward_length, every layer MoE, renormalised
        return cfg
    layers = int(_field(reader, f"{arch}.block_count"))
    width = _field(reader, f"{arch}.expert_feed_forward_length")
    if width is None:
        raise UnsupportedModelError(f"{str(path)!r}: the GGUF metadata lacks {arch}.expert_feed_forward_length")
    return {**cfg, "moe_intermediate_size": int(width),
            "norm_topk_prob": bool(_field(reader, f"{arch}.expert_weights_norm", _NORM_TOPK[arch])),
            # A layer without a router is dense (HF's mlp_only_layers); the file says which by its tensors.
            "decoder_sparse_step": 1,
            "mlp_only_layers": [i for i in range(layers) if f"blk.{i}.ffn_gate_inp.weight" not in names],
            "shared_expert_intermediate_size": int(_field(reader, f"{arch}.expert_shared_feed_forward_length", 0))}


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


def expert_names(gguf_name: str, num_experts: int) -> list[str] | None:
    """HF names of the expert weights a GGUF tensor holds: one per expert for a stacked
    `blk.N.ffn_*_exps.weight`, one for an older `blk.N.ffn_*.E.weight`; None for other tensors."""
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _EXPERT_STACKS and parts[3] == "weight":
        return [f"model.layers.{parts[1]}.mlp.experts.{e}.{_EXPERT_STACKS[parts[2]]}.weight"
                for e in range(num_experts)]
    if (len(parts) == 5 and parts[0] == "blk" and parts[2] in _EXPERT_SINGLES and parts[3].isdigit()
            and parts[4] == "weight"):
        return [f"model.layers.{parts[1]}.mlp.experts.{parts[3]}.{_EXPERT_SINGLES[parts[2]]}.weight"]
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
        elif expert_names(t.name, 1) is not None:
            reasons[t.name] = "MoE experts (the MoE layer runs float or FP8 experts)"
        elif kind.endswith("_shexp") or kind == "ffn_gate_inp":
            reasons[t.name] = "MoE router or shared expert (kept float)"
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
    permute = config.architecture in ("LlamaForCausalLM", _MIXTRAL)  # GGUF "llama", dense or MoE
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
        experts = None if name is not None else expert_names(t.name, config.num_experts)
        if name is None and experts is None:
            continue
        name = name or ""  # an expert tensor: its names are in `experts`
        n_head = (config.num_attention_heads if name.endswith("q_proj.weight") else
                  config.num_key_value_heads if name.endswith("k_proj.weight") else 0)
        if pack and reasons.get(t.name, "") is None:
            yield name, _packed(t, n_head if permute else 0)
            continue
        arr = _float_array(t)
        if experts is not None:
            yield from _split_experts(t.name, arr, experts)
            continue
        if permute and n_head:
            arr = _unpermute_qk(arr, n_head)
        if name.endswith("shared_expert_gate.weight"):
            arr = arr.reshape(1, -1)  # llama.cpp stores this [1, H] gate as a vector
        yield name, torch.from_numpy(np.array(arr, dtype=np.float32))  # copy: the mmap is read-only


def _packed(t: Any, unpermute_heads: int) -> GroupQuantized:
    """A packable tensor's own codes and scales (q/k rows un-permuted over `unpermute_heads` heads)."""
    rows, cols = (int(d) for d in reversed(t.shape))
    try:
        q = gguf_group_quantized(t.data, t.tensor_type.name, rows, cols)
    except UnsupportedQuantizationError as e:
        raise UnsupportedModelError(f"{t.name}: {e}") from e
    if unpermute_heads:
        codes, scale, offset = (torch.from_numpy(_unpermute_qk(a.numpy(), unpermute_heads))
                                for a in (q.codes, q.scale, q.offset))
        q = GroupQuantized(codes, scale, offset, q.group_size, q.bits, q.source)
    return q


def _float_array(t: Any) -> np.ndarray:
    """A tensor as float32 in its logical shape (rows last-but-one), dequantized if need be."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
        arr = np.asarray(t.data, dtype=np.float32)
    else:
        try:
            arr = dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise UnsupportedModelError(
                f"{t.name}: GGUF quantization {t.tensor_type.name} is not supported (no packed kernel, and "
                f"the gguf package cannot dequantize it: {e})") from e
    return arr.reshape([int(d) for d in reversed(t.shape)]) if arr.ndim != len(t.shape) else arr


def _split_experts(gguf_name: str, arr: np.ndarray, names: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """A stacked [E, rows, cols] expert tensor as E per-expert float32 weights (or one expert's as is)."""
    if len(names) == 1:
        yield names[0], torch.from_numpy(np.array(arr, dtype=np.float32))
        return
    if arr.ndim != 3 or arr.shape[0] != len(names):
        raise UnsupportedModelError(f"{gguf_name}: shape {list(arr.shape)} is not [{len(names)} experts, rows, cols]")
    for e, name in enumerate(names):
        yield name, torch.from_numpy(np.array(arr[e], dtype=np.float32))
