"""The default file selection and user patterns."""

from __future__ import annotations

import pytest

from radixserve.model_store.base import RemoteFile
from radixserve.model_store.patterns import SelectionError, select_files


def listing(*paths: str) -> list[RemoteFile]:
    return [RemoteFile(p, 10) for p in paths]


def chosen(*paths: str, include: list[str] | None = None, exclude: list[str] | None = None) -> list[str]:
    return [f.path for f in select_files(listing(*paths), "hf://org/m", include, exclude)]


def test_default_takes_top_level_safetensors_config_and_tokenizer() -> None:
    assert chosen(
        "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
        "chat_template.jinja", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json", "README.md", ".gitattributes", "LICENSE", "pytorch_model.bin",
        "pytorch_model.bin.index.json", "original/consolidated.00.pth", "original/tokenizer.model",
        "onnx/model.onnx", "model.Q4_K_M.gguf", "flax_model.msgpack", "subdir/model.safetensors",
    ) == [
        "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
        "chat_template.jinja", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]


def test_a_single_gguf_is_taken_with_the_support_files() -> None:
    assert chosen("README.md", "tokenizer.json", "smol.Q8_0.gguf") == ["tokenizer.json", "smol.Q8_0.gguf"]


def test_several_ggufs_need_a_choice() -> None:
    with pytest.raises(SelectionError) as info:
        chosen("m.Q4_K_M.gguf", "m.Q8_0.gguf", "README.md")
    text = str(info.value)
    assert "2 GGUF files" in text and "m.Q4_K_M.gguf" in text and "m.Q8_0.gguf" in text and "--include" in text
    assert info.value.reason == "NoLoadableWeights"
    assert chosen("m.Q4_K_M.gguf", "m.Q8_0.gguf", include=["*Q8_0.gguf"]) == ["m.Q8_0.gguf"]


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "model.pt", "consolidated.pth"])
def test_pickle_only_weights_are_refused_clearly(weights: str) -> None:
    with pytest.raises(SelectionError, match="radixserve loads safetensors or GGUF"):
        chosen("config.json", weights)


def test_nothing_loadable() -> None:
    with pytest.raises(SelectionError, match="no model weights"):
        chosen("README.md", "config.json")


def test_include_replaces_the_default_and_exclude_filters() -> None:
    assert chosen("config.json", "original/params.json", "model.safetensors",
                  include=["original/*"]) == ["original/params.json"]
    assert chosen("config.json", "tokenizer.json", "model.safetensors",
                  exclude=["tokenizer*"]) == ["config.json", "model.safetensors"]


def test_never_bin_and_safetensors_together_even_with_a_broad_include() -> None:
    assert chosen("model.safetensors", "pytorch_model.bin", "config.json",
                  include=["*"]) == ["model.safetensors", "config.json"]
    assert chosen("pytorch_model.bin", "config.json", include=["*"]) == ["pytorch_model.bin", "config.json"]


def test_patterns_that_match_nothing_are_an_error() -> None:
    with pytest.raises(SelectionError, match="no file of hf://org/m matches"):
        chosen("model.safetensors", include=["*.gguf"])
