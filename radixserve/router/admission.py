"""Admission: per-API-key token-bucket rate limits, concurrency caps and priority.

A client is identified by the sha256 of its bearer token (the token itself is never stored
or logged), or "anonymous" without one. Each identity has a token bucket (`rps` refill,
`burst` size) and a cap on requests in flight; over either, the router answers 429 with
OpenAI's error shape (`type: requests`, `code: rate_limit_exceeded`) and `Retry-After`
seconds: when the bucket will hold a token again, or 1 for the concurrency cap. Limits come
from the flags (applied to every identity) and, per identity, from a tenants file:

    # key (plain), "sha256:<hex of the key>", or "anonymous" -> limits (unset fields: the flags')
    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08":
      {name: team-a, rps: 50, burst: 100, max_concurrent: 32, priority: 10}
    anonymous: {rps: 1, burst: 5, priority: -1}

Priority: an identity with a priority (its entry's, else `--default-priority`) has it written
into the request body's `priority` field (replacing the client's own), which the engines
order their waiting queues by with --enable-priority-scheduling (higher first); without one
the client's field passes untouched.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from radixserve.router.errors import error_response
from radixserve.router.httpd import AnyResponse, Handler, Request, Response

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
# The request's priority for the proxy, which writes it into the body (proxy.py).
PRIORITY_KEY = "radixserve.priority"
# Distinct `tenant` label values on the metrics; identities beyond share "other".
MAX_METRIC_LABELS = 1000
_SHA256 = re.compile(r"^sha256:([0-9a-f]{64})$")



@dataclass(frozen=True)
class Limits:
    rps: float | None = None  # token refill per second; None: no rate limit
    burst: int | None = None  # bucket size; None: ceil(rps), at least 1
    max_concurrent: int | None = None  # requests in flight; None: no cap
    priority: int | None = None  # written into the body; None: the client's own passes

    @property
    def bucket_size(self) -> float:
        if self.burst is not None:
            return float(self.burst)
        return float(max(1, math.ceil(self.rps or 1)))


@dataclass(frozen=True)
class Tenant:
    name: str  # metric label and log name, never the key
    limits: Limits


@dataclass
class AdmissionConfig:
    default: Limits = field(default_factory=Limits)  # every identity without an entry
    tenants: dict[str, Tenant] = field(default_factory=dict)  # identity (sha256 hex or "anonymous") ->
    # Identities whose state is kept; idle ones (full bucket, nothing in flight) are dropped past it.
    max_tracked_keys: int = 100_000

    @property
    def enabled(self) -> bool:
        limits = [self.default, *(t.limits for t in self.tenants.values())]
        return any(x.rps is not None or x.max_concurrent is not None or x.priority is not None for x in limits)


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = Field(None, min_length=1, max_length=128)
    rps: float | None = Field(None, gt=0)
    burst: int | None = Field(None, ge=1)
    max_concurrent: int | None = Field(None, ge=1)
    priority: int | None = Field(None, ge=-(2**31), le=2**31 - 1)


def key_identity(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def identity_of(authorization: str | None) -> str:
    """sha256 hex of the bearer token, or "anonymous"."""
    if authorization and authorization[:7].lower() == "bearer ":
        token = authorization[7:].strip()
        if token:
            return key_identity(token)
    return ANONYMOUS


def load_tenants(path: str | Path, default: Limits) -> dict[str, Tenant]:
    """Read a tenants file; raises ValueError naming the entry on anything malformed."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read tenants file {path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"tenants file {path}: expected a mapping of key -> limits")
    tenants: dict[str, Tenant] = {}
    for index, (key, raw) in enumerate(data.items()):
        # Errors name entries by position: the keys themselves are secrets.
        where = f"tenants file {path}, entry {index + 1}"
        if not isinstance(key, str) or not key:
            raise ValueError(f"{where}: the key must be a non-empty string")
        try:
            entry = _Entry.model_validate(raw or {})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"{where}: {problems}") from None
        match = _SHA256.match(key)
        identity = ANONYMOUS if key == ANONYMOUS else match.group(1) if match else key_identity(key)
        if identity in tenants:
            raise ValueError(f"{where}: the same key is listed twice")
        name = entry.name or (ANONYMOUS if identity == ANONYMOUS else f"key-{identity[:12]}")
        limits = Limits(
            rps=entry.rps if entry.rps is not None else default.rps,
            burst=entry.burst if entry.burst is not None else (default.burst if entry.rps is None else None),
            max_concurrent=entry.max_concurrent if entry.max_concurrent is not None else default.max_concurrent,
            priority=entry.priority if entry.priority is not None else default.priority,
        )
        tenants[identity] = Tenant(name, limits)
    return tenants


