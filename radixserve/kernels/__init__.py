"""Triton kernels for the GPU hot path. Each has a torch reference (radixserve.attention.torch_backend)."""
