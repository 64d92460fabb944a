"""Every pod the operator renders passes Pod Security "restricted", except a hostPath model source
or node cache, which fails "baseline" by its hostPath alone (and is documented as such)."""

from __future__ import annotations

from typing import Any

import pytest

from radixserve.operator.builders import BuildInput, Defaults, Owner, desired_objects
from radixserve.operator.spec import parse_spec
from tests.operator.pod_security import baseline_violations, restricted_violations

OWNER = Owner(name="llm", namespace="team-a", uid="5b0f6a57-0000-4000-8000-000000000009")

MODELS: dict[str, dict[str, Any]] = {
    "embedded": {"embedded": {}},
    "image": {"image": {"path": "/models/qwen"}},
    "pvc": {"pvc": {"claimName": "models", "subPath": "qwen"}},
    "hf-none": {"uri": "hf://Qwen/Qwen3-8B@main", "credentialsSecretRef": {"name": "hf"}},
    "s3-pvc": {"uri": "s3://models/llama", "cache": {"mode": "pvc", "size": "100Gi"}},
    "pvc-uri": {"uri": "pvc://models/qwen"},
    "oci": {"uri": "oci://ghcr.io/org/qwen:v1"},
    "path": {"uri": "/models/qwen"},
}
HOST_PATH_MODELS: dict[str, dict[str, Any]] = {
    "hostPath": {"hostPath": {"path": "/data/models"}},
    "hf-node": {"uri": "hf://Qwen/Qwen3-8B@main", "cache": {"mode": "node"}},
}


def pod_specs(model: dict[str, Any], gpus: int = 1) -> dict[str, dict[str, Any]]:
    """Each pod template the spec renders (server, router, download Job), by object."""
    spec = parse_spec({"model": model, "replicas": 2, "resources": {"gpus": gpus}})
    out = {}
    for obj in desired_objects(BuildInput(OWNER, spec, Defaults(), model_downloaded=False)):
        template = (obj.get("spec") or {}).get("template")
        if template is not None:
            out[f"{obj['kind']} {obj['metadata']['name']}"] = template["spec"]
    return out


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("gpus", [0, 1])
def test_every_rendered_pod_passes_restricted(name: str, gpus: int) -> None:
    pods = pod_specs(MODELS[name], gpus)
    assert any(k.startswith("Deployment llm-server") for k in pods) and any("router" in k for k in pods)
    if name == "s3-pvc":
        assert any(k.startswith("Job ") for k in pods)  # the download Job's pod too
    for what, pod in pods.items():
        assert restricted_violations(pod) == [], what


@pytest.mark.parametrize("name", sorted(HOST_PATH_MODELS))
def test_host_path_sources_fail_baseline_by_their_host_path_only(name: str) -> None:
    pods = pod_specs(HOST_PATH_MODELS[name])
    server = next(pod for what, pod in pods.items() if what.startswith("Deployment llm-server"))
    volume = "model" if name == "hostPath" else "model-cache"
    assert baseline_violations(server) == [f"spec.volumes[{volume}].hostPath"]
    assert restricted_violations(server) == [f"spec.volumes[{volume}].hostPath",
                                             f"spec.volumes[{volume}] type ['hostPath']"]


def test_the_checks_catch_what_they_check() -> None:
    """Each control fails on a pod that breaks it (the helper is not vacuous)."""
    good = pod_specs(MODELS["embedded"])["Deployment llm-server"]
    broken = {**good, "hostNetwork": True, "securityContext": {"seccompProfile": {"type": "Unconfined"}},
              "containers": [{**good["containers"][0], "securityContext": {
                  "privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}, "runAsUser": 0}}]}
    found = " ".join(restricted_violations(broken))
    for control in ("hostNetwork", "privileged", "SYS_ADMIN", "runAsNonRoot", "runAsUser=0", "seccompProfile",
                    "allowPrivilegeEscalation", "drop must include ALL"):
        assert control in found, control
