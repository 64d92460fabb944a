"""Bad input gives a clear error naming the field or file, and the engine keeps serving."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from radixserve import Engine
from radixserve.errors import InvalidRequestError
from radixserve.managers.io_struct import TokenizedGenerateReqInput
from radixserve.model_loader.default_model import default_model_path
from radixserve.sampling.sampling_params import SamplingParams
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


# Hostile sampling settings: each is an InvalidRequestError naming the field, raised before the
# request reaches the scheduler (whose process a bad int or float used to take down).
HOSTILE_PARAMS: list[tuple[dict[str, Any], str]] = [
    *[({"top_k": v}, "top_k") for v in (0, -2, 2**31, 2**63, 2**64 - 1, 2**70, 1.5, True, "5")],
    *[({"seed": v}, "seed") for v in (-1, 2**63, 2**64, 2**70, 0.5, "1")],
    *[({"max_new_tokens": v}, "max_new_tokens") for v in (2**31, 2**63, 2**70, -(2**63) - 1)],
    *[({"min_new_tokens": v}, "min_new_tokens") for v in (-1, 2**63, 2**70)],
    *[({"n": v}, "n") for v in (2**31, 2**63, -1)],
    *[({f: v}, f) for f in ("temperature", "top_p", "min_p", "repetition_penalty", "frequency_penalty",
                            "presence_penalty") for v in (float("nan"), float("inf"), float("-inf"), 10**400)],
    ({"stop": ["x"] * 100_000}, "stop"), ({"stop": ["x" * 10_000]}, "stop"), ({"stop": [3]}, "stop"),
    ({"stop": "a\ud800"}, "stop"), ({"stop": [[["deep"]]]}, "stop"),
    ({"stop_token_ids": [2**64]}, "stop_token_ids"), ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ({"stop_token_ids": [10**6]}, "stop_token_ids"), ({"stop_token_ids": list(range(100_000))}, "stop_token_ids"),
    ({"ignore_eos": "yes"}, "ignore_eos"), ({"skip_special_tokens": 1}, "skip_special_tokens"),
]


@pytest.mark.parametrize("bad,field", HOSTILE_PARAMS, ids=[f"{f}-{i}" for i, (_, f) in enumerate(HOSTILE_PARAMS)])
def test_hostile_sampling_params_raise_and_engine_keeps_serving(engine: Engine, bad: dict[str, Any],
                                                                field: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        engine.generate(input_ids=[5, 6], sampling_params={**OK, **bad})
    assert info.value.param == field
    out: Any = engine.generate(input_ids=[5, 6, 7], sampling_params=OK)
    assert len(out["output_ids"]) == 3


@pytest.mark.parametrize("kwargs,field", [
    ({"prompt": "a\ud800b"}, "prompt"), ({"input_ids": [2**64]}, "prompt"), ({"input_ids": [-5]}, "prompt"),
    ({"input_ids": [5], "sampling_params": "temperature=0"}, "sampling_params"),
    ({"input_ids": [5], "top_logprobs_num": 10**20}, "top_logprobs"),
])
def test_hostile_prompts_raise(engine: Engine, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        engine.generate(**kwargs)
    assert info.value.param == field


def test_boundary_values_are_served(engine: Engine) -> None:
    out: Any = engine.generate(input_ids=[[5, 6], [5, 6]], sampling_params=[
        {**OK, "seed": 2**63 - 1, "top_k": 2**31 - 1, "temperature": 1.0},
        {**OK, "seed": 0, "top_k": -1, "stop_token_ids": [engine.builder.vocab_size - 1]}])
    assert [len(o["output_ids"]) for o in out] == [3, 3]
    # n > 1 fans seed + i out; the last seed wraps within int64 instead of overflowing.
    outs: Any = engine.generate(input_ids=[[5, 6]], sampling_params={**OK, "temperature": 1.0, "n": 3,
                                                                      "seed": 2**63 - 1})
    assert len(outs) == 3


def _run_until_reported(engine: Engine, rid: str) -> Any:
    for _ in range(20):
        out = engine.scheduler.step()
        if out is not None and rid in out.rids:
            return out.finished_reasons[out.rids.index(rid)]
    raise AssertionError(f"{rid} was never reported")


def test_scheduler_refuses_a_request_it_cannot_admit_and_keeps_serving(engine: Engine) -> None:
    """What the edge missed fails that request (an abort with error=invalid_request), not the scheduler."""
    sched = engine.scheduler
    bad = TokenizedGenerateReqInput(rid="hostile-top-k", input_ids=[5, 6],
                                    sampling_params=SamplingParams(max_new_tokens=3, top_k=2**70))
    sched.handle(bad)
    reason = _run_until_reported(engine, "hostile-top-k")
    assert reason.type == "abort" and reason.error == "invalid_value" and "top_k" in reason.message
    # An input the checks do not expect at all (a token id that is not an int) raises inside
    # admission: refused alone.
    weird = TokenizedGenerateReqInput(rid="hostile-ids", input_ids=["x"],  # type: ignore[list-item]
                                      sampling_params=SamplingParams(max_new_tokens=3))
    sched.handle(weird)
    reason = _run_until_reported(engine, "hostile-ids")
    assert reason.type == "abort" and reason.error == "invalid_request"
    bad_stop = TokenizedGenerateReqInput(rid="hostile-stop-id", input_ids=[5, 6], sampling_params=SamplingParams(
        max_new_tokens=3, stop_token_ids=[10**6]))
    sched.handle(bad_stop)
    reason = _run_until_reported(engine, "hostile-stop-id")
    assert reason.type == "abort" and "stop_token_ids" in reason.message
    out: Any = engine.generate(input_ids=[5, 6, 7], sampling_params=OK)
    assert len(out["output_ids"]) == 3
    sched.check_memory()


def test_shutdown_releases_the_model_and_refuses_further_requests(tiny_models: dict[str, Path]) -> None:
    """After shutdown() nothing refers to the runner (its weights, pools and CUDA graphs can be freed
    for the next Engine in this process), and generate() says the engine is shut down."""
    import gc
    import weakref

    engine = Engine(model_path=str(tiny_models["llama"]), max_total_tokens=1024, log_level="warning")
    engine.generate(input_ids=[1, 2, 3], sampling_params={"max_new_tokens": 2})
    runner = weakref.ref(engine.model_runner)
    model = weakref.ref(engine.model_runner.model)
    engine.shutdown()
    gc.collect()
    assert runner() is None and model() is None
    with pytest.raises(RuntimeError, match="shut down"):
        engine.generate(input_ids=[1, 2, 3])
    engine.shutdown()  # a second call is harmless
