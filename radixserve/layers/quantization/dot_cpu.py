"""A file's quantized blocks multiplied by integer-rounded activations on CPU (radixserve/kernels/cpu/qdot.c).

Each group of activations is rounded to integers of 15 bits with one float scale (absmax / QMAX), each
group's dot product runs on integers (AVX512-VNNI where the CPU has it: two int8 products, one per
half of the 15 bits), and the file's per-group scale and offset apply once per group. The weights keep
the file's codes and its scales exactly (float16 where the file's are, else float32; no bf16 rounding,
no nibble split for 8-bit codes). Only the activations' rounding moves the result: about 1e-5 of each
group's largest value, below the bf16 rounding of torch's int4 kernel (`int4_cpu.py`). qdot.c says why
not llama.cpp's 8 bits. `activation_reference` is the same computation in plain torch, which the tests
compare against.

At batch 1 on a 2-core AVX512 machine the product runs at the speed the weights' bytes allow, as torch's
int4 kernel does; what it changes is the rest of the step: model_executor/cpu_decode.py runs whole
decode steps in C around it (docs/quantization.md, "Speed"). From `DENSE_FROM_ROWS` rows on (prefill),
the weight is expanded for one GEMM (bf16 where the CPU multiplies bf16 natively, else float32:
base.cpu_gemm_dtype), as the int4 method does.
"""

from __future__ import annotations

import ctypes
import os

import torch

from radixserve.kernels import cpu_native
from radixserve.layers.quantization.base import GroupQuantized, UnsupportedQuantizationError, cpu_gemm_dtype

CHUNK = 64  # codes per inner step of the kernel; K must be a multiple of it
MAX_K = 16384  # columns (qdot.c sizes a per-thread buffer by it)
# Rows from which one bf16 GEMM on the expanded weight beats the kernel, whose cost grows with the rows
# (Q4_1 1536x576 on 2 cores: 39 us for 1 row, 446 us for 16, 1.2 ms for 32; the expansion ~1 ms plus the
# GEMM). RADIXSERVE_DOT_DENSE_FROM_ROWS overrides it for A/B runs.
DENSE_FROM_ROWS = int(os.environ.get("RADIXSERVE_DOT_DENSE_FROM_ROWS", "32"))


def fits(w: GroupQuantized) -> str | None:
    """Why the kernel cannot take `w`, or None."""
    k = w.shape[1]
    if w.codes.device.type != "cpu":
        return "weights not on the CPU"
    if not 1 <= w.bits <= 8:
        return f"{w.bits}-bit codes"
    if k % CHUNK or w.group_size % 16 or k % w.group_size or k > MAX_K:
        return (f"{k} columns in groups of {w.group_size} (needs a multiple of {CHUNK} columns up to {MAX_K}, "
                "groups of 16k)")
    return None


QMAX = 32639  # qdot.c: the largest rounded |x|, 127 * 257, so that both int8 halves of it fit


