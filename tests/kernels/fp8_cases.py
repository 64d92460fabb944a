"""FP8 W8A8 cases shared by the CPU interpreter run and the GPU run: the products of `Fp8Linear`
(Triton block kernel, torch._scaled_mm) against `Fp8Linear.reference_apply`, the float32 torch form."""

from __future__ import annotations

import torch

from radixserve.layers.quantization.fp8 import FP8_DTYPE, Fp8Linear, Fp8Weight, quantize_activations


def random_fp8_weight(n: int, k: int, block: tuple[int, int] | None, gen: torch.Generator) -> Fp8Weight:
    codes = (torch.randn(n, k, generator=gen) * 64).clamp(-448, 448).to(FP8_DTYPE)
    if block is None:
        return Fp8Weight(codes, torch.rand(n, 1, generator=gen) * 1e-3 + 1e-4, None, "case")
    grid = (-(-n // block[0]), -(-k // block[1]))
    return Fp8Weight(codes, torch.rand(*grid, generator=gen) * 1e-3 + 1e-4, block, "case")


def check_block_kernel(device: str, gen: torch.Generator, cases: list[tuple[int, int, int]]) -> None:
    """The Triton block kernel (float32 out) equals the reference to float32 rounding; (m, n, k) cases."""
    from radixserve.kernels.fp8_gemm import block_fp8_matmul

    for m, n, k in cases:
        w = random_fp8_weight(n, k, (128, 128), gen)
        lin = Fp8Linear(w, torch.device(device))
        x = torch.randn(m, k, generator=gen).to(device)
        xq, xs = quantize_activations(x, 128)
        y = block_fp8_matmul(xq, xs, lin.codes, lin.scale, (128, 128), torch.float32)
        ref = lin.reference_apply(x)
        scale = ref.abs().max().item()
        # Hopper's FP8 tensor cores add the products inside one 128-column step with fewer than
        # float32's bits (DeepSeek-V3 reports ~14); the kernel adds each step's result in float32, so
        # only one step's rounding shows.
        tol = 1e-5 if device == "cpu" else 1e-3  # measured on the H200: 1.6e-4
        worst = ((y - ref).abs().max().item()) / scale
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=tol * scale,
                                   msg=f"block kernel {m}x{n}x{k}: worst error {worst:.2e} of the largest output")


def check_channel_kernel(device: str, gen: torch.Generator, cases: list[tuple[int, int, int]]) -> None:
    """The Triton per-channel product (float32 out) against the reference; (m, n, k) cases."""
    from radixserve.kernels.fp8_gemm import channel_fp8_matmul

    for m, n, k in cases:
        lin = Fp8Linear(random_fp8_weight(n, k, None, gen), torch.device(device))
        x = torch.randn(m, k, generator=gen).to(device)
        xq, xs = quantize_activations(x)
        y = channel_fp8_matmul(xq, xs, lin.codes, lin.scale, torch.float32)
        ref = lin.reference_apply(x)
        scale = ref.abs().max().item()
        tol = 1e-5 if device == "cpu" else 1e-3
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=tol * scale, msg=f"channel kernel {m}x{n}x{k}")


def check_linear_apply(device: str, dtype: torch.dtype, gen: torch.Generator,
                       cases: list[tuple[int, int, int, tuple[int, int] | None]]) -> None:
    """`Fp8Linear.apply` in `dtype` against the float32 reference: only the output's rounding differs."""
    for m, n, k, block in cases:
        lin = Fp8Linear(random_fp8_weight(n, k, block, gen), torch.device(device))
        x = torch.randn(m, k, generator=gen).to(device=device, dtype=dtype)
        y = lin.apply(x).float()
        ref = lin.reference_apply(x.float())
        eps = torch.finfo(dtype).eps
        scale = ref.abs().max().item()
        torch.testing.assert_close(y, ref, rtol=2 * eps, atol=2 * eps * scale, msg=f"apply {m}x{n}x{k} {block}")


def _interpreter_cast_error(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """Codes off in the way Triton 3.6's CPU interpreter emulates the e4m3 cast: it does not round to
    nearest (seen: -144 where e4m3 rounds to -128, and 124.3 -> 64 instead of 128, a rounded-up mantissa not carried
    into the exponent). Accept one e4m3 step (2^(e - 3) at 2^e <= |x| < 2^(e + 1)) or half a power of
    two. The GPU casts with cvt.rn.satfinite: there every code must match."""
    g, w = got.float(), want.float()
    step = torch.exp2(torch.floor(torch.log2(w.abs().clamp(min=2.0**-6))) - 3)
    power_of_two = (w != 0) & (torch.frexp(w.abs()).mantissa == 0.5)
    return ((g - w).abs() <= step) | (power_of_two & (g * 2 == w))


def check_quantize_kernel(device: str, gen: torch.Generator, cases: list[tuple[int, int, int | None]]) -> None:
    """The Triton activation quantization gives `quantize_activations`' codes and scales bit for bit (in the
    CPU interpreter, scales bit for bit and codes up to the interpreter's own cast error)."""
    from radixserve.kernels.fp8_gemm import quantize_fp8

    for m, k, group in cases:
        x = (torch.randn(m, k, generator=gen) * torch.logspace(-4, 3, m).unsqueeze(1)).to(device)
        if m > 1:
            x[1] = 0  # an all-zero token
        for dtype in (torch.float32, torch.bfloat16):
            xd = x.to(dtype)
            q, s = quantize_fp8(xd, group)
            rq, rs = quantize_activations(xd, group)
            assert torch.equal(s, rs), f"scales {m}x{k} group {group} {dtype}"
            differ = q.view(torch.uint8) != rq.view(torch.uint8)
            if device == "cpu":
                differ &= ~_interpreter_cast_error(q, rq)
            assert not bool(differ.any()), f"codes {m}x{k} group {group} {dtype}: {int(differ.sum())} differ"
