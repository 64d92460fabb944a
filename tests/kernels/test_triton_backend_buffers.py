"""TritonAttnBackend keeps the scratch that CUDA graphs captured alive when eager decode outgrows it."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

pytest.importorskip("triton")

from radixserve.attention.triton_backend import TritonAttnBackend
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
    captured = weakref.ref(backend._mid_o)
    backend.init_forward_metadata(_decode_batch(8))  # eager: needs a larger scratch
    gc.collect()
    assert backend._mid_o.shape[0] >= 8
    assert captured() is not None and captured() is not backend._mid_o
