"""parse_model_uri, is_remote, cache_key."""

from __future__ import annotations

import pytest

from radixserve.model_store.uri import (
    HFModel,
    InvalidModelURI,
    LocalModel,
    OCIModel,
    PVCModel,
    S3Model,
    cache_key,
    is_remote,
    label_key_suffix,
    parse_model_uri,
)

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(("text", "expected"), [
    ("hf://Qwen/Qwen3-8B", HFModel("Qwen/Qwen3-8B")),
    ("hf://Qwen/Qwen3-8B@main", HFModel("Qwen/Qwen3-8B", "main")),
    ("hf://gpt2", HFModel("gpt2")),
    ("HF://org/name@v1.0", HFModel("org/name", "v1.0")),
    ("hf://org/name@refs/pr/1", HFModel("org/name", "refs/pr/1")),
    ("s3://models", S3Model("models")),
    ("s3://models/llama/3.1/", S3Model("models", "llama/3.1")),
    ("pvc://model-store", PVCModel("model-store")),
    ("pvc://model-store/qwen/8b", PVCModel("model-store", "qwen/8b")),
    ("oci://ghcr.io/org/model:v1", OCIModel("ghcr.io/org/model:v1")),
    (f"oci://registry:5000/org/model@{DIGEST}", OCIModel(f"registry:5000/org/model@{DIGEST}")),
    ("/models/qwen", LocalModel("/models/qwen")),
    ("relative/model.gguf", LocalModel("relative/model.gguf")),
    ("file:///models/qwen", LocalModel("/models/qwen")),
    ("  hf://org/name  ", HFModel("org/name")),
])
def test_parse(text: str, expected: object) -> None:
    assert parse_model_uri(text) == expected


@pytest.mark.parametrize("text", [
    "hf://org/name", "hf://org/name@main", "s3://bucket/a/b", "pvc://claim/p", "oci://ghcr.io/o/m:v1",
])
def test_str_round_trips(text: str) -> None:
    assert str(parse_model_uri(text)) == text


@pytest.mark.parametrize(("text", "words"), [
    ("", "empty"),
    ("hf://", "nothing after"),
    ("hf://a/b/c", "hf://org/name"),
    ("hf://org/-name", "hf://org/name"),
    ("hf://org/na--me", "hf://org/name"),
    ("hf://org/name@bad rev", "revision"),
    ("s3://B", "bucket name"),
    ("s3://bucket/../etc", "'..'"),
    ("pvc://Claim", "PersistentVolumeClaim"),
    ("pvc://claim/a/../b", "'..'"),
    ("oci://ghcr.io/org/model", "tag or a digest"),
    ("oci://model:v1", "oci://registry/repository"),
    ("file://relative", "absolute path"),
    ("ftp://host/x", "unknown scheme"),
])
def test_bad_references_say_what_is_expected(text: str, words: str) -> None:
    with pytest.raises(InvalidModelURI, match=words.replace("(", r"\(").replace("[", r"\[")):
        parse_model_uri(text)


def test_is_remote() -> None:
    assert is_remote(HFModel("a/b")) and is_remote(S3Model("bkt"))
    assert not any(is_remote(u) for u in (PVCModel("c"), OCIModel("r/x:1"), LocalModel("/m")))


def test_cache_key_is_readable_safe_and_distinct() -> None:
    a, b = cache_key(HFModel("Org/Name", "main")), cache_key(HFModel("Org/Name", "v2"))
    assert a.startswith("hf--Org--Name--main-") and a != b
    assert cache_key(HFModel("org/x")) != cache_key(HFModel("org/x", "main"))  # distinct references
    key = cache_key(S3Model("bucket", "a/b c/" + "d" * 200))
    assert "/" not in key and " " not in key and len(key) <= 3 + 2 + 80 + 13
    assert cache_key(HFModel("org/x")) == cache_key(parse_model_uri("hf://org/x"))  # stable


def test_label_key_suffix_fits_a_label_name() -> None:
    suffix = label_key_suffix(HFModel("org/" + "x" * 90))
    assert len(suffix) <= 63 and suffix.startswith("m-")
