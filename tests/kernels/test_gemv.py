"""The fused one-row products of batch-1 decode (kernels/gemv.py) against their torch references."""

from __future__ import annotations

import os

import pytest
import torch

from tests.kernels.gemv_cases import check_gemv, check_gemv_small, check_one_row_model_small


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_gemv_on_gpu(dtype: torch.dtype) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    check_gemv_small("cuda", dtype, torch.Generator().manual_seed(seed))
    # The Llama-3-8B shapes with the default tiles.
    check_gemv("cuda", dtype, torch.Generator().manual_seed(seed), hidden=4096, inter=14336, heads=32, kv_heads=8,
               dim=128)


@pytest.mark.gpu
@pytest.mark.parametrize("tp", [2, 4])
def test_gemv_at_the_8b_tp_shard_shapes_on_gpu(tp: int) -> None:
    """A rank's shard of the 8B at TP=2 and 4, with the tiles shipped for those shapes (gemv.SHAPE_TILES)."""
    seed = int.from_bytes(os.urandom(4), "little")
    check_gemv("cuda", torch.bfloat16, torch.Generator().manual_seed(seed), hidden=4096, inter=14336 // tp,
               heads=32 // tp, kv_heads=8 // tp, dim=128)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_one_row_model_on_gpu(backend: str) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    check_one_row_model_small("cuda", torch.bfloat16, torch.Generator().manual_seed(seed), backend)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_one_row_model_at_tp2_on_one_gpu(backend: str) -> None:
    """The TP form of the one-row path (o and down products without their residual, summed over the
    ranks, then the residual add) in bf16 with the GPU kernels: two ranks on one GPU summing over gloo,
    against the layer-by-layer path on the same ranks. The two-GPU test (NCCL) is in
    tests/gpu/test_tensor_parallel_gpu.py; this one runs where one GPU is lent."""
    from tests.kernels.gemv_cases import run_one_row_model_tp

    run_one_row_model_tp(2, "cuda", torch.bfloat16, int.from_bytes(os.urandom(2), "little"), backend, one_gpu=True)


INTERPRETER_RUN = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
import interpreter_compat; interpreter_compat.install()
from gemv_cases import check_gemv_small
check_gemv_small("cpu", torch.float32, torch.Generator().manual_seed(int(sys.argv[2])))
print("interpreter ok")
from gemv_cases import check_one_row_model_small
check_one_row_model_small("cpu", torch.float32, torch.Generator().manual_seed(int(sys.argv[2])))
print("model ok")
"""


def test_gemv_in_triton_cpu_interpreter() -> None:
    pytest.importorskip("triton", reason="triton is a dev dependency; install with pip install -e .[dev]")
    from tests.kernels.interpreter_compat import run_in_interpreter

    seed = str(int.from_bytes(os.urandom(2), "little"))
    out = run_in_interpreter(INTERPRETER_RUN, seed)
    assert "interpreter ok" in out and "model ok" in out


TP_INTERPRETER_RUN = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
from gemv_cases import run_one_row_model_tp
if __name__ == "__main__":
    run_one_row_model_tp(2, "cpu", torch.float32, int(sys.argv[2]), compat_dir=sys.argv[1])
    print("tp2 ok")
"""


def test_one_row_model_at_tp2_in_triton_cpu_interpreter() -> None:
    """With tensor parallelism the o and down products are partial: `_forward_one_row` sums them over
    the ranks (gloo here) before the residual add, and gives the layer-by-layer path's logits and KV rows."""
    pytest.importorskip("triton", reason="triton is a dev dependency; install with pip install -e .[dev]")
    from tests.kernels.interpreter_compat import run_in_interpreter

    seed = str(int.from_bytes(os.urandom(2), "little"))
    assert "tp2 ok" in run_in_interpreter(TP_INTERPRETER_RUN, seed)


@pytest.mark.parametrize(("mode", "enabled"), [(None, True), ("1", True), ("0", False)])
def test_the_one_row_path_is_on_unless_turned_off(monkeypatch: pytest.MonkeyPatch, mode: str | None,
                                                  enabled: bool) -> None:
    """On at every TP size (at TP>1 since a rank's step measured it faster, docs/gpu.md); "0" turns it off."""
    from radixserve.models.llama import one_row_enabled

    if mode is None:
        monkeypatch.delenv("RADIXSERVE_ONE_ROW_FUSION", raising=False)
    else:
        monkeypatch.setenv("RADIXSERVE_ONE_ROW_FUSION", mode)
    assert one_row_enabled() is enabled
