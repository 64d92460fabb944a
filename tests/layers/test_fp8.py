"""FP8 weights (layers/quantization/fp8.py): scale layouts, slicing for TP, quantization error
bounds, the block kernel in Triton's CPU interpreter; the GPU products are in tests/gpu/test_fp8_gpu.py."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from radixserve.distributed.parallel_state import ParallelGroup
from radixserve.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from radixserve.layers.quantization.base import UnsupportedQuantizationError
from radixserve.layers.quantization.fp8 import (
    FP8_DTYPE,
    FP8_MAX,
    Fp8Linear,
    Fp8Weight,
    quantize_activations,
    quantize_weight_per_channel,
)
from radixserve.layers.quantization.online import quantize_linears_fp8
from radixserve.model_loader.fp8_checkpoint import fp8_weight, parse_quantization_config
from tests.kernels.fp8_cases import check_linear_apply, random_fp8_weight
from tests.model_loader.fp8_checkpoints import LAYOUTS

# e4m3 keeps 3 mantissa bits: a normal value is rounded to within 2^-4 of itself; below the smallest
# normal (2^-6) the step is 2^-9, so the absolute error there is at most 2^-10 (in units of the scale).
REL, ABS_SUB = 2.0**-4, 2.0**-10


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_per_tensor_scale_is_kept_per_channel_exactly() -> None:
    codes = (torch.randn(6, 8) * 50).to(FP8_DTYPE)
    w = Fp8Weight.per_tensor(codes, torch.tensor([0.25]), "t")
    assert w.scale.shape == (6, 1) and w.block is None
    torch.testing.assert_close(w.dequantize(), codes.float() * 0.25, rtol=0, atol=0)


def test_block_scales_cover_partial_edge_blocks() -> None:
    codes = (torch.randn(200, 256) * 50).to(FP8_DTYPE)
    scale = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    w = Fp8Weight(codes, scale, (128, 128), "b")
    d = w.dequantize()
    torch.testing.assert_close(d[127, 127], codes[127, 127].float() * 1.0)
    torch.testing.assert_close(d[128, 0], codes[128, 0].float() * 3.0)
    torch.testing.assert_close(d[199, 255], codes[199, 255].float() * 4.0)
    with pytest.raises(UnsupportedQuantizationError, match=r"must be \[2, 2\]"):
        Fp8Weight(codes, torch.ones(2, 1), (128, 128), "b")


@pytest.mark.parametrize("block", [None, (128, 128)])
def test_narrow_and_cat_rows_match_the_dequantized_slices(block: tuple[int, int] | None) -> None:
    w = random_fp8_weight(384, 256, block, _gen())
    full = w.dequantize()
    rows = w.narrow(0, 128, 256)
    cols = w.narrow(1, 128, 128)
    torch.testing.assert_close(rows.dequantize(), full[128:384], rtol=0, atol=0)
    torch.testing.assert_close(cols.dequantize(), full[:, 128:256], rtol=0, atol=0)
    joined = Fp8Weight.cat_rows([w.narrow(0, 0, 128), rows])
    torch.testing.assert_close(joined.dequantize(), full, rtol=0, atol=0)
    if block is not None:
        with pytest.raises(UnsupportedQuantizationError, match="scale blocks"):
            w.narrow(1, 64, 128)


def test_per_channel_quantization_error_is_within_e4m3_rounding() -> None:
    w = torch.randn(64, 96, generator=_gen()) * torch.logspace(-3, 1, 64).unsqueeze(1)
    q = quantize_weight_per_channel(w)
    assert q.codes.dtype == FP8_DTYPE and q.scale.shape == (64, 1)
    assert torch.allclose(q.codes.float().abs().amax(dim=1), torch.full((64,), FP8_MAX))
    err = (q.dequantize() - w).abs()
    assert bool((err <= w.abs() * REL + q.scale * ABS_SUB + 1e-12).all())


@pytest.mark.parametrize("group", [None, 32])
def test_activation_quantization_is_per_token_and_group(group: int | None) -> None:
    x = torch.randn(5, 64, generator=_gen()) * torch.tensor([1e-3, 1.0, 30.0, 1e3, 0.0]).unsqueeze(1)
    codes, scale = quantize_activations(x, group)
    assert scale.shape == ((5, 1) if group is None else (5, 64 // group))
    expand = scale if group is None else scale.repeat_interleave(group, 1)
    err = (codes.float() * expand - x).abs()
    assert bool((err <= x.abs() * REL + expand * ABS_SUB + 1e-12).all())
    assert bool((codes.float()[4] == 0).all())  # an all-zero token stays zero (no 0/0)


@pytest.mark.parametrize("block", [None, (128, 128)])
def test_fp8_linear_on_cpu_is_the_reference(block: tuple[int, int] | None) -> None:
    check_linear_apply("cpu", torch.float32, _gen(1), [(1, 256, 256, block), (9, 384, 128, block)])


def ranks(size: int) -> list[ParallelGroup]:
    return [ParallelGroup(rank=r, size=size) for r in range(size)]


@pytest.mark.parametrize("block", [None, (128, 128)])
def test_tp_slices_of_fp8_weights_recombine(block: tuple[int, int] | None) -> None:
    gen = _gen(2)
    q, k, v = (random_fp8_weight(n, 256, block, gen) for n in (512, 256, 256))
    gate, up = random_fp8_weight(512, 256, block, gen), random_fp8_weight(512, 256, block, gen)
    down = random_fp8_weight(256, 512, block, gen)
    partial = []
    for tp in ranks(2):
        qkv = QKVParallelLinear(256, 64, 8, 4, tp=tp)
        for name, t in (("q", q), ("k", k), ("v", v)):
            qkv.load_quantized(t, name)
        assert isinstance(qkv.quant, Fp8Linear) and qkv.weight.numel() == 0
        got = qkv.quant.dequantize()
        torch.testing.assert_close(got[:256], q.dequantize()[tp.rank * 256:][:256], rtol=0, atol=0)
        torch.testing.assert_close(got[256:384], k.dequantize()[tp.rank * 128:][:128], rtol=0, atol=0)
        mlp = MergedColumnParallelLinear(256, [512, 512], tp=tp)
        mlp.load_quantized(gate, 0)
        mlp.load_quantized(up, 1)
        assert mlp.quant is not None
        torch.testing.assert_close(mlp.quant.dequantize()[256:], up.dequantize()[tp.rank * 256:][:256],
                                   rtol=0, atol=0)
        row = RowParallelLinear(512, 256, tp=tp, reduce_results=False)
        row.load_quantized(down)
        assert row.quant is not None
        partial.append(row.quant.dequantize())
    torch.testing.assert_close(torch.cat(partial, dim=1), down.dequantize(), rtol=0, atol=0)


def test_online_quantization_replaces_dense_linears_only() -> None:
    qkv, down = QKVParallelLinear(64, 16, 4, 2), RowParallelLinear(128, 64)
    model = nn.ModuleDict({"qkv": qkv, "down": down, "norm": nn.LayerNorm(64)})
    for p in model.parameters():
        nn.init.normal_(p, 0, 0.05)
    dense: list[tuple[ColumnParallelLinear | RowParallelLinear, torch.Tensor]] = [
        (qkv, qkv.weight.detach().clone()), (down, down.weight.detach().clone())]
    assert quantize_linears_fp8(model) == 2
    assert quantize_linears_fp8(model) == 0  # already quantized
    for lin, w in dense:
        assert isinstance(lin.quant, Fp8Linear) and lin.weight.numel() == 0
        err = (lin.quant.dequantize() - w).abs()
        assert bool((err <= w.abs() * REL + lin.quant.scale.reshape(-1, 1) * ABS_SUB + 1e-12).all())


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_published_config_parses(layout: str) -> None:
    qc, _kind, _ = LAYOUTS[layout]
    scheme = parse_quantization_config(qc)
    assert scheme is not None and scheme.method == qc["quant_method"] and scheme.block == (128, 128)
    assert scheme.static_activations == (layout == "compressed-tensors-tensor")


@pytest.mark.parametrize(("qc", "match"), [
    ({"quant_method": "awq", "bits": 4}, "quantization method 'awq' is not supported"),
    ({"quant_method": "gptq"}, "quantization method 'gptq' is not supported"),
    ({"quant_method": "compressed-tensors", "format": "pack-quantized",
      "config_groups": {}}, "format 'pack-quantized' is not supported"),
    ({"quant_method": "compressed-tensors", "config_groups": {"g": {"weights": {"num_bits": 8, "type": "int",
                                                                                "strategy": "channel"}}}},
     "8-bit int weights"),
    ({"quant_method": "fp8", "fmt": "e5m2"}, "fp8 format 'e5m2'"),
])
def test_other_quantizations_are_refused_by_name(qc: dict[str, object], match: str) -> None:
    with pytest.raises(UnsupportedQuantizationError, match=match):
        parse_quantization_config(qc)


def test_scale_shape_decides_the_granularity() -> None:
    scheme = parse_quantization_config(LAYOUTS["fp8-block"][0])
    assert scheme is not None
    codes = torch.zeros(256, 384).to(FP8_DTYPE)
    assert fp8_weight("w", codes, torch.tensor(2.0), scheme).block is None
    assert fp8_weight("w", codes, torch.ones(256, 1), scheme).block is None
    assert fp8_weight("w", codes, torch.ones(2, 3), scheme).block == (128, 128)
    with pytest.raises(UnsupportedQuantizationError, match=r"w: scale of shape \[4, 4\] fits none"):
        fp8_weight("w", codes, torch.ones(4, 4), scheme)


INTERPRETER_RUN = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
import interpreter_compat; interpreter_compat.install()
from fp8_cases import check_block_kernel, check_channel_kernel, check_quantize_kernel
gen = torch.Generator().manual_seed(int(sys.argv[2]))
# Rows 1 (decode) and 37 (masked), columns not a multiple of the tile (200), K of one and three blocks.
check_block_kernel("cpu", gen, [(1, 200, 128), (37, 128, 384)])
check_channel_kernel("cpu", gen, [(1, 200, 256), (20, 64, 128)])
# Per token over a width that is not a power of two, and per 128-column group.
check_quantize_kernel("cpu", gen, [(5, 96, None), (3, 384, 128)])
print("interpreter ok")
"""


def test_block_kernel_in_triton_cpu_interpreter() -> None:
    pytest.importorskip("triton", reason="triton is a dev dependency; install with pip install -e .[dev]")
    from tests.kernels.interpreter_compat import run_in_interpreter

    seed = str(int.from_bytes(os.urandom(2), "little"))
    assert "interpreter ok" in run_in_interpreter(INTERPRETER_RUN, seed)
