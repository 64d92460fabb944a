"""load_tokenizer takes the generic tokenizer class straight from tokenizer_config.json (no
AutoTokenizer, hence no torch import) and must end where AutoTokenizer would."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from radixserve.model_loader.tokenizer import generic_tokenizer_class, load_tokenizer
from tests.conftest import tokenizer_source

TEXTS = ["hello world", " leading space", "Ünïcödé and 数字 123", "<|im_start|>user\nhi<|im_end|>"]
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok")
    load_tokenizer(tokenizer_source()).save_pretrained(str(path))
    return path


@pytest.mark.parametrize("declared", ["TokenizersBackend", "PreTrainedTokenizerFast", "LlamaTokenizerFast",
                                      "GPT2Tokenizer", None])
def test_same_tokenizer_as_autotokenizer(saved: Path, tmp_path: Path, declared: str | None) -> None:
    for f in saved.iterdir():
        shutil.copy(f, tmp_path / f.name)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.pop("tokenizer_class", None)
    if declared is not None:
        config["tokenizer_class"] = declared
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    # Only the generic names skip AutoTokenizer: for a model's own class (a ByteLevel
    # LlamaTokenizerFast loads as TokenizersBackend) AutoTokenizer decides.
    assert (generic_tokenizer_class(tmp_path) is not None) == (declared in ("TokenizersBackend",
                                                                           "PreTrainedTokenizerFast"))
    ours, auto = load_tokenizer(tmp_path), AutoTokenizer.from_pretrained(str(tmp_path))
    assert type(ours) is type(auto)
    for text in TEXTS:
        assert ours(text).input_ids == auto(text).input_ids
    assert (ours.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
            == auto.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True))


def test_remote_code_goes_through_autotokenizer(saved: Path, tmp_path: Path) -> None:
    for f in saved.iterdir():
        shutil.copy(f, tmp_path / f.name)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["tok.MyTokenizer", None]}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert generic_tokenizer_class(tmp_path) is None
