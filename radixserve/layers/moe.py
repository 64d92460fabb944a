"""Mixture-of-experts MLP: top-k routing over SwiGLU experts whose weights are stacked per layer.

Weights: `w13_weight` [E, 2 * I_r, H] (each expert's gate rows, then its up rows) and `w2_weight`
[E, H, I_r], where I_r is this rank's share of the expert width I. Under tensor parallelism every
rank holds every expert, sliced along I exactly like the dense MLP (gate/up column-parallel, down
row-parallel): each rank's output is a partial sum over its slice of I, and one all-reduce after
the weighted sum over the top-k experts completes it, the same single collective as a dense layer.

Compute: on CUDA the Triton grouped GEMMs of radixserve.kernels.fused_moe; elsewhere
`fused_experts_reference`, the same math as a loop over the experts that received tokens.

FP8 experts (an FP8 checkpoint's, or `--quantization fp8`): each stack may hold e4m3 codes with
float32 scales instead (`Fp8Experts`), per output channel or per 128x128 block as the checkpoint
has them. They run weight-only (W8A16): the kernel reads the codes, widens them to the activation
dtype and applies the scales to its float32 partial sums, so a decode step reads half the bytes of
bf16 experts and the activations are not rounded to FP8. The reference dequantizes the experts
that received tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from radixserve.distributed.parallel_state import SINGLE, ParallelGroup, divide
from radixserve.layers.linear import drop_dense
from radixserve.layers.quantization.base import UnsupportedQuantizationError
from radixserve.layers.quantization.fp8 import FP8_DTYPE, Fp8Weight

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


@dataclass
class Fp8Experts:
    """One projection stack in FP8: codes [E, N, K] and float32 scales [E, ceil(N / bn), ceil(K / bk)],
    where (bn, bk) = `block`: (1, K) for one scale per output channel, (128, 128) for block scales."""

    codes: torch.Tensor
    scale: torch.Tensor
    block: tuple[int, int]

    @classmethod
    def empty(cls, experts: int, n: int, k: int, block: tuple[int, int], device: torch.device) -> Fp8Experts:
        bn, bk = block
        return cls(torch.zeros(experts, n, k, dtype=FP8_DTYPE, device=device),
                   torch.zeros(experts, math.ceil(n / bn), math.ceil(k / bk), dtype=torch.float32, device=device),
                   block)

    @property
    def shape(self) -> tuple[int, int, int]:
        e, n, k = self.codes.shape
        return int(e), int(n), int(k)

    def expert(self, e: int, dtype: torch.dtype) -> torch.Tensor:
        """Expert `e`'s weight [N, K], dequantized to `dtype`."""
        _, n, k = self.shape
        bn, bk = self.block
        scale = self.scale[e].repeat_interleave(bn, 0)[:n].repeat_interleave(bk, 1)[:, :k]
        return (self.codes[e].float() * scale).to(dtype)

    def nbytes(self) -> int:
        return self.codes.numel() * self.codes.element_size() + self.scale.numel() * 4


ExpertStack = torch.Tensor | Fp8Experts


