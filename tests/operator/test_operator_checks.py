"""Checks the schema cannot make, and the parsing of specs the schema did not check."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from radixserve.operator.checks import check_name, check_spec
from radixserve.operator.spec import SpecError, parse_spec


@dataclass
class FakeCluster:
    pvcs: set[str] = field(default_factory=set)
    secrets: dict[str, set[str]] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)
    pvc_modes: dict[str, list[str]] = field(default_factory=dict)  # default: ReadOnlyMany
    version: tuple[int, int] | None = (1, 35)

    def pvc_access_modes(self, namespace: str, name: str) -> list[str] | None:
        self.asked.append(f"pvc {namespace}/{name}")
        return self.pvc_modes.get(name, ["ReadOnlyMany"]) if name in self.pvcs else None

    def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        self.asked.append(f"secret {namespace}/{name}")
        return self.secrets.get(name)

    def server_version(self) -> tuple[int, int] | None:
        self.asked.append("version")
        return self.version

    def api_resources(self, api_version: str) -> set[str] | None:
        self.asked.append(f"discovery {api_version}")
        return None  # no optional API (KEDA, Prometheus operator, LeaderWorkerSet) installed


def problems(raw: Mapping[str, Any], cluster: FakeCluster, name: str = "llm") -> list[tuple[str, str, bool]]:
    return [(p.reason, p.field, p.transient) for p in check_spec(name, "ns", parse_spec(raw), cluster)]


def test_a_sound_spec_has_no_problems() -> None:
    cluster = FakeCluster(pvcs={"m"}, secrets={"k": {"api-key"}})
    raw = {"model": {"pvc": {"claimName": "m"}}, "server": {"apiKeySecretRef": {"name": "k"}}}
    assert problems(raw, cluster) == []
    assert cluster.asked == ["pvc ns/m", "secret ns/k"]


@pytest.mark.parametrize(("raw", "cluster", "expected"), [
    ({"model": {"pvc": {"claimName": "m"}}}, FakeCluster(),
     [("PVCNotFound", "spec.model.pvc.claimName", True)]),
    ({"server": {"apiKeySecretRef": {"name": "k"}}}, FakeCluster(),
     [("SecretNotFound", "spec.server.apiKeySecretRef.name", True)]),
    ({"server": {"apiKeySecretRef": {"name": "k", "key": "token"}}}, FakeCluster(secrets={"k": {"api-key"}}),
     [("SecretKeyNotFound", "spec.server.apiKeySecretRef.key", True)]),
    ({"tensorParallelSize": 8, "resources": {"gpus": 4}}, FakeCluster(),
     [("InsufficientGPUs", "spec.resources.gpus", False)]),
    ({"tensorParallelSize": 2, "pipelineParallelSize": 2, "resources": {"gpus": 3}}, FakeCluster(),
     [("InsufficientGPUs", "spec.resources.gpus", False)]),
])
def test_problems_name_the_field(raw: dict[str, object], cluster: FakeCluster,
                                 expected: list[tuple[str, str, bool]]) -> None:
    assert problems(raw, cluster) == expected


@pytest.mark.parametrize(("modes", "replicas", "refused"), [
    (["ReadWriteOnce"], 2, True),
    (["ReadWriteOncePod"], 2, True),
    (["ReadWriteOnce", "ReadWriteOncePod"], 3, True),
    (["ReadWriteOnce"], 1, False),  # one replica: one node
    (["ReadWriteOnce"], 0, False),
    (["ReadWriteOnce", "ReadOnlyMany"], 2, False),  # mountable read-only on many nodes
    (["ReadWriteMany"], 4, False),
])
def test_single_attach_claims_take_one_replica(modes: list[str], replicas: int, refused: bool) -> None:
    cluster = FakeCluster(pvcs={"m"}, pvc_modes={"m": modes})
    got = problems({"model": {"pvc": {"claimName": "m"}}, "replicas": replicas}, cluster)
    assert got == ([("PVCAccessMode", "spec.model.pvc.claimName", True)] if refused else [])


def test_access_mode_message_says_what_to_do() -> None:
    cluster = FakeCluster(pvcs={"m"}, pvc_modes={"m": ["ReadWriteOnce"]})
    [problem] = check_spec("llm", "ns", parse_spec({"model": {"pvc": {"claimName": "m"}}, "replicas": 2}), cluster)
    assert "['ReadWriteOnce']" in problem.message and "spec.replicas is 2" in problem.message
    assert "ReadOnlyMany or ReadWriteMany" in problem.message


def test_cpu_pods_may_run_any_tp() -> None:
    assert problems({"tensorParallelSize": 2, "resources": {"gpus": 0}}, FakeCluster()) == []


def test_the_cluster_is_not_asked_about_an_unsound_spec() -> None:
    cluster = FakeCluster()
    result = problems({"model": {"pvc": {"claimName": "m"}}, "tensorParallelSize": 2, "resources": {"gpus": 1}},
                      cluster)
    assert result == [("InsufficientGPUs", "spec.resources.gpus", False)] and cluster.asked == []


@pytest.mark.parametrize("name", ["Upper", "9start", "a" * 57, "trailing-"])
def test_names_that_cannot_name_services(name: str) -> None:
    problem = check_name(name)
    assert problem is not None and problem.field == "metadata.name"


@pytest.mark.parametrize(("raw", "field"), [
    ({"tensorParallelSize": 3}, "spec.tensorParallelSize"),
    ({"model": {"embedded": {}, "pvc": {"claimName": "m"}}}, "spec.model"),
    ({"model": {"pvc": {"claimName": "m", "subPath": "../x"}}}, "spec.model.pvc.subPath"),
    ({"server": {"extraArgs": ["--port=1"]}}, "spec.server"),
    ({"server": {"chunkedPrefillSize": 0}}, "spec.server"),
    ({"router": {"policy": "nope"}}, "spec.router.policy"),
    ({"replicaz": 2}, "spec.replicaz"),
])
def test_unparseable_specs_name_the_field(raw: dict[str, object], field: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(raw)
    assert info.value.field == field
