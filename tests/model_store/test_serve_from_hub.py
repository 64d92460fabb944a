"""`radixserve serve --model-path hf://org/tiny@main` against the Hub stand-in: the model is
downloaded into $RADIXSERVE_MODEL_CACHE first, then served under the repository id, and its
greedy output equals the Engine's on the same files."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from radixserve.model_store.local import ModelPathError, materialize_model_path, model_cache_dir, served_name
from radixserve.model_store.store import MANIFEST_NAME, read_manifest
from radixserve.model_store.uri import HFModel, S3Model, cache_key
from radixserve.testing.hub_standin import HubStandIn, files_from_dir
from tests.model_store.conftest import DEFAULT_SELECTION, HubRepo
from tests.server.server_harness import ServerProcess

PROMPT = "The capital of France is"
GREEDY = {"max_new_tokens": 8, "temperature": 0}


@pytest.fixture
def hub_with_tiny_llama(tiny_models: dict[str, Path], hub: HubStandIn, tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[HubStandIn, Path]]:
    hub.publish("org/tiny", files_from_dir(tiny_models["llama"]))
    cache = tmp_path / "cache"
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("RADIXSERVE_MODEL_CACHE", str(cache))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield hub, cache


def test_serve_downloads_from_the_hub_then_serves(hub_with_tiny_llama: tuple[HubStandIn, Path],
                                                  tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from radixserve import Engine

    hub, cache = hub_with_tiny_llama
    server = ServerProcess(["--model-path", "hf://org/tiny@main", "--host", "127.0.0.1", "--log-level", "warning"],
                           tmp_path / "server.log")
    try:
        server.wait_ready()
        models = httpx.get(f"{server.url}/v1/models", timeout=30).json()
        served = httpx.post(f"{server.url}/generate", json={"text": PROMPT, "sampling_params": GREEDY},
                            timeout=60).json()
    finally:
        server.stop()

    dest = cache / cache_key(HFModel("org/tiny", "main"))
    manifest = read_manifest(dest)
    assert manifest is not None and manifest.uri == "hf://org/tiny@main"
    assert sorted(p.name for p in dest.iterdir() if p.name != MANIFEST_NAME) == sorted(
        p.name for p in tiny_models["llama"].iterdir())
    assert [m["id"] for m in models["data"]] == ["org/tiny"]  # the served name defaults to the repo id

    # The Engine takes the same URI: a cache hit (no file requests), then the same local files.
    hub.clear_log()
    engine = Engine(model_path="hf://org/tiny@main", log_level="warning")
    try:
        assert engine.model_name == "org/tiny" and engine.server_args.model_path == str(dest)
        expected = engine.generate(PROMPT, GREEDY)
    finally:
        engine.shutdown()
    assert hub.file_requests() == []
    assert served["text"] == expected["text"] and served["meta_info"]["completion_tokens"] == 8


def test_local_paths_pass_through_unchanged() -> None:
    assert materialize_model_path(None) == (None, None)
    assert materialize_model_path("/models/qwen") == ("/models/qwen", None)
    assert materialize_model_path("llama-3-8b") == ("llama-3-8b", None)  # a --load-format dummy shape
    assert materialize_model_path("file:///models/qwen") == ("/models/qwen", None)


@pytest.mark.parametrize(("path", "words"), [
    ("pvc://models/qwen", "mounted by the radixserve operator"),
    ("oci://ghcr.io/org/model:v1", "mounted by the radixserve operator"),
    ("hf://a/b/c", "expected hf://org/name"),
])
def test_references_that_cannot_be_served_here(path: str, words: str) -> None:
    with pytest.raises(ModelPathError, match=words):
        materialize_model_path(path)


def test_hf_uri_is_downloaded_into_the_model_cache(hub_repo: HubRepo, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADIXSERVE_MODEL_CACHE", str(tmp_path / "cache"))
    path, name = materialize_model_path("hf://org/tiny", progress="none")
    assert path == str(tmp_path / "cache" / cache_key(HFModel("org/tiny"))) and name == "org/tiny"
    assert sorted(p.name for p in Path(path).iterdir()) == sorted([*DEFAULT_SELECTION, MANIFEST_NAME])


def test_default_cache_and_served_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RADIXSERVE_MODEL_CACHE", raising=False)
    assert model_cache_dir() == Path("~/.cache/radixserve/models").expanduser()
    assert served_name(S3Model("bucket", "llama/Llama-3.1-8B")) == "Llama-3.1-8B"
    assert served_name(S3Model("bucket")) == "bucket"


@pytest.mark.parametrize("command", ["serve", "generate"])
def test_a_failed_download_exits_1_with_its_error(command: str, hub_repo: HubRepo, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "radixserve", command, "--model-path", "hf://org/missing"],
                            env=hub_repo.env(RADIXSERVE_MODEL_CACHE=str(tmp_path)), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    assert f"radixserve {command}: error: 404 Not Found for hf://org/missing" in result.stderr
    assert "Traceback" not in result.stderr
