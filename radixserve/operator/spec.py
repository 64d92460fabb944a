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
    "--graceful-shutdown-timeout",
)

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"


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
    replicas: int = Field(default=1, ge=0)
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


def _embedded() -> ModelSpec:
    return ModelSpec(embedded=EmbeddedModel())


class InferenceServerSpec(_Model):
    model: ModelSpec = Field(default_factory=_embedded)
    served_model_name: str | None = Field(default=None, min_length=1, max_length=256)
    replicas: int = Field(default=1, ge=0)
    tensor_parallel_size: Literal[1, 2, 4, 8] = 1
    pipeline_parallel_size: int = Field(default=1, ge=1, le=16)
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

    @property
    def gpus_needed(self) -> int:
        """GPUs one replica's server uses: one per TP rank per pipeline stage."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

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
