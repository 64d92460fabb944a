"""FP8 experts in FusedMoE: loaded from per-expert FP8 checkpoint tensors (per channel and 128x128
blocks, whole and as one tensor-parallel rank's slice) they compute exactly what the same
layer computes from the dequantized weights; `--quantization fp8` stays within the rounding's bound;
incomplete or inconsistent FP8 experts are errors that name the expert."""

from __future__ import annotations

import pytest
import torch

from radixserve.layers.moe import DOWN, GATE, UP, Fp8Experts, FusedMoE
from radixserve.layers.quantization.base import UnsupportedQuantizationError
from radixserve.layers.quantization.fp8 import Fp8Weight
from tests.model_loader.fp8_checkpoints import dequantize, quantize

E, TOP_K, H, INTER = 4, 2, 256, 256


class _Rank:
    """The parts of a ParallelGroup that FusedMoE's loading reads (rank and size; no collectives run)."""

    def __init__(self, rank: int, size: int) -> None:
        self.rank, self.size = rank, size

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        return t


def _checkpoint(kind: str, gen: torch.Generator) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
    """(expert, proj) -> (FP8 codes, scale) as a checkpoint stores them."""
    out = {}
    for e in range(E):
        for which, shape in ((GATE, (INTER, H)), (UP, (INTER, H)), (DOWN, (H, INTER))):
            out[e, which] = quantize(torch.randn(shape, generator=gen) * 0.05, kind)
    return out


def _fp8_weight(codes: torch.Tensor, scale: torch.Tensor, kind: str) -> Fp8Weight:
    if kind == "block":
        return Fp8Weight(codes, scale, (128, 128), "test")
    return Fp8Weight(codes, scale.reshape(-1, 1), None, "test")


def _layers(kind: str, rank: int, size: int, gen: torch.Generator) -> tuple[FusedMoE, FusedMoE]:
    """The same experts as FP8 and as their dequantized float32 values."""
    ckpt = _checkpoint(kind, gen)
    group = _Rank(rank, size)
    fp8 = FusedMoE(E, TOP_K, H, INTER, True, tp=group)  # type: ignore[arg-type]
    ref = FusedMoE(E, TOP_K, H, INTER, True, tp=group)  # type: ignore[arg-type]
    for (e, which), (codes, scale) in ckpt.items():
        fp8.load_quantized(_fp8_weight(codes, scale, kind), (e, which))
        param = ref.w2_weight if which == DOWN else ref.w13_weight
        param.weight_loader(param, dequantize(codes, scale, kind), (e, which))  # type: ignore[attr-defined]
    assert fp8._pending == []
    return fp8, ref


@pytest.mark.parametrize("kind", ["channel", "block"])
@pytest.mark.parametrize(("rank", "size"), [(0, 1), (1, 2)])
def test_fp8_experts_compute_what_their_dequantized_weights_do(kind: str, rank: int, size: int) -> None:
    gen = torch.Generator().manual_seed(7)
    fp8, ref = _layers(kind, rank, size, gen)
    assert isinstance(fp8.w13, Fp8Experts) and isinstance(fp8.w2, Fp8Experts)
    assert fp8.w13.codes.dtype == torch.float8_e4m3fn and fp8.w13_weight.numel() == 0  # float storage dropped
    assert fp8.w13.block == ((128, 128) if kind == "block" else (1, H))
    for e in range(E):
        torch.testing.assert_close(fp8.w13.expert(e, torch.float32), ref.w13_weight[e], rtol=0, atol=0)
        torch.testing.assert_close(fp8.w2.expert(e, torch.float32), ref.w2_weight[e], rtol=0, atol=0)
    x = torch.randn(9, H, generator=gen)
    logits = torch.randn(9, E, generator=gen)
    torch.testing.assert_close(fp8(x, logits), ref(x, logits), rtol=0, atol=0)


def test_quantization_fp8_of_float_experts_is_within_its_rounding() -> None:
    gen = torch.Generator().manual_seed(3)
    layer = FusedMoE(E, TOP_K, H, INTER, True)
    layer.w13_weight.data.copy_(torch.randn(layer.w13_weight.shape, generator=gen) * 0.05)
    layer.w2_weight.data.copy_(torch.randn(layer.w2_weight.shape, generator=gen) * 0.05)
    w13, w2 = layer.w13_weight.detach().clone(), layer.w2_weight.detach().clone()
    x = torch.randn(16, H, generator=gen)
    logits = torch.randn(16, E, generator=gen)
    want = layer(x, logits)
    layer.quantize_fp8()
    q13, q2 = layer.w13, layer.w2
    assert isinstance(q13, Fp8Experts) and isinstance(q2, Fp8Experts)
    assert q13.block == (1, H) and q2.block == (1, INTER)
    for e in range(E):
        # e4m3 keeps 3 mantissa bits: each weight within 1/16 of itself (plus the smallest step).
        for got, orig in ((q13.expert(e, torch.float32), w13[e]), (q2.expert(e, torch.float32), w2[e])):
            assert ((got - orig).abs() <= orig.abs() / 16 + 1e-6).all()
    got = layer(x, logits)
    assert (got - want).norm() / want.norm() < 0.05


def test_incomplete_and_inconsistent_fp8_experts_are_named() -> None:
    gen = torch.Generator().manual_seed(5)
    ckpt = _checkpoint("channel", gen)
    layer = FusedMoE(E, TOP_K, H, INTER, True)
    codes, scale = ckpt[0, GATE]
    layer.load_quantized(_fp8_weight(codes, scale, "channel"), (0, GATE))
    assert (0, UP) in layer._pending and (3, DOWN) not in layer._pending  # w2 has not begun
    block_codes, block_scale = quantize(torch.randn(INTER, H, generator=gen), "block")
    with pytest.raises(ValueError, match=r"expert 1 gate: scale granularity \(128, 128\) differs"):
        layer.load_quantized(_fp8_weight(block_codes, block_scale, "block"), (1, GATE))
    with pytest.raises(ValueError, match="expert 9 out of range"):
        layer.load_quantized(_fp8_weight(codes, scale, "channel"), (9, GATE))
    # A 128-row block split over 4 ranks of 64 rows each cannot keep its scales: the loader dequantizes.
    quarter = FusedMoE(E, TOP_K, H, INTER, True, tp=_Rank(1, 4))  # type: ignore[arg-type]
    with pytest.raises(UnsupportedQuantizationError, match="do not fall on its 128-wide scale blocks"):
        quarter.load_quantized(_fp8_weight(block_codes, block_scale, "block"), (0, GATE))
