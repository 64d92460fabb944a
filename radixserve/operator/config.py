"""Operator-wide settings (from the command line), separate from any one InferenceServer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from radixserve.operator.builders import Defaults
from radixserve.operator.kube import KubeClient
from radixserve.operator.metrics import OperatorMetrics


@dataclass(frozen=True)
class OperatorConfig:
    defaults: Defaults = field(default_factory=Defaults)
    # Every InferenceServer is reconciled this often even without events (drift repair and
    # status, a safety net for missed watch events); 0 disables it. Not a kopf timer: timers
    # make kopf put its finalizer on every InferenceServer (see periodic.py).
    resync_seconds: float = 300.0
    # Delay before re-checking a spec whose problem may fix itself (a PVC or Secret
    # that does not exist yet).
    retry_seconds: float = 30.0
    # While a model downloads (ModelReady Pending or Downloading), its status (with the
    # progress read from the downloader's log) is refreshed this often; 0 disables.
    progress_seconds: float = 15.0
    # Node labels naming models that no InferenceServer uses any more are removed when an
    # InferenceServer is deleted and at most this often otherwise (during resyncs); see
    # `nodes.py`. Only with defaults.label_nodes.
    node_sweep_seconds: float = 600.0
    # The namespaces served (empty: all); the node label sweep lists InferenceServers there.
    namespaces: tuple[str, ...] = ()
    client_factory: Callable[[], KubeClient] = field(default=KubeClient.from_environment)
    # Where reconciles, errors and drift repairs are counted; None: a private registry.
    metrics: OperatorMetrics | None = None
