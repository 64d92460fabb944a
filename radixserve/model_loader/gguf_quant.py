"""GGUF quantized blocks -> `GroupQuantized` (codes + per-32-column scale and offset), without
going through float: the codes are the file's own, the scales are its fp16 scales (times the 6-bit
sub-scales for K-quants), so packing them loses nothing beyond the kernel's bf16 rounding.

Layouts (ggml-quants.h / gguf-py quants.py):
  Q4_0  32 values, 18 bytes: d fp16, 16 bytes of nibbles; x = d * (q - 8)
  Q4_1  32 values, 20 bytes: d fp16, m fp16, 16 bytes of nibbles; x = d * q + m
  Q4_K  256 values, 144 bytes: d fp16, dmin fp16, 12 bytes of eight 6-bit (scale, min) pairs,
        128 bytes of nibbles; sub-block j (32 values): x = d * sc_j * q - dmin * m_j
  Q5_0  32 values, 22 bytes: d fp16, 4 bytes of fifth bits, 16 bytes of nibbles; x = d * (q - 16)
  Q5_1  32 values, 24 bytes: d fp16, m fp16, fifth bits, nibbles; x = d * q + m
  Q5_K  256 values, 176 bytes: as Q4_K, plus 32 bytes of fifth bits before the nibbles
  Q8_0  32 values, 34 bytes: d fp16, 32 signed bytes; x = d * q (stored here as q + 128, offset -128 d)
In Q4_0/Q4_1 byte i holds value i (low nibble) and value i + 16 (high); in Q4_K each 32-byte run i
holds sub-block 2i in its low nibbles and 2i + 1 in its high ones. Q5_0/Q5_1 take value i's fifth
bit from bit i of a little-endian uint32; Q5_K takes sub-block j's from bit j of each of 32 bytes.
Q6_K  256 values, 210 bytes: 128 bytes of low nibbles, 64 of high bit pairs, 16 int8 sub-scales,
      d fp16; sub-block j (16 values): x = d * sc_j * (q - 32). The kernel's groups are 32 or more,
      so each pair of sub-blocks becomes one 32-value group of 8-bit codes on the coarser scale
      s = d * M / 4, M the pair's sub-scale of larger magnitude (signed): code = round(4 (q - 32)
      sc_j / M) + 128, clipped to [0, 255]. This is the one type that is requantized: exact where
      the two sub-scales are equal, otherwise off by at most |s| / 2 (an eighth of the coarser
      sub-block's step), or |s| for q = 0 where the two sub-scales are opposite (the clip).
Q2_K, Q3_K and the IQ types (codebooks, non-linear grids, 16-value sub-blocks) have no form the
kernels' affine groups of 32 can hold exactly. They are decoded to float32 by gguf-py's own
`quants.dequantize` and requantized to 8-bit codes per 32 values between each group's minimum and
maximum: x = lo + s * code, s = (hi - lo) / 255, each value within s / 2 of the file's (a 510th of
its group's range; for Q3_K, whose 32 values span at most 8 steps of the coarser sub-block, under
a 60th of a step). One byte a weight: more than the file's 2-4.5 bits, a quarter of float32.
"""

from __future__ import annotations

from collections.abc import Callable

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


