"""The peer-memory all-reduce kernel sums like the exact float32 sum in rank order, clears exactly what
it wrote, and keeps -0.0 (its sentinel) from reading as "not arrived"."""

from __future__ import annotations

import os

import pytest
import torch

from tests.kernels.lamport_cases import check_concurrent_on_gpu


@pytest.mark.gpu
def test_lamport_all_reduce_ranks_on_streams_of_one_gpu() -> None:
    check_concurrent_on_gpu(torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little")))


INTERPRETER_RUN = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
import interpreter_compat; interpreter_compat.install()
from lamport_cases import check_in_interpreter
check_in_interpreter(torch.Generator().manual_seed(int(sys.argv[2])))
print("interpreter ok")
"""


def test_lamport_all_reduce_in_triton_cpu_interpreter() -> None:
    pytest.importorskip("triton", reason="triton is a dev dependency; install with pip install -e .[dev]")
    from tests.kernels.interpreter_compat import run_in_interpreter

    seed = str(int.from_bytes(os.urandom(2), "little"))
    assert "interpreter ok" in run_in_interpreter(INTERPRETER_RUN, seed)
