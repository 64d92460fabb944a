"""extend_attention with `step_kv` (this step's keys from the step's k, v; the cached prefix from the
pool) against the float64 reference, on fresh random problems with cached prefixes."""

from __future__ import annotations

import os

import pytest
import torch

from tests.kernels.kernel_cases import make_case, rel_err
from tests.kernels.step_kv_cases import run_step_kv

BOUNDS = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
SHAPES = [(1, 32, 8, 128, 3000), (7, 9, 3, 64, 300), (5, 28, 4, 128, 700), (3, 8, 1, 80, 200)]


# (dtype, (block_m, block_n, warps, stages, exp2, heavy_first)); None: extend_attention's default launch
GPU_CASES = [(torch.bfloat16, None), (torch.float32, None), (torch.bfloat16, (128, 64, 8, 3, True, True)),
             (torch.bfloat16, (64, 64, 4, 3, False, False))]


@pytest.mark.gpu
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize(("dtype", "tiles"), GPU_CASES, ids=str)
def test_step_kv_matches_reference_on_gpu(shape: tuple[int, int, int, int, int], dtype: torch.dtype,
                                          tiles: tuple[int, int, int, int, bool, bool] | None) -> None:
    from radixserve.kernels.triton_attention import ExtendTiles

    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    for _ in range(2):
        out, ref = run_step_kv(make_case(*shape, dtype=dtype, device="cuda", gen=gen),
                               ExtendTiles(*tiles) if tiles else None)
        torch.cuda.synchronize()
        assert rel_err(out, ref) < BOUNDS[dtype]


STEP_KV_RUN = r"""
import sys, torch
from pathlib import Path
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, str(Path(sys.argv[1]).parents[1]))
import interpreter_compat; interpreter_compat.install()
from tests.kernels.kernel_cases import make_case, rel_err
from tests.kernels.step_kv_cases import run_step_kv
from radixserve.kernels.triton_attention import ExtendTiles
gen = torch.Generator().manual_seed(int(sys.argv[2]))
for shape in [(3, 4, 2, 64, 40), (2, 8, 1, 32, 130), (1, 2, 2, 16, 7), (2, 6, 3, 80, 70)]:
    # the default launch, small square and tall tiles (several diagonal blocks), and the pre-exp2 order
    for tiles in (None, ExtendTiles(16, 16), ExtendTiles(32, 16), ExtendTiles(16, 16, exp2=False, heavy_first=False)):
        out, ref = run_step_kv(make_case(*shape, dtype=torch.float32, device="cpu", gen=gen), tiles)
        assert rel_err(out, ref) < 1e-5, (shape, tiles, rel_err(out, ref))
print("step kv ok")
"""


def test_step_kv_in_triton_cpu_interpreter() -> None:
    """The step-K/V path's indexing (prefix blocks, unmasked and diagonal blocks) in float32 on the CPU."""
    pytest.importorskip("triton", reason="triton is a dev dependency; install with pip install -e .[dev]")
    from tests.kernels.interpreter_compat import run_in_interpreter

    seed = str(int.from_bytes(os.urandom(2), "little"))
    assert "step kv ok" in run_in_interpreter(STEP_KV_RUN, seed)
