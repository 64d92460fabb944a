from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 (as HF does), optionally fused with the residual add."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [tokens, hidden]. Returns (normed, new_residual), where new_residual = x + residual (or x)."""
        if x.is_cuda:
            from radixserve.kernels.fused_ops import add_rmsnorm

            return add_rmsnorm(x, residual, self.weight, self.eps)
        if residual is not None:
            x = x + residual
        return self.plain(x), x

    def plain(self, x: torch.Tensor) -> torch.Tensor:
        """The norm alone, over the last dim of any shape (q/k norm per head): the reference path."""
        x32 = x.float()
        return self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
