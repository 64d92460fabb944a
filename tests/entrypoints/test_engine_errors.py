"""Bad input gives a clear error naming the field or file, and the engine keeps serving."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from radixserve import Engine
from radixserve.model_loader.default_model import default_model_path
from radixserve.server_args import ServerArgs, ServerArgsError

OK = {"max_new_tokens": 3, "temperature": 0}


@pytest.fixture(scope="module")
def engine(tiny_models: dict[str, Path]) -> Iterator[Engine]:
    with Engine(model_path=str(tiny_models["llama"]), max_total_tokens=2048, context_length=64,
                log_level="warning") as e:
        yield e


@pytest.mark.parametrize("kwargs,pattern", [
    ({"prompt": ""}, r"'prompt' #0: the prompt is empty"),
    ({"input_ids": [5] * 64}, r"64 tokens, the context length is 64"),
    ({"input_ids": [5], "sampling_params": {"max_new_tokens": -1}}, r"'max_new_tokens'"),
    ({"input_ids": [5], "sampling_params": {"top_p": 0.0}}, r"'top_p'.*\(0, 1\]"),
    ({"input_ids": [5], "sampling_params": {"top_p": 1.01}}, r"'top_p'"),
    ({"input_ids": [5], "sampling_params": {"tempreature": 0.5}}, r"'tempreature'.*unknown"),
    ({"input_ids": [10**9]}, r"token id out of range"),
    ({"prompt": ["ok", 3]}, r"'prompt'"),
    ({"input_ids": [[1], [2]], "sampling_params": [OK]}, r"'sampling_params': 1 entries for 2 prompts"),
    ({}, r"exactly one of 'prompt' and 'input_ids'"),
])
def test_bad_requests_raise_and_engine_keeps_serving(engine: Engine, kwargs: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        engine.generate(**kwargs)
    out: Any = engine.generate(input_ids=[5, 6, 7], sampling_params=OK)
    assert len(out["output_ids"]) == 3
    engine.scheduler.check_memory()


def test_max_new_tokens_is_clamped_to_the_context(engine: Engine) -> None:
    out: Any = engine.generate(input_ids=[5] * 60, sampling_params={"max_new_tokens": 100, "ignore_eos": True})
    assert len(out["output_ids"]) == 4 and out["meta_info"]["finish_reason"]["type"] == "length"


def test_missing_model_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        Engine(model_path=str(missing))


def test_corrupt_gguf_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ValueError, match=r"broken\.gguf"):
        Engine(model_path=str(bad))


def test_truncated_gguf_names_the_file(tmp_path: Path) -> None:
    src = default_model_path()
    bad = tmp_path / "truncated.gguf"
    with open(src, "rb") as f:
        bad.write_bytes(f.read(2_000_000))
    with pytest.raises(ValueError, match=r"truncated\.gguf"):
        Engine(model_path=str(bad))


def test_corrupt_safetensors_names_the_file(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_models["llama"], model)
    shard = sorted(model.glob("*.safetensors"))[0]
    shard.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(ValueError, match=re.escape(shard.name)):
        Engine(model_path=str(model), max_total_tokens=256)


def test_directory_without_weights(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no config\.json"):
        Engine(model_path=str(tmp_path))


@pytest.mark.parametrize("kwargs,field", [
    ({"tensor_parallel_size": 0}, "tensor_parallel_size"), ({"mem_fraction_static": 1.5}, "mem_fraction_static"),
    ({"schedule_policy": "random"}, "schedule_policy"), ({"port": 70000}, "port"),
    ({"chunked_prefill_size": 0}, "chunked_prefill_size"), ({"load_format": "pt"}, "load_format"),
])
def test_server_args_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ServerArgsError, match=repr(field)):
        ServerArgs(**kwargs)
