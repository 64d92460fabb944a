"""The fused one-row products (kernels/gemv.py) against their torch references; shared by the GPU
test and the CPU interpreter run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from radixserve.distributed.parallel_state import SINGLE, ParallelGroup
from radixserve.layers.layernorm import RMSNorm
from radixserve.layers.rotary_embedding import RotaryEmbedding

# Relative max error: the kernels keep the unfused path's roundings, so only the product's
# summation order (and a norm input's last bit, where that flips a rounding) differs.
TOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    assert not torch.isnan(a).any(), f"{what}: NaN"
    err = float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6))
    assert err <= TOL[dtype], f"{what}: relative max error {err} > {TOL[dtype]}"


@contextmanager
def tiles(**small: tuple[int, int, int, int]) -> Iterator[None]:
    """Smaller tiles for small test shapes (the defaults need K a multiple of 512)."""
    from radixserve.kernels import gemv

    saved = dict(gemv.TILES)
    gemv.TILES.update(small)
    try:
        yield
    finally:
        gemv.TILES.clear()
        gemv.TILES.update(saved)


def _rand(gen: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=gen)


def check_gemv(device: str, dtype: torch.dtype, gen: torch.Generator, hidden: int = 256, inter: int = 384,
               heads: int = 4, kv_heads: int = 2, dim: int = 64) -> None:
    from radixserve.kernels.gemv import (
        gemv_residual,
        gemv_residual_reference,
        norm_gemv_rope,
        norm_gemv_rope_reference,
        norm_gemv_silu,
        norm_gemv_silu_reference,
    )

    def dev(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype).to(device)

    eps = 1e-5
    norm = RMSNorm(hidden, eps)
    norm.weight.data = (1 + 0.1 * _rand(gen, hidden)).to(dtype)
    a = _rand(gen, 1, inter).to(dtype)
    w_down = _rand(gen, hidden, inter, scale=inter**-0.5).to(dtype)
    res = _rand(gen, 1, hidden).to(dtype)

    # o/down: the product plus the residual, and the sums of squares the next norm reads.
    x, part = gemv_residual(dev(a), dev(w_down), dev(res))
    ref_x, ref_ss = gemv_residual_reference(a, w_down, res)
    _close(x.cpu(), ref_x, dtype, "gemv_residual x")
    _close(part.sum().cpu().reshape(()), ref_ss, dtype, "gemv_residual sum of squares")
    y, empty = gemv_residual(dev(a), dev(w_down), None)
    _close(y.cpu(), gemv_residual_reference(a, w_down, None)[0], dtype, "gemv without residual")
    assert empty.numel() == 0

    # gate/up + SiLU, the norm from those partials and from x itself (the first layer).
    w_gu = _rand(gen, 2 * inter, hidden, scale=hidden**-0.5).to(dtype)
    ref_act = norm_gemv_silu_reference(x.cpu(), norm.weight.data, eps, w_gu)
    _close(norm_gemv_silu(x, part, dev(norm.weight.data), eps, dev(w_gu)).cpu(), ref_act, dtype,
           "norm_gemv_silu (partials)")
    _close(norm_gemv_silu(x, None, dev(norm.weight.data), eps, dev(w_gu)).cpu(), ref_act, dtype,
           "norm_gemv_silu (from x)")
    # The reference norm is the layer's own.
    _close(norm.plain(x.cpu()), norm.forward(x.cpu())[0], dtype, "rmsnorm reference")

    # qkv + rotary + the KV-pool write at this token's slot, nowhere else.
    rope = RotaryEmbedding(dim, 512, 10000.0)
    w_qkv = _rand(gen, (heads + 2 * kv_heads) * dim, hidden, scale=hidden**-0.5).to(dtype)
    positions = torch.randint(0, 512, (1,), generator=gen)
    slots = 9
    loc = torch.randint(0, slots, (1,), generator=gen)
    k_buf = torch.full((slots, kv_heads, dim), 7.0).to(dtype).to(device)
    v_buf = torch.full((slots, kv_heads, dim), 7.0).to(dtype).to(device)
    ref_q, ref_k, ref_v = norm_gemv_rope_reference(x.cpu(), norm.weight.data, eps, w_qkv, heads, kv_heads,
                                                   positions, rope.cos_cache, rope.sin_cache)
    for partials in (part, None):
        q = norm_gemv_rope(x, partials, dev(norm.weight.data), eps, dev(w_qkv), heads, kv_heads,
                           positions.to(device), rope.cos_cache.to(device), rope.sin_cache.to(device), k_buf, v_buf,
                           loc.to(device))
        _close(q.cpu(), ref_q, dtype, "norm_gemv_rope q")
        _close(k_buf[loc.to(device)].cpu(), ref_k, dtype, "norm_gemv_rope k in the pool")
        _close(v_buf[loc.to(device)].cpu(), ref_v, dtype, "norm_gemv_rope v in the pool")
        others = torch.ones(slots, dtype=torch.bool)
        others[loc] = False
        assert bool((k_buf.cpu()[others] == 7.0).all() and (v_buf.cpu()[others] == 7.0).all()), "wrote other slots"


def check_gemv_small(device: str, dtype: torch.dtype, gen: torch.Generator) -> None:
    """Tiles small enough for the interpreter's shapes: several programs and K steps each."""
    with tiles(residual=(4, 64, 4, 1), silu=(8, 64, 4, 1), rope=(8, 64, 4, 1)):
        check_gemv(device, dtype, gen)


