"""Triton paged-attention kernels against the float64 torch reference, on fresh random problems."""

from __future__ import annotations

import os

import pytest
import torch

from tests.kernels.kernel_cases import make_case, reference, rel_err, run_triton

# ||out - ref|| / ||ref|| bounds per input dtype (METHOD.md: bf16 operands land between 1e-3 and 1e-2).
BOUNDS = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
SHAPES = [  # bs, heads, kv_heads, head_dim, max_seq
    (1, 32, 8, 128, 3000),  # batch 1, long context (and in its own test, MAX_SPLITS slices)
    (7, 9, 3, 64, 300),  # SmolLM2's heads, odd batch
    (16, 16, 16, 64, 90),  # no GQA
    (5, 28, 4, 128, 700),  # group of 7
    (3, 8, 1, 80, 200),  # MQA, head_dim not a power of two
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernels_match_reference_on_gpu(shape: tuple[int, int, int, int, int], dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    for _ in range(2):  # fresh inputs each time
        case = make_case(*shape, dtype=dtype, device="cuda", gen=gen)
        dec, ext = run_triton(case)
        torch.cuda.synchronize()
        ref_dec, ref_ext = reference(case)
        assert rel_err(dec, ref_dec) < BOUNDS[dtype]
        assert rel_err(ext, ref_ext) < BOUNDS[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("max_seq", [40, 544, 3000])  # slices shorter than a block, one block, several
def test_batch1_decode_at_the_backends_most_splits_on_gpu(max_seq: int, dtype: torch.dtype) -> None:
    """Batch 1 of the 8B shape's heads as the backend runs it: MAX_SPLITS slices a sequence (empty ones
    too, below MAX_SPLITS tokens), merged by stage 2."""
    from radixserve.attention.triton_backend import MAX_SPLITS

    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    case = make_case(1, 32, 8, 128, max_seq, dtype=dtype, device="cuda", gen=gen)
    dec, _ = run_triton(case, splits=MAX_SPLITS)
    torch.cuda.synchronize()
    assert rel_err(dec, reference(case)[0]) < BOUNDS[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("shape", SHAPES[:3], ids=lambda s: "x".join(map(str, s)))
def test_fp8_kv_kernels_match_reference_on_gpu(shape: tuple[int, int, int, int, int]) -> None:
    """--kv-cache-dtype fp8_e4m3: the kernels read e4m3 K/V, times their scales, as bf16. Against the
    float64 reference over the same (dequantized) K/V, the error is the bf16 path's, not FP8's."""
    import dataclasses

    from radixserve.mem_cache.memory_pool import to_fp8

    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    k_scale, v_scale = 0.5, 2.0  # not 1: the scales must be applied where they belong
    case = make_case(*shape, dtype=torch.bfloat16, device="cuda", gen=gen)
    k8, v8 = to_fp8(case.k_buf, k_scale), to_fp8(case.v_buf, v_scale)
    dec, ext = run_triton(dataclasses.replace(case, k_buf=k8, v_buf=v8), k_scale, v_scale)
    torch.cuda.synchronize()
    ref_dec, ref_ext = reference(dataclasses.replace(case, k_buf=k8.double() * k_scale, v_buf=v8.double() * v_scale))
    assert rel_err(dec, ref_dec) < BOUNDS[torch.bfloat16]
    assert rel_err(ext, ref_ext) < BOUNDS[torch.bfloat16]


INTERPRETER_RUN = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
import interpreter_compat; interpreter_compat.install()
from kernel_cases import make_case, reference, rel_err, run_triton
gen = torch.Generator().manual_seed(int(sys.argv[2]))
# (8, 2, 1, 16, 300): one split a sequence, walked in blocks of 128 (the table read a block ahead)
for shape in [(3, 4, 2, 64, 40), (2, 8, 1, 32, 130), (1, 2, 2, 16, 7), (2, 6, 3, 80, 70), (8, 2, 1, 16, 300)]:
    case = make_case(*shape, dtype=torch.float32, device="cpu", gen=gen)
    dec, ext = run_triton(case)
    ref_dec, ref_ext = reference(case)
    errs = (rel_err(dec, ref_dec), rel_err(ext, ref_ext))
    assert max(errs) < 1e-5, (shape, errs)
# Batch 1 at the backend's MAX_SPLITS (32): some slices empty, the rest a few tokens each.
from radixserve.attention.triton_backend import MAX_SPLITS
for max_seq in (20, 200):
    case = make_case(1, 4, 2, 16, max_seq, dtype=torch.float32, device="cpu", gen=gen)
    dec, _ = run_triton(case, splits=MAX_SPLITS)
    assert rel_err(dec, reference(case)[0]) < 1e-5, (max_seq, rel_err(dec, reference(case)[0]))
print("interpreter ok")
"""


MIXED_RUN = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
import interpreter_compat; interpreter_compat.install()
from kernel_cases import make_case, rel_err, run_backend_mixed
gen = torch.Generator().manual_seed(int(sys.argv[2]))
for shape, decode_rows in [((3, 4, 2, 64, 40), 2), ((2, 8, 1, 32, 130), 1), ((4, 6, 3, 16, 50), 4)]:
    out, ref = run_backend_mixed(make_case(*shape, dtype=torch.float32, device="cpu", gen=gen), decode_rows)
    assert rel_err(out, ref) < 1e-5, (shape, rel_err(out, ref))
print("mixed ok")
"""


def test_mixed_batch_decode_rows_in_triton_cpu_interpreter() -> None:
    """A mixed prefill batch (--enable-mixed-chunk): prompt rows through the extend kernel and the
    running requests' one-token rows through the decode kernel give the exact attention."""
    pytest.importorskip("triton", reason="triton is a dev dependency; install with pip install -e .[dev]")
    from tests.kernels.interpreter_compat import run_in_interpreter

    seed = str(int.from_bytes(os.urandom(2), "little"))
    assert "mixed ok" in run_in_interpreter(MIXED_RUN, seed)


def test_kernel_logic_in_triton_cpu_interpreter() -> None:
    """The same kernels, run by Triton's CPU interpreter in float32: CI coverage of their indexing."""
    pytest.importorskip("triton", reason="triton is a dev dependency; install with pip install -e .[dev]")
    from tests.kernels.interpreter_compat import run_in_interpreter

    seed = str(int.from_bytes(os.urandom(2), "little"))
    assert "interpreter ok" in run_in_interpreter(INTERPRETER_RUN, seed)
