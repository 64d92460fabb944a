"""Random paged-attention problems and checks shared by the GPU kernel tests and the CPU interpreter run."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from radixserve.attention.torch_backend import decode_attention_ref, decode_kv_indices, extend_attention_ref


@dataclass
class PagedCase:
    q_decode: torch.Tensor
    q_extend: torch.Tensor
    k_buf: torch.Tensor
    v_buf: torch.Tensor
    req_to_token: torch.Tensor
    pool_idx: torch.Tensor
    seq_lens: list[int]
    prefix_lens: list[int]
    extend_lens: list[int]
    scale: float


def make_case(bs: int, heads: int, kv_heads: int, dim: int, max_seq: int, dtype: torch.dtype, device: str,
              gen: torch.Generator) -> PagedCase:
    seq_lens = torch.randint(1, max_seq + 1, (bs,), generator=gen).tolist()
    prefix_lens = [int(torch.randint(0, s, (1,), generator=gen)) for s in seq_lens]
    extend_lens = [s - p for s, p in zip(seq_lens, prefix_lens, strict=True)]
    slots = sum(seq_lens) + 8
    # Scatter each request's tokens over random, non-contiguous slots (slot 0 stays unused).
    perm = (torch.randperm(slots - 1, generator=gen) + 1).tolist()
    req_to_token = torch.zeros((bs + 2, max_seq + 5), dtype=torch.int64)
    pool_idx = torch.randperm(bs + 2, generator=gen)[:bs]
    at = 0
    for i, s in enumerate(seq_lens):
        req_to_token[pool_idx[i], :s] = torch.tensor(perm[at : at + s])
        at += s
    k = torch.randn((slots, kv_heads, dim), generator=gen)
    v = torch.randn((slots, kv_heads, dim), generator=gen)
    return PagedCase(
        q_decode=torch.randn((bs, heads, dim), generator=gen).to(device, dtype),
        q_extend=torch.randn((sum(extend_lens), heads, dim), generator=gen).to(device, dtype),
        k_buf=k.to(device, dtype), v_buf=v.to(device, dtype),
        req_to_token=req_to_token.to(device), pool_idx=pool_idx.to(device),
        seq_lens=seq_lens, prefix_lens=prefix_lens, extend_lens=extend_lens, scale=dim**-0.5,
    )


def reference(case: PagedCase) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 CPU references for decode and extend."""
    c = case
    k64, v64 = c.k_buf.double().cpu(), c.v_buf.double().cpu()
    table, pool = c.req_to_token.cpu(), c.pool_idx.cpu()
    seq = torch.tensor(c.seq_lens)
    idx, mask = decode_kv_indices(table, pool, seq, max(c.seq_lens))
    dec = decode_attention_ref(c.q_decode.double().cpu(), k64, v64, idx, mask, c.scale)
    rows = [table[p, :s] for p, s in zip(pool.tolist(), c.seq_lens, strict=True)]
    ext = extend_attention_ref(c.q_extend.double().cpu(), k64, v64, rows, c.prefix_lens, c.extend_lens, c.scale)
    return dec, ext


def run_triton(case: PagedCase, k_scale: float = 1.0, v_scale: float = 1.0,
               splits: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`splits`: the decode kernel's split-KV slices (default: decode_num_splits' choice for 4 SMs)."""
    from radixserve.kernels.triton_attention import decode_attention, decode_num_splits, extend_attention

    c = case
    dev = c.q_decode.device
    bs, heads, dim = c.q_decode.shape
    seq = torch.tensor(c.seq_lens, device=dev)
    splits = splits or decode_num_splits(max(c.seq_lens), bs, c.k_buf.shape[1], 4)
    mid_o = torch.full((bs, heads, splits, dim), float("nan"), dtype=torch.float32, device=dev)
    mid_lse = torch.full((bs, heads, splits), float("nan"), dtype=torch.float32, device=dev)
    dec = torch.full_like(c.q_decode, float("nan"))  # poisoned: every element must be written
    decode_attention(c.q_decode, c.k_buf, c.v_buf, dec, c.req_to_token, c.pool_idx, seq, c.scale, splits,
                     mid_o, mid_lse, k_scale, v_scale)
    ext = torch.full_like(c.q_extend, float("nan"))
    lens = torch.tensor(c.extend_lens)
    extend_attention(c.q_extend, c.k_buf, c.v_buf, ext, c.req_to_token, c.pool_idx,
                     torch.tensor(c.prefix_lens, device=dev), lens.to(dev), (torch.cumsum(lens, 0) - lens).to(dev),
                     max(c.extend_lens), c.scale, k_scale, v_scale)
    return dec, ext


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert not torch.isnan(out).any(), "unwritten (NaN-poisoned) or NaN output"
    return float((out.double().cpu() - ref).norm() / ref.norm())


def run_backend_mixed(case: PagedCase, num_decode_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """TritonAttnBackend.forward_extend on a mixed batch: the case's requests as prompt rows,
    then `num_decode_rows` of them again as one-token decode rows (their last token over the
    rest as prefix); returns (output, float64 reference)."""
    from types import SimpleNamespace
    from typing import Any

    from radixserve.attention.triton_backend import TritonAttnBackend
    from radixserve.model_executor.forward_batch import ForwardBatch, ForwardMode

    c = case
    dev = c.q_extend.device
    heads, dim = c.q_extend.shape[1], c.q_extend.shape[2]
    dec = list(range(num_decode_rows))
    prefix = c.prefix_lens + [c.seq_lens[i] - 1 for i in dec]
    extend = c.extend_lens + [1] * num_decode_rows
    seqs = c.seq_lens + [c.seq_lens[i] for i in dec]
    pool = torch.cat([c.pool_idx, c.pool_idx[dec]])
    q = torch.cat([c.q_extend, c.q_decode[dec]])
    pools: Any = SimpleNamespace(req_to_token=c.req_to_token)
    kv: Any = SimpleNamespace(get_kv_buffer=lambda layer_id: (c.k_buf, c.v_buf), scales=lambda layer_id: (1.0, 1.0))
    backend_unused: Any = None  # forward_extend is called on the backend directly
    fb = ForwardBatch(forward_mode=ForwardMode.EXTEND, batch_size=len(seqs), input_ids=torch.zeros(len(q)),
                      positions=torch.zeros(len(q)), req_pool_indices=pool, seq_lens=torch.tensor(seqs, device=dev),
                      out_cache_loc=torch.zeros(len(q)), seq_lens_cpu=seqs, extend_prefix_lens_cpu=prefix,
                      extend_seq_lens_cpu=extend, req_to_token_pool=pools, token_to_kv_pool=kv,
                      attn_backend=backend_unused, num_decode_rows=num_decode_rows)
    backend = TritonAttnBackend(heads, c.k_buf.shape[1], dim, dev, context_len=c.req_to_token.shape[1])
    backend.init_forward_metadata(fb)
    layer: Any = SimpleNamespace(layer_id=0, scaling=c.scale)
    out = backend.forward_extend(q, layer, fb)
    table = c.req_to_token.cpu()
    rows = [table[p, :s] for p, s in zip(pool.tolist(), seqs, strict=True)]
    ref = extend_attention_ref(q.double().cpu(), c.k_buf.double().cpu(), c.v_buf.double().cpu(), rows, prefix,
                               extend, c.scale)
    return out, ref
