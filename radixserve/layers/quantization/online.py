"""`--quantization fp8`: a float model's linear layers quantized to FP8 after loading.

Per output channel (one scale per row): finer than vLLM's per-tensor online FP8 at no cost in the
row-wise scaled product. Only the decoder's linear layers (q/k/v, o, gate/up, down) are quantized;
the embedding, the LM head and the mixture-of-experts weights stay in the model dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from radixserve.layers.linear import ColumnParallelLinear, RowParallelLinear
from radixserve.layers.quantization.fp8 import Fp8Linear, quantize_weight_per_channel


def quantize_linears_fp8(model: nn.Module) -> int:
    """Replace every dense linear weight with its FP8 form in place; returns how many were quantized."""
    count = 0
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, ColumnParallelLinear | RowParallelLinear):
                continue
            if module.quant is not None or module.weight.numel() == 0:
                continue  # already quantized (a checkpoint's own FP8 or GGUF weights), or another stage's
            w = module.weight
            module.quant = Fp8Linear(quantize_weight_per_channel(w.data), w.device)
            w.data = torch.empty(0, dtype=w.dtype, device=w.device)  # the FP8 codes replace it
            count += 1
    return count
