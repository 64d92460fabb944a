"""Mixture-of-experts decoders: Qwen3-MoE, Qwen2-MoE and Mixtral.

They are the Llama-family decoder (models/llama.py: attention with Qwen3's q/k norm, Qwen2's qkv
bias or neither) with a sparse MLP in the layers the config names: a replicated router, routed
experts (layers/moe.py FusedMoE) and, for Qwen2-MoE, a shared expert behind a sigmoid gate.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from radixserve.configs.model_config import ModelConfig
from radixserve.distributed.parallel_state import ParallelGroup
from radixserve.layers.moe import ALL_EXPERTS, DOWN, GATE, UP, FusedMoE
from radixserve.models.llama import LlamaForCausalLM, LlamaMLP, LlamaModel


class SparseMoeBlock(nn.Module):
    def __init__(self, config: ModelConfig, tp: ParallelGroup) -> None:
        super().__init__()
        self.tp = tp
        # The router is small ([E, H]) and every rank needs all E logits: replicated, not sharded.
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.gate.weight.requires_grad_(False)
        self.experts = FusedMoE(config.num_experts, config.num_experts_per_tok, config.hidden_size,
                                config.moe_intermediate_size, config.norm_topk_prob, tp, reduce_results=False)
        self.shared_expert: LlamaMLP | None = None
        self.shared_expert_gate: nn.Linear | None = None
        if config.shared_expert_intermediate_size:
            self.shared_expert = LlamaMLP(config, tp, config.shared_expert_intermediate_size, reduce_results=False)
            self.shared_expert_gate = nn.Linear(config.hidden_size, 1, bias=False)
            self.shared_expert_gate.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.experts(x, self.gate(x))
        if self.shared_expert is not None and self.shared_expert_gate is not None:
            # The gate is a per-token scalar (replicated), so gating each rank's partial sum and
            # reducing once equals gating the full shared-expert output.
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return self.tp.all_reduce(out)


class MoeModel(LlamaModel):
    @staticmethod
    def make_mlp(config: ModelConfig, layer: int, tp: ParallelGroup) -> nn.Module:
        return SparseMoeBlock(config, tp) if config.is_moe_layer(layer) else LlamaMLP(config, tp)


# `model.layers.3.mlp.experts.17.up_proj.weight` (Qwen) / `...experts.17.w3.weight` (Mixtral, renamed
# from block_sparse_moe); transformers 5 may also write one stacked tensor per projection.
_EXPERT_NAME = re.compile(r"^(?P<prefix>.+\.mlp\.experts)\.(?P<expert>\d+)\.(?P<proj>\w+)\.weight$")
_STACKED_NAME = re.compile(r"^(?P<prefix>.+\.mlp\.experts)\.(?P<proj>gate_up_proj|down_proj)(\.weight)?$")
_PROJ = {"gate_proj": GATE, "w1": GATE, "up_proj": UP, "w3": UP, "down_proj": DOWN, "w2": DOWN}


class MoeForCausalLM(LlamaForCausalLM):
    """Qwen3MoeForCausalLM, Qwen2MoeForCausalLM and MixtralForCausalLM."""

    model_cls = MoeModel

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters(remove_duplicate=False))
        # Parameter -> expert shards seen: a stacked parameter counts as loaded only when whole.
        seen: dict[str, set[tuple[int, str]]] = {}

        def dense(items: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
            """Load expert tensors here; pass everything else on to the Llama loader."""
            for name, tensor in items:
                name = name.replace(".block_sparse_moe.", ".mlp.")  # Mixtral's module name
                target, shard = self.expert_target(name)
                if target is None:
                    yield name, tensor
                    continue
                if not self._in_this_stage(name):
                    continue
                param = params.get(target)
                if param is None:
                    raise ValueError(f"checkpoint tensor {name!r} has no place in {type(self).__name__}: "
                                     "layer is not a mixture-of-experts layer in this config")
                with torch.no_grad():
                    param.weight_loader(param, tensor.to(param.dtype), shard)  # type: ignore[attr-defined]
                if shard == ALL_EXPERTS:
                    seen.setdefault(target, set()).update(self._all_shards(target))
                else:
                    assert isinstance(shard, tuple)
                    seen.setdefault(target, set()).add(shard)

        loaded = super().load_weights(dense(weights))
        for target, shards in seen.items():
            missing = sorted(self._all_shards(target) - shards)
            if missing:
                prefix = target.rsplit(".", 1)[0]
                if self.config.architecture == "MixtralForCausalLM":  # name them as the checkpoint does
                    prefix = prefix.replace(".mlp.", ".block_sparse_moe.")
                    proj = {GATE: "w1", UP: "w3", DOWN: "w2"}
                else:
                    proj = {GATE: "gate_proj", UP: "up_proj", DOWN: "down_proj"}
                names = [f"{prefix}.{e}.{proj[which]}.weight" for e, which in missing[:4]]
                raise ValueError(f"checkpoint lacks {len(missing)} expert tensors of {prefix}, e.g. {names}")
            loaded.add(target)
        return loaded

    def expert_target(self, name: str) -> tuple[str | None, object]:
        """The expert stack a checkpoint tensor loads into and its shard id, or (None, None)."""
        name = name.replace(".block_sparse_moe.", ".mlp.")  # Mixtral's module name
        m = _EXPERT_NAME.match(name)
        if m is not None and m["proj"] in _PROJ:
            which = _PROJ[m["proj"]]
            target = f"{m['prefix']}.{'w2_weight' if which == DOWN else 'w13_weight'}"
            return target, (int(m["expert"]), which)
        m = _STACKED_NAME.match(name)
        if m is not None:
            return f"{m['prefix']}.{'w13_weight' if m['proj'] == 'gate_up_proj' else 'w2_weight'}", ALL_EXPERTS
        return None, None

    def _all_shards(self, target: str) -> set[tuple[int, str]]:
        kinds = (DOWN,) if target.endswith("w2_weight") else (GATE, UP)
        return {(e, k) for e in range(self.config.num_experts) for k in kinds}


MOE_MODEL_CLASSES: dict[str, type[LlamaForCausalLM]] = {
    "Qwen3MoeForCausalLM": MoeForCausalLM,
    "Qwen2MoeForCausalLM": MoeForCausalLM,
    "MixtralForCausalLM": MoeForCausalLM,
}
