"""FP8 (e4m3) weights with dynamic FP8 activations: W8A8 linear layers.

A checkpoint's FP8 weight comes with one of three kinds of scale, and all dequantize as
w = codes * scale:

- per tensor (one scale): stored here per channel, the scale repeated on every row. That is exact
  and lets the q, k and v projections (three scales) fuse into one product.
- per channel (one scale per output row).
- per 128x128 block (DeepSeek-V3 / Qwen3-FP8 style, `weight_block_size`).

Activations are quantized when the layer runs, per token (channel and tensor scales) or per token
and 128-column group (block scales), to the largest scale that keeps every value within e4m3's
+-448. The product then runs on FP8 codes with float32 accumulation:

- channel scales: `torch._scaled_mm` with row-wise scales (CUTLASS/cuBLASLt on Hopper), and for a few
  rows (decode) the Triton kernel in `radixserve.kernels.fp8_gemm`, which reads the weight faster there;
- block scales: the Triton kernel.

`reference_apply` is the same arithmetic in float32 torch ops (quantize activations exactly as
`apply` does, dequantize both sides, matmul): the CPU path, and what the GPU kernels
are tested against. `dequantize()` gives the weight alone, for the dequantized reference model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from radixserve.layers.quantization.base import UnsupportedQuantizationError

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
# Scales are amax * (1 / 448) with the reciprocal rounded to float32 once: one correctly rounded
# multiply gives the same scale in torch on any device and in the Triton kernel (torch on CUDA turns a
# division by a Python number into such a multiply anyway, so `amax / 448` would differ between devices).
INV_FP8_MAX = 1.0 / FP8_MAX
# The smallest activation scale: an all-zero row must not divide by zero.
_MIN_SCALE = 1e-12


@dataclass
class Fp8Weight:
    """FP8 codes [N, K] and their float32 scales: [N, 1] (per channel) or
    [ceil(N / bn), ceil(K / bk)] for blocks of (bn, bk). `source` names the checkpoint format."""

    codes: torch.Tensor
    scale: torch.Tensor
    block: tuple[int, int] | None
    source: str

    def __post_init__(self) -> None:
        if self.codes.dtype != FP8_DTYPE:
            raise UnsupportedQuantizationError(
                f"{self.source}: FP8 weights must be float8_e4m3fn, got {self.codes.dtype}")
        n, k = self.shape
        if self.block is None:
            if tuple(self.scale.shape) != (n, 1):
                raise UnsupportedQuantizationError(
                    f"{self.source}: a per-channel scale must be [{n}, 1], got {tuple(self.scale.shape)}")
        else:
            bn, bk = self.block
            want = (-(-n // bn), -(-k // bk))
            if tuple(self.scale.shape) != want:
                raise UnsupportedQuantizationError(
                    f"{self.source}: {bn}x{bk} block scales of a {n}x{k} weight must be {list(want)}, "
                    f"got {list(self.scale.shape)}")

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.codes.shape[0]), int(self.codes.shape[1])

    @staticmethod
    def per_tensor(codes: torch.Tensor, scale: torch.Tensor, source: str) -> Fp8Weight:
        """One scale for the whole tensor, kept per channel (exact)."""
        s = scale.float().reshape(-1)
        if s.numel() != 1:
            raise UnsupportedQuantizationError(f"{source}: a per-tensor scale has one value, got {s.numel()}")
        return Fp8Weight(codes, s.expand(codes.shape[0]).reshape(-1, 1).contiguous(), None, source)

    def narrow(self, dim: int, start: int, length: int) -> Fp8Weight:
        """Rows (dim 0) or columns (dim 1) [start, start + length); with block scales, on block boundaries."""
        codes = self.codes.narrow(dim, start, length)
        if self.block is None:
            scale = self.scale.narrow(0, start, length) if dim == 0 else self.scale
            return Fp8Weight(codes, scale, None, self.source)
        size = self.block[dim]
        end_is_edge = start + length == self.codes.shape[dim]
        if start % size or (length % size and not end_is_edge):
            axis = "rows" if dim == 0 else "columns"
            raise UnsupportedQuantizationError(
                f"{self.source}: {axis} [{start}, {start + length}) do not fall on its {size}-wide scale blocks")
        scale = self.scale.narrow(dim, start // size, -(-length // size))
        return Fp8Weight(codes, scale, self.block, self.source)

    @staticmethod
    def cat_rows(parts: Sequence[Fp8Weight]) -> Fp8Weight:
        first = parts[0]
        if any(p.block != first.block for p in parts):
            raise UnsupportedQuantizationError(
                f"cannot fuse {[p.source for p in parts]}: their scale granularities differ")
        if first.block is not None:
            bn = first.block[0]
            if any(p.shape[0] % bn for p in parts[:-1]):
                raise UnsupportedQuantizationError(
                    f"{first.source}: fused projections of {[p.shape[0] for p in parts]} rows do not fall on "
                    f"its {bn}-row scale blocks")
        return Fp8Weight(torch.cat([p.codes for p in parts]), torch.cat([p.scale for p in parts]),
                         first.block, first.source)

    def expanded_scale(self) -> torch.Tensor:
        """float32 [N, K]: each weight's own scale."""
        n, k = self.shape
        if self.block is None:
            return self.scale.float().expand(n, k)
        bn, bk = self.block
        return self.scale.float().repeat_interleave(bn, 0)[:n].repeat_interleave(bk, 1)[:, :k]

    def dequantize(self) -> torch.Tensor:
        """float32 [N, K]: the reference values."""
        return self.codes.float() * self.expanded_scale()