def _k_scales(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: one (scale, offset) per 32-value sub-block, 8 per super-block."""
    from gguf.quants import Q4_K

    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    sc, mn = Q4_K.get_scale_min(np.ascontiguousarray(blocks[:, 4:16]))
    return d * sc.astype(np.float32), -(dmin * mn.astype(np.float32))


def _k_nibbles(qs: np.ndarray) -> np.ndarray:
    """[nb, 128] bytes -> [nb, 256] codes: 32-byte run i holds sub-blocks 2i (low) and 2i + 1 (high)."""
    nb = qs.shape[0]
    qs = qs.reshape(nb, 4, 1, 32)
    return np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(nb, 256)


def _q4_k(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scale, offset = _k_scales(blocks)
    return _k_nibbles(blocks[:, 16:144]), scale, offset


def _fifth_bits_32(qh: np.ndarray) -> np.ndarray:
    """[nb, 4] bytes (a little-endian uint32 per block) -> [nb, 32] bits, value i from bit i."""
    bits = np.ascontiguousarray(qh).view("<u4").reshape(-1, 1) >> np.arange(32, dtype=np.uint32)
    return (bits & 1).astype(np.uint8)


def _q5_0(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = _f16(blocks[:, 0:2])
    codes = _nibbles_32(blocks[:, 6:22]) | (_fifth_bits_32(blocks[:, 2:6]) << 4)
    return codes, d, -16.0 * d


def _q5_1(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    codes = _nibbles_32(blocks[:, 8:24]) | (_fifth_bits_32(blocks[:, 4:8]) << 4)
    return codes, _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])


def _q5_k(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nb = blocks.shape[0]
    scale, offset = _k_scales(blocks)
    qh = blocks[:, 16:48].reshape(nb, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    codes = _k_nibbles(blocks[:, 48:176]) | ((qh & 1).reshape(nb, 256) << 4)
    return codes, scale, offset


def _q6_k(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nb = blocks.shape[0]
    ql = blocks[:, 0:128].reshape(nb, 2, 1, 64) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    qh = blocks[:, 128:192].reshape(nb, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    low = (ql & 0x0F).reshape(nb, 2, 4, 32)  # per half of 128: four runs of 32
    high = (qh & 0x03).reshape(nb, 2, 4, 32)
    q = (low | (high << 4)).reshape(nb, 16, 16).astype(np.int32) - 32  # [block, sub-block, value]
    sc = np.ascontiguousarray(blocks[:, 192:208]).view(np.int8).astype(np.int32).reshape(nb, 8, 2)
    d = _f16(blocks[:, 208:210]).reshape(nb, 1)
    pick = np.abs(sc).argmax(axis=2)[:, :, None]
    coarse = np.take_along_axis(sc, pick, axis=2)[:, :, 0]  # signed, [block, group of 32]
    ratio = np.where(coarse[:, :, None] != 0, 4.0 * sc / np.where(coarse == 0, 1, coarse)[:, :, None], 0.0)
    codes = np.clip(np.rint(q.reshape(nb, 8, 2, 16) * ratio[:, :, :, None]) + 128, 0, 255)
    scale = d * coarse.astype(np.float32) / 4
    return codes.reshape(nb, 256).astype(np.uint8), scale, -128.0 * scale


def _q8_0(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = _f16(blocks[:, 0:2])
    codes = (np.ascontiguousarray(blocks[:, 2:34]).view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return codes, d, -128.0 * d


def _requantized(type_name: str) -> Decoder:
    """Decode with gguf-py, then 8-bit codes per 32 values between the group's min and max."""
    def decode(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        x = dequantize(blocks, GGMLQuantizationType[type_name]).astype(np.float32).reshape(-1, GROUP)
        lo, hi = x.min(axis=1), x.max(axis=1)
        scale = (hi - lo) / 255
        safe = np.where(scale > 0, scale, 1.0)
        codes = np.clip(np.rint((x - lo[:, None]) / safe[:, None]), 0, 255)
        return codes.astype(np.uint8), scale, lo

    return decode


Decoder = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
REQUANTIZED_TYPES = ("Q2_K", "Q3_K", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S",
                     "IQ4_NL", "IQ4_XS")


def _block_size(type_name: str) -> tuple[int, int]:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    per_block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    return int(per_block), int(nbytes)


# type name -> (values per block, bytes per block, code bits, decoder)
_DECODERS: dict[str, tuple[int, int, int, Decoder]] = {
    "Q4_0": (32, 18, 4, _q4_0),
    "Q4_1": (32, 20, 4, _q4_1),
    "Q4_K": (256, 144, 4, _q4_k),
    "Q5_0": (32, 22, 5, _q5_0),
    "Q5_1": (32, 24, 5, _q5_1),
    "Q5_K": (256, 176, 5, _q5_k),
    "Q6_K": (256, 210, 8, _q6_k),
    "Q8_0": (32, 34, 8, _q8_0),
}
for _name in REQUANTIZED_TYPES:
    _DECODERS[_name] = (*_block_size(_name), 8, _requantized(_name))
PACKED_TYPES = frozenset(_DECODERS)


def gguf_group_quantized(data: np.ndarray, type_name: str, rows: int, cols: int) -> GroupQuantized:
    """A GGUF tensor's raw bytes ([rows, bytes per row] uint8, as GGUFReader gives them) as unsigned
    codes (4, 5 or 8 bits) with per-32-column scales and offsets."""
    if type_name not in _DECODERS:
        raise UnsupportedQuantizationError(
            f"GGUF {type_name} has no packed form; packed types: {sorted(PACKED_TYPES)}")
    per_block, nbytes, bits, decode = _DECODERS[type_name]
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
        group_size=GROUP, bits=bits, source=type_name)