def check_one_row_model(device: str, dtype: torch.dtype, gen: torch.Generator, backend_name: str = "torch",
                        tp: ParallelGroup = SINGLE) -> None:
    """A tiny Llama's decode step through LlamaModel._forward_one_row gives the logits and the KV-pool
    rows of the layer-by-layer path (a 5-token prefill, then one token). With `tp`, this rank's shard
    of a TP model: the ranks must pass generators in the same state, so that the parameters every
    rank holds whole (the norms) are equal."""
    from radixserve.attention.base import AttentionBackend
    from radixserve.attention.torch_backend import TorchAttnBackend
    from radixserve.configs.model_config import ModelConfig
    from radixserve.mem_cache.memory_pool import ReqToTokenPool, TokenToKVPool
    from radixserve.model_executor.forward_batch import ForwardBatch, ForwardMode
    from radixserve.models.llama import LlamaForCausalLM

    cfg = ModelConfig(architecture="LlamaForCausalLM", hidden_size=256, intermediate_size=384, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=300, head_dim=64,
                      max_position_embeddings=512, rms_norm_eps=1e-5)
    heads, kv_heads = 4 // tp.size, 2 // tp.size
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg, tp)
    finally:
        torch.set_default_dtype(prev)
    # The path is chosen for these layers in half precision (the tiles of the test's context).
    assert model.model._one_row_supported(torch.bfloat16)
    # Shards differ between ranks (a generator of their own), the norms every rank holds are equal.
    shard_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)) + tp.rank)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * _rand(gen, *p.shape))
            else:
                p.copy_(_rand(shard_gen, *p.shape, scale=p.shape[-1] ** -0.5))
    backend: AttentionBackend
    if backend_name == "triton":
        from radixserve.attention.triton_backend import TritonAttnBackend

        backend = TritonAttnBackend(heads, kv_heads, 64, torch.device(device), 64)
    else:
        backend = TorchAttnBackend()
    pool = TokenToKVPool(16, dtype, 2, kv_heads, 64, device)
    table = ReqToTokenPool(1, 64, device)
    prompt = 5
    table.req_to_token[0, : prompt + 1] = torch.arange(1, prompt + 2)
    def i64(*values: int) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device=device)

    ids = torch.randint(0, 300, (prompt + 1,), generator=gen).to(device)
    pre = ForwardBatch(ForwardMode.EXTEND, 1, ids[:prompt], i64(*range(prompt)), i64(0), i64(prompt),
                       i64(*range(1, prompt + 1)), [prompt], [0], [prompt], table, pool, backend)
    dec = ForwardBatch(ForwardMode.DECODE, 1, ids[prompt:], i64(prompt), i64(0), i64(prompt + 1), i64(prompt + 1),
                       [prompt + 1], [], [], table, pool, backend)
    with torch.inference_mode():
        backend.init_forward_metadata(pre)
        model(pre.input_ids, pre.positions, pre)
        backend.init_forward_metadata(dec)
        hidden, _ = model.model.forward(dec.input_ids, dec.positions, dec)  # layer by layer
        ref_logits = model.compute_logits(hidden, dec)
        ref_kv = [buf[prompt + 1].clone() for layer in range(2) for buf in pool.get_kv_buffer(layer)]
        for layer in range(2):
            for buf in pool.get_kv_buffer(layer):
                buf[prompt + 1] = 3.0  # poison this token's slot: the fused path must write it again
        out, _ = model.model._forward_one_row(dec.positions, model.model.embed_tokens(dec.input_ids), dec)
        logits = model.compute_logits(out, dec)
    _close(logits.cpu(), ref_logits.cpu(), dtype, "one-row logits")
    kv = [buf[prompt + 1] for layer in range(2) for buf in pool.get_kv_buffer(layer)]
    for i, (a, b) in enumerate(zip(kv, ref_kv, strict=True)):
        _close(a.cpu(), b.cpu(), dtype, f"one-row KV row {i}")


