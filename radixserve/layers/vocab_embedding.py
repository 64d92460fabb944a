"""Vocabulary-parallel embedding and LM head: each rank holds a contiguous slice of the vocabulary."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from radixserve.distributed.parallel_state import SINGLE, ParallelGroup
from radixserve.layers.linear import QuantizedTensor, drop_dense, pack_quantized
from radixserve.layers.quantization.base import QuantMethod


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, tp: ParallelGroup = SINGLE) -> None:
        super().__init__()
        self.tp = tp
        self.vocab_size = vocab_size
        # Pad so every rank holds the same number of rows; the padding rows are never looked up.
        self.rows_per_rank = -(-vocab_size // tp.size)
        self.start = tp.rank * self.rows_per_rank
        self.end = min(self.start + self.rows_per_rank, vocab_size)
        self.weight = nn.Parameter(torch.zeros(self.rows_per_rank, hidden_size), requires_grad=False)
        self.weight.weight_loader = self._load  # type: ignore[attr-defined]

    def _load(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
        if loaded.shape[0] != self.vocab_size or loaded.shape[1] != param.shape[1]:
            raise ValueError(f"embedding: checkpoint shape {tuple(loaded.shape)} does not fit "
                             f"vocab {self.vocab_size} x hidden {param.shape[1]}")
        param.data[: self.end - self.start].copy_(loaded[self.start : self.end])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return F.embedding(input_ids, self.weight)
        mask = (input_ids >= self.start) & (input_ids < self.end)
        local = torch.where(mask, input_ids - self.start, torch.zeros_like(input_ids))
        out = F.embedding(local, self.weight) * mask.unsqueeze(-1).to(self.weight.dtype)
        return self.tp.all_reduce(out)


# A packed tied head's best candidates per rank whose logits are recomputed from the float table.
REFINE_TOP = 64


class ParallelLMHead(VocabParallelEmbedding):
    """The output projection; logits from all ranks are gathered along the vocabulary.

    A quantized head (`load_quantized`, GGUF) replaces the product only: a tied head's `weight` is
    the embedding's, which still serves lookups, so it is kept. Its packed kernel returns logits
    rounded like its bf16 activations (steps of 0.06 at |logit| 8-16), enough to flip a greedy
    near-tie; so the REFINE_TOP best candidates of each row are recomputed exactly from that float
    table. Greedy and top-k/top-p choices then see the reference's logits wherever the winner is
    among the packed product's top 64, and the full product still costs a quarter of the bytes.
    A method that says it is `precise` (the CPU integer product: 15-bit activations, the file's own
    scales, ~1e-5 relative) needs no refinement, and skips its top-k (0.3-0.6 ms a step on 2 cores)."""

    def __init__(self, vocab_size: int, hidden_size: int, tp: ParallelGroup = SINGLE) -> None:
        super().__init__(vocab_size, hidden_size, tp)
        self.quant: QuantMethod | None = None
        self.tied = False

    def tie_to(self, embedding: VocabParallelEmbedding) -> None:
        """Share the embedding's table (tie_word_embeddings)."""
        self.weight = embedding.weight
        self.tied = True

    def load_quantized(self, loaded: QuantizedTensor, shard_id: object = None) -> None:
        if loaded.shape[0] != self.vocab_size or loaded.shape[1] != self.weight.shape[1]:
            raise ValueError(f"LM head: quantized {loaded.source} tensor {loaded.shape} does not fit "
                             f"vocab {self.vocab_size} x hidden {self.weight.shape[1]}")
        self.quant = pack_quantized(loaded.narrow(0, self.start, self.end - self.start), self.weight)
        if not self.tied:  # a tied table still serves the embedding's lookups
            drop_dense(self.weight)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.quant is None:
            logits = F.linear(hidden, self.weight)
        else:
            logits = self.quant.apply(hidden)
            if self.tied and self.weight.numel() and not self.quant.precise:
                top = logits.topk(min(REFINE_TOP, logits.shape[-1]), dim=-1).indices  # [B, k]
                exact = torch.bmm(self.weight[top], hidden.unsqueeze(-1).to(self.weight.dtype)).squeeze(-1)
                logits = logits.scatter(-1, top, exact.to(logits.dtype))
            pad = self.rows_per_rank - (self.end - self.start)
            if pad:  # the last rank's padding rows: cut after the gather
                logits = F.pad(logits, (0, pad))
        logits = self.tp.all_gather_last_dim(logits)
        return logits[..., : self.vocab_size]
