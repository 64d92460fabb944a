"""Decode under CUDA graphs: one graph per batch size of a ladder, captured at start-up and replayed
with the batch padded up to the next captured size.

Padded entries point at ReqToTokenPool.padding_row and KV slot 0, so they read and write only
scratch memory. Graphs are captured largest first into one shared memory pool.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from radixserve.model_executor.forward_batch import DECODE_INDEX_ROWS, ForwardBatch, ForwardMode

if TYPE_CHECKING:
    from radixserve.attention.triton_backend import TritonAttnBackend
    from radixserve.model_executor.model_runner import ModelRunner

logger = logging.getLogger(__name__)


def batch_size_ladder(max_bs: int) -> list[int]:
    """Captured batch sizes: every 8 up to 256, then every 16 up to 512, then every 32 (a batch pads up
    to the next size; the padding rows cost GEMM rows, ~3 % of a step at worst above 256)."""
    ladder = [b for b in (1, 2, 4, 8) if b <= max_bs]
    ladder += list(range(16, min(max_bs, 256) + 1, 8))
    ladder += list(range(272, min(max_bs, 512) + 1, 16))
    ladder += list(range(544, max_bs + 1, 32))
    if ladder[-1] != max_bs:
        ladder.append(max_bs)
    return ladder


class CudaGraphRunner:
    def __init__(self, runner: ModelRunner, backend: TritonAttnBackend, max_bs: int) -> None:
        self.runner = runner
        self.backend = backend
        self.ladder = batch_size_ladder(max_bs)
        self.max_bs = self.ladder[-1]
        dev = runner.device
        pad_row = runner.req_to_token_pool.padding_row
        with torch.inference_mode():
            self.input_ids = torch.zeros(self.max_bs, dtype=torch.int64, device=dev)
            # The graphs' index inputs, as the rows of one tensor (DECODE_INDEX_ROWS): a batch that
            # carries ForwardBatch.decode_index is taken in with one copy, padding with another.
            pad = {"req_pool_indices": pad_row, "positions": 0, "seq_lens": 1, "out_cache_loc": 0}
            self.pad_column = torch.tensor([[pad[name]] for name in DECODE_INDEX_ROWS], dtype=torch.int64, device=dev)
            self.index = self.pad_column.repeat(1, self.max_bs)
            self.req_pool_indices, self.positions, self.seq_lens, self.out_cache_loc = self.index.unbind(0)
            # One logits buffer for all graphs (ForwardBatch.logits_out): each replay's logits are
            # sampled on the same stream before the next replay writes them.
            self.logits = torch.empty(self.max_bs, runner.config.vocab_size, dtype=torch.float32, device=dev)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.pool = torch.cuda.graph_pool_handle()
        start = time.monotonic()
        # A garbage collection inside a capture can free CUDA memory or destroy an event of some
        # dead object (an earlier Engine's), which invalidates the capture
        # (cudaErrorStreamCaptureInvalidated): collect now and hold the collector off until done.
        gc.collect()
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._capture_all()
        finally:
            if gc_was_enabled:
                gc.enable()
        logger.info("captured %d decode CUDA graphs (batch 1..%d) in %.1fs", len(self.ladder), self.max_bs,
                    time.monotonic() - start)

    def _capture_all(self) -> None:
        for bs in tqdm(list(reversed(self.ladder)), desc="Capturing CUDA graphs", unit="graph", leave=False,
                       disable=self.runner.tp.rank != 0):
            self._capture(bs)

    def _forward_batch(self, bs: int) -> ForwardBatch:
        r = self.runner
        return ForwardBatch(
            forward_mode=ForwardMode.DECODE, batch_size=bs, input_ids=self.input_ids[:bs],
            positions=self.positions[:bs], req_pool_indices=self.req_pool_indices[:bs], seq_lens=self.seq_lens[:bs],
            out_cache_loc=self.out_cache_loc[:bs], seq_lens_cpu=[1] * bs, extend_prefix_lens_cpu=[],
            extend_seq_lens_cpu=[], req_to_token_pool=r.req_to_token_pool, token_to_kv_pool=r.token_to_kv_pool,
            attn_backend=self.backend, logits_out=self.logits[:bs],
        )

    @torch.inference_mode()
    def _capture(self, bs: int) -> None:
        fb = self._forward_batch(bs)
        self.backend.prepare_graph_decode(self.max_bs, bs, self.runner.sizes.context_len)
        for _ in range(2):  # compile Triton kernels and settle allocations outside the graph
            self.runner.model(fb.input_ids, fb.positions, fb)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self.runner.model(fb.input_ids, fb.positions, fb)
        self.graphs[bs] = graph
        self.outputs[bs] = out

    def can_run(self, fb: ForwardBatch) -> bool:
        return fb.forward_mode.is_decode() and fb.batch_size <= self.max_bs

    @torch.inference_mode()
    def replay(self, fb: ForwardBatch) -> torch.Tensor:
        bs = fb.batch_size
        graph_bs = next(b for b in self.ladder if b >= bs)
        self.input_ids[:bs].copy_(fb.input_ids)
        index = fb.decode_index
        if index is None:  # a batch built otherwise (ScheduleBatch always builds it)
            index = torch.stack([getattr(fb, name) for name in DECODE_INDEX_ROWS])
        self.index[:, :bs].copy_(index)
        if graph_bs > bs:
            # Padded rows read and write only scratch: stale indices of a larger batch would write
            # into live KV slots.
            self.input_ids[bs:graph_bs].zero_()
            self.index[:, bs:graph_bs].copy_(self.pad_column.expand(-1, graph_bs - bs))
        self.graphs[graph_bs].replay()
        return self.outputs[graph_bs][:bs]
