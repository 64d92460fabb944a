"""ModelConfig: the architecture facts the engine needs, from config.json, GGUF metadata or a named shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# HF architecture name -> the family flags our model code implements. "moe": the MLP of (some)
# layers is a mixture of experts (radixserve/models/moe.py).
SUPPORTED_ARCHITECTURES: dict[str, dict[str, bool]] = {
    "LlamaForCausalLM": {"attention_bias": False, "qk_norm": False, "moe": False},
    "MistralForCausalLM": {"attention_bias": False, "qk_norm": False, "moe": False},
    "Qwen2ForCausalLM": {"attention_bias": True, "qk_norm": False, "moe": False},
    "Qwen3ForCausalLM": {"attention_bias": False, "qk_norm": True, "moe": False},
    "MixtralForCausalLM": {"attention_bias": False, "qk_norm": False, "moe": True},
    "Qwen2MoeForCausalLM": {"attention_bias": True, "qk_norm": False, "moe": True},
    "Qwen3MoeForCausalLM": {"attention_bias": False, "qk_norm": True, "moe": True},
}


class UnsupportedModelError(ValueError):
    """The model exists but is of an architecture or format we do not implement."""


@dataclass
class ModelConfig:
    architecture: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    qk_norm: bool = False
    eos_token_ids: list[int] = field(default_factory=list)
    bos_token_id: int | None = None
    # Mixture of experts (0 experts: a dense model). Each MoE layer routes a token to
    # `num_experts_per_tok` of `num_experts` SwiGLU experts of width `moe_intermediate_size`.
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False  # renormalise the top-k softmax weights to sum to 1 (Mixtral: always)
    decoder_sparse_step: int = 1  # layer i is MoE when (i + 1) % step == 0 and i not in mlp_only_layers
    mlp_only_layers: list[int] = field(default_factory=list)
    shared_expert_intermediate_size: int = 0  # Qwen2-MoE: one always-on expert behind a sigmoid gate

    def is_moe_layer(self, layer: int) -> bool:
        """Whether layer `layer` (global index) has a mixture-of-experts MLP (HF's rule for Qwen MoE)."""
        return (self.num_experts > 0 and layer not in self.mlp_only_layers
                and (layer + 1) % self.decoder_sparse_step == 0)

    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any], source: str = "config.json") -> ModelConfig:
        archs = cfg.get("architectures") or []
        arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            raise UnsupportedModelError(
                f"{source}: architecture {archs or cfg.get('model_type')!r} is not supported; "
                f"supported: {sorted(SUPPORTED_ARCHITECTURES)}"
            )
        flags = SUPPORTED_ARCHITECTURES[arch]
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        eos = cfg.get("eos_token_id")
        eos_ids = [] if eos is None else ([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])
        moe = _moe_fields(arch, cfg) if flags["moe"] else {}
        rope_scaling = cfg.get("rope_scaling")
        rope_theta = cfg.get("rope_theta")
        # transformers 5 moved rope settings into `rope_parameters`.
        params = cfg.get("rope_parameters")
        if isinstance(params, dict):
            rope_theta = params.get("rope_theta", rope_theta)
            if params.get("rope_type", "default") != "default":
                rope_scaling = params
        return cls(
            architecture=arch,
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
            vocab_size=int(cfg["vocab_size"]),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta if rope_theta is not None else 10000.0),
            rope_scaling=rope_scaling if rope_scaling else None,
            max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            # Qwen2-MoE names its q/k/v bias `qkv_bias`.
            attention_bias=bool(cfg.get("attention_bias", cfg.get("qkv_bias", flags["attention_bias"]))),
            qk_norm=flags["qk_norm"],
            eos_token_ids=eos_ids,
            bos_token_id=cfg.get("bos_token_id"),
            **moe,
        )

    @property
    def kv_bytes_per_token_per_layer(self) -> int:
        """K and V elements of one token in one layer (multiply by the dtype's size)."""
        return 2 * self.num_key_value_heads * self.head_dim


