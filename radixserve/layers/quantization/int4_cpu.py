"""Groupwise int4 weights on CPU through torch's `_weight_int4pack_mm_for_cpu`.

The op's convention (checked numerically against torch 2.13): w = (q - 8) * scale + zero, with
q in [0, 16), one (scale, zero) per group of 32/64/128/256 input columns, stored as
scales_and_zeros[K // group, N, 2]. An affine code x = s * q + o therefore maps exactly with
scale = s and zero = o + 8 * s, so GGUF's Q4_0 / Q4_1 / Q4_K blocks go in without requantizing.

Codes of 5 to 8 bits (GGUF Q5_0/Q5_1/Q5_K/Q8_0) are split into a high and a low nibble,
u = 16 h + l, laid side by side as one int4 weight of 2K columns that multiplies [x, x]: one
kernel call, one byte a weight. With s_b the scale rounded to bf16 and the offset kept in code
units (o' = s_b * o / s), the high half is (h - 8) * 16 s_b + z_h and the low half
(l - 8) * s_b + z_l with z_h + z_l = o' + 136 s_b; z_h is 0 or 128 s_b (exact in bf16) so that
|z_l| is smallest, which makes Q8_0 (o = -128 s: z_l = 8 s_b) and Q5_0 (o = -16 s: z_l = -8 s_b)
exact given s_b.

Activations run in bfloat16: on this CPU (AVX512-BF16) the bf16 kernel is 20-60x faster than the
float32 one (1536x576, batch 1: 41 us vs 2.7 ms; dense fp32 F.linear: 89 us), and the op wants the
scales in the activation dtype. Rounding the scales and zeros to bf16 moves a weight by at most
|zero| * 2^-9 ~= scale / 64, well inside the 4-bit step `scale`.
"""

from __future__ import annotations

import functools
import os

import torch

from radixserve.layers.quantization.base import (
    GroupQuantized,
    QuantMethod,
    UnsupportedQuantizationError,
    cpu_gemm_dtype,
)

GROUP_SIZES = (32, 64, 128, 256)
COMPUTE_DTYPE = torch.bfloat16
# The int4 kernel runs each row as its own product (~16 us a row for 1536x576 on a 2-core AVX512 CPU):
# from this many rows on (prefill) it is cheaper to expand the weight for the call (~1.5 ms) and run one
# GEMM (bf16 there: 256 rows 4.6 -> 1.6 ms; 2048 rows ~33 -> ~6 ms), in float32 where the CPU has no
# native bf16 GEMM (base.cpu_gemm_dtype).
# RADIXSERVE_INT4_DENSE_FROM_ROWS overrides it for A/B runs (a huge value: the kernel for every row count).
DENSE_FROM_ROWS = int(os.environ.get("RADIXSERVE_INT4_DENSE_FROM_ROWS", "96"))
# The CPU packing's layout as read by `_unpack_codes`: output rows in blocks of B, each byte at
# [block, k, j] holding row B * block + j (low nibble) and row B * block + B / 2 + j (high nibble).
# B follows the CPU torch runs on: 64 with AVX512, 32 with AVX2 (torch 2.13); `_packing_block` finds it.
_BLOCKS = (64, 32)


def int4_cpu_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and hasattr(
        torch.ops.aten, "_convert_weight_to_int4pack_for_cpu")


