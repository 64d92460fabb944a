"""Idempotent apply: decide per object whether to create, update or leave it (pure),
then do it with server-side apply.

Skipping objects that are already right keeps a second reconcile from writing
anything. "Right" needs two tests: the hash of the manifest we last applied
(stored as an annotation) catches fields we stopped setting, which a comparison
with the live object cannot see; a subset comparison with the live object catches
edits made by others since.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from radixserve.operator import names
from radixserve.operator.kube import KubeClient, Manifest, resource_type


def manifest_hash(manifest: Manifest) -> str:
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def with_hash(manifest: Manifest) -> Manifest:
    out = copy.deepcopy(manifest)
    out["metadata"].setdefault("annotations", {})[names.ANNOTATION_APPLIED_HASH] = manifest_hash(manifest)
    return out


def is_subset(desired: Any, live: Any) -> bool:
    """Whether every field of `desired` has the same value in `live`.

    Fields only `live` has are server defaults or status and do not count. Scalars
    compare as text because the API server returns some numbers as strings
    (resource quantities: `nvidia.com/gpu: 1` comes back as "1").
    """
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(k in live and is_subset(v, live[k]) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(live, list) and len(desired) == len(live) \
            and all(is_subset(d, v) for d, v in zip(desired, live, strict=True))
    if isinstance(desired, bool) or isinstance(live, bool):
        return desired is live
    return desired == live or str(desired) == str(live)


def controller_uid(obj: Manifest) -> str | None:
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def describe(obj: Manifest) -> str:
    return f"{obj['kind']} {obj['metadata']['name']}"


CREATE, UPDATE, UNCHANGED = "create", "update", "unchanged"

# Created once, never updated: a Job's pod template is immutable, and so is most of a
# claim's spec (its class, its access modes). The download Job is named after the model
# URI, so a new model gets a new Job; a changed cache size needs a new claim.
CREATE_ONLY_KINDS = frozenset({"Job", "PersistentVolumeClaim"})


@dataclass
class Plan:
    # (action, manifest) in the builders' order, which is the order to apply in.
    steps: list[tuple[str, Manifest]] = field(default_factory=list)
    # Objects that exist under our names but are controlled by someone else.
    conflicts: list[str] = field(default_factory=list)

    def of(self, action: str) -> list[Manifest]:
        return [obj for act, obj in self.steps if act == action]

    @property
    def writes(self) -> list[Manifest]:
        return [obj for act, obj in self.steps if act != UNCHANGED]


def plan_apply(desired: Sequence[Manifest], live: Sequence[Manifest | None], owner_uid: str) -> Plan:
    """`live[i]` is the current state of `desired[i]` (None: absent). Manifests in the
    plan carry the hash annotation."""
    plan = Plan()
    for want, have in zip(desired, live, strict=True):
        stamped = with_hash(want)
        if have is None:
            plan.steps.append((CREATE, stamped))
        elif controller_uid(have) != owner_uid:
            plan.conflicts.append(describe(want))
        elif is_subset(stamped, have) or want["kind"] in CREATE_ONLY_KINDS:
            plan.steps.append((UNCHANGED, stamped))
        else:
            plan.steps.append((UPDATE, stamped))
    return plan


def fetch_live(client: KubeClient, namespace: str, desired: list[Manifest]) -> list[Manifest | None]:
    return [
        client.get(resource_type(obj["apiVersion"], obj["kind"]), namespace, obj["metadata"]["name"])
        for obj in desired
    ]


def execute(client: KubeClient, namespace: str, plan: Plan) -> None:
    for obj in plan.writes:
        client.apply(resource_type(obj["apiVersion"], obj["kind"]), namespace, obj["metadata"]["name"], obj)
