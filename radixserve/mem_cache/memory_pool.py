"""KV memory: ReqToTokenPool maps request positions to KV slots; TokenToKVPool holds the KV.

Page size is 1: a slot holds one token's K and V for every layer. Slot 0 is a scratch slot
that is never handed out, so padded tokens (e.g. CUDA-graph padding) have somewhere to write.
"""

from __future__ import annotations

import os

import torch


class ReqToTokenPool:
    """[size, max_context_len] table: row r, column i = KV slot of request r's token i.

    One extra row (`padding_row`) is never handed out and stays all zeros: padded batch entries
    (CUDA-graph replay) point at it, so they read and write only the scratch KV slot 0.
    """

    def __init__(self, size: int, max_context_len: int, device: torch.device | str) -> None:
        self.size = size
        self.max_context_len = max_context_len
        self.padding_row = size
        self.req_to_token = torch.zeros((size + 1, max_context_len), dtype=torch.int64, device=device)
        self._free: list[int] = list(range(size))

    def available_size(self) -> int:
        return len(self._free)

    def alloc(self) -> int | None:
        return self._free.pop() if self._free else None

    def free(self, idx: int) -> None:
        assert 0 <= idx < self.size, idx
        self._free.append(idx)

    def clear(self) -> None:
        self._free = list(range(self.size))


# RADIXSERVE_CHECK_SLOTS=1 validates every freed slot index (a device sync per free; debugging only).
CHECK_SLOTS = os.environ.get("RADIXSERVE_CHECK_SLOTS") == "1"


class TokenToKVPool:
    """Per-layer K and V buffers of [size + 1, num_kv_heads, head_dim] plus a free-slot allocator."""

    def __init__(self, size: int, dtype: torch.dtype, num_layers: int, num_kv_heads: int, head_dim: int,
                 device: torch.device | str, k_scale: float = 1.0, v_scale: float = 1.0) -> None:
        self.size = size
        self.dtype = dtype
        # FP8 (e4m3) pools hold K / k_scale and V / v_scale, clamped to the format's range (a cast
        # past +-448 would give NaN); readers multiply back. Float pools keep scales of 1.
        self.is_fp8 = dtype == torch.float8_e4m3fn
        self.k_scales = [k_scale if self.is_fp8 else 1.0] * num_layers  # per (local) layer
        self.v_scales = [v_scale if self.is_fp8 else 1.0] * num_layers
        self.device = torch.device(device)
        self.num_layers = num_layers
        shape = (size + 1, num_kv_heads, head_dim)
        self.k_buffer = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v_buffer = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        # Uninitialised memory may hold NaNs; masked-out padding reads slot 0, and NaN * 0 is NaN.
        for buf in (*self.k_buffer, *self.v_buffer):
            buf[0].zero_()
        self._free_chunks: list[torch.Tensor] = []
        self.clear()

    @staticmethod
    def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

    def clear(self) -> None:
        self._free_chunks = [torch.arange(1, self.size + 1, dtype=torch.int64, device=self.device)]
        self._num_free = self.size

    def available_size(self) -> int:
        return self._num_free

    def alloc(self, n: int) -> torch.Tensor | None:
        if n > self._num_free:
            return None
        if len(self._free_chunks) > 1:
            self._free_chunks = [torch.cat(self._free_chunks)]
        chunk = self._free_chunks[0] if self._free_chunks else torch.empty(0, dtype=torch.int64)
        out, rest = chunk[:n], chunk[n:]
        self._free_chunks = [rest] if rest.numel() else []
        self._num_free -= n
        return out

    def free(self, indices: torch.Tensor) -> None:
        if indices.numel() == 0:
            return
        if CHECK_SLOTS:
            lo, hi = int(indices.min()), int(indices.max())
            if lo < 1 or hi > self.size:
                raise AssertionError(f"freeing KV slots outside [1, {self.size}]: min {lo}, max {hi}")
        self._free_chunks.append(indices.to(torch.int64).flatten())
        self._num_free += indices.numel()

    def free_slots(self) -> torch.Tensor:
        """All free slots (for integrity checks and tests)."""
        if not self._free_chunks:
            return torch.empty(0, dtype=torch.int64)
        return torch.cat(self._free_chunks).cpu()

    def get_kv_buffer(self, layer_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k_buffer[layer_id], self.v_buffer[layer_id]

    def scales(self, layer_id: int) -> tuple[float, float]:
        """(k_scale, v_scale) of a layer: what its stored K and V are to be multiplied by (1 for float pools)."""
        return self.k_scales[layer_id], self.v_scales[layer_id]

    def set_scales(self, layer_id: int, k_scale: float, v_scale: float) -> None:
        if not self.is_fp8:
            raise ValueError("KV-cache scales only apply to an FP8 pool")
        self.k_scales[layer_id], self.v_scales[layer_id] = k_scale, v_scale

    def set_kv_buffer(self, layer_id: int, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        # index_copy_ is several times faster than index_put on CPU for a few hundred rows.
        if self.is_fp8:
            # Byte views: index_copy_ has no float8 kernel on CPU.
            ks, vs = self.scales(layer_id)
            self.k_buffer[layer_id].view(torch.uint8).index_copy_(0, loc, to_fp8(k, ks).view(torch.uint8))
            self.v_buffer[layer_id].view(torch.uint8).index_copy_(0, loc, to_fp8(v, vs).view(torch.uint8))
            return
        self.k_buffer[layer_id].index_copy_(0, loc, k.to(self.dtype))
        self.v_buffer[layer_id].index_copy_(0, loc, v.to(self.dtype))


FP8_E4M3_MAX = 448.0


def to_fp8(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x / scale as float8 e4m3, saturated at the format's largest finite value."""
    y = x.float() * (1.0 / scale) if scale != 1.0 else x.float()  # as the Triton store kernel
    return y.clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
