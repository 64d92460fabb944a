"""HF directories: config.json plus (sharded) *.safetensors, read lazily tensor by tensor."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from radixserve.configs.model_config import ModelConfig, UnsupportedModelError


def hf_model_config(directory: Path) -> ModelConfig:
    config_file = directory / "config.json"
    try:
        cfg = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise UnsupportedModelError(f"{str(config_file)!r} is not valid JSON: {e}") from e
    gen_file = directory / "generation_config.json"
    if gen_file.is_file():
        try:
            gen = json.loads(gen_file.read_text())
            if gen.get("eos_token_id") is not None:
                cfg["eos_token_id"] = gen["eos_token_id"]
        except json.JSONDecodeError:
            pass  # generation_config is advisory; config.json already names an EOS
    return ModelConfig.from_hf_dict(cfg, source=str(config_file))


def safetensors_files(directory: Path) -> list[Path]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise UnsupportedModelError(
            f"{str(directory)!r} has config.json but no *.safetensors weights (only safetensors is supported)"
        )
    return files


def iter_safetensors_weights(directory: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    for path in safetensors_files(directory):
        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
        except Exception as e:  # safetensors raises its own error types for damaged headers
            raise UnsupportedModelError(f"could not read safetensors file {str(path)!r}: {e}") from e
        with handle as f:
            for name in f.keys():  # noqa: SIM118 - safe_open handles are not iterable
                yield name, f.get_tensor(name)
