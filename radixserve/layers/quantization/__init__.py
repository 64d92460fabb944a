"""Quantized weights for the linear layers: the `QuantMethod` seam and its CPU int4 method."""

from radixserve.layers.quantization.base import GroupQuantized, QuantMethod, UnsupportedQuantizationError
from radixserve.layers.quantization.int4_cpu import Int4PackedWeight, int4_cpu_available, pack_for_device

__all__ = ["GroupQuantized", "Int4PackedWeight", "QuantMethod", "UnsupportedQuantizationError",
           "int4_cpu_available", "pack_for_device"]
