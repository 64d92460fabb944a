"""The typed view of an InferenceServer's `.spec`.

The CRD in `crds/` is what users and `kubectl explain` see; these models are what
the builders read. A test walks both and fails when a field, a default or an enum
exists in one and not the other. The API server applies the CRD's defaults and
validation before we see an object; the same defaults and bounds are repeated
here so that the operator behaves the same against a server that did not (an old
object, a test emulator) and reports a bad field instead of building from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from radixserve.model_store.uri import (
    HFModel,
    InvalidModelURI,
    ModelURI,
    OCIModel,
    S3Model,
    is_remote,
    parse_model_uri,
)

Quantity = int | str  # "4Gi", "500m", 2: what Kubernetes calls int-or-string

# Flags the operator sets itself from typed fields; in extraArgs they would fight
# with them (and `--api-key` would put a secret on the command line).
RESERVED_FLAGS = (
    "--host",
    "--port",
    "--model-path",
    "--served-model-name",
    "--tp",
    "--pp",
    "--device",
    "--api-key",
    "--nnodes",
    "--node-rank",
    "--dist-init-addr",
    "--graceful-shutdown-timeout",
)

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
# A pod lives on one node, and GPU nodes hold at most 8 GPUs; larger replicas span pods.
MAX_GPUS_PER_POD = 8
MAX_NODES_PER_REPLICA = 16


def _relative_path(value: str) -> str:
    """A path inside a volume: relative and never climbing out of it."""
    if value.startswith("/") or ".." in value.split("/"):
        raise ValueError("must be a relative path without '..'")
    return value


RelativePath = Annotated[str, AfterValidator(_relative_path)]


class _Model(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are an error so a
    spec the operator does not understand is reported, not silently half-applied."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid")


class EmbeddedModel(_Model):
    """Marker: serve the model baked into the image (no --model-path)."""


class ImageModel(_Model):
    path: str = Field(pattern=r"^/", min_length=1)


class PVCModel(_Model):
    claim_name: str = Field(min_length=1, max_length=253)
    sub_path: RelativePath = ""


class HostPathModel(_Model):
    path: str = Field(pattern=r"^/", min_length=1)
    sub_path: RelativePath = ""


SOURCES = ("embedded", "image", "pvc", "hostPath", "uri")


class ModelCacheSpec(_Model):
    """Where a downloaded (hf://, s3://) model is kept; see docs/operator.md."""

    mode: Literal["none", "node", "pvc"] = "none"
    size: Quantity | None = None
    storage_class_name: str | None = Field(default=None, min_length=1, max_length=253)
    claim_name: str | None = Field(default=None, min_length=1, max_length=253)


class ModelSecretRef(_Model):
    name: str = Field(min_length=1, max_length=253)


class ModelSpec(_Model):
    embedded: EmbeddedModel | None = None
    image: ImageModel | None = None
    pvc: PVCModel | None = None
    host_path: HostPathModel | None = None
    # A model URI (hf://, s3://, pvc://, oci:// or a path in the image); the fields
    # below it apply to downloaded URIs only, which `checks.check_model_fields` enforces.
    uri: str | None = Field(default=None, min_length=1, max_length=2048)
    credentials_secret_ref: ModelSecretRef | None = None
    endpoint: str | None = Field(default=None, pattern=r"^https?://\S+$", max_length=2048)
    region: str | None = Field(default=None, min_length=1, max_length=64)
    include: list[str] = Field(default_factory=list, max_length=64)
    exclude: list[str] = Field(default_factory=list, max_length=64)
    cache: ModelCacheSpec | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = None
    load_format: Literal["auto", "gguf", "safetensors", "dummy"] | None = None

    @field_validator("uri")
    @classmethod
    def _parsable_uri(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_model_uri(value)
            except InvalidModelURI as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ModelSpec:
        chosen = [s for s in SOURCES if self.source_of(s) is not None]
        if len(chosen) != 1:
            raise ValueError(
                "exactly one of embedded, image, pvc, hostPath, uri must be set, got "
                + (", ".join(chosen) if chosen else "none")
            )
        return self

    def source_of(self, key: str) -> object | None:
        return {"embedded": self.embedded, "image": self.image, "pvc": self.pvc, "hostPath": self.host_path,
                "uri": self.uri}[key]

    @property
    def source(self) -> str:
        return next(s for s in SOURCES if self.source_of(s) is not None)

    @property
    def parsed_uri(self) -> ModelURI | None:
        """The parsed `uri` (validated when the spec was parsed), None for the other sources."""
        return None if self.uri is None else parse_model_uri(self.uri)

    @property
    def downloads(self) -> bool:
        """True when the model is fetched by `radixserve download` before the server starts."""
        uri = self.parsed_uri
        return uri is not None and is_remote(uri)

    @property
    def cache_mode(self) -> str:
        return self.cache.mode if self.cache is not None else "none"


class SecretKeyRef(_Model):
    name: str = Field(min_length=1, max_length=253)
    key: str = Field(default="api-key", min_length=1)


class ServerSpec(_Model):
    context_length: int | None = Field(default=None, ge=1)
    mem_fraction_static: float | None = Field(default=None, gt=0, lt=1)
    max_running_requests: int | None = Field(default=None, ge=1)
    chunked_prefill_size: int | None = Field(default=None, ge=-1)
    schedule_policy: Literal["lpm", "fcfs"] | None = None
    graceful_shutdown_timeout_seconds: int = Field(default=30, ge=0, le=3600)
    startup_timeout_seconds: int = Field(default=1800, ge=10, le=86400)
    api_key_secret_ref: SecretKeyRef | None = None
    extra_args: list[str] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _no_reserved_flags(self) -> ServerSpec:
        if self.chunked_prefill_size == 0:
            raise ValueError("chunkedPrefillSize must be -1 (disabled) or positive")
        for arg in self.extra_args:
            flag = arg.split("=", 1)[0]
            if flag in RESERVED_FLAGS:
                raise ValueError(f"extraArgs must not contain {flag}: it is set from a typed field")
        return self


class ContainerResources(_Model):
    requests: dict[str, Quantity] = Field(default_factory=dict)
    limits: dict[str, Quantity] = Field(default_factory=dict)


class ResourcesSpec(ContainerResources):
    gpus: int | None = Field(default=None, ge=0, le=64)
    shm_size: Quantity | None = None


class RouterSpec(_Model):
    enabled: bool = True
    # Two by default: a drained node or a rollout never leaves the endpoint without a router.
    replicas: int = Field(default=2, ge=0)
    image: str | None = None
    policy: Literal["cache_aware", "round_robin", "random", "power_of_two"] = "cache_aware"
    cache_threshold: float = Field(default=0.5, ge=0, le=1)
    balance_abs_threshold: int = Field(default=32, ge=0)
    balance_rel_threshold: float = Field(default=1.0001, ge=1)
    max_tree_size: int = Field(default=16777216, ge=1)
    resources: ContainerResources = Field(default_factory=ContainerResources)


class ServiceSpec(_Model):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    port: int = Field(default=80, ge=1, le=65535)


class Toleration(_Model):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class SchedulingSpec(_Model):
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    # Passed through as-is: the pod API validates it, and its schema is too large to repeat.
    affinity: dict[str, Any] | None = None
    priority_class_name: str | None = None
    runtime_class_name: str | None = None


class EnvVar(_Model):
    name: str = Field(min_length=1)
    value: str | None = None
    value_from: dict[str, Any] | None = None


class LocalObjectReference(_Model):
    name: str = Field(min_length=1)


class RolloutSpec(_Model):
    max_surge: Quantity = 1
    max_unavailable: Quantity = 0
    # Unset: server.startupTimeoutSeconds + PROGRESS_DEADLINE_MARGIN_SECONDS (builders/server.py).
    progress_deadline_seconds: int | None = Field(default=None, ge=60, le=172800)


class DisruptionBudgetSpec(_Model):
    """PodDisruptionBudgets: how many server pods a node drain may evict at once."""

    enabled: bool = True
    max_unavailable: Quantity = 1


class SecuritySpec(_Model):
    # A hostPath volume (spec.model.hostPath, spec.model.cache.mode node) fails Pod Security
    # "baseline": the operator renders one only when asked to in so many words.
    allow_host_path: bool = False


class NetworkPolicySpec(_Model):
    """NetworkPolicies: server pods accept only the router (and the metrics scraper)."""

    enabled: bool = False
    # NetworkPolicyPeers (namespaceSelector / podSelector / ipBlock) passed through as-is:
    # the API validates them, and their schema is too large to repeat.
    metrics_from: list[dict[str, Any]] = Field(default_factory=list, max_length=16)
    # Who may call the endpoint (the router pods, or the server pods when the router is off);
    # empty: anyone.
    clients_from: list[dict[str, Any]] = Field(default_factory=list, max_length=16)


AUTOSCALING_METRICS = ("queueDepth", "runningRequests", "kvUsage")


class AutoscalingSpec(_Model):
    """An HPA (custom metrics through prometheus-adapter) or a KEDA ScaledObject on the scale subresource."""

    enabled: bool = False
    provider: Literal["auto", "hpa", "keda"] = "auto"
    min_replicas: int = Field(default=1, ge=0, le=1000)
    max_replicas: int = Field(default=4, ge=1, le=1000)
    metric: Literal["queueDepth", "runningRequests", "kvUsage"] = "queueDepth"
    # Average per replica; unset: the metric's default (builders/autoscaling.py).
    target: float | None = Field(default=None, gt=0)
    scale_up_stabilization_seconds: int = Field(default=0, ge=0, le=3600)
    scale_down_stabilization_seconds: int = Field(default=300, ge=0, le=3600)
    # KEDA's Prometheus; unset: the operator's default (chart value autoscaling.prometheusAddress).
    prometheus_address: str | None = Field(default=None, pattern=r"^https?://\S+$", max_length=2048)
    # Scale from zero: how long the router holds requests while the first replica starts.
    scale_from_zero_timeout_seconds: int = Field(default=300, ge=1, le=3600)

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must not exceed maxReplicas")
        if self.metric == "kvUsage" and self.target is not None and self.target > 1:
            raise ValueError("target of metric kvUsage is a fraction of the KV pool: at most 1")
        if self.min_replicas == 0 and self.provider == "hpa":
            raise ValueError("minReplicas 0 needs KEDA (provider keda or auto): an HPA cannot scale to zero")
        return self


class MonitoringSpec(_Model):
    """PodMonitors and a PrometheusRule (Prometheus operator)."""

    # Unset: on when the cluster serves the monitoring.coreos.com CRDs.
    enabled: bool | None = None
    interval: str = Field(default="30s", pattern=r"^[0-9]+(ms|s|m|h)$")
    alerts: bool = True
    # Labels on the PodMonitors and the PrometheusRule, for a Prometheus that selects by label.
    labels: dict[str, str] = Field(default_factory=dict)


class EndpointPickerSpec(_Model):
    """The Service of the user's endpoint picker (EPP): an Envoy ext_proc gRPC server of the Gateway
    API Inference Extension that picks a replica per request. radixserve's router is not one."""

    name: str = Field(min_length=1, max_length=253)
    port: int = Field(default=9002, ge=1, le=65535)
    # What the gateway does while the EPP does not answer: FailClose refuses requests, FailOpen
    # sends them to a replica of its own choice.
    failure_mode: Literal["FailOpen", "FailClose"] = "FailClose"


class InferencePoolSpec(_Model):
    """An InferencePool of the server pods (builders/gateway.py)."""

    enabled: bool = False
    endpoint_picker: EndpointPickerSpec | None = None

    @model_validator(mode="after")
    def _picker_when_enabled(self) -> InferencePoolSpec:
        if self.enabled and self.endpoint_picker is None:
            raise ValueError("endpointPicker is required when enabled: the InferencePool must name the Service of "
                             "an endpoint picker (radixserve's router is not one)")
        return self


class GatewaySpec(_Model):
    """Gateway API Inference Extension integration (docs/operator.md, "Behind a Gateway")."""

    inference_pool: InferencePoolSpec = Field(default_factory=InferencePoolSpec)


def _embedded() -> ModelSpec:
    return ModelSpec(embedded=EmbeddedModel())


class InferenceServerSpec(_Model):
    model: ModelSpec = Field(default_factory=_embedded)
    served_model_name: str | None = Field(default=None, min_length=1, max_length=256)
    replicas: int = Field(default=1, ge=0)
    tensor_parallel_size: Literal[1, 2, 4, 8] = 1
    pipeline_parallel_size: int = Field(default=1, ge=1, le=16)
    # Pods one replica spans (a LeaderWorkerSet when > 1): the tp x pp ranks split evenly over them.
    nodes_per_replica: int = Field(default=1, ge=1, le=MAX_NODES_PER_REPLICA)
    image: str | None = None
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    server: ServerSpec = Field(default_factory=ServerSpec)
    router: RouterSpec = Field(default_factory=RouterSpec)
    service: ServiceSpec = Field(default_factory=ServiceSpec)
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec)
    env: list[EnvVar] = Field(default_factory=list)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    disruption_budget: DisruptionBudgetSpec = Field(default_factory=DisruptionBudgetSpec)
    security: SecuritySpec = Field(default_factory=SecuritySpec)
    network_policy: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)
    gateway: GatewaySpec = Field(default_factory=GatewaySpec)

    @model_validator(mode="after")
    def _deadline_covers_startup(self) -> InferenceServerSpec:
        deadline = self.rollout.progress_deadline_seconds
        if deadline is not None and deadline <= self.server.startup_timeout_seconds:
            raise ValueError(
                f"rollout.progressDeadlineSeconds ({deadline}) must exceed server.startupTimeoutSeconds "
                f"({self.server.startup_timeout_seconds}): a pod may take that long to load its model")
        return self

    @property
    def uses_host_path(self) -> str | None:
        """The field that puts a hostPath volume in the server pods, if any."""
        if self.model.host_path is not None:
            return "spec.model.hostPath"
        if self.model.downloads and self.model.cache_mode == "node":
            return "spec.model.cache.mode"
        return None

    @property
    def scales_to_zero(self) -> bool:
        return self.autoscaling.enabled and self.autoscaling.min_replicas == 0

    @model_validator(mode="after")
    def _ranks_fit_the_pods(self) -> InferenceServerSpec:
        world = self.tensor_parallel_size * self.pipeline_parallel_size
        if world % self.nodes_per_replica != 0:
            raise ValueError(f"nodesPerReplica ({self.nodes_per_replica}) must divide tensorParallelSize x "
                             f"pipelineParallelSize ({world}): every pod runs the same number of ranks")
        if world // self.nodes_per_replica > MAX_GPUS_PER_POD:
            raise ValueError(f"tensorParallelSize x pipelineParallelSize / nodesPerReplica = "
                             f"{world // self.nodes_per_replica} GPUs per pod, but a pod can hold at most "
                             f"{MAX_GPUS_PER_POD} (one node's); raise nodesPerReplica to spread a replica over "
                             "several pods")
        return self

    @property
    def world_size(self) -> int:
        """Ranks (GPUs) one replica uses: one per TP rank per pipeline stage, over all its pods."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def gpus_needed(self) -> int:
        """GPUs one pod's server uses: its share of the replica's ranks."""
        return self.world_size // self.nodes_per_replica

    @property
    def gpus(self) -> int:
        """GPUs requested per pod; defaults to what the server uses. 0 means a CPU pod."""
        return self.gpus_needed if self.resources.gpus is None else self.resources.gpus

    @property
    def display_model(self) -> str:
        """What the `Model` printer column shows."""
        if self.served_model_name:
            return self.served_model_name
        source = self.model
        if source.image is not None:
            return source.image.path.rstrip("/").rsplit("/", 1)[-1] or source.image.path
        if source.pvc is not None:
            return f"pvc:{source.pvc.claim_name}/{source.pvc.sub_path}".rstrip("/")
        if source.host_path is not None:
            return f"{source.host_path.path.rstrip('/')}/{source.host_path.sub_path}".rstrip("/")
        if source.uri is not None:
            return str(source.parsed_uri)
        return EMBEDDED_MODEL_NAME

    @property
    def default_served_model_name(self) -> str | None:
        """--served-model-name when the spec sets none: what the server would derive from a
        cache directory or a mount point (e.g. "hf--Qwen--Qwen3-8B-1a2b3c" or "models") is
        not a name clients can guess, so URI sources name the model after the URI."""
        if self.served_model_name:
            return self.served_model_name
        uri = self.model.parsed_uri
        if isinstance(uri, HFModel):
            return uri.repo_id
        if isinstance(uri, S3Model):
            return uri.prefix.rsplit("/", 1)[-1] if uri.prefix else uri.bucket
        if isinstance(uri, OCIModel):
            return uri.reference.split("@", 1)[0].rsplit("/", 1)[-1]
        return None


class SpecError(ValueError):
    """A spec that does not parse; `field` is the path a user would edit (spec.x.y)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def parse_spec(raw: Mapping[str, Any]) -> InferenceServerSpec:
    """Parse `.spec`, naming the first bad field in the error."""
    try:
        return InferenceServerSpec.model_validate(dict(raw))
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(part) for part in ("spec", *first["loc"]))
        raise SpecError(path, first["msg"]) from exc
