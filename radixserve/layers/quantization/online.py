"""`--quantization fp8` / `int4`: a float model's linear layers quantized after loading.

fp8: per output channel (one scale per row), finer than vLLM's per-tensor online FP8 at no cost in
the row-wise scaled product. int4: weight-only, 4-bit codes with a scale and an offset per 32 input
columns, rounded to nearest (x = s q + m, GGUF's Q4_1 form and torchao's int4 weight-only with
group 32), run by the packed kernels GGUF weights use (CPU: torch's int4 op; CUDA: Triton).
Only the decoder's linear layers (q/k/v, o, gate/up, down) are quantized, and with fp8 the
mixture-of-experts weights too (per expert and output channel, run weight-only: layers/moe.py); the
embedding and the LM head stay in the model dtype.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from radixserve.layers.linear import ColumnParallelLinear, RowParallelLinear, drop_dense, pack_quantized
from radixserve.layers.quantization.base import GroupQuantized, QuantMethod, UnsupportedQuantizationError
from radixserve.layers.quantization.fp8 import Fp8Linear, quantize_weight_per_channel

logger = logging.getLogger(__name__)

INT4_GROUP = 32


def quantize_group_int4(w: torch.Tensor, group: int = INT4_GROUP) -> GroupQuantized:
    """[N, K] float -> 4-bit codes with per-`group` scale (max - min) / 15 and offset min, on w's device."""
    n, k = w.shape
    if k % group:
        raise UnsupportedQuantizationError(f"int4: {k} input columns are not whole groups of {group}")
    g = w.float().reshape(n, k // group, group)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    scale = (hi - lo) / 15
    codes = torch.where(scale[..., None] > 0, (g - lo[..., None]) / scale[..., None].clamp_min(1e-30), 0.0)
    codes = codes.round_().clamp_(0, 15).to(torch.uint8).reshape(n, k)
    return GroupQuantized(codes, scale, lo, group, 4, "int4")


def _quantize_linears(model: nn.Module, make: Callable[[nn.Parameter], QuantMethod]) -> int:
    count, kept = 0, []
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, ColumnParallelLinear | RowParallelLinear):
                continue
            if module.quant is not None or module.weight.numel() == 0:
                continue  # already quantized (a checkpoint's own FP8 or GGUF weights), or another stage's
            try:
                module.quant = make(module.weight)
            except UnsupportedQuantizationError as e:
                kept.append(f"{name} ({e})")
                continue
            drop_dense(module.weight)
            count += 1
    if kept:
        logger.warning("%d linear layers stay in the model dtype, e.g. %s", len(kept), "; ".join(kept[:3]))
    return count


def quantize_linears_fp8(model: nn.Module) -> int:
    """Replace every dense linear weight and expert stack with its FP8 form in place; returns how many
    linear layers and expert layers were quantized."""
    from radixserve.layers.moe import FusedMoE

    count = _quantize_linears(model, lambda w: Fp8Linear(quantize_weight_per_channel(w.data), w.device))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, FusedMoE) and (module.w13_fp8 is None or module.w2_fp8 is None):
                module.quantize_fp8()
                count += 1
    return count


def quantize_linears_int4(model: nn.Module) -> int:
    """Replace every dense linear weight with 4-bit group codes run by the packed kernel of its device;
    a layer the kernel cannot hold (its columns split off the groups) stays dense, with a warning."""
    return _quantize_linears(model, lambda w: pack_quantized(quantize_group_int4(w.data), w))
