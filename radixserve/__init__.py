"""radixserve: LLM inference engine, OpenAI-compatible server, cache-aware router, Kubernetes operator."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from radixserve.entrypoints.engine import Engine


def __getattr__(name: str) -> Any:
    # Lazy, so `radixserve router` and `radixserve operator` do not import torch.
    if name == "Engine":
        from radixserve.entrypoints.engine import Engine

        return Engine
    raise AttributeError(name)


__all__ = ["Engine", "__version__"]