def quantize_activations(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """x [M, K] float32 rounded as the kernel rounds it: per group of `group_size`, integer steps of
    absmax / QMAX (round half to even, as nearbyintf in the default rounding mode). Returns the float values."""
    g = x.reshape(x.shape[0], -1, group_size)
    d = g.abs().amax(-1, keepdim=True) / float(QMAX)
    inv = torch.where(d > 0, 1.0 / torch.where(d > 0, d, 1.0), 0.0)  # the kernel multiplies by 1 / d
    q = torch.round(g * inv)
    return (q * d).reshape(x.shape)


def _pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes [N, K] (< 16) in qdot.c's layout: chunks of 64 by pairs, the pair's second chunk in the
    high nibbles; a last unpaired chunk with its codes 32.. in the high nibbles of its first 32."""
    n, k = codes.shape
    pairs = k // (2 * CHUNK)
    body = codes[:, : pairs * 2 * CHUNK].reshape(n, pairs, 2, CHUNK)
    parts = [(body[:, :, 0] | (body[:, :, 1] << 4)).reshape(n, -1)]
    if k % (2 * CHUNK):
        tail = codes[:, pairs * 2 * CHUNK:].reshape(n, 2, CHUNK // 2)
        parts.append(tail[:, 0] | (tail[:, 1] << 4))
    return torch.cat(parts, dim=1).contiguous()


def _unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """`_pack_nibbles` undone: [N, K / 2] bytes -> codes [N, K]."""
    n, half = packed.shape
    pairs = half // CHUNK
    body = packed[:, : pairs * CHUNK].reshape(n, pairs, 1, CHUNK)
    parts = [torch.cat([body & 15, body >> 4], dim=2).reshape(n, -1)]
    if half % CHUNK:
        tail = packed[:, pairs * CHUNK:]
        parts.append(torch.cat([tail & 15, tail >> 4], dim=1))
    return torch.cat(parts, dim=1)


class IntDotWeight:
    """A [N, K] weight as the file's codes (two a byte up to 4 bits, in the kernel's 64-code chunks; one a
    byte above), scales and offsets per group (float16 where they are exactly so, else float32); `apply`
    runs qdot.c's integer product."""

    precise = True  # 15-bit activations: ~1e-5 of the float product (ACTIVATION_TOL in its tests)

    def __init__(self, w: GroupQuantized, lib: ctypes.CDLL, has_vnni: bool = False) -> None:
        why = fits(w)
        if why is not None:
            raise UnsupportedQuantizationError(f"{w.source}: the CPU integer-dot kernel cannot take it: {why}")
        n, k = w.shape
        self.name = f"int-dot-cpu({w.source})"
        self.out_features, self.in_features = n, k
        self.group_size = w.group_size
        self.packed4 = w.bits <= 4
        codes = w.codes.to(torch.uint8)
        self.codes = _pack_nibbles(codes) if self.packed4 else codes.contiguous()
        scale, offset = w.scale.float(), w.offset.float()
        # float16 where that holds them exactly (GGUF's Q4_0/Q4_1/Q8_0 store theirs so; K-quants' products
        # of a super-scale and a 6-bit one need not fit): at batch 1 a step reads every weight byte once.
        self.half = has_vnni and all(torch.equal(t.half().float(), t) for t in (scale, offset))
        dtype = torch.float16 if self.half else torch.float32
        self.scale, self.offset = scale.to(dtype).contiguous(), offset.to(dtype).contiguous()
        self._fn = lib.rs_qdot
        self.center = 1 << (w.bits - 1)  # c0 in qdot.c: half the codes' range
        self._args = (self.codes.data_ptr(), self.out_features, int(self.packed4), self.scale.data_ptr(),
                      self.offset.data_ptr(), int(self.half), self.group_size, self.center)

    def _codes(self) -> torch.Tensor:
        """The codes [N, K] as uint8, in order."""
        return _unpack_nibbles(self.codes) if self.packed4 else self.codes

    def dequantize(self) -> torch.Tensor:
        g = self.in_features // self.group_size
        c = self._codes().view(self.out_features, g, self.group_size).float()
        return (c * self.scale.float().unsqueeze(-1) + self.offset.float().unsqueeze(-1)).view(
            self.out_features, self.in_features)

    def activation_reference(self, x: torch.Tensor) -> torch.Tensor:
        """What `apply` computes, in plain torch (qdot.c's rs_qdot): the weight split into scale * (code - c0)
        and offset + scale * c0; the first part times the rounded activations, the second times each
        group's exact sum."""
        x2 = x.reshape(-1, self.in_features).float()
        n, g = self.out_features, self.in_features // self.group_size
        scale, offset = self.scale.float(), self.offset.float()
        centred = (self._codes().view(n, g, self.group_size).float() - self.center) * scale.unsqueeze(-1)
        sums = x2.view(x2.shape[0], g, self.group_size).sum(-1)
        y = quantize_activations(x2, self.group_size) @ centred.view(n, -1).T + sums @ (offset + scale * self.center).T
        return y.reshape(*x.shape[:-1], n)

    def apply(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        m = x2.shape[0]
        if m >= DENSE_FROM_ROWS:
            dtype = cpu_gemm_dtype()
            y = torch.nn.functional.linear(x2.to(dtype), self.dequantize().to(dtype)).float()
        else:
            x2 = x2.float().contiguous()
            y = torch.empty(m, self.out_features, dtype=torch.float32)
            if m and self._fn(x2.data_ptr(), m, self.in_features, *self._args, y.data_ptr(),
                              torch.get_num_threads()) != 0:
                raise RuntimeError(f"{self.name}: qdot refused {m} x {self.in_features}")
        y = y.to(x.dtype).reshape(*lead, self.out_features)
        return y if bias is None else y + bias

    def nbytes(self) -> int:
        return int(self.codes.numel() + self.scale.element_size() * (self.scale.numel() + self.offset.numel()))


def native_method(w: GroupQuantized) -> IntDotWeight | None:
    """The integer-dot kernel's method for `w` where products take the kernel on this CPU
    (cpu_native.products_enabled: built, with its VNNI path or asked for) and it takes the shape, else None."""
    if fits(w) is not None or not cpu_native.products_enabled():
        return None
    lib = cpu_native.load()
    assert lib is not None
    return IntDotWeight(w, lib, cpu_native.has_vnni())
