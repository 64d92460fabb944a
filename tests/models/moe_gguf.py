"""A tiny transformers MoE checkpoint written as GGUF the way llama.cpp's converter lays it out:
experts stacked per projection (`blk.N.ffn_{gate,up,down}_exps`, [E, rows, cols]), the router as
`ffn_gate_inp`, Qwen2-MoE's shared expert as `*_shexp` (its gate a vector), Mixtral as "llama"
with an expert count and q/k rows permuted for llama.cpp's rotary layout."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

GGUF_ARCH = {"qwen3_moe": "qwen3moe", "qwen2_moe": "qwen2moe", "mixtral": "llama"}

_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
_LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
          "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
          "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "mlp.gate": "ffn_gate_inp",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
          "mlp.shared_expert.gate_proj": "ffn_gate_shexp", "mlp.shared_expert.up_proj": "ffn_up_shexp",
          "mlp.shared_expert.down_proj": "ffn_down_shexp", "mlp.shared_expert_gate": "ffn_gate_inp_shexp"}
_EXPERT = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(\w+)\.weight$")
_STACK = {"gate_proj": "ffn_gate_exps", "w1": "ffn_gate_exps", "up_proj": "ffn_up_exps", "w3": "ffn_up_exps",
          "down_proj": "ffn_down_exps", "w2": "ffn_down_exps"}


def _load(hf_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    tensors: dict[str, np.ndarray] = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return {k.replace(".block_sparse_moe.", ".mlp."): v for k, v in tensors.items()}


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter: each head's rotary halves interleaved (what the loader undoes)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def quantize_roundtrip(w: np.ndarray, type_name: str) -> np.ndarray:
    """`w` as the file's quantized codes read back: what a loader that dequantizes them computes with."""
    import gguf
    from gguf.quants import dequantize, quantize

    qtype = gguf.GGMLQuantizationType[type_name]
    return np.asarray(dequantize(quantize(w, qtype), qtype), dtype=np.float32).reshape(w.shape)


def write_moe_gguf(hf_dir: Path, out: Path, expert_type: str | None = None,
                   reference_dir: Path | None = None) -> Path:
    """`hf_dir` (a transformers MoE checkpoint) as the GGUF `out`, experts in `expert_type` (F32 if
    None). With `reference_dir`, also a copy of the checkpoint whose experts hold the quantized values
    read back, for transformers to compute the same model the GGUF holds."""
    import gguf
    from gguf.quants import quantize

    cfg = json.loads((hf_dir / "config.json").read_text())
    model_type = cfg["model_type"]
    arch = GGUF_ARCH[model_type]
    tensors = _load(hf_dir)
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    writer = gguf.GGUFWriter(str(out), arch)
    _write_metadata(writer, cfg)

    stacks: dict[str, list[tuple[int, np.ndarray]]] = {}
    reference = dict(tensors)
    for name, w in tensors.items():
        m = _EXPERT.match(name)
        if m is not None:
            if expert_type is not None:
                reference[name] = quantize_roundtrip(w, expert_type)
            stacks.setdefault(f"blk.{m[1]}.{_STACK[m[3]]}.weight", []).append((int(m[2]), w))
            continue
        if name in _GLOBAL:
            writer.add_tensor(_GLOBAL[name], w)
            continue
        layer, _, rest = name.removeprefix("model.layers.").partition(".")
        module, _, suffix = rest.rpartition(".")
        if module == "self_attn.q_proj" and model_type == "mixtral":
            w = _permute(w, heads)
        elif module == "self_attn.k_proj" and model_type == "mixtral":
            w = _permute(w, kv)
        elif module == "mlp.shared_expert_gate":
            w = w.reshape(-1)
        writer.add_tensor(f"blk.{layer}.{_LAYER[module]}.{suffix}", np.ascontiguousarray(w))
    for gguf_name, parts in stacks.items():
        stacked = np.stack([w for _, w in sorted(parts, key=lambda p: p[0])])
        if expert_type is None:
            writer.add_tensor(gguf_name, stacked)
        else:
            qtype = gguf.GGMLQuantizationType[expert_type]
            writer.add_tensor(gguf_name, quantize(stacked, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if reference_dir is not None:
        _save_reference(hf_dir, reference_dir, reference)
    return out


def _write_metadata(writer: Any, cfg: dict[str, Any]) -> None:
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    rope = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta") or 10000.0
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_rope_freq_base(float(rope))
    writer.add_vocab_size(cfg["vocab_size"])
    writer.add_eos_token_id(cfg["eos_token_id"])
    writer.add_expert_count(cfg.get("num_experts") or cfg["num_local_experts"])
    writer.add_expert_used_count(cfg["num_experts_per_tok"])
    if cfg["model_type"] != "mixtral":
        writer.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    if cfg.get("shared_expert_intermediate_size"):
        writer.add_expert_shared_feed_forward_length(cfg["shared_expert_intermediate_size"])


def _save_reference(hf_dir: Path, dest: Path, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    shutil.copytree(hf_dir, dest, ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json"))
    mixtral = json.loads((hf_dir / "config.json").read_text())["model_type"] == "mixtral"
    # Checkpoint names as transformers wrote them (Mixtral's module is block_sparse_moe).
    named = {(k.replace(".mlp.", ".block_sparse_moe.") if mixtral and (".experts." in k or k.endswith("mlp.gate.weight"))
              else k): np.ascontiguousarray(v) for k, v in tensors.items()}
    save_file(named, str(dest / "model.safetensors"), metadata={"format": "pt"})