def _unpack_codes(packed: torch.Tensor, block: int) -> torch.Tensor:
    """torch's CPU int4 packing [N, K/2] bytes back to codes [N, K] (uint8), for N a multiple of `block`."""
    n, k = packed.shape[0], packed.shape[1] * 2
    p = packed.view(n // block, k, block // 2)
    return torch.stack([p & 15, p >> 4], dim=1).permute(0, 1, 3, 2).reshape(n, k)


@functools.cache
def _packing_block() -> int:
    """The row block this torch packs in on this CPU, found by packing a pattern and reading it back
    (the layout is the kernel's private business); 0 where no known layout reads it back, and then
    large batches keep the int4 kernel."""
    rows = 2 * max(_BLOCKS)
    codes = (torch.arange(rows * 64, dtype=torch.int32).view(rows, 64) * 7) % 16
    try:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    except RuntimeError:
        return 0
    for block in _BLOCKS:
        if torch.equal(_unpack_codes(packed, block), codes.to(torch.uint8)):
            return block
    return 0


def _split_nibbles(w: GroupQuantized) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """5-8-bit codes -> int4 codes [N, 2K] (high nibbles, then low) with their scales and zeros."""
    s_b = w.scale.to(COMPUTE_DTYPE).float()
    nonzero = w.scale != 0
    offset = torch.where(nonzero, w.offset / torch.where(nonzero, w.scale, 1.0) * s_b, w.offset)
    total = offset + 136 * s_b  # z_h + z_l
    z_h = torch.where((total - 128 * s_b).abs() < total.abs(), 128 * s_b, torch.zeros_like(s_b))
    codes = w.codes.to(torch.int32)
    cat = torch.cat([codes >> 4, codes & 0x0F], dim=1)
    return cat, torch.cat([16 * s_b, s_b], dim=1), torch.cat([z_h, total - z_h], dim=1)


class Int4PackedWeight:
    """A [N, K] weight packed two codes a byte in torch's CPU int4 layout, with bf16 scales and zeros
    (codes of more than 4 bits as two nibble halves, 2K columns)."""

    precise = False  # bf16 activations

    def __init__(self, w: GroupQuantized) -> None:
        n, k = w.shape
        if not 1 <= w.bits <= 8 or w.group_size not in GROUP_SIZES or k % w.group_size:
            raise UnsupportedQuantizationError(
                f"{w.source}: {w.bits}-bit codes in groups of {w.group_size} over {k} columns do not fit "
                f"the CPU int4 kernel (up to 8-bit codes, groups of {GROUP_SIZES})")
        if w.codes.device.type != "cpu":
            raise UnsupportedQuantizationError(f"{w.source}: the int4 kernel used here runs on CPU only")
        self.split = w.bits > 4
        self.name = f"int4-cpu({w.source}{', split nibbles' if self.split else ''})"
        self.out_features, self.in_features = n, k
        self.group_size = w.group_size
        if self.split:
            codes, scale, zero = _split_nibbles(w)
        else:
            codes, scale, zero = w.codes.to(torch.int32), w.scale, w.offset + 8 * w.scale
        # The packing wants N a multiple of 16 (an LM head's vocabulary slice need not be): padding
        # rows with scale and zero 0 read as 0, and `apply` drops them.
        self._pad = -n % 16
        if self._pad:
            codes = torch.nn.functional.pad(codes, (0, 0, 0, self._pad))
            scale, zero = (torch.nn.functional.pad(t, (0, 0, 0, self._pad)) for t in (scale, zero))
        # innerKTiles is ignored by the CPU packing; 1 is what torch's own tests pass.
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.contiguous(), 1)
        self.scales_and_zeros = torch.stack([scale.t(), zero.t()], dim=-1).to(COMPUTE_DTYPE).contiguous()
        block = _packing_block()
        self._expandable = block > 0 and self.packed.shape[0] % block == 0

    def apply(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.shape[0] >= DENSE_FROM_ROWS and self._expandable:
            dtype = cpu_gemm_dtype()
            y = torch.nn.functional.linear(x2.to(dtype), self._expanded(dtype))
        else:
            x2 = x2.to(COMPUTE_DTYPE)
            if self.split:
                x2 = torch.cat([x2, x2], dim=1)
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group_size, self.scales_and_zeros)
        if self._pad:
            y = y[:, : self.out_features]
        y = y.to(x.dtype).reshape(*lead, self.out_features)
        return y if bias is None else y + bias

    def _expanded(self, dtype: torch.dtype = COMPUTE_DTYPE) -> torch.Tensor:
        """The weight in `dtype` [N(+pad), K], made for one call and dropped after it (no second copy kept)."""
        q = _unpack_codes(self.packed, _packing_block())
        n, k = q.shape
        sz = self.scales_and_zeros.transpose(0, 1)  # [N, K / group, 2]
        if self.split:
            # Two 4-bit halves of 8-bit codes: summed in float32, where bf16 would round each half.
            w = (q.view(n, -1, self.group_size).float() - 8) * sz[..., :1].float() + sz[..., 1:].float()
            w = w.view(n, k)
            return (w[:, : k // 2] + w[:, k // 2:]).to(dtype)
        wb = q.view(n, -1, self.group_size).to(dtype)
        return wb.sub_(8).mul_(sz[..., :1].to(dtype)).add_(sz[..., 1:].to(dtype)).view(n, k)

    def dequantize(self) -> torch.Tensor:
        # The packed layout is torch's business; the float32 kernel applied to the identity reads each
        # weight back exactly (one product per output) with the same bf16-rounded scales.
        eye = torch.eye(self.in_features, dtype=torch.float32)
        if self.split:
            eye = torch.cat([eye, eye], dim=1)
        sz = self.scales_and_zeros.float()
        w: torch.Tensor = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.packed, self.group_size, sz)
        return w.t()[: self.out_features].contiguous()

    def nbytes(self) -> int:
        return int(self.packed.numel() * self.packed.element_size()
                   + self.scales_and_zeros.numel() * self.scales_and_zeros.element_size())


def pack_for_device(w: GroupQuantized, device: torch.device) -> QuantMethod:
    """The packed method for `w` on `device` (CPU: the C integer product where it is built and takes
    the shape, else torch's int4 op; CUDA: the Triton kernel); raises UnsupportedQuantizationError where
    there is none."""
    if device.type == "cuda":
        from radixserve.layers.quantization.int4_gpu import Int4TritonWeight

        return Int4TritonWeight(w, device)
    if device.type != "cpu":
        raise UnsupportedQuantizationError(f"{w.source}: no packed kernel on {device.type}")
    from radixserve.layers.quantization.dot_cpu import native_method

    native = native_method(w)
    if native is not None:
        return native
    if not int4_cpu_available():
        raise UnsupportedQuantizationError(f"{w.source}: this torch ({torch.__version__}) lacks the CPU int4 ops")
    return Int4PackedWeight(w)
