"""spec.autoscaling: an HPA (autoscaling/v2, Pods metric served by prometheus-adapter) or a KEDA
ScaledObject (keda.sh/v1alpha1, Prometheus trigger), both aimed at the InferenceServer's scale
subresource. The autoscaler writes spec.replicas of the InferenceServer and the operator keeps
owning the server Deployment's replicas, so one writer reaches the Deployment.

Scale to zero (minReplicas 0) needs KEDA: an HPA scales to zero only behind the alpha feature
gate HPAScaleToZero. The router then holds requests while the first replica starts and patches
the scale subresource itself (`--scale-from-zero`), because with no pod there is no metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from radixserve.operator import names
from radixserve.operator.builders.common import BuildInput, Manifest, metadata

HPA_API_VERSION = "autoscaling/v2"
KEDA_API_VERSION = "keda.sh/v1alpha1"
COMPONENT_AUTOSCALER = "autoscaler"


@dataclass(frozen=True)
class ScalingMetric:
    """A per-replica gauge of `radixserve serve` (radixserve/metrics.py) and its default target."""

    prometheus_name: str
    default_target: float
    what: str


METRICS: dict[str, ScalingMetric] = {
    "queueDepth": ScalingMetric("radixserve:num_queue_reqs", 4, "requests waiting to be scheduled"),
    "runningRequests": ScalingMetric("radixserve:num_running_reqs", 32, "requests being prefilled or decoded"),
    "kvUsage": ScalingMetric("radixserve:token_usage", 0.8, "fraction of the KV pool held by running requests"),
}

Provider = Literal["hpa", "keda"]


@dataclass(frozen=True)
class AutoscalerChoice:
    """Which autoscaler is built (None: none) and why, for the Autoscaling condition."""

    provider: Provider | None
    reason: str
    message: str


def choose_autoscaler(inp: BuildInput) -> AutoscalerChoice:
    scaling = inp.spec.autoscaling
    keda = inp.capabilities.keda
    if not scaling.enabled:
        return AutoscalerChoice(None, "Disabled", "spec.autoscaling.enabled is false")
    wanted = scaling.provider
    if wanted == "keda" or (wanted == "auto" and scaling.min_replicas == 0):
        if not keda:
            why = "provider keda" if wanted == "keda" else "minReplicas 0 (an HPA cannot scale to zero)"
            reason = "KEDANotInstalled" if wanted == "keda" else "ScaleToZeroNeedsKEDA"
            return AutoscalerChoice(None, reason,
                                    f"spec.autoscaling asks for {why}, but the cluster does not serve "
                                    "scaledobjects.keda.sh: install KEDA, or set minReplicas >= 1 with provider "
                                    "hpa; spec.replicas stays as set until then")
        return AutoscalerChoice("keda", "KEDAScaledObject", _describe(inp, "a KEDA ScaledObject"))
    if wanted == "auto" and keda:
        return AutoscalerChoice("keda", "KEDAScaledObject", _describe(inp, "a KEDA ScaledObject"))
    return AutoscalerChoice("hpa", "HorizontalPodAutoscaler",
                            _describe(inp, "a HorizontalPodAutoscaler (custom metrics from prometheus-adapter)"))


def _describe(inp: BuildInput, what: str) -> str:
    scaling = inp.spec.autoscaling
    metric = METRICS[scaling.metric]
    return (f"{what} scales {scaling.min_replicas}..{scaling.max_replicas} replicas on {metric.prometheus_name} "
            f"({metric.what}), target {target(inp)} per replica")


def target(inp: BuildInput) -> float:
    scaling = inp.spec.autoscaling
    return scaling.target if scaling.target is not None else METRICS[scaling.metric].default_target


def quantity(value: float) -> str:
    """A Kubernetes quantity: whole numbers as they are, fractions in milli-units (0.8 -> 800m)."""
    if float(value).is_integer():
        return str(int(value))
    return f"{round(value * 1000)}m"


def plain_number(value: float) -> str:
    """KEDA's thresholds are decimal strings: 16, 0.8."""
    return str(int(value)) if float(value).is_integer() else str(value)


def scale_target_ref(inp: BuildInput) -> Manifest:
    return {"apiVersion": names.API_VERSION, "kind": names.KIND, "name": inp.owner.name}


def build_hpa(inp: BuildInput) -> Manifest | None:
    if choose_autoscaler(inp).provider != "hpa":
        return None
    scaling = inp.spec.autoscaling
    return {
        "apiVersion": HPA_API_VERSION,
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(inp.owner, inp.owner.name, COMPONENT_AUTOSCALER),
        "spec": {
            # The scale subresource's selector (status.selector) picks the server pods whose
            # metric is averaged.
            "scaleTargetRef": scale_target_ref(inp),
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [{
                "type": "Pods",
                "pods": {
                    "metric": {"name": METRICS[scaling.metric].prometheus_name},
                    "target": {"type": "AverageValue", "averageValue": quantity(target(inp))},
                },
            }],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": scaling.scale_up_stabilization_seconds},
                "scaleDown": {"stabilizationWindowSeconds": scaling.scale_down_stabilization_seconds},
            },
        },
    }


def prometheus_query(inp: BuildInput) -> str:
    """The sum over this InferenceServer's server pods (KEDA divides it by the target). The
    label is the one the PodMonitor copies from the pod (see builders/monitoring.py)."""
    metric = METRICS[inp.spec.autoscaling.metric].prometheus_name
    return f'sum({metric}{{namespace="{inp.owner.namespace}",{INSTANCE_LABEL}="{inp.owner.name}"}})'


# `radixserve.io/inferenceserver` as Prometheus spells a pod label it copies (podTargetLabels).
INSTANCE_LABEL = "radixserve_io_inferenceserver"


def build_scaled_object(inp: BuildInput) -> Manifest | None:
    if choose_autoscaler(inp).provider != "keda":
        return None
    scaling = inp.spec.autoscaling
    address = scaling.prometheus_address or inp.defaults.prometheus_address
    return {
        "apiVersion": KEDA_API_VERSION,
        "kind": "ScaledObject",
        "metadata": metadata(inp.owner, inp.owner.name, COMPONENT_AUTOSCALER),
        "spec": {
            "scaleTargetRef": scale_target_ref(inp),
            "minReplicaCount": scaling.min_replicas,
            "maxReplicaCount": scaling.max_replicas,
            # How long the metric must stay at zero before the last replica goes (min 0 only).
            "cooldownPeriod": scaling.scale_down_stabilization_seconds,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {
                "scaleUp": {"stabilizationWindowSeconds": scaling.scale_up_stabilization_seconds},
                "scaleDown": {"stabilizationWindowSeconds": scaling.scale_down_stabilization_seconds},
            }}},
            "triggers": [{
                "type": "prometheus",
                "metadata": {
                    "serverAddress": address,
                    "query": prometheus_query(inp),
                    "threshold": plain_number(target(inp)),
                    # Busy when any request is queued or running; the router wakes a scaled-to-zero
                    # server itself, since no pod means no series.
                    "activationThreshold": "0",
                    "ignoreNullValues": "true",
                },
            }],
        },
    }
