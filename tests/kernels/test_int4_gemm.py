"""The Triton int4 GEMM (GGUF weights on CUDA) in Triton's CPU interpreter; tests/gpu runs the same cases
on the GPU at model shapes."""

from __future__ import annotations

import os

import pytest
import torch

from radixserve.layers.quantization.base import GroupQuantized, UnsupportedQuantizationError

INTERPRETER_RUN = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
import interpreter_compat; interpreter_compat.install()
from int4_cases import check_int4_gemm
gen = torch.Generator().manual_seed(int(sys.argv[2]))
# (rows, N, K, bits): decode and masked rows, N off the tile, K steps of 128/64/32 bytes,
# 4-bit codes and split 5- and 8-bit ones. fp16 activations: Triton 3.6's interpreter converts
# float32 to bf16 wrongly inside a kernel (the GPU run checks bf16).
check_int4_gemm("cpu", gen, [(1, 96, 256, 4), (19, 40, 192, 5), (3, 64, 64, 8), (2, 48, 64, 4), (1, 40, 96, 8)],
                torch.float16)
print("interpreter ok")
"""


def test_int4_gemm_in_triton_cpu_interpreter() -> None:
    pytest.importorskip("triton", reason="triton is a dev dependency; install with pip install -e .[dev]")
    from tests.kernels.interpreter_compat import run_in_interpreter

    seed = str(int.from_bytes(os.urandom(2), "little"))
    assert "interpreter ok" in run_in_interpreter(INTERPRETER_RUN, seed)


def test_layout_round_trips_and_refuses_what_it_cannot_hold() -> None:
    from radixserve.layers.quantization.int4_gpu import Int4TritonWeight
    from tests.kernels.int4_cases import random_group_quantized

    gen = torch.Generator().manual_seed(0)
    for bits in (4, 5, 8):
        q = random_group_quantized(8, 128, bits, gen)
        w = Int4TritonWeight(q, torch.device("cpu"))  # the layout is device-independent
        assert w.packed.shape == (8, 64 if bits == 4 else 128) and w.packed.dtype == torch.uint8
        ref = q.dequantize()
        assert (w.dequantize() - ref).abs().max() <= 2e-3 * ref.abs().max()
        assert w.nbytes() == w.packed.numel() + 2 * w.scale.numel() * 2
    odd = GroupQuantized(torch.zeros(4, 96, dtype=torch.uint8), torch.ones(4, 3), torch.zeros(4, 3), 32, 4, "Q4_0")
    with pytest.raises(UnsupportedQuantizationError, match=r"Q4_0: 4-bit codes in groups of 32 over 96 columns"):
        Int4TritonWeight(odd, torch.device("cpu"))
