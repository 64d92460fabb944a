"""Fused RMSNorm(+residual), in-place rotary and SiLU-and-mul against the torch layers."""

from __future__ import annotations

import os

import pytest
import torch

from tests.kernels.fused_cases import check_fp8_rotate_and_store, check_fused_ops


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_fused_ops_on_gpu(dtype: torch.dtype) -> None:
    check_fused_ops("cuda", dtype, torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little")))


@pytest.mark.gpu
def test_fp8_kv_store_on_gpu() -> None:
    check_fp8_rotate_and_store("cuda", torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little")))


INTERPRETER_RUN = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
import interpreter_compat; interpreter_compat.install()
from fused_cases import check_fused_ops
check_fused_ops("cpu", torch.float32, torch.Generator().manual_seed(int(sys.argv[2])))
print("interpreter ok")
"""


def test_fused_ops_in_triton_cpu_interpreter() -> None:
    pytest.importorskip("triton", reason="triton is a dev dependency; install with pip install -e .[dev]")
    from tests.kernels.interpreter_compat import run_in_interpreter

    seed = str(int.from_bytes(os.urandom(2), "little"))
    assert "interpreter ok" in run_in_interpreter(INTERPRETER_RUN, seed)


@pytest.mark.gpu
def test_rotary_store_compiles_once_whatever_the_slots_alignment() -> None:
    """A prefill's slots are a view of the KV pool's free list, whose start moves one int64 per slot
    handed out: half the time it is not 16-byte aligned, and Triton compiled a second variant of
    the kernel for that (222 ms inside bench_offline's second timed request; docs/gpu.md)."""
    from triton import knobs

    from radixserve.kernels.fused_ops import rotary_inplace
    from radixserve.layers.rotary_embedding import RotaryEmbedding
    from radixserve.utils.kernel_compiles import CompileWatch

    saved = knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook
    watch = CompileWatch()
    try:
        assert watch.install()
        tokens, heads, kv_heads, dim = 6, 5, 1, 96  # a shape no other test compiles the kernel for
        rope = RotaryEmbedding(dim, 512, 10000.0).to("cuda")
        qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim, device="cuda", dtype=torch.bfloat16)
        q, k, v = (t.reshape(tokens, -1, dim) for t in qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], -1))
        slots, positions = torch.arange(64, device="cuda"), torch.arange(64, device="cuda")
        k_buf, v_buf = (torch.zeros(64, kv_heads, dim, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        for start in (0, 1, 2, 3):  # 8-byte steps: aligned to 16 bytes every other one
            loc = slots[start:start + tokens]
            rotary_inplace(q, k, positions[start:start + tokens], rope.cos_cache, rope.sin_cache,
                           store=(v, k_buf, v_buf, loc))
            assert torch.equal(v_buf[loc], v)
        assert [c.kernel for c in watch.compiles] == ["_rope_kernel"]
    finally:
        knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook = saved
