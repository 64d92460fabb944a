"""Leader election on a coordination.k8s.io/v1 Lease, as Kubernetes' own controllers do it.

Why a Lease and not kopf's peering: kopf's peering is not an election. Operators of equal
priority all pause when they see each other ("Possibly conflicting operators with the same
priority"), and two replicas of one Deployment have equal priority, so a second replica would
stop both. Here every replica runs this elector; only the one holding the Lease starts kopf.

The protocol is client-go's: the holder renews `spec.renewTime` every `retry_period`; a
candidate takes the Lease over only after it has seen the same record unchanged for
`leaseDurationSeconds` by its own clock (no clock comparison between machines). Every write
carries the `resourceVersion` it read, so when two candidates race, the API server accepts one
and answers 409 Conflict to the other. A leader that could not renew for `renew_deadline`, or
finds another holder, stops acting (the operator exits and its pod restarts as a candidate);
on a clean shutdown it releases the Lease so a standby takes over at once.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from radixserve.operator.kube import KubeApiError, KubeClient, resource_type

LEASE_TYPE = resource_type("coordination.k8s.io/v1", "Lease")
SERVICE_ACCOUNT_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
logger = logging.getLogger(__name__)

LEADING, HELD, FAILED = "leading", "held", "failed"


class LeadershipLost(Exception):
    """The Lease was taken over or could not be renewed in time: stop acting now."""


def default_identity() -> str:
    """The pod's name (downward API POD_NAME, else the host name) plus a random suffix, so a
    restarted container never mistakes its predecessor's Lease for its own."""
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}_{uuid.uuid4().hex[:8]}"


def default_namespace() -> str:
    """Where the Lease lives: POD_NAMESPACE, else the service account's namespace, else default."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE_FILE, encoding="utf-8") as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def micro_time(now: datetime.datetime | None = None) -> str:
    """A Kubernetes MicroTime."""
    return (now or datetime.datetime.now(datetime.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class ElectionConfig:
    namespace: str
    name: str = "radixserve-operator"
    identity: str = ""
    lease_seconds: float = 15.0  # how long a silent holder keeps the Lease
    renew_deadline: float = 10.0  # a leader that cannot renew for this long steps down
    retry_period: float = 2.0  # how often to renew, or to try to acquire

    def __post_init__(self) -> None:
        if not self.renew_deadline < self.lease_seconds:
            raise ValueError("the renew deadline must be shorter than the lease duration, or two leaders overlap")
        if not 0 < self.retry_period < self.renew_deadline:
            raise ValueError("the retry period must be positive and shorter than the renew deadline")


class LeaderElector:
    def __init__(self, client: Callable[[], KubeClient], config: ElectionConfig,
                 on_change: Callable[[bool], None] | None = None) -> None:
        self.config = config
        self.identity = config.identity or default_identity()
        self._client = client
        self._on_change = on_change
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self.last_attempt = time.monotonic()
        self.is_leader = False

    def _set_leader(self, leading: bool) -> None:
        if leading != self.is_leader:
            self.is_leader = leading
            logger.info("%s leadership of Lease %s/%s as %s", "acquired" if leading else "lost",
                        self.config.namespace, self.config.name, self.identity)
            if self._on_change is not None:
                self._on_change(leading)

    def try_acquire_or_renew(self) -> str:
        """One attempt: LEADING (we hold it now), HELD (someone else does) or FAILED (an API error)."""
        self.last_attempt = time.monotonic()
        api, cfg = self._client(), self.config
        now = micro_time()
        try:
            lease = api.get(LEASE_TYPE, cfg.namespace, cfg.name)
            if lease is None:
                api.create(LEASE_TYPE, cfg.namespace, {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": cfg.name, "namespace": cfg.namespace},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": int(cfg.lease_seconds),
                             "acquireTime": now, "renewTime": now, "leaseTransitions": 0},
                })
                return LEADING
            spec = lease.get("spec") or {}
            holder = spec.get("holderIdentity") or ""
            record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"), spec.get("acquireTime"))
            if record != self._observed:
                self._observed, self._observed_at = record, time.monotonic()
            duration = float(spec.get("leaseDurationSeconds") or cfg.lease_seconds)
            if holder and holder != self.identity and time.monotonic() < self._observed_at + duration:
                return HELD
            update: dict[str, Any] = {"holderIdentity": self.identity, "leaseDurationSeconds": int(cfg.lease_seconds),
                                      "renewTime": now}
            if holder != self.identity:
                update.update(acquireTime=now, leaseTransitions=int(spec.get("leaseTransitions") or 0) + 1)
            # The resourceVersion read is a precondition: of two racing candidates one gets 409.
            version = (lease.get("metadata") or {}).get("resourceVersion")
            api.merge_patch(LEASE_TYPE, cfg.namespace, cfg.name,
                            {"metadata": {"resourceVersion": version}, "spec": update})
            return LEADING
        except KubeApiError as exc:
            if exc.status == 409:
                return HELD  # another candidate wrote first
            logger.warning("leader election: %s", exc)
            return FAILED
        except Exception as exc:  # a network error must not kill the elector; it counts against the deadline
            logger.warning("leader election: %s", exc)
            return FAILED

    async def acquire(self) -> None:
        """Wait (as a standby) until this instance holds the Lease."""
        while await asyncio.to_thread(self.try_acquire_or_renew) != LEADING:
            await asyncio.sleep(self.config.retry_period)
        self._set_leader(True)

    async def keep_leading(self) -> None:
        """Renew until leadership is lost; then raise LeadershipLost (never returns otherwise)."""
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.config.retry_period)
            result = await asyncio.to_thread(self.try_acquire_or_renew)
            if result == LEADING:
                renewed = time.monotonic()
            elif result == HELD or time.monotonic() - renewed > self.config.renew_deadline:
                self._set_leader(False)
                raise LeadershipLost(f"Lease {self.config.namespace}/{self.config.name}: "
                                     + ("taken over by another instance" if result == HELD
                                        else f"not renewed for {self.config.renew_deadline:g}s"))

    def release(self) -> None:
        """Give the Lease up (clean shutdown) so that a standby need not wait for it to expire."""
        if not self.is_leader:
            return
        self._set_leader(False)
        cfg = self.config
        try:
            lease = self._client().get(LEASE_TYPE, cfg.namespace, cfg.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            self._client().merge_patch(LEASE_TYPE, cfg.namespace, cfg.name, {
                "metadata": {"resourceVersion": (lease.get("metadata") or {}).get("resourceVersion")},
                "spec": {"holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": micro_time()}})
        except Exception as exc:  # best effort: the Lease expires anyway
            logger.warning("could not release the Lease: %s", exc)

    def alive(self) -> bool:
        """For the liveness probe: the elector loop still runs."""
        return time.monotonic() - self.last_attempt < max(30.0, 5 * self.config.retry_period)
