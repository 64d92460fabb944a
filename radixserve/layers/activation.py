import torch
import torch.nn.functional as F


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x = [gate | up] along the last dim; returns silu(gate) * up."""
    half = x.shape[-1] // 2
    return F.silu(x[..., :half]) * x[..., half:]
