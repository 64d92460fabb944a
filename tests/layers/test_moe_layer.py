"""FusedMoE (layers/moe.py): routing rules, the torch reference against a per-token computation,
checkpoint layouts, and tensor-parallel shards that sum to the unsharded layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from radixserve.distributed.parallel_state import ParallelGroup
from radixserve.layers.moe import ALL_EXPERTS, DOWN, GATE, UP, FusedMoE, select_experts

E, K, H, INTER = 6, 2, 16, 12


def _experts(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Checkpoint-style weights: gate [E, I, H], up [E, I, H], down [E, H, I]."""
    return (torch.randn(E, INTER, H, generator=gen) * 0.3, torch.randn(E, INTER, H, generator=gen) * 0.3,
            torch.randn(E, H, INTER, generator=gen) * 0.3)


def _layer(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, renormalize: bool,
           tp: ParallelGroup | None = None) -> FusedMoE:
    tp = tp or ParallelGroup()
    layer = FusedMoE(E, K, H, INTER, renormalize, tp, reduce_results=False)
    for e in range(E):  # one tensor per expert and projection, as HF checkpoints store them
        layer.w13_weight.weight_loader(layer.w13_weight, gate[e], (e, GATE))  # type: ignore[attr-defined]
        layer.w13_weight.weight_loader(layer.w13_weight, up[e], (e, UP))  # type: ignore[attr-defined]
        layer.w2_weight.weight_loader(layer.w2_weight, down[e], (e, DOWN))  # type: ignore[attr-defined]
    return layer


def _per_token(x: torch.Tensor, logits: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
               renormalize: bool) -> torch.Tensor:
    """The definition, one token and one chosen expert at a time."""
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        probs = torch.softmax(logits[t].double(), -1)
        chosen = sorted(range(E), key=lambda e: -float(probs[e]))[:K]
        total = sum(float(probs[e]) for e in chosen) if renormalize else 1.0
        for e in chosen:
            h = F.silu(gate[e] @ x[t]) * (up[e] @ x[t])
            out[t] += float(probs[e]) / total * (down[e] @ h)
    return out


@pytest.mark.parametrize("renormalize", [True, False])
def test_reference_equals_per_token_definition(renormalize: bool) -> None:
    gen = torch.Generator().manual_seed(7)
    gate, up, down = _experts(gen)
    x, logits = torch.randn(9, H, generator=gen), torch.randn(9, E, generator=gen)
    got = _layer(gate, up, down, renormalize)(x, logits)
    torch.testing.assert_close(got, _per_token(x, logits, gate, up, down, renormalize), atol=1e-5, rtol=1e-5)


def test_select_experts_renormalisation_rule() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.0, 3.0, 0.0, 2.9]])
    w, ids = select_experts(logits, 2, renormalize=False)
    probs = torch.softmax(logits, -1)
    assert ids.tolist() == [[0, 1], [1, 3]]
    torch.testing.assert_close(w, probs.gather(1, ids))  # Qwen MoE with norm_topk_prob false: raw softmax
    w, _ = select_experts(logits, 2, renormalize=True)
    torch.testing.assert_close(w.sum(-1), torch.ones(2))  # Mixtral; Qwen MoE with norm_topk_prob true
    torch.testing.assert_close(w[0, 0] / w[0, 1], probs[0, 0] / probs[0, 1])


def test_stacked_checkpoint_layout_loads_the_same() -> None:
    gen = torch.Generator().manual_seed(3)
    gate, up, down = _experts(gen)
    per_expert = _layer(gate, up, down, True)
    stacked = FusedMoE(E, K, H, INTER, True)
    # transformers 5's layout: gate_up_proj [E, 2I, H] (gate rows first), down_proj [E, H, I].
    stacked.w13_weight.weight_loader(stacked.w13_weight, torch.cat([gate, up], 1), ALL_EXPERTS)  # type: ignore[attr-defined]
    stacked.w2_weight.weight_loader(stacked.w2_weight, down, ALL_EXPERTS)  # type: ignore[attr-defined]
    assert torch.equal(stacked.w13_weight, per_expert.w13_weight)
    assert torch.equal(stacked.w2_weight, per_expert.w2_weight)


def test_tp_shards_sum_to_the_unsharded_layer() -> None:
    gen = torch.Generator().manual_seed(5)
    gate, up, down = _experts(gen)
    x, logits = torch.randn(11, H, generator=gen), torch.randn(11, E, generator=gen)
    full = _layer(gate, up, down, True)(x, logits)
    shards = [_layer(gate, up, down, True, ParallelGroup(rank=r, size=2)) for r in range(2)]
    assert shards[0].w13_weight.shape == (E, INTER, H) and shards[1].w2_weight.shape == (E, H, INTER // 2)
    # Rank 1 holds the second half of every expert's gate rows, then of its up rows.
    assert torch.equal(shards[1].w13_weight[:, : INTER // 2], gate[:, INTER // 2:])
    assert torch.equal(shards[1].w13_weight[:, INTER // 2:], up[:, INTER // 2:])
    torch.testing.assert_close(shards[0](x, logits) + shards[1](x, logits), full, atol=1e-5, rtol=1e-5)


def test_load_errors_name_the_expert_and_shapes() -> None:
    layer = FusedMoE(E, K, H, INTER, True)
    loader = layer.w13_weight.weight_loader  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"expert 2 up: checkpoint shape \(12, 8\), expected \(12, 16\)"):
        loader(layer.w13_weight, torch.zeros(INTER, 8), (2, UP))
    with pytest.raises(ValueError, match=r"expert 6 out of range: the layer has 6 experts"):
        loader(layer.w13_weight, torch.zeros(INTER, H), (6, GATE))
    with pytest.raises(ValueError, match="not divisible by the tensor-parallel size"):
        FusedMoE(E, K, H, INTER, True, ParallelGroup(rank=0, size=5))
