"""Checks the CRD schema cannot make: they need other objects, or hold for objects
that reached us without the API server's validation (an older CRD, a test emulator).

Every problem names the field a user would edit. The reconciler creates nothing
while any problem stands, so a bad spec never leaves half a deployment behind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from radixserve.operator import names
from radixserve.operator.spec import InferenceServerSpec

_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# Access modes a volume can be mounted with by one node, or one pod, only.
SINGLE_ATTACH_MODES = frozenset({"ReadWriteOnce", "ReadWriteOncePod"})


@dataclass(frozen=True)
class SpecProblem:
    reason: str  # CamelCase, becomes the condition's reason
    field: str  # e.g. "spec.model.pvc.claimName"
    message: str
    # True when the problem can go away without a spec edit (someone creates the
    # PVC or the Secret): the operator then retries on its own.
    transient: bool = False

    def describe(self) -> str:
        return f"{self.field}: {self.message}"


class ClusterLookups(Protocol):
    """What the checks need to know about the cluster; the reconciler answers from the API."""

    def pvc_access_modes(self, namespace: str, name: str) -> list[str] | None:
        """The claim's spec.accessModes, or None when it does not exist."""
        ...

    def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        """The Secret's data keys, or None when it does not exist."""
        ...


def check_name(name: str) -> SpecProblem | None:
    """Owned Services are named after the resource, so its name must make valid Service names."""
    if len(name) > names.MAX_NAME_LENGTH or not _DNS_1035.match(name):
        return SpecProblem(
            reason="InvalidName",
            field="metadata.name",
            message=(
                f"must be a DNS-1035 label of at most {names.MAX_NAME_LENGTH} characters "
                "(lower case letters, digits and '-', starting with a letter), "
                f"because Services named {name!r}{names.ROUTER_SUFFIX} are created from it"
            ),
        )
    return None


def check_gpus(spec: InferenceServerSpec) -> SpecProblem | None:
    needed = spec.gpus_needed
    if spec.resources.gpus is not None and 0 < spec.resources.gpus < needed:
        return SpecProblem(
            reason="InsufficientGPUs",
            field="spec.resources.gpus",
            message=(
                f"{spec.resources.gpus} GPU(s) per pod is below tensorParallelSize x pipelineParallelSize = "
                f"{spec.tensor_parallel_size} x {spec.pipeline_parallel_size} = {needed}; "
                "set it to at least that, or 0 for a CPU pod"
            ),
        )
    return None


def check_references(spec: InferenceServerSpec, namespace: str, lookups: ClusterLookups) -> list[SpecProblem]:
    problems: list[SpecProblem] = []
    pvc = spec.model.pvc
    modes = None if pvc is None else lookups.pvc_access_modes(namespace, pvc.claim_name)
    if pvc is not None and modes is None:
        problems.append(SpecProblem(
            reason="PVCNotFound",
            field="spec.model.pvc.claimName",
            message=f"PersistentVolumeClaim {pvc.claim_name!r} does not exist in namespace {namespace!r}",
            transient=True,
        ))
    elif pvc is not None and modes is not None and spec.replicas > 1 and set(modes) <= SINGLE_ATTACH_MODES:
        # Replicas land on different nodes (and a ReadWriteOncePod claim takes one pod at all):
        # the second pod would hang in ContainerCreating. Transient: a new claim under the same
        # name clears it without a spec edit.
        problems.append(SpecProblem(
            reason="PVCAccessMode",
            field="spec.model.pvc.claimName",
            message=(f"PersistentVolumeClaim {pvc.claim_name!r} has access modes {sorted(modes)}, which one node "
                     f"(ReadWriteOnce) or one pod (ReadWriteOncePod) can mount, but spec.replicas is {spec.replicas}: "
                     "use a ReadOnlyMany or ReadWriteMany claim, or one replica"),
            transient=True,
        ))
    ref = spec.server.api_key_secret_ref
    if ref is not None:
        keys = lookups.secret_keys(namespace, ref.name)
        if keys is None:
            problems.append(SpecProblem(
                reason="SecretNotFound",
                field="spec.server.apiKeySecretRef.name",
                message=f"Secret {ref.name!r} does not exist in namespace {namespace!r}",
                transient=True,
            ))
        elif ref.key not in keys:
            problems.append(SpecProblem(
                reason="SecretKeyNotFound",
                field="spec.server.apiKeySecretRef.key",
                message=f"Secret {ref.name!r} has no key {ref.key!r}",
                transient=True,
            ))
    return problems


def check_spec(
    name: str, namespace: str, spec: InferenceServerSpec, lookups: ClusterLookups
) -> list[SpecProblem]:
    """All problems, cheapest first; the cluster is asked only about a spec that is sound itself."""
    local = [p for p in (check_name(name), check_gpus(spec)) if p is not None]
    if local:
        return local
    return check_references(spec, namespace, lookups)
