"""Fixtures of the model-store tests: a loopback Hub stand-in serving small models.

(S3 fixtures live in their own module next to the S3 tests; this file holds the Hub's.)
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from radixserve.testing.hub_standin import HubStandIn

REPO = "org/tiny"


def synthetic_model(seed: int = 0, shard_bytes: int = 600_000) -> dict[str, bytes]:
    """A model-shaped repository (the bytes need not load: these tests move files, not tensors):
    two safetensors shards that the default selection takes, and files it must leave out."""
    rng = random.Random(seed)
    shard = [rng.randbytes(shard_bytes), rng.randbytes(shard_bytes // 2)]
    index = {"metadata": {"total_size": sum(map(len, shard))},
             "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    return {
        "config.json": json.dumps({"model_type": "llama", "seed": seed}).encode(),
        "tokenizer.json": json.dumps({"version": "1.0", "seed": seed}).encode(),
        "tokenizer_config.json": b"{}",
        "model-00001-of-00002.safetensors": shard[0],
        "model-00002-of-00002.safetensors": shard[1],
        "model.safetensors.index.json": json.dumps(index).encode(),
        "pytorch_model.bin": rng.randbytes(1000),  # the same weights as pickles: never with safetensors
        "original/consolidated.pth": rng.randbytes(1000),  # sub-directories are not taken by default
        "README.md": b"# tiny\n",
    }


DEFAULT_SELECTION = ("config.json", "tokenizer.json", "tokenizer_config.json", "model-00001-of-00002.safetensors",
                     "model-00002-of-00002.safetensors", "model.safetensors.index.json")


@dataclass
class HubRepo:
    hub: HubStandIn
    repo_id: str
    files: dict[str, bytes]
    commit: str

    @property
    def uri(self) -> str:
        return f"hf://{self.repo_id}"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a `radixserve download` subprocess that talks to the stand-in."""
        env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_ENDPOINT")}
        return {**env, "HF_ENDPOINT": self.hub.url, "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1",
                **extra}


@pytest.fixture
def hub() -> Iterator[HubStandIn]:
    standin = HubStandIn().start()
    yield standin
    standin.stop()


@pytest.fixture
def hub_repo(hub: HubStandIn, monkeypatch: pytest.MonkeyPatch) -> HubRepo:
    """org/tiny (synthetic files) on the stand-in; HF_ENDPOINT points at it, HF_TOKEN is unset."""
    files = synthetic_model()
    commit = hub.publish(REPO, files)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return HubRepo(hub, REPO, files, commit)
