"""Triton int4 GEMM cases shared by the CPU interpreter run and the GPU run: `Int4TritonWeight.apply`
against its float32 reference (`reference_apply`) and against the GGUF file's dequantized weight."""

from __future__ import annotations

import torch

from radixserve.layers.quantization.base import GroupQuantized


def random_group_quantized(n: int, k: int, bits: int, gen: torch.Generator, source: str = "test") -> GroupQuantized:
    """Codes of `bits` bits with per-32 scales and offsets of GGUF's orders of magnitude (x ~ 0.02-0.1)."""
    codes = torch.randint(0, 2**bits, (n, k), generator=gen, dtype=torch.int32).to(torch.uint8)
    scale = (torch.rand(n, k // 32, generator=gen) * 0.01 + 0.002) * (16 / 2**bits)
    offset = -scale * (2 ** (bits - 1)) + (torch.rand(n, k // 32, generator=gen) - 0.5) * 0.01
    return GroupQuantized(codes, scale.to(torch.float16).float(), offset.to(torch.float16).float(), 32, bits, source)


def check_int4_gemm(device: str, gen: torch.Generator, shapes: list[tuple[int, int, int, int]],
                    dtype: torch.dtype = torch.bfloat16) -> None:
    """(rows M, N, K, bits) cases: the kernel's product within bf16 rounding of the float32 reference,
    and the stored weight within fp16 rounding of the codes' own values."""
    from radixserve.layers.quantization.int4_gpu import Int4TritonWeight

    for m, n, k, bits in shapes:
        q = random_group_quantized(n, k, bits, gen)
        w = Int4TritonWeight(q, torch.device(device))
        ref_w = q.dequantize()
        assert (w.dequantize().cpu() - ref_w).abs().max() <= 2e-3 * ref_w.abs().max(), (m, n, k, bits)
        x = torch.randn(m, k, generator=gen).to(device, dtype)
        got = w.apply(x).float()
        want = w.reference_apply(x)
        # bf16 inputs and a bf16 output, fp32 accumulation: the output's rounding (2^-9) dominates.
        err = float((got - want).norm() / want.norm())
        assert got.shape == (m, n) and err < 1e-2, (m, n, k, bits, err)
        bias = torch.randn(n, generator=gen).to(device, dtype)
        torch.testing.assert_close(w.apply(x, bias).float(), (got.to(dtype) + bias).float())