def quantize_weight_per_channel(w: torch.Tensor, source: str = "fp8 (quantized at load)") -> Fp8Weight:
    """A float weight [N, K] -> FP8 codes with one scale per row (`--quantization fp8`)."""
    amax = w.detach().float().abs().amax(dim=1, keepdim=True).clamp(min=_MIN_SCALE)
    scale = amax / FP8_MAX
    codes = (w.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return Fp8Weight(codes, scale, None, source)


def quantize_activations(x: torch.Tensor, group: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (FP8 codes [M, K], float32 scales [M, 1] or [M, K / group]), dynamic per token
    (and per `group` columns). K must be a multiple of `group`. The torch form of the Triton kernel
    `radixserve.kernels.fp8_gemm.quantize_fp8`, which the GPU path runs (the same values, bit for bit)."""
    xf = x.float()
    if group is None:
        scale = xf.abs().amax(dim=1, keepdim=True).clamp(min=_MIN_SCALE) * INV_FP8_MAX
        return (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale
    m, k = xf.shape
    g = xf.view(m, k // group, group)
    scale = g.abs().amax(dim=2).clamp(min=_MIN_SCALE) * INV_FP8_MAX
    codes = (g / scale.unsqueeze(2)).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).view(m, k)
    return codes, scale


def _scaled_mm_works(device: torch.device) -> bool:
    """Whether this torch has a row-wise scaled FP8 product on `device` (asked once per device)."""
    key = str(device)
    if key not in _SCALED_MM:
        try:
            a = torch.zeros(16, 32, device=device).to(FP8_DTYPE)
            b = torch.zeros(16, 32, device=device).to(FP8_DTYPE)
            ones = torch.ones(16, 1, device=device)
            torch._scaled_mm(a, b.t(), scale_a=ones, scale_b=ones.t(), out_dtype=torch.bfloat16)
            _SCALED_MM[key] = True
        except (RuntimeError, NotImplementedError):
            _SCALED_MM[key] = False
    return _SCALED_MM[key]


_SCALED_MM: dict[str, bool] = {}


class Fp8Linear:
    """A `QuantMethod`: one rank's FP8 weight and the W8A8 product that reads it."""

    precise = False  # activations in FP8

    def __init__(self, w: Fp8Weight, device: torch.device) -> None:
        self.out_features, self.in_features = w.shape
        self.block = w.block
        if w.block is not None:
            _bn, bk = w.block
            if self.in_features % bk:
                raise UnsupportedQuantizationError(
                    f"{w.source}: {self.in_features} input columns are not a multiple of its {bk}-column blocks")
        kind = "channel" if w.block is None else f"block {w.block[0]}x{w.block[1]}"
        self.name = f"fp8-w8a8({w.source}, {kind})"
        self.codes = w.codes.to(device).contiguous()
        # Row-wise: [1, N] as _scaled_mm wants it for the second operand; blocks: as stored.
        self.scale = (w.scale.reshape(1, -1) if w.block is None else w.scale).float().to(device).contiguous()
        # On CPU the float32 reference runs instead (exact, deterministic): CPU FP8 serves as the check of
        # the loading and of the arithmetic, not for speed.
        self.use_scaled_mm = w.block is None and self.codes.is_cuda and _scaled_mm_works(self.codes.device)

    @property
    def weight(self) -> Fp8Weight:
        scale = self.scale.reshape(-1, 1) if self.block is None else self.scale
        return Fp8Weight(self.codes, scale, self.block, self.name)

    def apply(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.block is None and self.use_scaled_mm:
            from radixserve.kernels.fp8_gemm import CHANNEL_TRITON_MAX_ROWS, channel_fp8_matmul, quantize_fp8

            xq, xs = quantize_fp8(x2)
            out_dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
            if x2.shape[0] <= CHANNEL_TRITON_MAX_ROWS and self.in_features % 128 == 0:
                y = channel_fp8_matmul(xq, xs, self.codes, self.scale, out_dtype)
            else:
                y = torch._scaled_mm(xq, self.codes.t(), scale_a=xs, scale_b=self.scale, out_dtype=out_dtype)
        elif self.block is not None and x.is_cuda:
            from radixserve.kernels.fp8_gemm import block_fp8_matmul, quantize_fp8

            xq, xs = quantize_fp8(x2, self.block[1])
            y = block_fp8_matmul(xq, xs, self.codes, self.scale, self.block, x.dtype)
        else:
            y = self.reference_apply(x2)
        y = y.to(x.dtype).reshape(*lead, self.out_features)
        return y if bias is None else y + bias

    def reference_apply(self, x: torch.Tensor) -> torch.Tensor:
        """float32 [M, N]: the kernels' arithmetic in plain torch (activations quantized the same way)."""
        x2 = x.reshape(-1, self.in_features)
        group = None if self.block is None else self.block[1]
        xq, xs = quantize_activations(x2, group)
        if group is None:
            xd = xq.float() * xs
        else:
            xd = xq.float() * xs.repeat_interleave(group, 1)
        return xd @ self.dequantize().t()

    def dequantize(self) -> torch.Tensor:
        return self.weight.dequantize()

    def nbytes(self) -> int:
        return int(self.codes.numel() * self.codes.element_size() + self.scale.numel() * self.scale.element_size())
