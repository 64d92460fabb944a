"""Shared fixtures: the embedded model (slow, built once) and tiny random HF models made on the fly."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smol_engine() -> Iterator[Any]:
    from radixserve import Engine

    # The float32 reference path (--gguf-dequantize): tests compare it with transformers' own float32
    # dequantization of the file; the packed int4 path is tested against it in tests/model_loader.
    engine = Engine(log_level="warning", gguf_dequantize=True)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="session")
def smol_tokenizer(smol_engine: Any) -> Any:
    return smol_engine.tokenizer


@pytest.fixture(scope="session")
def hf_smol_model() -> Any:
    """transformers' own model loaded from the same GGUF file (its own dequantization)."""
    import torch
    from transformers import AutoModelForCausalLM

    from radixserve.model_loader.default_model import default_model_path

    path = default_model_path()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    model.eval()
    return model


def tokenizer_source() -> Path:
    """The embedded GGUF's tokenizer; RADIXSERVE_TEST_TOKENIZER names a saved copy where the GGUF is absent (GPU runs)."""
    from radixserve.model_loader.default_model import default_model_path

    saved = os.environ.get("RADIXSERVE_TEST_TOKENIZER")
    return Path(saved) if saved else default_model_path()


def _save_tiny(tmp: Path, arch: str, tokenizer_source: Path, **overrides: Any) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from radixserve.model_loader.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_source)
    base: dict[str, Any] = dict(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        rms_norm_eps=1e-6, tie_word_embeddings=False, eos_token_id=tok.eos_token_id, bos_token_id=1,
    )
    base.update(overrides)
    config = AutoConfig.for_model(arch, **base)
    torch.manual_seed(1234)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # larger-than-default weights so logits are not all near-equal
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.08)
    out = tmp / arch
    # A small shard size forces a sharded checkpoint (model.safetensors.index.json + shards).
    model.save_pretrained(str(out), max_shard_size="1MB", safe_serialization=True)
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("tiny")
    gguf = tokenizer_source()
    return {
        "llama": _save_tiny(tmp, "llama", gguf, num_key_value_heads=4, tie_word_embeddings=False),
        "llama_gqa_tied": _save_gqa(tmp, gguf),
        "qwen2": _save_tiny(tmp, "qwen2", gguf, num_key_value_heads=2),
        "qwen3": _save_tiny(tmp, "qwen3", gguf, num_key_value_heads=2, head_dim=32),
    }


def _save_gqa(tmp: Path, gguf: Path) -> Path:
    sub = tmp / "gqa"
    sub.mkdir()
    return _save_tiny(sub, "llama", gguf, num_key_value_heads=2, tie_word_embeddings=True,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 64})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: run with `pytest -m gpu` on the device machine (docs/gpu.md)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
