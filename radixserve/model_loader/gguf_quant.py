"""GGUF quantized blocks -> `GroupQuantized` (codes + per-32-column scale and offset), without
going through float: the codes are the file's own, the scales are its fp16 scales (times the 6-bit
sub-scales for K-quants), so packing them loses nothing beyond the kernel's bf16 rounding.

Layouts (ggml-quants.h / gguf-py quants.py):
  Q4_0  32 values, 18 bytes: d fp16, 16 bytes of nibbles; x = d * (q - 8)
  Q4_1  32 values, 20 bytes: d fp16, m fp16, 16 bytes of nibbles; x = d * q + m
  Q4_K  256 values, 144 bytes: d fp16, dmin fp16, 12 bytes of eight 6-bit (scale, min) pairs,
        128 bytes of nibbles; sub-block j (32 values): x = d * sc_j * q - dmin * m_j
In Q4_0/Q4_1 byte i holds value i (low nibble) and value i + 16 (high); in Q4_K each 32-byte run i
holds sub-block 2i in its low nibbles and 2i + 1 in its high ones.
"""

from __future__ import annotations

import numpy as np
import torch

from radixserve.layers.quantization.base import GroupQuantized, UnsupportedQuantizationError

GROUP = 32


def _f16(col: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(col).view(np.float16).astype(np.float32)


def _nibbles_32(qs: np.ndarray) -> np.ndarray:
    """[nb, 16] bytes -> [nb, 32] codes: low nibbles are values 0..15, high nibbles 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _q4_0(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = _f16(blocks[:, 0:2])
    return _nibbles_32(blocks[:, 2:18]), d, -8.0 * d


def _q4_1(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _nibbles_32(blocks[:, 4:20]), _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])


def _q4_k(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from gguf.quants import Q4_K

    nb = blocks.shape[0]
    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    sc, mn = Q4_K.get_scale_min(np.ascontiguousarray(blocks[:, 4:16]))
    qs = blocks[:, 16:144].reshape(nb, 4, 1, 32)
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(nb, 256)
    # One (scale, offset) per 32-value sub-block: 8 groups per super-block.
    return codes, d * sc.astype(np.float32), -(dmin * mn.astype(np.float32))


# type name -> (values per block, bytes per block, decoder)
_DECODERS = {
    "Q4_0": (32, 18, _q4_0),
    "Q4_1": (32, 20, _q4_1),
    "Q4_K": (256, 144, _q4_k),
}
PACKED_TYPES = frozenset(_DECODERS)


def gguf_group_quantized(data: np.ndarray, type_name: str, rows: int, cols: int) -> GroupQuantized:
    """A GGUF tensor's raw bytes ([rows, bytes per row] uint8, as GGUFReader gives them) as int4 codes
    with per-32-column scales and offsets."""
    if type_name not in _DECODERS:
        raise UnsupportedQuantizationError(
            f"GGUF {type_name} has no packed int4 form; packed types: {sorted(PACKED_TYPES)}")
    per_block, nbytes, decode = _DECODERS[type_name]
    if cols % per_block:
        raise UnsupportedQuantizationError(f"GGUF {type_name}: {cols} columns are not whole {per_block}-value blocks")
    blocks = np.asarray(data, dtype=np.uint8).reshape(-1, nbytes)
    if blocks.shape[0] != rows * cols // per_block:
        raise UnsupportedQuantizationError(
            f"GGUF {type_name}: {blocks.shape[0]} blocks do not make a {rows}x{cols} tensor")
    codes, scale, offset = decode(blocks)
    groups = cols // GROUP
    return GroupQuantized(
        codes=torch.from_numpy(np.ascontiguousarray(codes.reshape(rows, cols), dtype=np.uint8)),
        scale=torch.from_numpy(np.ascontiguousarray(scale.reshape(rows, groups), dtype=np.float32)),
        offset=torch.from_numpy(np.ascontiguousarray(offset.reshape(rows, groups), dtype=np.float32)),
        group_size=GROUP, bits=4, source=type_name)
