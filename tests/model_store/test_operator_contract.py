"""The contract between the downloader and the operator, checked with both real sides: the
command the operator puts in its `model-download` container parses with `radixserve download`'s
own parser, and the operator reads the real downloader's JSON progress lines and termination
message (ModelReady's numbers and reason)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from radixserve.model_store.download_cli import build_parser
from radixserve.operator.builders import BuildInput, Defaults, Owner
from radixserve.operator.builders.model import download_command
from radixserve.operator.spec import parse_spec
from radixserve.operator.status import failure_reason, last_progress
from tests.model_store.conftest import DEFAULT_SELECTION, HubRepo

OWNER = Owner(name="llm", namespace="team-a", uid="5b0f6a57-0000-4000-8000-000000000003")


@pytest.mark.parametrize("model", [
    {"uri": "hf://Qwen/Qwen3-8B@main", "endpoint": "https://hub-mirror.example", "include": ["*.safetensors"],
     "exclude": ["*.bin"], "cache": {"mode": "node"}},
    {"uri": "s3://models/llama/8b", "endpoint": "http://minio.storage:9000", "region": "eu-west-1",
     "cache": {"mode": "pvc", "size": "100Gi"}},
])
def test_the_operators_download_command_parses_with_the_downloaders_parser(model: dict[str, object]) -> None:
    command = download_command(BuildInput(OWNER, parse_spec({"model": model}), Defaults()))
    assert command[:2] == ["radixserve", "download"]
    args = build_parser().parse_args(command[2:])
    assert args.uri == model["uri"] and args.progress == "json"
    assert str(args.termination_log) == "/dev/termination-log"
    endpoint = args.hf_endpoint if str(model["uri"]).startswith("hf://") else args.s3_endpoint
    assert endpoint == model["endpoint"]
    assert (args.include or []) == model.get("include", []) and (args.exclude or []) == model.get("exclude", [])


def test_the_operator_reads_the_real_downloaders_progress_and_failure(hub_repo: HubRepo, tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "radixserve", "download", hub_repo.uri, str(tmp_path / "m"),
                         "--progress", "json"], env=hub_repo.env(), capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    # Kubernetes interleaves stdout and stderr in the container log: give the parser both.
    progress = last_progress(ok.stdout + "\n" + ok.stderr)
    total = sum(len(hub_repo.files[name]) for name in DEFAULT_SELECTION)
    assert progress is not None and progress["bytesTotal"] == total
    assert progress["filesTotal"] == len(DEFAULT_SELECTION)

    log = tmp_path / "termination-log"
    failed = subprocess.run([sys.executable, "-m", "radixserve", "download", "hf://org/missing", str(tmp_path / "x"),
                             "--progress", "json", "--termination-log", str(log)],
                            env=hub_repo.env(), capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1
    reason, message = failure_reason(log.read_text())
    assert reason == "NotFound" and "hf://org/missing" in message
