"""Fused RMSNorm(+residual), in-place rotary and SiLU-and-mul against the torch layers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from fused_cases import check_fused_ops


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_fused_ops_on_gpu(dtype: torch.dtype) -> None:
    check_fused_ops("cuda", dtype, torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little")))


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
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    seed = str(int.from_bytes(os.urandom(2), "little"))
    proc = subprocess.run([sys.executable, "-c", INTERPRETER_RUN, str(Path(__file__).parent), seed],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "interpreter ok" in proc.stdout