def _moe_fields(arch: str, cfg: dict[str, Any]) -> dict[str, Any]:
    # Qwen MoE configs say `num_experts`, Mixtral (and transformers 5's Qwen3-MoE) `num_local_experts`.
    experts = int(cfg.get("num_experts") or cfg.get("num_local_experts") or 0)
    top_k = int(cfg.get("num_experts_per_tok") or 0)
    if experts <= 0 or not 0 < top_k <= experts:
        raise UnsupportedModelError(
            f"{arch}: a mixture-of-experts config needs num_experts > 0 and 0 < num_experts_per_tok <= "
            f"num_experts (got {experts} experts, top-k {top_k})")
    if arch == "MixtralForCausalLM":
        # Mixtral: every layer is MoE, experts as wide as `intermediate_size`, top-k weights renormalised.
        return {"num_experts": experts, "num_experts_per_tok": top_k,
                "moe_intermediate_size": int(cfg["intermediate_size"]), "norm_topk_prob": True}
    if not cfg.get("moe_intermediate_size"):
        raise UnsupportedModelError(f"{arch}: the config lacks moe_intermediate_size (the width of each expert)")
    return {
        "num_experts": experts, "num_experts_per_tok": top_k,
        "moe_intermediate_size": int(cfg["moe_intermediate_size"]),
        "norm_topk_prob": bool(cfg.get("norm_topk_prob", False)),
        "decoder_sparse_step": int(cfg.get("decoder_sparse_step") or 1),
        "mlp_only_layers": [int(i) for i in cfg.get("mlp_only_layers") or []],
        "shared_expert_intermediate_size": int(cfg.get("shared_expert_intermediate_size") or 0)
        if arch == "Qwen2MoeForCausalLM" else 0,
    }


def _llama(hidden: int, inter: int, layers: int, heads: int, kv: int, vocab: int, **kw: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"], "hidden_size": hidden, "intermediate_size": inter,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
        "vocab_size": vocab, "rms_norm_eps": 1e-5,
    }
    cfg.update(kw)
    return cfg


# Shapes for `--load-format dummy`: random weights, real sizes, no download.
NAMED_SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": _llama(576, 1536, 30, 9, 3, 49152, rope_theta=100000.0, max_position_embeddings=8192,
                           tie_word_embeddings=True, eos_token_id=2, bos_token_id=1),
    "llama-3-8b": _llama(4096, 14336, 32, 32, 8, 128256, rope_theta=500000.0, max_position_embeddings=8192,
                         eos_token_id=128009, bos_token_id=128000),
    "llama-3.1-8b": _llama(4096, 14336, 32, 32, 8, 128256, rope_theta=500000.0, max_position_embeddings=131072,
                           rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                           eos_token_id=128009, bos_token_id=128000),
    # 70.6B parameters, 141 GB in bf16: two H200s at TP=2 (issue 16), four or eight GPUs otherwise.
    "llama-3-70b": _llama(8192, 28672, 80, 64, 8, 128256, rope_theta=500000.0, max_position_embeddings=8192,
                          eos_token_id=128009, bos_token_id=128000),
    "llama-3.2-1b": _llama(2048, 8192, 16, 32, 8, 128256, head_dim=64, rope_theta=500000.0,
                           max_position_embeddings=131072, tie_word_embeddings=True,
                           rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                           eos_token_id=128009, bos_token_id=128000),
    "qwen2.5-0.5b": {**_llama(896, 4864, 24, 14, 2, 151936, rope_theta=1000000.0, max_position_embeddings=32768,
                              tie_word_embeddings=True, rms_norm_eps=1e-6, eos_token_id=151645),
                     "architectures": ["Qwen2ForCausalLM"]},
    "qwen3-0.6b": {**_llama(1024, 3072, 28, 16, 8, 151936, head_dim=128, rope_theta=1000000.0,
                            max_position_embeddings=40960, tie_word_embeddings=True, rms_norm_eps=1e-6,
                            eos_token_id=151645),
                   "architectures": ["Qwen3ForCausalLM"]},
    # Mixture-of-experts shapes (dummy weights): 30.5B parameters, 3.3B active per token (61 GB in bf16).
    "qwen3-30b-a3b": {**_llama(2048, 6144, 48, 32, 4, 151936, head_dim=128, rope_theta=1000000.0,
                               max_position_embeddings=40960, rms_norm_eps=1e-6, eos_token_id=151645),
                      "architectures": ["Qwen3MoeForCausalLM"], "num_experts": 128, "num_experts_per_tok": 8,
                      "moe_intermediate_size": 768, "norm_topk_prob": True, "decoder_sparse_step": 1,
                      "mlp_only_layers": []},
    # 46.7B parameters, 12.9B active (93 GB in bf16: one H200, or TP=2).
    "mixtral-8x7b": {**_llama(4096, 14336, 32, 32, 8, 32000, rope_theta=1000000.0, max_position_embeddings=32768,
                              eos_token_id=2, bos_token_id=1),
                     "architectures": ["MixtralForCausalLM"], "num_local_experts": 8, "num_experts_per_tok": 2},
    # Qwen1.5-MoE-A2.7B: 60 experts top-4 plus a shared expert; 14.3B parameters.
    "qwen1.5-moe-a2.7b": {**_llama(2048, 5632, 24, 16, 16, 151936, rope_theta=1000000.0,
                                   max_position_embeddings=8192, rms_norm_eps=1e-6, eos_token_id=151643),
                          "architectures": ["Qwen2MoeForCausalLM"], "num_experts": 60, "num_experts_per_tok": 4,
                          "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632,
                          "norm_topk_prob": False, "qkv_bias": True},
}
