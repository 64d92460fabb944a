"""Operator-wide settings (from the command line), separate from any one InferenceServer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from radixserve.operator.builders import Defaults
from radixserve.operator.kube import KubeClient


@dataclass(frozen=True)
class OperatorConfig:
    defaults: Defaults = field(default_factory=Defaults)
    # Every InferenceServer's status is recomputed this often even without events,
    # as a safety net for missed watch events; 0 disables it.
    resync_seconds: float = 300.0
    # Delay before re-checking a spec whose problem may fix itself (a PVC or Secret
    # that does not exist yet).
    retry_seconds: float = 30.0
    client_factory: Callable[[], KubeClient] = field(default=KubeClient.from_environment)
