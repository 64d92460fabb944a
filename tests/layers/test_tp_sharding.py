"""TP-aware layers: shards loaded per rank recombine to the unsharded layer (no process group needed)."""

from __future__ import annotations

import pytest
import torch

from radixserve.distributed.parallel_state import ParallelGroup
from radixserve.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from radixserve.layers.vocab_embedding import ParallelLMHead, VocabParallelEmbedding


def ranks(size: int) -> list[ParallelGroup]:
    return [ParallelGroup(rank=r, size=size) for r in range(size)]


def test_column_and_row_parallel_recombine() -> None:
    w1, w2 = torch.randn(8, 6), torch.randn(6, 8)
    x = torch.randn(3, 6)
    partial = []
    for tp in ranks(2):
        col = ColumnParallelLinear(6, 8, tp=tp)
        col.weight.weight_loader(col.weight, w1)  # type: ignore[attr-defined]
        row = RowParallelLinear(8, 6, tp=tp, reduce_results=False)
        row.weight.weight_loader(row.weight, w2)  # type: ignore[attr-defined]
        partial.append(row(col(x)))
    torch.testing.assert_close(sum(partial), x @ w1.T @ w2.T)


def test_merged_gate_up_layout() -> None:
    gate, up = torch.randn(4, 3), torch.randn(4, 3)
    shards = []
    for tp in ranks(2):
        layer = MergedColumnParallelLinear(3, [4, 4], tp=tp)
        layer.weight.weight_loader(layer.weight, gate, 0)  # type: ignore[attr-defined]
        layer.weight.weight_loader(layer.weight, up, 1)  # type: ignore[attr-defined]
        shards.append(layer.weight.data)
    torch.testing.assert_close(shards[0], torch.cat([gate[:2], up[:2]]))
    torch.testing.assert_close(shards[1], torch.cat([gate[2:], up[2:]]))


@pytest.mark.parametrize("tp_size,kv_heads", [(2, 2), (4, 2), (2, 4)])
def test_qkv_heads_split_and_kv_replicated(tp_size: int, kv_heads: int) -> None:
    d, heads = 2, 4
    q, k, v = torch.randn(heads * d, 5), torch.randn(kv_heads * d, 5), torch.randn(kv_heads * d, 5)
    for tp in ranks(tp_size):
        layer = QKVParallelLinear(5, d, heads, kv_heads, tp=tp)
        for name, t in (("q", q), ("k", k), ("v", v)):
            layer.weight.weight_loader(layer.weight, t, name)  # type: ignore[attr-defined]
        w = layer.weight.data
        qs, ks = layer.q_size, layer.kv_size
        torch.testing.assert_close(w[:qs], q.view(heads, d, 5)[tp.rank * heads // tp_size:][: heads // tp_size]
                                   .reshape(-1, 5))
        kv_index = tp.rank // layer.kv_replicas
        per = layer.num_kv_heads
        torch.testing.assert_close(w[qs : qs + ks], k.view(kv_heads, d, 5)[kv_index * per : (kv_index + 1) * per]
                                   .reshape(-1, 5))
        torch.testing.assert_close(w[qs + ks :], v.view(kv_heads, d, 5)[kv_index * per : (kv_index + 1) * per]
                                   .reshape(-1, 5))


def test_tp_that_does_not_divide_heads_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"attention heads \(9\) is not divisible by the tensor-parallel size \(2\)"):
        QKVParallelLinear(18, 2, 9, 3, tp=ParallelGroup(0, 2))


def test_vocab_parallel_embedding_and_head() -> None:
    vocab, hidden = 11, 4  # not divisible by 2: the last rank holds padding rows
    table = torch.randn(vocab, hidden)
    ids = torch.tensor([0, 5, 6, 10])
    emb_sum = torch.zeros(4, hidden)
    logits = []
    for tp in ranks(2):
        emb = VocabParallelEmbedding(vocab, hidden, tp)
        emb.weight.weight_loader(emb.weight, table)  # type: ignore[attr-defined]
        mask = (ids >= emb.start) & (ids < emb.end)
        local = torch.where(mask, ids - emb.start, torch.zeros_like(ids))
        emb_sum += torch.nn.functional.embedding(local, emb.weight) * mask[:, None]
        head = ParallelLMHead(vocab, hidden, tp)
        head.weight.weight_loader(head.weight, table)  # type: ignore[attr-defined]
        logits.append(torch.nn.functional.linear(table[:2], head.weight))  # gather = concat
    torch.testing.assert_close(emb_sum, table[ids])
    torch.testing.assert_close(torch.cat(logits, -1)[:, :vocab], table[:2] @ table.T)
