"""Triton kernels for the GPU hot path, each with a torch reference (radixserve.attention.torch_backend);
and C kernels for the CPU decode path (cpu/, built at first use by cpu_native.py)."""