def check_one_row_model_small(device: str, dtype: torch.dtype, gen: torch.Generator,
                              backend_name: str = "torch", tp: ParallelGroup = SINGLE) -> None:
    with tiles(residual=(4, 64, 4, 1), silu=(8, 64, 4, 1), rope=(8, 64, 4, 1)):
        check_one_row_model(device, dtype, gen, backend_name, tp)


def one_row_model_tp_rank(rank: int, size: int, store: str, device: str, dtype: torch.dtype, seed: int,
                          backend_name: str, compat_dir: str | None, one_gpu: bool, out: Any) -> None:
    """One TP rank of check_one_row_model_small (gloo on CPU, NCCL on CUDA); puts (rank, error or None).
    `compat_dir`: the interpreter run's directory of interpreter_compat, installed first. `one_gpu`: every
    rank on cuda:0, summing over gloo (NCCL refuses two ranks on one device), so that the GPU kernels of
    the TP form run where only one GPU is lent."""
    import traceback

    import torch.distributed as dist

    if compat_dir is not None:
        import sys

        sys.path.insert(0, compat_dir)
        import interpreter_compat  # type: ignore[import-not-found]

        interpreter_compat.install()
    backend = "gloo" if device == "cpu" or one_gpu else "nccl"
    if device == "cuda":
        gpu = 0 if one_gpu else rank
        torch.cuda.set_device(gpu)
        device = f"cuda:{gpu}"
    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=size)
    try:
        group = ParallelGroup(rank=rank, size=size, group=dist.group.WORLD, cpu_group=dist.group.WORLD)
        check_one_row_model_small(device, dtype, torch.Generator().manual_seed(seed), backend_name, group)
        out.put((rank, None))
    except BaseException:
        out.put((rank, traceback.format_exc()[-3000:]))
    finally:
        dist.destroy_process_group()


def run_one_row_model_tp(size: int, device: str, dtype: torch.dtype, seed: int, backend_name: str = "torch",
                         compat_dir: str | None = None, one_gpu: bool = False) -> None:
    """check_one_row_model_small on `size` TP ranks in spawned processes; raises with a rank's failure."""
    from tests.distributed.spawn_ranks import run_ranks

    results = run_ranks(one_row_model_tp_rank, size, device, dtype, seed, backend_name, compat_dir, one_gpu)
    failures = {r: e for r, e in results.items() if e is not None}
    assert not failures, f"one-row model at TP={size}: {failures}"