@dataclass
class TokenBucket:
    """`capacity` tokens at most, refilled at `rate` per second; a request takes one."""

    rate: float
    capacity: float
    tokens: float
    stamp: float

    def take(self, now: float) -> float:
        """Take a token: 0.0 when one was there, else the seconds until one will be."""
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def full(self, now: float) -> bool:
        return self.tokens + (now - self.stamp) * self.rate >= self.capacity


@dataclass
class _KeyState:
    tenant: Tenant
    label: str
    bucket: TokenBucket | None
    in_flight: int = 0


class Admission:
    def __init__(self, config: AdmissionConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self._states: dict[str, _KeyState] = {}
        self._labels: set[str] = set()
        self.limited: dict[tuple[str, str], int] = {}  # (tenant label, reason) -> requests refused
        self._tenant_keys = frozenset(k for k in config.tenants if k != ANONYMOUS)

    def is_tenant_key(self, authorization: str) -> bool:
        """A bearer token listed in the tenants file (accepted like --api-key)."""
        identity = identity_of(authorization)
        return identity != ANONYMOUS and identity in self._tenant_keys

    def _state(self, identity: str) -> _KeyState:
        state = self._states.get(identity)
        if state is not None:
            return state
        if len(self._states) >= self.config.max_tracked_keys:
            self._forget_idle()
        tenant = self.config.tenants.get(identity)
        if tenant is None:
            name = ANONYMOUS if identity == ANONYMOUS else f"key-{identity[:12]}"
            tenant = Tenant(name, self.config.default)
        label = tenant.name
        if label not in self._labels:
            if len(self._labels) >= MAX_METRIC_LABELS:
                label = "other"
            self._labels.add(label)
        limits = tenant.limits
        bucket = None
        if limits.rps is not None:
            size = limits.bucket_size
            bucket = TokenBucket(limits.rps, size, size, self.clock())
        state = _KeyState(tenant, label, bucket)
        self._states[identity] = state
        return state

    def _forget_idle(self) -> None:
        now = self.clock()
        idle = [k for k, s in self._states.items()
                if s.in_flight == 0 and (s.bucket is None or s.bucket.full(now))]
        for k in idle:
            del self._states[k]

    def _refuse(self, state: _KeyState, reason: str, retry_after_s: float, message: str) -> Response:
        key = (state.label, reason)
        self.limited[key] = self.limited.get(key, 0) + 1
        seconds = max(1, math.ceil(retry_after_s))
        return error_response(429, message, err_type="requests", code="rate_limit_exceeded",
                              headers={"Retry-After": str(seconds)})

    def guard(self, handler: Handler) -> Handler:
        """Wrap a route: refuse over-limit requests, count the admitted one while it runs."""
        if not self.config.enabled:
            return handler

        async def admitted(request: Request) -> AnyResponse:
            state = self._state(identity_of(request.headers.get("Authorization")))
            limits = state.tenant.limits
            if limits.max_concurrent is not None and state.in_flight >= limits.max_concurrent:
                return self._refuse(state, "concurrency", 1.0,
                                    f"too many concurrent requests for {state.tenant.name}: at most "
                                    f"{limits.max_concurrent} in flight")
            if state.bucket is not None:
                wait = state.bucket.take(self.clock())
                if wait > 0:
                    return self._refuse(state, "rate", wait,
                                        f"rate limit reached for {state.tenant.name}: {limits.rps:g} requests/s, "
                                        f"burst {state.bucket.capacity:g}; retry in {wait:.2f}s")
            if limits.priority is not None:
                request[PRIORITY_KEY] = limits.priority
            state.in_flight += 1
            try:
                return await handler(request)
            finally:
                state.in_flight -= 1

        return admitted


class AdmissionCollector(Collector):
    def __init__(self, admission: Admission, prefix: str) -> None:
        self._a = admission
        self._prefix = prefix

    def collect(self) -> Iterable[Metric]:
        limited = CounterMetricFamily(f"{self._prefix}_rate_limited_requests",
                                      "Requests refused with 429, by tenant (name, or key-<sha256 prefix>) and "
                                      "reason (rate, concurrency).", labels=["tenant", "reason"])
        for (label, reason), count in sorted(self._a.limited.items()):
            limited.add_metric([label, reason], count)
        yield limited
        in_flight = GaugeMetricFamily(f"{self._prefix}_tenant_in_flight_requests",
                                      "Admitted requests in flight, by tenant.", labels=["tenant"])
        totals: dict[str, int] = {}
        for state in self._a._states.values():
            totals[state.label] = totals.get(state.label, 0) + state.in_flight
        for label, count in sorted(totals.items()):
            in_flight.add_metric([label], count)
        yield in_flight
