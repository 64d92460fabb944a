"""Fused-op checks against the torch layers they replace; shared by the GPU test and the CPU interpreter run."""

from __future__ import annotations

import torch

from radixserve.attention.torch_backend import TorchAttnBackend
from radixserve.layers.activation import silu_and_mul as silu_and_mul_ref
from radixserve.layers.layernorm import RMSNorm
from radixserve.layers.radix_attention import RadixAttention
from radixserve.layers.rotary_embedding import RotaryEmbedding
from radixserve.mem_cache.memory_pool import ReqToTokenPool, TokenToKVPool
from radixserve.model_executor.forward_batch import ForwardBatch, ForwardMode

# Max |fused - torch| relative to max |torch|: the kernels round like the torch ops, so only
# last-bit differences (fused multiply-adds, exp) remain.
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    assert not torch.isnan(a).any(), f"{what}: NaN"
    err = float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6))
    assert err <= TOL[dtype], f"{what}: relative max error {err} > {TOL[dtype]}"


def check_fused_ops(device: str, dtype: torch.dtype, gen: torch.Generator) -> None:
    from radixserve.kernels.fused_ops import add_rmsnorm, rotary_inplace, silu_and_mul

    for rows, hidden in ((1, 576), (7, 4096), (33, 896)):
        norm = RMSNorm(hidden, 1e-5)
        norm.weight.data = (1 + 0.1 * torch.randn(hidden, generator=gen)).to(dtype)
        x = torch.randn(rows, hidden, generator=gen).to(dtype)
        r = torch.randn(rows, hidden, generator=gen).to(dtype)
        ref_out, ref_res = norm.forward(x, r)  # CPU tensors: the torch path
        out, res = add_rmsnorm(x.to(device), r.to(device), norm.weight.to(device), 1e-5)
        _close(out.cpu(), ref_out, dtype, "add_rmsnorm")
        _close(res.cpu(), ref_res, dtype, "add_rmsnorm residual")
        out2, _ = add_rmsnorm(x.to(device), None, norm.weight.to(device), 1e-5)
        _close(out2.cpu(), norm.plain(x), dtype, "rmsnorm")

    for tokens, heads, kv_heads, dim in ((5, 32, 8, 128), (3, 9, 3, 64), (1, 14, 2, 64)):
        rope = RotaryEmbedding(dim, 4096, 500000.0)
        qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim, generator=gen).to(dtype)
        fresh = qkv.clone()  # on CPU (interpreter) .to(device) aliases qkv, which the kernel rotates
        positions = torch.randint(0, 4096, (tokens,), generator=gen)
        q = qkv[:, : heads * dim].reshape(tokens, heads, dim)
        k = qkv[:, heads * dim : (heads + kv_heads) * dim].reshape(tokens, kv_heads, dim)
        ref_q, ref_k = rope.forward(positions, q.clone(), k.clone())
        dev_qkv = qkv.to(device)
        dq = dev_qkv[:, : heads * dim].reshape(tokens, heads, dim)
        dk = dev_qkv[:, heads * dim : (heads + kv_heads) * dim].reshape(tokens, kv_heads, dim)
        rotary_inplace(dq, dk, positions.to(device), rope.cos_cache.to(device), rope.sin_cache.to(device))
        _close(dq.cpu(), ref_q, dtype, "rotary q")
        _close(dk.cpu(), ref_k, dtype, "rotary k")
        v_before = qkv[:, (heads + kv_heads) * dim :]
        assert torch.equal(dev_qkv[:, (heads + kv_heads) * dim :].cpu(), v_before), "rotary wrote outside q and k"

        # Fused with the KV-pool write: rotated k and untouched v land at their slots, nowhere else.
        slots = 3 * tokens + 4
        loc = torch.randperm(slots, generator=gen)[:tokens]
        k_buf = torch.full((slots, kv_heads, dim), 7.0, dtype=dtype, device=device)
        v_buf = torch.full((slots, kv_heads, dim), 7.0, dtype=dtype, device=device)
        dev_qkv = fresh.to(device)
        dq = dev_qkv[:, : heads * dim].reshape(tokens, heads, dim)
        dk = dev_qkv[:, heads * dim : (heads + kv_heads) * dim].reshape(tokens, kv_heads, dim)
        dv = dev_qkv[:, (heads + kv_heads) * dim :].reshape(tokens, kv_heads, dim)
        rotary_inplace(dq, dk, positions.to(device), rope.cos_cache.to(device), rope.sin_cache.to(device),
                       store=(dv, k_buf, v_buf, loc.to(device)))
        _close(dq.cpu(), ref_q, dtype, "rotary+store q")
        _close(k_buf[loc.to(device)].cpu(), ref_k, dtype, "rotary+store k in the pool")
        assert torch.equal(v_buf[loc.to(device)].cpu(), v_before.reshape(tokens, kv_heads, dim)), "v in the pool"
        others = torch.ones(slots, dtype=torch.bool)
        others[loc] = False
        assert bool((k_buf.cpu()[others] == 7.0).all() and (v_buf.cpu()[others] == 7.0).all()), "wrote other slots"

    for rows, inter in ((1, 14336), (9, 1536)):
        x = torch.randn(rows, 2 * inter, generator=gen).to(dtype)
        _close(silu_and_mul(x.to(device)).cpu(), silu_and_mul_ref(x), dtype, "silu_and_mul")
    check_backend_rotate_and_store(device, dtype, gen)


