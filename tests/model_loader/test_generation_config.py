"""Sampling defaults from the model: generation_config.json, GGUF sampling metadata, the embedded model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from radixserve.model_loader.generation_config import (
    EMBEDDED_DEFAULTS,
    gguf_generation_defaults,
    hf_generation_defaults,
)
from radixserve.model_loader.source import resolve_model_source


class Field:
    def __init__(self, value: Any) -> None:
        self.value = value

    def contents(self) -> Any:
        return self.value


class Reader:
    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = {k: Field(v) for k, v in fields.items()}


@pytest.mark.parametrize(("config", "expected"), [
    ({"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20.0, "bos_token_id": 1},
     {"temperature": 0.6, "top_p": 0.95, "top_k": 20}),
    ({"temperature": 0.7, "repetition_penalty": 1.05, "min_p": 0.0}, {"temperature": 0.7, "repetition_penalty": 1.05,
                                                                      "min_p": 0.0}),
    ({"do_sample": False, "temperature": 0.6}, {}),  # greedy checkpoint: its knobs are inert
    ({"temperature": "hot", "top_p": True, "top_k": float("nan")}, {}),  # junk is ignored, not trusted
])
def test_hf_generation_config(tmp_path: Path, config: dict[str, Any], expected: dict[str, Any]) -> None:
    (tmp_path / "generation_config.json").write_text(json.dumps(config))
    assert hf_generation_defaults(tmp_path) == expected


def test_hf_without_or_with_broken_generation_config(tmp_path: Path) -> None:
    assert hf_generation_defaults(tmp_path) == {}
    (tmp_path / "generation_config.json").write_text("{not json")
    assert hf_generation_defaults(tmp_path) == {}


def test_gguf_sampling_metadata_and_the_embedded_fallback() -> None:
    reader = Reader({"general.sampling.temp": 0.8, "general.sampling.top_k": 40, "general.name": "x"})
    assert gguf_generation_defaults(reader) == {"temperature": 0.8, "top_k": 40}
    assert gguf_generation_defaults(reader, embedded=True) == {"temperature": 0.8, "top_k": 40}
    assert gguf_generation_defaults(Reader({})) == {}
    assert gguf_generation_defaults(Reader({}), embedded=True) == EMBEDDED_DEFAULTS


def test_sources_carry_their_defaults(tiny_models: dict[str, Path]) -> None:
    assert resolve_model_source(None).generation_defaults == {"temperature": 0.2, "top_p": 0.9}
    assert resolve_model_source(str(tiny_models["llama"])).generation_defaults == {}
    assert resolve_model_source("llama-3-8b", load_format="dummy").generation_defaults == {}


def test_request_builder_fills_only_unset_fields() -> None:
    from radixserve.managers.request_builder import RequestBuilder

    builder = RequestBuilder(tokenizer=None, model_name="m", context_len=64, vocab_size=100,
                             sampling_defaults={"temperature": 0.2, "top_p": 0.9})
    p = builder.sampling_params({"max_new_tokens": 4})
    assert (p.temperature, p.top_p, p.max_new_tokens) == (0.2, 0.9, 4)
    p = builder.sampling_params({"temperature": 0.0, "top_p": None})  # None counts as unset
    assert (p.temperature, p.top_p) == (0.0, 0.9)
    plain = RequestBuilder(tokenizer=None, model_name="m", context_len=64, vocab_size=100)
    assert (plain.sampling_params(None).temperature, plain.sampling_params(None).top_p) == (1.0, 1.0)
