"""Group-quantized GGUF weights on CUDA through the Triton W4A16 kernel (kernels/int4_gemm.py).

The file's codes are kept: codes of up to 4 bits as they are, wider ones (Q5_*, Q6_K's and Q8_0's
8-bit codes) as a high and a low nibble of the same column, w = 16 s h + (s l + o), which the kernel
reads against the same activations twice. Scales and zeros are fp16 (GGUF's own scales are fp16,
so Q4_0/Q8_0 scales are exact; K-quant products of scale and sub-scale round at 2^-11).
"""

from __future__ import annotations

import torch

from radixserve.layers.quantization.base import GroupQuantized, UnsupportedQuantizationError

GROUP = 32
SCALE_DTYPE = torch.float16


def _halves(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes [N, C] (< 16) -> bytes [N, C / 2]: column b low, column C / 2 + b high."""
    half = codes.shape[1] // 2
    return (codes[:, :half] | (codes[:, half:] << 4)).contiguous()


class Int4TritonWeight:
    """A [N, K] weight as nibbles with fp16 scale and zero per 32 code columns, on a CUDA device."""

    precise = False  # activations in the model's dtype (bf16 or fp16)

    def __init__(self, w: GroupQuantized, device: torch.device) -> None:
        n, k = w.shape
        self.split = w.bits > 4
        if not 1 <= w.bits <= 8 or w.group_size != GROUP or k % (GROUP if self.split else 2 * GROUP):
            raise UnsupportedQuantizationError(
                f"{w.source}: {w.bits}-bit codes in groups of {w.group_size} over {k} columns do not fit the "
                f"Triton int4 kernel (up to 8 bits, groups of {GROUP}, columns a multiple of {2 * GROUP})")
        self.name = f"int4-triton({w.source}{', split nibbles' if self.split else ''})"
        self.out_features, self.in_features = n, k
        codes = w.codes.to(torch.uint8)
        if self.split:
            codes = torch.cat([codes >> 4, codes & 0x0F], dim=1)
            scale = torch.cat([16 * w.scale, w.scale], dim=1)
            zero = torch.cat([torch.zeros_like(w.offset), w.offset], dim=1)
        else:
            scale, zero = w.scale, w.offset
        self.packed = _halves(codes).to(device)
        # Transposed, [groups, N]: the kernel reads one group's values for a run of rows at once.
        self.scale = scale.t().to(SCALE_DTYPE).contiguous().to(device)
        self.zero = zero.t().to(SCALE_DTYPE).contiguous().to(device)

    def apply(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        from radixserve.kernels.int4_gemm import int4_group_gemm

        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.dtype not in (torch.bfloat16, torch.float16):
            x2 = x2.to(torch.bfloat16)  # the kernel's dot runs in 16 bits; float32 models get bf16 products
        y = int4_group_gemm(x2, self.packed, self.scale, self.zero, self.split)
        y = y.to(x.dtype).reshape(*lead, self.out_features)
        return y if bias is None else y + bias

    def dequantize(self) -> torch.Tensor:
        """float32 [N, K], from the stored nibbles, scales and zeros."""
        b = self.packed.to(torch.int32)
        codes = torch.cat([b & 0x0F, b >> 4], dim=1).float()  # code columns [N, C]
        w = (codes * self.scale.float().t().repeat_interleave(GROUP, 1)
             + self.zero.float().t().repeat_interleave(GROUP, 1))
        if self.split:
            w = w[:, : self.in_features] + w[:, self.in_features :]
        return w

    def reference_apply(self, x: torch.Tensor) -> torch.Tensor:
        """The product in float32 from `dequantize()`: what the kernel is checked against."""
        return x.float() @ self.dequantize().to(x.device).t()

    def nbytes(self) -> int:
        return int(self.packed.numel() + 2 * self.scale.numel() * self.scale.element_size())
