"""Deciding what to write (pure): the basis of "reconciling twice changes nothing"."""

from __future__ import annotations

import copy
from typing import Any

from radixserve.operator import names
from radixserve.operator.apply import (
    CREATE,
    UNCHANGED,
    UPDATE,
    is_subset,
    manifest_hash,
    plan_apply,
    with_hash,
)
from radixserve.operator.builders import BuildInput, Owner, desired_objects
from radixserve.operator.spec import parse_spec

OWNER = Owner("llm", "ns", "uid-1")


def desired(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return desired_objects(BuildInput(OWNER, parse_spec(spec)))


def as_live(obj: dict[str, Any]) -> dict[str, Any]:
    """What a real API server returns: our fields plus defaults, status and bookkeeping."""
    live = copy.deepcopy(with_hash(obj))
    live["metadata"].update(uid="x", resourceVersion="42", creationTimestamp="2026-01-01T00:00:00Z")
    live["status"] = {"observedGeneration": 1}
    if live["kind"] == "Deployment":
        container = live["spec"]["template"]["spec"]["containers"][0]
        container.update(terminationMessagePath="/dev/termination-log", imagePullPolicy="IfNotPresent")
        for section in container.get("resources", {}).values():  # quantities come back as strings
            for key, value in section.items():
                section[key] = str(value)
    return live


def test_is_subset() -> None:
    assert is_subset({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}, "d": 3})
    assert not is_subset({"a": {"b": 1}}, {"a": {"b": 2}})
    assert not is_subset({"a": [1, 2]}, {"a": [1, 2, 3]})
    assert is_subset({"limits": {"nvidia.com/gpu": 2}}, {"limits": {"nvidia.com/gpu": "2"}})
    assert not is_subset({"x": True}, {"x": "True"})
    assert not is_subset({"a": 1}, {})


def test_first_apply_creates_everything() -> None:
    objs = desired({})
    plan = plan_apply(objs, [None] * len(objs), OWNER.uid)
    assert [action for action, _ in plan.steps] == [CREATE] * len(objs)
    assert all(o["metadata"]["annotations"][names.ANNOTATION_APPLIED_HASH] for o in plan.writes)


def test_applying_the_same_spec_again_writes_nothing() -> None:
    objs = desired({"replicas": 2, "tensorParallelSize": 2})
    live = [as_live(o) for o in objs]
    for obj in live:
        obj["metadata"]["ownerReferences"][0]["uid"] = OWNER.uid
    plan = plan_apply(objs, live, OWNER.uid)
    assert [action for action, _ in plan.steps] == [UNCHANGED] * len(objs) and plan.writes == []


def test_a_changed_field_updates_only_that_object() -> None:
    live = [as_live(o) for o in desired({})]
    plan = plan_apply(desired({"replicas": 5}), live, OWNER.uid)
    updated = [(o["kind"], o["metadata"]["name"]) for o in plan.of(UPDATE)]
    assert updated == [("Deployment", "llm-server")]


def test_a_removed_field_is_noticed_through_the_hash() -> None:
    """Dropping nodeSelector leaves the live object a superset of the new manifest;
    only the applied hash tells that it must be re-applied (server-side apply then drops it)."""
    live = [as_live(o) for o in desired({"scheduling": {"nodeSelector": {"gpu": "a100"}}})]
    plan = plan_apply(desired({}), live, OWNER.uid)
    assert [o["metadata"]["name"] for o in plan.of(UPDATE)] == ["llm-server"]


def test_someone_elses_edit_is_reverted() -> None:
    live = [as_live(o) for o in desired({})]
    live[0]["spec"]["replicas"] = 7  # kubectl scale deployment/llm-server --replicas=7
    assert [o["metadata"]["name"] for o in plan_apply(desired({}), live, OWNER.uid).of(UPDATE)] == ["llm-server"]


def test_objects_controlled_by_someone_else_are_conflicts() -> None:
    objs = desired({})
    live: list[dict[str, Any] | None] = [None] * len(objs)
    live[-1] = {"kind": "Service", "metadata": {"name": "llm", "ownerReferences": []}}
    plan = plan_apply(objs, live, OWNER.uid)
    assert plan.conflicts == ["Service llm"]


def test_hash_is_stable_and_content_addressed() -> None:
    a, b = desired({}), desired({})
    assert [manifest_hash(o) for o in a] == [manifest_hash(o) for o in b]
    assert manifest_hash(desired({"replicas": 2})[0]) != manifest_hash(a[0])