def check_backend_rotate_and_store(device: str, dtype: torch.dtype, gen: torch.Generator) -> None:
    """The Triton backend's fused rotary + KV store leaves q and the pool as the base (torch) path does."""
    from radixserve.attention.triton_backend import TritonAttnBackend

    tokens, heads, kv_heads, dim = 5, 6, 2, 64
    rope = RotaryEmbedding(dim, 256, 10000.0).to(device)
    positions = torch.randint(0, 256, (tokens,), generator=gen).to(device)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim, generator=gen).to(dtype)
    loc = (torch.randperm(15, generator=gen)[:tokens] + 1).to(device)
    layer = RadixAttention(0, heads, kv_heads, dim, dim**-0.5)
    results = []
    for backend in (TritonAttnBackend(heads, kv_heads, dim, torch.device(device), 64), TorchAttnBackend()):
        pool = TokenToKVPool(16, dtype, 1, kv_heads, dim, device)
        z = torch.zeros(1, dtype=torch.int64, device=device)
        fb = ForwardBatch(ForwardMode.EXTEND, 1, z, positions, z, z + tokens, loc, [tokens], [0], [tokens],
                          ReqToTokenPool(1, 64, device), pool, backend)
        q, k, v = qkv.to(device).clone().split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
        q = backend.rotate_and_store(q.reshape(tokens, heads, dim), k.reshape(tokens, kv_heads, dim),
                                     v.reshape(tokens, kv_heads, dim), positions, rope, layer, fb)
        results.append((q, *(buf[loc] for buf in pool.get_kv_buffer(0))))  # other slots hold garbage
    for what, fused, ref in zip(("q", "k pool", "v pool"), *results, strict=True):
        _close(fused.cpu(), ref.cpu(), dtype, f"backend rotate_and_store {what}")


def check_fp8_rotate_and_store(device: str, gen: torch.Generator) -> None:
    """--kv-cache-dtype fp8_e4m3: the Triton backend's fused rotary + store writes the same e4m3 values
    (K / k_scale, V / v_scale, saturated) as the pool's own torch write does."""
    from radixserve.attention.triton_backend import TritonAttnBackend

    tokens, heads, kv_heads, dim = 6, 8, 2, 128
    rope = RotaryEmbedding(dim, 256, 10000.0).to(device)
    positions = torch.randint(0, 256, (tokens,), generator=gen).to(device)
    qkv = (8 * torch.randn(tokens, (heads + 2 * kv_heads) * dim, generator=gen)).to(torch.bfloat16)
    qkv[0, heads * dim] = 3000.0  # past e4m3's range after scaling: saturates, no NaN
    loc = (torch.randperm(15, generator=gen)[:tokens] + 1).to(device)
    layer = RadixAttention(0, heads, kv_heads, dim, dim**-0.5)
    results = []
    for backend in (TritonAttnBackend(heads, kv_heads, dim, torch.device(device), 64), TorchAttnBackend()):
        pool = TokenToKVPool(16, torch.float8_e4m3fn, 1, kv_heads, dim, device, k_scale=0.5, v_scale=2.0)
        z = torch.zeros(1, dtype=torch.int64, device=device)
        fb = ForwardBatch(ForwardMode.EXTEND, 1, z, positions, z, z + tokens, loc, [tokens], [0], [tokens],
                          ReqToTokenPool(1, 64, device), pool, backend)
        q, k, v = qkv.to(device).clone().split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
        backend.rotate_and_store(q.reshape(tokens, heads, dim), k.reshape(tokens, kv_heads, dim),
                                 v.reshape(tokens, kv_heads, dim), positions, rope, layer, fb)
        results.append([buf.view(torch.uint8)[loc].view(torch.float8_e4m3fn).float().cpu()
                        for buf in pool.get_kv_buffer(0)])
    for what, fused, ref in zip(("k pool", "v pool"), *results, strict=True):
        assert not torch.isnan(fused).any(), what
        assert fused.abs().max() <= 448.0, what
        # Both round to nearest e4m3; allow one step (2^-3 relative) where the bf16 inputs of the
        # two paths differ in their last bit.
        err = float((fused - ref).abs().max() / ref.abs().max())
        assert err <= 0.125, f"{what}: {err}"
        assert float((fused == ref).float().mean()) > 0.99, what
