"""Idempotent apply: decide per object whether to create, update or leave it (pure),
then do it with server-side apply.

Skipping objects that are already right keeps a second reconcile from writing
anything. "Right" needs two tests: the hash of the manifest we last applied
(stored as an annotation) catches fields we stopped setting, which a comparison
with the live object cannot see; a subset comparison with the live object catches
edits made by others since.

The same two tests tell drift from a spec change: an object whose hash annotation equals the
hash of what we would apply now, but whose fields differ, was edited by someone else; an
object missing although this generation of the spec was already applied was deleted by
someone else. Both are repaired, and reported as drift rather than as a rollout.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from radixserve.operator import names, owned
from radixserve.operator.kube import KubeApiError, KubeClient, Manifest, resource_type


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
MISSING, EDITED = "missing", "edited"

# Created once, never updated: a Job's pod template is immutable, and so is most of a
# claim's spec (its class, its access modes). The download Job is named after the model
# URI, so a new model gets a new Job; a changed cache size needs a new claim.
CREATE_ONLY_KINDS = owned.create_only_kinds()


@dataclass(frozen=True)
class Drift:
    """An owned object that no longer is what the current spec built: someone deleted or edited it."""

    kind: str
    name: str
    how: str  # MISSING or EDITED

    def describe(self) -> str:
        done = "re-created (it was deleted)" if self.how == MISSING else "restored (it was edited)"
        return f"{self.kind} {self.name} {done}"


@dataclass
class Plan:
    # (action, manifest) in the builders' order, which is the order to apply in.
    steps: list[tuple[str, Manifest]] = field(default_factory=list)
    # Objects that exist under our names but are controlled by someone else.
    conflicts: list[str] = field(default_factory=list)
    # The writes that repair drift (a subset of the CREATE and UPDATE steps).
    drift: list[Drift] = field(default_factory=list)

    def of(self, action: str) -> list[Manifest]:
        return [obj for act, obj in self.steps if act == action]

    @property
    def writes(self) -> list[Manifest]:
        return [obj for act, obj in self.steps if act != UNCHANGED]

    def is_drift(self, obj: Manifest) -> bool:
        return any((d.kind, d.name) == (obj["kind"], obj["metadata"]["name"]) for d in self.drift)


def applied_hash(obj: Manifest) -> str | None:
    annotations = obj.get("metadata", {}).get("annotations") or {}
    value = annotations.get(names.ANNOTATION_APPLIED_HASH)
    return str(value) if value is not None else None


def plan_apply(desired: Sequence[Manifest], live: Sequence[Manifest | None], owner_uid: str,
               settled: bool = False) -> Plan:
    """`live[i]` is the current state of `desired[i]` (None: absent). Manifests in the
    plan carry the hash annotation. `settled`: this generation of the spec was applied
    before (status.observedGeneration says so), so a missing object was deleted by someone."""
    plan = Plan()
    for want, have in zip(desired, live, strict=True):
        stamped = with_hash(want)
        kind, name = want["kind"], want["metadata"]["name"]
        if have is None:
            plan.steps.append((CREATE, stamped))
            if settled:
                plan.drift.append(Drift(kind, name, MISSING))
        elif controller_uid(have) != owner_uid:
            plan.conflicts.append(describe(want))
        elif want["kind"] in CREATE_ONLY_KINDS or is_subset(stamped, have):
            plan.steps.append((UNCHANGED, stamped))
        else:
            plan.steps.append((UPDATE, stamped))
            if applied_hash(have) == applied_hash(stamped):
                plan.drift.append(Drift(kind, name, EDITED))
    return plan


def fetch_live(client: KubeClient, namespace: str, desired: list[Manifest]) -> list[Manifest | None]:
    return [
        client.get(resource_type(obj["apiVersion"], obj["kind"]), namespace, obj["metadata"]["name"])
        for obj in desired
    ]


class ApplyRefused(Exception):
    """The API server refused one object as invalid (400/422): sending it again cannot help.
    `written` are the objects applied before it (in the builders' order)."""

    def __init__(self, obj: Manifest, error: KubeApiError, written: list[Manifest]) -> None:
        super().__init__(f"{describe(obj)}: {error}")
        self.obj = obj
        self.error = error
        self.written = written

    @property
    def field(self) -> str:
        """The refused field as the API names it (`details.causes[].field`), or the object's kind."""
        fields = self.error.fields
        return fields[0] if fields else "<object>"


def execute(client: KubeClient, namespace: str, plan: Plan) -> list[Manifest]:
    """Apply the plan's writes in order; stop at the first object the API refuses as invalid."""
    written: list[Manifest] = []
    for obj in plan.writes:
        try:
            client.apply(resource_type(obj["apiVersion"], obj["kind"]), namespace, obj["metadata"]["name"], obj)
        except KubeApiError as exc:
            if exc.invalid:
                raise ApplyRefused(obj, exc, written) from exc
            raise
        written.append(obj)
    return written
