"""FP8 checkpoints as published: read `quantization_config`, pair each FP8 weight with its scale.

Three layouts are read (docs/quantization.md, "FP8"):

| `quant_method` | weight scale tensor | granularity |
|---|---|---|
| `compressed-tensors` (llm-compressor, `float-quantized`) | `*.weight_scale` | tensor, channel or block (`block_structure`) |
| `fbgemm_fp8` (Meta's Llama 3.1 FP8) | `*.weight_scale` [N, 1] | channel |
| `fp8` (DeepSeek-V3, Qwen3-FP8; transformers' FineGrainedFP8) | `*.weight_scale_inv` [N/128, K/128] | block (`weight_block_size`) |

The granularity is read from the scale's shape (one value: tensor; one per row: channel; a grid:
block of the configured size), so the three methods share one reader. Activations are always
quantized dynamically per token when the layer runs: a checkpoint's static `input_scale`s are not
used (a static scale saves one reduction per layer and clips what it did not see in calibration;
the load log says they are ignored). KV-cache scales (`k_scale`, `v_scale`) are not weights either:
kv_scales.py reads them for an FP8 KV cache.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from radixserve.layers.quantization.base import UnsupportedQuantizationError
from radixserve.layers.quantization.fp8 import FP8_DTYPE, Fp8Weight

logger = logging.getLogger(__name__)

FP8_METHODS = ("compressed-tensors", "fbgemm_fp8", "fp8")
SCALE_SUFFIXES = (".weight_scale", ".weight_scale_inv")
# Tensors of a quantized checkpoint that the engine does not use (dynamic activations, no FP8 KV yet).
IGNORED_SUFFIXES = (".input_scale", ".k_scale", ".v_scale", ".output_scale", ".weight_zero_point",
                    ".input_zero_point")
DEFAULT_BLOCK = (128, 128)


@dataclass(frozen=True)
class Fp8Scheme:
    method: str  # one of FP8_METHODS
    block: tuple[int, int]  # block size for grid-shaped scales
    static_activations: bool  # the checkpoint has input_scales (ignored: activations are dynamic)

    def describe(self) -> str:
        return f"FP8 ({self.method})"


def _compressed_tensors(qc: Mapping[str, Any]) -> Fp8Scheme:
    fmt = qc.get("format")
    if fmt not in (None, "float-quantized", "naive-quantized"):
        raise UnsupportedQuantizationError(
            f"compressed-tensors format {fmt!r} is not supported (only FP8 weights: 'float-quantized')")
    block = DEFAULT_BLOCK
    static = False
    for name, group in (qc.get("config_groups") or {}).items():
        weights = group.get("weights") or {}
        if weights.get("type") != "float" or weights.get("num_bits") != 8:
            raise UnsupportedQuantizationError(
                f"compressed-tensors group {name!r} has {weights.get('num_bits')}-bit {weights.get('type')} weights; "
                "only 8-bit float (FP8 e4m3) weights are supported")
        if weights.get("strategy") not in ("tensor", "channel", "block"):
            raise UnsupportedQuantizationError(
                f"compressed-tensors group {name!r}: weight strategy {weights.get('strategy')!r} is not supported "
                "(tensor, channel or block)")
        if weights.get("block_structure"):
            block = (int(weights["block_structure"][0]), int(weights["block_structure"][1]))
        acts = group.get("input_activations") or {}
        if acts and not acts.get("dynamic", False):
            static = True
    return Fp8Scheme("compressed-tensors", block, static)


def parse_quantization_config(qc: Mapping[str, Any] | None) -> Fp8Scheme | None:
    """The checkpoint's FP8 scheme, None for an unquantized checkpoint; refuses other methods by name."""
    if not qc:
        return None
    method = qc.get("quant_method")
    if method == "compressed-tensors":
        return _compressed_tensors(qc)
    if method == "fbgemm_fp8":
        return Fp8Scheme("fbgemm_fp8", DEFAULT_BLOCK, False)
    if method == "fp8":
        if qc.get("fmt", "e4m3") != "e4m3":
            raise UnsupportedQuantizationError(f"fp8 format {qc.get('fmt')!r} is not supported (only e4m3)")
        size = qc.get("weight_block_size") or DEFAULT_BLOCK
        return Fp8Scheme("fp8", (int(size[0]), int(size[1])), qc.get("activation_scheme") == "static")
    raise UnsupportedQuantizationError(
        f"quantization method {method!r} is not supported; supported: {', '.join(FP8_METHODS)} (FP8 weights), "
        "and GGUF files")


def checkpoint_scheme(directory: Path) -> Fp8Scheme | None:
    cfg = json.loads((directory / "config.json").read_text())
    return parse_quantization_config(cfg.get("quantization_config"))


def fp8_weight(name: str, codes: torch.Tensor, scale: torch.Tensor, scheme: Fp8Scheme) -> Fp8Weight:
    """Pair one FP8 weight with its scale; the scale's shape says the granularity."""
    source = scheme.describe()
    n, k = codes.shape
    s = scale.float()
    bn, bk = scheme.block
    # A grid first: a weight of at most one block has a [1, 1] grid, which means the same as one scale.
    if s.dim() == 2 and tuple(s.shape) == (-(-n // bn), -(-k // bk)) and tuple(s.shape) != (n, 1):
        return Fp8Weight(codes, s.contiguous(), (bn, bk), source)
    if s.numel() == 1:
        return Fp8Weight.per_tensor(codes, s, source)
    if s.numel() == n and (s.dim() == 1 or s.shape[-1] == 1):
        return Fp8Weight(codes, s.reshape(n, 1).contiguous(), None, source)
    raise UnsupportedQuantizationError(
        f"{name}: scale of shape {list(s.shape)} fits none of per-tensor, per-channel ([{n}, 1]) or {bn}x{bk} "
        f"blocks ([{-(-n // bn)}, {-(-k // bk)}]) for a {n}x{k} weight")


def iter_fp8_checkpoint(directory: Path, files: list[Path],
                        scheme: Fp8Scheme) -> Iterator[tuple[str, torch.Tensor | Fp8Weight]]:
    """(name, tensor) pairs with every FP8 weight as an `Fp8Weight`; scale tensors are consumed."""
    from safetensors import safe_open

    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(safe_open(str(p), framework="pt", device="cpu")) for p in files]
        where = {name: h for h in handles for name in h.keys()}  # noqa: SIM118 - safe_open handles are not iterable
        skipped = 0
        for h in handles:
            for name in h.keys():  # noqa: SIM118
                if name.endswith(SCALE_SUFFIXES):
                    continue
                if name.endswith(IGNORED_SUFFIXES):
                    skipped += 1
                    continue
                tensor = h.get_tensor(name)
                if tensor.dtype == torch.float8_e5m2:
                    raise UnsupportedQuantizationError(f"{name}: float8_e5m2 weights are not supported (only e4m3)")
                if tensor.dtype != FP8_DTYPE:
                    yield name, tensor  # a module left unquantized (lm_head, embeddings, norms, ignore list)
                    continue
                scale_name = next((name + s.removeprefix(".weight") for s in SCALE_SUFFIXES
                                   if name.endswith(".weight") and name + s.removeprefix(".weight") in where), None)
                if scale_name is None:
                    raise UnsupportedQuantizationError(f"{name} is FP8 but the checkpoint has no weight_scale for it")
                yield name, fp8_weight(name, tensor, where[scale_name].get_tensor(scale_name), scheme)
        if skipped:
            logger.info("FP8 checkpoint: %d activation/KV scale tensors ignored (activations are quantized "
                        "dynamically per token)", skipped)
