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
