"""Load a checkpoint stream in which some tensors are quantized (`GroupQuantized`, `Fp8Weight`): those go to their linear
layer's `load_quantized` (which packs them), the rest through the model's own `load_weights`.

A quantized tensor that has no layer able to take it packed (another module type, or a row-parallel
slice that splits the format's groups under TP) is dequantized and loaded like any float tensor,
with a log line naming it and why.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from radixserve.layers.quantization.base import GroupQuantized, UnsupportedQuantizationError
from radixserve.layers.quantization.fp8 import Fp8Weight

Quantized = GroupQuantized | Fp8Weight

logger = logging.getLogger(__name__)


def _target(model: nn.Module, name: str) -> tuple[str, object]:
    """The parameter a checkpoint name loads into and its shard id: a mixture-of-experts model's
    expert stacks (`expert_target`), else the model's fused-name map."""
    expert_target = getattr(model, "expert_target", None)
    if callable(expert_target):
        target, shard = expert_target(name)
        if target is not None:
            return target, shard
    for ckpt, ours, shard_id in getattr(model, "stacked_params", ()):
        if ckpt in name:
            return name.replace(ckpt, ours), shard_id
    return name, None


def _quant_layer(model: nn.Module, param_name: str) -> Any:
    module_path, _, leaf = param_name.rpartition(".")
    if not leaf.endswith("weight"):  # `weight`, or an expert stack's `w13_weight` / `w2_weight`
        return None
    try:
        module = model.get_submodule(module_path)
    except AttributeError:
        return None  # another pipeline stage's placeholder or an unknown name: load_weights judges it
    return module if callable(getattr(module, "load_quantized", None)) else None


def load_weights_packed(model: nn.Module,
                        weights: Iterable[tuple[str, torch.Tensor | Quantized]]) -> set[str]:
    """Like `model.load_weights(weights)`, packing the quantized tensors (GGUF's GroupQuantized, FP8
    checkpoints' Fp8Weight); returns the parameters loaded."""
    packed: set[str] = set()
    dequantized: list[str] = []

    def dense(stream: Iterable[tuple[str, torch.Tensor | Quantized]]) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in stream:
            if isinstance(tensor, GroupQuantized | Fp8Weight):
                target, shard = _target(model, name)
                layer = _quant_layer(model, target)
                in_stage = getattr(model, "_in_this_stage", None)
                if layer is None and callable(in_stage) and not in_stage(name):
                    continue  # another pipeline stage's layer: load_weights would skip it, so do not dequantize
                reason = f"{type(layer).__name__ if layer is None else 'layer'} cannot take it packed"
                if layer is not None:
                    try:
                        with torch.no_grad():
                            layer.load_quantized(tensor, shard)
                        packed.add(target)
                        continue
                    except UnsupportedQuantizationError as e:
                        reason = str(e)
                dequantized.append(f"{name} ({tensor.source}: {reason})")
                tensor = tensor.dequantize()
            yield name, tensor

    loaded: set[str] = model.load_weights(dense(weights))  # type: ignore[operator]
    pending = [n for n, m in model.named_modules() if getattr(m, "_pending", None)]
    if pending:
        raise ValueError(f"quantized checkpoint lacks some fused projections of {pending[:3]}")
    if dequantized:
        logger.warning("%d quantized tensors loaded dequantized instead of packed, e.g. %s",
                       len(dequantized), "; ".join(dequantized[:3]))
    quant_bytes = sum(q.nbytes() for q in (getattr(m, "quant", None) for m in model.modules()) if q is not None)
    expert_bytes = sum(s.nbytes() for m in model.modules() for s in (getattr(m, "w13_fp8", None),
                                                                      getattr(m, "w2_fp8", None)) if s is not None)
    logger.info("packed %d linear weights (%.1f MiB with scales)%s", len(packed), quant_bytes / 2**20,
                f" and FP8 experts ({expert_bytes / 2**20:.1f} MiB)" if expert_bytes else "")
    return loaded | packed
