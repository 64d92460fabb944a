"""TritonAttnBackend keeps the scratch that CUDA graphs captured alive when eager decode outgrows it."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

pytest.importorskip("triton")

from radixserve.attention.triton_backend import MAX_SPLITS, TritonAttnBackend
from radixserve.mem_cache.memory_pool import ReqToTokenPool, TokenToKVPool
from radixserve.model_executor.forward_batch import ForwardBatch, ForwardMode


def _decode_batch(bs: int) -> ForwardBatch:
    z = torch.zeros(bs, dtype=torch.int64)
    return ForwardBatch(
        forward_mode=ForwardMode.DECODE, batch_size=bs, input_ids=z, positions=z, req_pool_indices=z,
        seq_lens=z + 1, out_cache_loc=z, seq_lens_cpu=[1] * bs, extend_prefix_lens_cpu=[], extend_seq_lens_cpu=[],
        req_to_token_pool=ReqToTokenPool(4, 64, "cpu"),
        token_to_kv_pool=TokenToKVPool(32, torch.float32, 1, 2, 8, "cpu"), attn_backend=None,  # type: ignore[arg-type]
    )


def test_graph_scratch_survives_a_larger_eager_batch() -> None:
    backend = TritonAttnBackend(4, 2, 8, torch.device("cpu"), context_len=64)
    backend.prepare_graph_decode(max_bs=2, bs=2, context_len=64)
    captured = weakref.ref(backend._mid_o_flat)
    backend.init_forward_metadata(_decode_batch(8))  # eager: needs a larger scratch
    gc.collect()
    assert backend._mid_o.shape[0] == 8
    assert captured() is not None and captured() is not backend._mid_o_flat


def test_graph_scratch_holds_every_batch_size_in_bs_times_splits() -> None:
    """The 8B shape's heads: batch 1 of a long context takes MAX_SPLITS slices; the scratch captured for
    graphs up to 512 holds every size's [bs, heads, splits, dim] view, at a fraction of
    512 x MAX_SPLITS rows."""
    heads, kv_heads, dim = 32, 8, 128
    backend = TritonAttnBackend(heads, kv_heads, dim, torch.device("cpu"), context_len=8192)
    assert backend._splits(1) == MAX_SPLITS
    for bs in (512, 256, 4, 1):  # captured largest first, as the CUDA graph runner does
        backend.prepare_graph_decode(max_bs=512, bs=bs, context_len=8192)
        splits = backend._num_splits
        assert backend._mid_o.shape == (bs, heads, splits, dim)
        assert backend._mid_lse.shape == (bs, heads, splits)
        assert backend._graph_mid is not None
        assert backend._mid_o.data_ptr() == backend._graph_mid[0].data_ptr()  # one scratch for all graphs
    rows = backend._mid_lse_flat.numel() // heads
    assert rows == max(b * backend._splits(b) for b in range(1, 513))
    assert rows * 4 <= 512 * MAX_SPLITS
