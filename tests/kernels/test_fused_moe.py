"""The Triton fused MoE (kernels/fused_moe.py): the alignment step on CPU, the kernels in Triton's
CPU interpreter against the torch reference (the GPU run is tests/gpu/test_fused_moe_gpu.py)."""

from __future__ import annotations

import os

import pytest
import torch

from tests.kernels.moe_cases import check_alignment


@pytest.mark.parametrize(("tokens", "experts", "top_k", "block_m"),
                         [(1, 8, 2, 16), (1, 128, 8, 64), (2, 8, 2, 16), (7, 64, 8, 16), (256, 128, 8, 64),
                          (33, 4, 4, 16)])
def test_alignment_groups_pairs_by_expert(tokens: int, experts: int, top_k: int, block_m: int) -> None:
    gen = torch.Generator().manual_seed(tokens * experts)
    # Skewed routing, as trained routers give: a few hot experts get most pairs, many get none.
    hot = torch.zeros(experts)
    hot[torch.randperm(experts, generator=gen)[: max(1, experts // 8)]] = 4.0
    ids = torch.topk(torch.randn(tokens, experts, generator=gen) + hot, top_k, dim=-1).indices
    check_alignment(ids, experts, block_m)


INTERPRETER_RUN = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
import interpreter_compat; interpreter_compat.install()
from moe_cases import check_fused_moe, check_fused_moe_fp8
from radixserve.kernels.fused_moe import GemmConfig
gen = torch.Generator().manual_seed(int(sys.argv[2]))
# Widths that are not multiples of the blocks exercise the masks; tokens 1 (decode) and 40 (prefill).
cases = [(1, 8, 2, 64, 48), (7, 8, 2, 40, 24), (40, 4, 3, 64, 32)]
check_fused_moe("cpu", torch.float32, gen, cases, [GemmConfig(16, 32, 32, 4), GemmConfig(32, 16, 16, 4),
                                                  GemmConfig(16, 32, 32, 4, trans_b=True)])
# FP8 experts: per channel, and in 32x32 blocks (partial at the edges) that span two K tiles of 16.
for block in (None, 32):
    check_fused_moe_fp8("cpu", torch.float32, gen, cases,
                        [GemmConfig(16, 32, 16, 4), GemmConfig(16, 32, 16, 4, trans_b=True)], block)
print("interpreter ok")
"""


def test_fused_moe_in_triton_cpu_interpreter() -> None:
    pytest.importorskip("triton", reason="triton is a dev dependency; install with pip install -e .[dev]")
    from tests.kernels.interpreter_compat import run_in_interpreter

    seed = str(int.from_bytes(os.urandom(2), "little"))
    assert "interpreter ok" in run_in_interpreter(INTERPRETER_RUN, seed)
