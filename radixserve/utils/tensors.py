"""Host-to-device copies that do not wait for the GPU."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def to_device(data: Sequence[int] | Sequence[float] | Sequence[bool] | torch.Tensor, device: torch.device | str,
              dtype: torch.dtype | None = torch.int64) -> torch.Tensor:
    """`data` on `device`. A blocking copy (`torch.tensor(..., device=cuda)`, `.to(cuda)`)
    synchronizes the stream, so preparing step N+1 would wait for step N to finish and the
    overlap schedule would overlap nothing. From pageable memory a non-blocking copy is staged
    before the call returns, so `data` may be dropped at once."""
    t = data if isinstance(data, torch.Tensor) else torch.tensor(data, dtype=dtype)
    return t.to(device, non_blocking=True)
