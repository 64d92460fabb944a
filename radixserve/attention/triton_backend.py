"""TritonAttnBackend: the GPU attention backend over our Triton paged-attention kernels."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from radixserve.attention.base import AttentionBackend
from radixserve.kernels.fused_ops import rotary_inplace
from radixserve.kernels.triton_attention import decode_attention, decode_num_splits, extend_attention

if TYPE_CHECKING:
    from radixserve.layers.radix_attention import RadixAttention
    from radixserve.layers.rotary_embedding import RotaryEmbedding
    from radixserve.model_executor.forward_batch import ForwardBatch

# Split-KV slices per (request, KV head) at most. Batch 1 with 8 KV heads would take 33 (decode_num_splits
# fills the SMs twice). Splits are fixed by the context length (eager and graph replays then agree), and
# the kernel cuts each sequence into that many slices however short it is. Batch 1 of the 8B shape in the
# engine, H200, 32 against 16 (ab_batch1_fixed32_splits_h200_20261203.json): +4 us a step at 512-640 keys
# (+0.1 %), -123 us at 4096-4224 (-2.9 %). Attention timed alone had put 32 at +0.5 us a layer at 544
# keys (profile_decode_bs1_*_h200_20261203.json); in the step it costs less (why was not measured: PDL
# overlaps attention with the products around it). A split count per sequence (984d4e8) measured +12 /
# -118 us in the same call and is not used.
MAX_SPLITS = 32


class TritonAttnBackend(AttentionBackend):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, device: torch.device,
                 context_len: int) -> None:
        self.context_len = context_len
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.device = device
        props = torch.cuda.get_device_properties(device) if device.type == "cuda" else None
        self.num_sms = props.multi_processor_count if props is not None else 132
        # Split-KV scratch, flat: a batch's [bs, heads, splits, dim] view of it. Sized by bs x splits,
        # which stays small (splits shrink as the batch grows: 8 MB for graphs up to 512 at the 8B
        # shape) where [bs, heads, MAX_SPLITS, dim] would hold 268 MB.
        self._mid_o_flat = torch.empty(0, dtype=torch.float32, device=device)
        self._mid_lse_flat = torch.empty(0, dtype=torch.float32, device=device)
        self._mid_o = self._mid_o_flat
        self._mid_lse = self._mid_lse_flat
        self._num_splits = 1
        self._prefix_lens = torch.empty(0, dtype=torch.int64, device=device)
        self._extend_lens = torch.empty(0, dtype=torch.int64, device=device)
        self._extend_start = torch.empty(0, dtype=torch.int64, device=device)
        self._max_extend = 0
        self._dec_pool = torch.empty(0, dtype=torch.int64, device=device)  # a mixed batch's decode rows
        self._dec_seq_lens = torch.empty(0, dtype=torch.int64, device=device)
        # The split-KV scratch that captured CUDA graphs write to. Graphs hold raw addresses, so
        # these must stay allocated for the graphs' lifetime even when eager decode outgrows them:
        # freed, the allocator hands the memory to other tensors and every replay scribbles on them.
        self._graph_mid: tuple[torch.Tensor, torch.Tensor] | None = None

    def _splits(self, bs: int, context_len: int | None = None) -> int:
        return decode_num_splits(context_len or self.context_len, bs, self.num_kv_heads, self.num_sms, MAX_SPLITS)

    def _ensure_mid(self, bs: int, splits: int, capacity: int = 0) -> None:
        """Views of the scratch for bs rows of `splits` slices; the flat buffers grow to hold at least
        `capacity` (request x split) rows. Growing replaces them: the old ones live on while
        _graph_mid holds them."""
        rows = max(bs * splits, capacity)
        if self._mid_lse_flat.numel() < rows * self.num_heads:
            self._mid_o_flat = torch.empty(rows * self.num_heads * self.head_dim, dtype=torch.float32,
                                           device=self.device)
            self._mid_lse_flat = torch.empty(rows * self.num_heads, dtype=torch.float32, device=self.device)
        n = bs * self.num_heads * splits
        self._mid_o = self._mid_o_flat[: n * self.head_dim].view(bs, self.num_heads, splits, self.head_dim)
        self._mid_lse = self._mid_lse_flat[:n].view(bs, self.num_heads, splits)

    def prepare_graph_decode(self, max_bs: int, bs: int, context_len: int) -> None:
        """Fixed metadata for a captured decode graph: the scratch sized once for every batch size up to
        max_bs (graphs hold its address), splits chosen for the longest context."""
        capacity = max(b * self._splits(b, context_len) for b in range(1, max_bs + 1))
        self._num_splits = self._splits(bs, context_len)
        self._ensure_mid(bs, self._num_splits, capacity)
        self._graph_mid = (self._mid_o_flat, self._mid_lse_flat)

    def init_forward_metadata(self, fb: ForwardBatch) -> None:
        if fb.forward_mode.is_decode():
            bs = fb.batch_size
            # Split by the context length, not this batch's longest sequence: eager and graph-replayed
            # steps then use the same split and give bit-identical attention.
            self._num_splits = self._splits(bs)
            self._ensure_mid(bs, self._num_splits)
        else:
            # Mixed batches: the prompts' rows go to the extend kernel, the running requests'
            # one-token rows to the decode kernel, which reads each KV head once for all the query
            # heads of its group (the extend kernel reads it once per query head).
            n_ext = fb.batch_size - fb.num_decode_rows
            lens = torch.tensor(fb.extend_seq_lens_cpu[:n_ext], dtype=torch.int64)
            self._extend_lens = lens.to(self.device, non_blocking=True)
            self._prefix_lens = torch.tensor(fb.extend_prefix_lens_cpu[:n_ext], dtype=torch.int64).to(
                self.device, non_blocking=True)
            self._extend_start = (torch.cumsum(lens, 0) - lens).to(self.device, non_blocking=True)
            self._max_extend = max(fb.extend_seq_lens_cpu[:n_ext], default=0)
            if fb.num_decode_rows:
                self._num_splits = self._splits(fb.num_decode_rows)
                self._ensure_mid(fb.num_decode_rows, self._num_splits)
                # Copies, not views at row n_ext: Triton compiles a kernel variant per 16-byte
                # alignment of each pointer argument, and a view starting at an odd row compiled new
                # variants in front of live requests (0.4-0.9 s stalls of mixed steps, docs/gpu.md).
                self._dec_pool = fb.req_pool_indices[n_ext:].clone()
                self._dec_seq_lens = fb.seq_lens[n_ext:].clone()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                rotary: RotaryEmbedding, layer: RadixAttention, fb: ForwardBatch) -> torch.Tensor:
        if fb.forward_mode.is_decode():
            return super().forward(q, k, v, positions, rotary, layer, fb)
        step_kv = self._step_kv(q, k, v, layer, fb)
        q = self.rotate_and_store(q, k, v, positions, rotary, layer, fb)
        return self.forward_extend(q, layer, fb, step_kv)

    @staticmethod
    def _fused_store(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: RadixAttention,
                     fb: ForwardBatch) -> bool:
        """Whether rotate_and_store takes the fused kernel (which rotates k in place)."""
        k_buf, v_buf = fb.token_to_kv_pool.get_kv_buffer(layer.layer_id)
        return (q.stride(-1) == k.stride(-1) == v.stride(-1) == 1 and k_buf.is_contiguous()
                and v_buf.is_contiguous())

    def _step_kv(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: RadixAttention,
                 fb: ForwardBatch) -> tuple[torch.Tensor, torch.Tensor] | None:
        """This step's (rotated-in-place) k and v for the extend kernel to read directly, where they
        equal what the pool stores: a float pool of q's dtype and the fused store."""
        pool = fb.token_to_kv_pool
        if pool.is_fp8 or pool.dtype != q.dtype or k.dtype != q.dtype or not self._fused_store(q, k, v, layer, fb):
            return None
        return k, v

    def rotate_and_store(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                         rotary: RotaryEmbedding, layer: RadixAttention, fb: ForwardBatch) -> torch.Tensor:
        """One kernel rotates q and k in place and writes k, v into the pool: per layer, two launches
        and the rotary's temporaries fewer than the base path. It needs unit-stride head dims."""
        k_buf, v_buf = fb.token_to_kv_pool.get_kv_buffer(layer.layer_id)
        if not self._fused_store(q, k, v, layer, fb):
            return super().rotate_and_store(q, k, v, positions, rotary, layer, fb)
        pool = fb.token_to_kv_pool
        rotary_inplace(q, k, positions, rotary.cos_cache, rotary.sin_cache,
                       store=(v, k_buf, v_buf, fb.out_cache_loc), kv_scales=pool.scales(layer.layer_id))
        return q

    def forward_extend(self, q: torch.Tensor, layer: RadixAttention, fb: ForwardBatch,
                       step_kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """`step_kv`: this step's k, v (the pool's values, see _step_kv): the prompt rows' attention
        reads their own keys from there, affine loads instead of a gather through req_to_token."""
        k_buf, v_buf = fb.token_to_kv_pool.get_kv_buffer(layer.layer_id)
        o = torch.empty_like(q)
        table = fb.req_to_token_pool.req_to_token
        n_dec = fb.num_decode_rows
        n_ext, t_ext = fb.batch_size - n_dec, q.shape[0] - n_dec  # decode rows: the last n_dec tokens
        ks, vs = fb.token_to_kv_pool.scales(layer.layer_id)
        if n_ext:
            ext_kv = None if step_kv is None else (step_kv[0][:t_ext], step_kv[1][:t_ext])
            extend_attention(q[:t_ext], k_buf, v_buf, o[:t_ext], table, fb.req_pool_indices[:n_ext],
                             self._prefix_lens, self._extend_lens, self._extend_start, self._max_extend,
                             layer.scaling, ks, vs, step_kv=ext_kv)
        if n_dec:
            decode_attention(q[t_ext:], k_buf, v_buf, o[t_ext:], table, self._dec_pool, self._dec_seq_lens,
                             layer.scaling, self._num_splits, self._mid_o, self._mid_lse, ks, vs)
        return o

    def forward_decode(self, q: torch.Tensor, layer: RadixAttention, fb: ForwardBatch) -> torch.Tensor:
        k_buf, v_buf = fb.token_to_kv_pool.get_kv_buffer(layer.layer_id)
        o = torch.empty_like(q)
        decode_attention(q, k_buf, v_buf, o, fb.req_to_token_pool.req_to_token, fb.req_pool_indices, fb.seq_lens,
                         layer.scaling, self._num_splits, self._mid_o, self._mid_lse,
                         *fb.token_to_kv_pool.scales(layer.layer_id))
        return o
