"""The split argmax kernel answers as torch.argmax (ties, NaN, banned rows, repeated calls)."""

from __future__ import annotations

import os

import pytest
import torch

from tests.kernels.argmax_cases import check_argmax


@pytest.mark.gpu
def test_argmax_kernel_on_gpu() -> None:
    check_argmax("cuda", torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little")))


INTERPRETER_RUN = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
import interpreter_compat; interpreter_compat.install()
from argmax_cases import check_argmax
check_argmax("cpu", torch.Generator().manual_seed(int(sys.argv[2])))
print("interpreter ok")
"""


def test_argmax_kernel_in_triton_cpu_interpreter() -> None:
    pytest.importorskip("triton", reason="triton is a dev dependency; install with pip install -e .[dev]")
    from tests.kernels.interpreter_compat import run_in_interpreter

    seed = str(int.from_bytes(os.urandom(2), "little"))
    assert "interpreter ok" in run_in_interpreter(INTERPRETER_RUN, seed)
