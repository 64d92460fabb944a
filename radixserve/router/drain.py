"""Readiness drain on SIGTERM: leave the Service's endpoints first, then finish in-flight work.

Kubernetes sends SIGTERM and removes the pod from the Service's endpoints at the same time,
but proxies and clients learn of the removal seconds later. So, on SIGTERM:

1. `GET /health` (readiness) answers 503 "draining" at once; `/liveness` stays 200, and
   responses carry `Connection: close` so that keep-alive clients reconnect elsewhere.
2. New requests are still served for `grace_s` (`--drain-grace-seconds`).
3. The listener closes, idle connections are closed, and in-flight requests and SSE streams
   run to completion for up to `timeout_s` (`--drain-timeout-seconds`; the HTTP server's
   `shutdown` with that timeout does this part, httpd.py); what is left then is cancelled.
4. The process exits 0. A second SIGTERM or SIGINT cuts the grace period short.

The pod's `terminationGracePeriodSeconds` should exceed grace + timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class DrainConfig:
    # Endpoint removal reaches kube-proxy and ingress controllers within a few seconds.
    grace_s: float = 5.0
    timeout_s: float = 60.0  # LLM streams are long; at most this after the grace period


class DrainState:
    def __init__(self) -> None:
        self.draining = False
        self.since: float | None = None

    def begin(self) -> None:
        if not self.draining:
            self.draining = True
            self.since = time.monotonic()


async def drain(state: DrainState, config: DrainConfig, cut_short: asyncio.Event) -> None:
    """Steps 1 and 2: fail readiness, keep serving for the grace period (or until `cut_short`).
    The caller then stops the router, whose HTTP server's shutdown does step 3."""
    state.begin()
    log.info("draining: readiness fails now; new requests are served for %.1fs more, then in-flight "
             "requests get up to %.1fs", config.grace_s, config.timeout_s)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(cut_short.wait(), config.grace_s)
    log.info("draining: closing the listener, waiting for in-flight requests")
