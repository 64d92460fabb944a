"""Mixture-of-experts MLP: top-k routing over SwiGLU experts whose weights are stacked per layer.

Weights: `w13_weight` [E, 2 * I_r, H] (each expert's gate rows, then its up rows) and `w2_weight`
[E, H, I_r], where I_r is this rank's share of the expert width I. Under tensor parallelism every
rank holds every expert, sliced along I exactly like the dense MLP (gate/up column-parallel, down
row-parallel): each rank's output is a partial sum over its slice of I, and one all-reduce after
the weighted sum over the top-k experts completes it, the same single collective as a dense layer.

Compute: on CUDA the Triton grouped GEMMs of radixserve.kernels.fused_moe; elsewhere
`fused_experts_reference`, the same math as a loop over the experts that received tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from radixserve.distributed.parallel_state import SINGLE, ParallelGroup, divide

# Checkpoint-side names of an expert's projections, as FusedMoE's loader shard ids.
GATE, UP, DOWN = "gate", "up", "down"
ALL_EXPERTS = "all"  # one [E, ...] tensor holding every expert (transformers 5's in-memory layout)


def select_experts(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax over the experts in float32, then the top-k; returns (weights float32 [T, k], ids int64 [T, k]).

    `renormalize`: divide the k weights by their sum (Mixtral always; Qwen MoE when norm_topk_prob).
    """
    probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


def fused_experts_reference(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
                            topk_ids: torch.Tensor) -> torch.Tensor:
    """sum_k topk_weights[t, k] * expert_{topk_ids[t, k]}(x[t]) for every token t, in x's dtype.

    Loops over the experts that received tokens (as transformers does), each expert's products over
    all its tokens at once; the weighted outputs are summed in float32 with index_add.
    """
    tokens, top_k = topk_ids.shape
    inter = w2.shape[2]
    out = torch.zeros(tokens, w2.shape[1], dtype=torch.float32, device=x.device)
    flat = topk_ids.reshape(-1)
    # Stable: within an expert, (token, k) pairs stay in token order, as in transformers' loop.
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=w13.shape[0]).tolist()
    flat_weights = topk_weights.reshape(-1)
    start = 0
    for expert, n in enumerate(counts):
        if n == 0:
            continue
        pairs = order[start:start + n]
        start += n
        token = pairs // top_k
        h = F.linear(x[token], w13[expert])
        act = F.silu(h[:, :inter]) * h[:, inter:]
        y = F.linear(act, w2[expert])
        out.index_add_(0, token, y.float() * flat_weights[pairs, None])
    return out.to(x.dtype)


class FusedMoE(nn.Module):
    """The routed experts of one layer: forward(x, router_logits) -> [T, H].

    With `reduce_results=False` the output is this rank's partial sum, for a caller that adds more
    partial sums (Qwen2-MoE's shared expert) before its own all-reduce.
    """

    def __init__(self, num_experts: int, top_k: int, hidden_size: int, intermediate_size: int, renormalize: bool,
                 tp: ParallelGroup = SINGLE, reduce_results: bool = True) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.top_k = top_k
        self.renormalize = renormalize
        self.tp = tp
        self.reduce_results = reduce_results
        self.intermediate_size = intermediate_size
        self.inter_per_rank = divide(intermediate_size, tp.size, "expert intermediate size")
        self.w13_weight = nn.Parameter(torch.empty(num_experts, 2 * self.inter_per_rank, hidden_size),
                                       requires_grad=False)
        self.w2_weight = nn.Parameter(torch.empty(num_experts, hidden_size, self.inter_per_rank), requires_grad=False)
        self.w13_weight.weight_loader = self._load_w13  # type: ignore[attr-defined]
        self.w2_weight.weight_loader = self._load_w2  # type: ignore[attr-defined]

    # ---- loading: full checkpoint tensors in, this rank's slice of I out ----------------------
    def _rank_slice(self, t: torch.Tensor, dim: int, what: str) -> torch.Tensor:
        if t.shape[dim] != self.intermediate_size:
            raise ValueError(f"{what}: checkpoint dim {dim} is {t.shape[dim]}, expected the expert width "
                             f"{self.intermediate_size} (shape {tuple(t.shape)})")
        return t.narrow(dim, self.tp.rank * self.inter_per_rank, self.inter_per_rank)

    def _load_w13(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
        n = self.inter_per_rank
        if shard_id == ALL_EXPERTS:  # [E, 2I, H]: every expert's gate rows then up rows
            self._check(loaded, (self.num_experts, 2 * self.intermediate_size, param.shape[2]), "experts gate_up")
            gate, up = loaded.split(self.intermediate_size, dim=1)
            param.data[:, :n].copy_(self._rank_slice(gate, 1, "experts gate"))
            param.data[:, n:].copy_(self._rank_slice(up, 1, "experts up"))
            return
        expert, which = self._expert_shard(shard_id, (GATE, UP))
        self._check(loaded, (self.intermediate_size, param.shape[2]), f"expert {expert} {which}")
        offset = 0 if which == GATE else n
        param.data[expert, offset:offset + n].copy_(self._rank_slice(loaded, 0, f"expert {expert} {which}"))

    def _load_w2(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
        if shard_id == ALL_EXPERTS:  # [E, H, I]
            self._check(loaded, (self.num_experts, param.shape[1], self.intermediate_size), "experts down")
            param.data.copy_(self._rank_slice(loaded, 2, "experts down"))
            return
        expert, _ = self._expert_shard(shard_id, (DOWN,))
        self._check(loaded, (param.shape[1], self.intermediate_size), f"expert {expert} down")
        param.data[expert].copy_(self._rank_slice(loaded, 1, f"expert {expert} down"))

    def _expert_shard(self, shard_id: object, allowed: tuple[str, ...]) -> tuple[int, str]:
        if not (isinstance(shard_id, tuple) and len(shard_id) == 2 and shard_id[1] in allowed):
            raise ValueError(f"unknown expert shard {shard_id!r}; expected (expert, one of {allowed})")
        expert, which = shard_id
        if not 0 <= int(expert) < self.num_experts:
            raise ValueError(f"expert {expert} out of range: the layer has {self.num_experts} experts")
        return int(expert), str(which)

    @staticmethod
    def _check(t: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
        if tuple(t.shape) != shape:
            raise ValueError(f"{what}: checkpoint shape {tuple(t.shape)}, expected {shape}")

    # ---- compute ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, router_logits: torch.Tensor) -> torch.Tensor:
        weights, ids = select_experts(router_logits, self.top_k, self.renormalize)
        if x.is_cuda:
            from radixserve.kernels.fused_moe import fused_experts

            out = fused_experts(x, self.w13_weight, self.w2_weight, weights, ids)
        else:
            out = fused_experts_reference(x, self.w13_weight, self.w2_weight, weights, ids)
        return self.tp.all_reduce(out) if self.reduce_results else out
