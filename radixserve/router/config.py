"""Router settings: one typed object built by the CLI (or by tests) and read everywhere else."""

from __future__ import annotations

from dataclasses import dataclass, field

from radixserve.router.admission import AdmissionConfig
from radixserve.router.drain import DrainConfig
from radixserve.router.event_stream import EventStreamConfig
from radixserve.router.policies import CacheAwareConfig
from radixserve.router.scale import ScaleFromZeroConfig


@dataclass
class KubeDiscoveryConfig:
    selector: str  # label selector of the replicas' EndpointSlices, e.g. "app=radixserve,role=server"
    namespace: str
    port: int  # worker port on each endpoint address
    scheme: str = "http"
    # API server URL; None means in-cluster config, else ~/.kube/config (tests pass an emulator's URL).
    api_server: str | None = None
    # Server-side watch timeout: the watch is renewed after this, so a silently broken
    # connection is noticed within it.
    watch_timeout_s: int = 300
    retry_backoff_s: float = 2.0


@dataclass
class RouterConfig:
    host: str = "127.0.0.1"
    port: int = 30080  # the server's default is 30000: both can run on one machine
    worker_urls: list[str] = field(default_factory=list)
    kube: KubeDiscoveryConfig | None = None
    policy: str = "cache_aware"
    cache: CacheAwareConfig = field(default_factory=CacheAwareConfig)
    api_key: str | None = None
    # Same order of magnitude as sglang-router's defaults, but a shorter health interval
    # (it uses 60 s) so that a returning replica is re-admitted within seconds.
    health_check_interval_s: float = 10.0
    health_check_timeout_s: float = 5.0
    health_failure_threshold: int = 3
    health_success_threshold: int = 2
    eviction_interval_s: float = 60.0
    request_timeout_s: float = 1800.0
    connect_timeout_s: float = 5.0
    max_attempts: int = 3  # one try plus retries on other workers after connection failures
    max_payload_bytes: int = 256 * 1024 * 1024
    seed: int | None = None  # for the random choices of policies (tests, benchmarks)
    # cache_aware: subscribe to each worker's cache events (/v1/cache/events) and match exactly
    # where they are live; workers without them keep the approximate tree.
    cache_events: bool = True
    # The model's tokenizer (GGUF file, HF directory or HF id), so that text and chat prompts
    # are cut into the engine's blocks; "auto" asks the workers (tokenize.tokenizer_source_of);
    # without one only token-id prompts match exactly.
    tokenizer: str | None = "auto"
    events: EventStreamConfig = field(default_factory=EventStreamConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)  # per-key limits and priority
    drain: DrainConfig = field(default_factory=DrainConfig)  # SIGTERM: readiness off, then finish
    scale_from_zero: ScaleFromZeroConfig | None = None  # hold requests while the InferenceServer scales up
    # How POST /generate reaches the workers: "http", or "grpc" to each worker's host at grpc_port
    # (their `radixserve serve --grpc-port`); health checks, cache events and the other routes stay HTTP.
    worker_protocol: str = "http"
    grpc_port: int | None = None