def quantize_experts_fp8(w: torch.Tensor, block: int | None = None) -> Fp8Experts:
    """Float experts [E, N, K] -> FP8 codes with one scale per expert and output row (`block` None:
    `--quantization fp8`), or per `block` x `block` tile (partial at the edges) as block-scaled
    checkpoints store them."""
    from radixserve.layers.quantization.fp8 import FP8_MAX

    e, n, k = w.shape
    wf = w.float()
    if block is None:
        scale = (wf.abs().amax(dim=2, keepdim=True) / FP8_MAX).clamp(min=1e-12)
        return Fp8Experts((wf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale, (1, k))
    nb, kb = math.ceil(n / block), math.ceil(k / block)
    padded = torch.zeros(e, nb * block, kb * block, device=w.device)
    padded[:, :n, :k] = wf
    tiles = padded.view(e, nb, block, kb, block)
    scale = (tiles.abs().amax(dim=(2, 4)) / FP8_MAX).clamp(min=1e-12)
    codes = (tiles / scale[:, :, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return Fp8Experts(codes.view(e, nb * block, kb * block)[:, :n, :k].contiguous(), scale, (block, block))


def _expert_weight(w: ExpertStack, e: int, dtype: torch.dtype) -> torch.Tensor:
    return w.expert(e, dtype) if isinstance(w, Fp8Experts) else w[e]


def fused_experts_reference(x: torch.Tensor, w13: ExpertStack, w2: ExpertStack, topk_weights: torch.Tensor,
                            topk_ids: torch.Tensor) -> torch.Tensor:
    """sum_k topk_weights[t, k] * expert_{topk_ids[t, k]}(x[t]) for every token t, in x's dtype.

    Loops over the experts that received tokens (as transformers does), each expert's products over
    all its tokens at once; the weighted outputs are summed in float32 with index_add.
    """
    tokens, top_k = topk_ids.shape
    num_experts, hidden, inter = w2.shape
    out = torch.zeros(tokens, hidden, dtype=torch.float32, device=x.device)
    flat = topk_ids.reshape(-1)
    # Stable: within an expert, (token, k) pairs stay in token order, as in transformers' loop.
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=num_experts).tolist()
    flat_weights = topk_weights.reshape(-1)
    start = 0
    for expert, n in enumerate(counts):
        if n == 0:
            continue
        pairs = order[start:start + n]
        start += n
        token = pairs // top_k
        h = F.linear(x[token], _expert_weight(w13, expert, x.dtype))
        act = F.silu(h[:, :inter]) * h[:, inter:]
        y = F.linear(act, _expert_weight(w2, expert, x.dtype))
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
        self.hidden_size = hidden_size
        self.inter_per_rank = divide(intermediate_size, tp.size, "expert intermediate size")
        self.w13_weight = nn.Parameter(torch.empty(num_experts, 2 * self.inter_per_rank, hidden_size),
                                       requires_grad=False)
        self.w2_weight = nn.Parameter(torch.empty(num_experts, hidden_size, self.inter_per_rank), requires_grad=False)
        self.w13_weight.weight_loader = self._load_w13  # type: ignore[attr-defined]
        self.w2_weight.weight_loader = self._load_w2  # type: ignore[attr-defined]
        # FP8 stacks replacing w13_weight / w2_weight, and the expert shards each has received.
        self.w13_fp8: Fp8Experts | None = None
        self.w2_fp8: Fp8Experts | None = None
        self._fp8_seen: dict[str, set[tuple[int, str]]] = {}

    @property
    def w13(self) -> ExpertStack:
        return self.w13_fp8 if self.w13_fp8 is not None else self.w13_weight

    @property
    def w2(self) -> ExpertStack:
        return self.w2_fp8 if self.w2_fp8 is not None else self.w2_weight

    @property
    def _pending(self) -> list[tuple[int, str]]:
        """FP8 expert shards still missing from a stack that has begun loading (packed_load checks it)."""
        missing: list[tuple[int, str]] = []
        for stack, kinds in (("w13", (GATE, UP)), ("w2", (DOWN,))):
            seen = self._fp8_seen.get(stack)
            if seen is not None:
                missing += sorted({(e, k) for e in range(self.num_experts) for k in kinds} - seen)
        return missing

    def load_quantized(self, w: Fp8Weight, shard_id: object) -> None:
        """One expert's FP8 projection from a checkpoint (packed_load); this rank's slice of I is kept."""
        if not isinstance(w, Fp8Weight):
            raise UnsupportedQuantizationError(f"{w.source}: only FP8 experts stay quantized")
        expert, which = self._expert_shard(shard_id, (GATE, UP, DOWN))
        n = self.inter_per_rank
        if which == DOWN:
            self._check(w.codes, (self.hidden_size, self.intermediate_size), f"expert {expert} down")
            part = w.narrow(1, self.tp.rank * n, n)
        else:
            self._check(w.codes, (self.intermediate_size, self.hidden_size), f"expert {expert} {which}")
            part = w.narrow(0, self.tp.rank * n, n)
        rows, cols = part.shape
        block = part.block or (1, cols)
        if part.block is not None and rows % part.block[0]:
            raise UnsupportedQuantizationError(
                f"{w.source}: {rows} expert rows per rank do not fill its {part.block[0]}-row scale blocks")
        stack_name = "w2" if which == DOWN else "w13"
        stack = self.w2_fp8 if which == DOWN else self.w13_fp8
        if stack is None:
            param = self.w2_weight if which == DOWN else self.w13_weight
            if stack_name in self._fp8_seen or param.numel() == 0:
                raise ValueError(f"expert {expert} {which}: FP8 and float expert weights mixed in one layer")
            stack = Fp8Experts.empty(self.num_experts, rows * (1 if which == DOWN else 2), cols, block, param.device)
            if which == DOWN:
                self.w2_fp8 = stack
            else:
                self.w13_fp8 = stack
            self._fp8_seen[stack_name] = set()
            drop_dense(param)
        elif stack.block != block:
            # Not UnsupportedQuantizationError: earlier experts are in FP8 already, so no fallback is left.
            raise ValueError(f"expert {expert} {which}: scale granularity {block} differs from the layer's "
                             f"other experts' {stack.block}")
        offset = n if which == UP else 0
        bn = block[0]
        stack.codes[expert, offset:offset + rows].copy_(part.codes)
        stack.scale[expert, offset // bn:offset // bn + part.scale.shape[0]].copy_(part.scale)
        self._fp8_seen[stack_name].add((expert, which))

    def quantize_fp8(self) -> None:
        """`--quantization fp8`: both stacks to FP8 with one scale per output channel of each expert."""
        for name in ("w13", "w2"):
            param = self.w13_weight if name == "w13" else self.w2_weight
            if param.numel() == 0:
                continue  # a checkpoint's FP8 stack already
            stack = quantize_experts_fp8(param.data)
            if name == "w13":
                self.w13_fp8 = stack
            else:
                self.w2_fp8 = stack
            drop_dense(param)

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

            out = fused_experts(x, self.w13, self.w2, weights, ids)
        else:
            out = fused_experts_reference(x, self.w13, self.w2, weights, ids)
        return self.tp.all_reduce(out) if self.reduce_results else out
