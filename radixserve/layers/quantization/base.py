"""The seam between a linear layer and a quantized weight.

A linear module whose `quant` attribute is set runs `quant.apply(x, bias)` instead of
`F.linear(x, weight, bias)`; nothing else in the layer knows how the weight is stored. A method
holds this rank's slice only (the layer slices before building it), so TP is the layer's business.

`GroupQuantized` is the neutral form that format readers (GGUF today) hand to the layers: integer
codes with one scale and one offset per group of input columns, x = scale * code + offset. Per-tensor
and per-channel scales are the cases of one group spanning all columns; block scales (FP8 128x128)
are a group over both axes, which a later method would carry in its own fields.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

import torch


@functools.cache
def cpu_gemm_dtype() -> torch.dtype:
    """The dtype of a CPU GEMM on an expanded weight (a prefill's products): bfloat16 where the CPU
    multiplies it natively (oneDNN's bf16 ISA: AVX512 with BF16 or AMX), float32 elsewhere. On an AVX2
    CPU torch emulates bf16 GEMMs at a fifth to a seventh of float32's speed (2 cores, 37 x 576 ->
    1536: 4.0 against 0.70 ms), and float32 is also the exact product."""
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return torch.bfloat16 if native else torch.float32


class UnsupportedQuantizationError(ValueError):
    """A quantized weight that no packed method (and no dequantizer) can handle; names the type."""


class QuantMethod(Protocol):
    """A packed weight of shape [out_features, in_features] and the matmul that reads it."""

    name: str  # e.g. "int4-cpu(Q4_1)": what the load log and the docs call it
    out_features: int
    in_features: int
    # Outputs within ~1e-5 of the float product of `dequantize()`: a tied LM head then needs no exact
    # refinement of its best candidates (layers/vocab_embedding.py). False for products that round their
    # activations to bf16 or FP8.
    precise: bool

    def apply(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., in_features] -> [..., out_features] in x's dtype, bias added."""
        ...

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [out, in] exactly as `apply` sees it: the reference to test against."""
        ...

    def nbytes(self) -> int:
        """Bytes the packed weight and its scales occupy."""
        ...


@dataclass
class GroupQuantized:
    """Unsigned integer codes with a per-group affine map: w[n, k] = scale[n, g] * codes[n, k] + offset[n, g],
    g = k // group_size. `source` names the file format's type (e.g. "Q4_1") for logs and errors."""

    codes: torch.Tensor  # uint8 [N, K]
    scale: torch.Tensor  # float32 [N, K // group_size]
    offset: torch.Tensor  # float32 [N, K // group_size]
    group_size: int
    bits: int
    source: str

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.codes.shape[0]), int(self.codes.shape[1])

    def narrow(self, dim: int, start: int, length: int) -> GroupQuantized:
        """Rows (dim 0) or columns (dim 1) [start, start + length); columns must fall on group boundaries."""
        if dim == 0:
            return GroupQuantized(self.codes.narrow(0, start, length), self.scale.narrow(0, start, length),
                                  self.offset.narrow(0, start, length), self.group_size, self.bits, self.source)
        if start % self.group_size or length % self.group_size:
            raise UnsupportedQuantizationError(
                f"{self.source}: columns [{start}, {start + length}) do not fall on its {self.group_size}-column "
                "groups")
        g0, ng = start // self.group_size, length // self.group_size
        return GroupQuantized(self.codes.narrow(1, start, length), self.scale.narrow(1, g0, ng),
                              self.offset.narrow(1, g0, ng), self.group_size, self.bits, self.source)

    def dequantize(self) -> torch.Tensor:
        """float32 [N, K]: the reference values."""
        expand = self.group_size
        return (self.codes.float() * self.scale.repeat_interleave(expand, 1)
                + self.offset.repeat_interleave(expand, 1))

    @staticmethod
    def cat_rows(parts: list[GroupQuantized]) -> GroupQuantized:
        first = parts[0]
        if any(p.group_size != first.group_size for p in parts):
            raise UnsupportedQuantizationError(
                f"cannot fuse {[p.source for p in parts]}: their group sizes differ")
        sources = sorted({p.source for p in parts})
        # Unsigned codes of fewer bits are valid codes of more: the widest decides (Q4_K + Q5_K).
        return GroupQuantized(torch.cat([p.codes for p in parts]), torch.cat([p.scale for p in parts]),
                              torch.cat([p.offset for p in parts]), first.group_size, max(p.bits for p in parts),
                              "+".join(sources))
