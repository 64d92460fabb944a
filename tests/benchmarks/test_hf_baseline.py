"""bench_hf_baseline on the workload bench_serving sends as token ids (the GPU serving script's
transformers baseline): every method returns what the Engine returns, greedy, on the same requests."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import bench_hf_baseline
from benchmarks.bench_hf_baseline import run
from benchmarks.bench_serving import BenchConfig, make_prompts

WORKLOAD = ["--dataset", "random", "--token-ids", "--vocab-lo", "100", "--vocab-hi", "8000",
            "--random-input-len", "24", "--output-len", "5", "--ignore-eos", "--seed", "2001"]


@pytest.mark.parametrize("method", ["generate_batch", "batched"])
def test_token_id_workload_matches_the_engine(tiny_models: dict[str, Path], method: str) -> None:
    from radixserve import Engine

    model = str(tiny_models["llama"])
    result = run([*WORKLOAD, "--num-prompts", "4", "--model-path", model, "--method", method, "--batch-size", "3",
                  "--no-save", "--disable-tqdm", "--no-warmup"])
    assert result["completed"] == 4 and result["prompt_tokens_total"] == 4 * 24
    assert result["completion_tokens_total"] == 4 * 5 and result["output_token_throughput"] > 0
    assert result["config"]["token_ids"] and result["config"]["seed"] == 2001 and result["device"] == "cpu"
    # The first 4 of the requests bench_serving sends with the same flags and 6 prompts (its run at rate
    # index 2 of seed 1 uses 2001): N prompts of a seed are the first N of more.
    prompts = make_prompts(BenchConfig(base_url="", dataset="random", num_prompts=6, random_input_len=24,
                                       token_ids=True, vocab_lo=100, vocab_hi=8000, seed=2001))[:4]
    ids = [p.ids for p in prompts if p.ids is not None]
    assert len(ids) == 4
    with Engine(model_path=model, dtype="float32", log_level="warning") as engine:
        ours = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 5, "temperature": 0,
                                                               "ignore_eos": True})
    assert result["output_ids_first"] == [o["output_ids"] for o in ours]


def test_dummy_weights_without_a_tokenizer_need_token_ids() -> None:
    with pytest.raises(ValueError, match="needs --token-ids"):
        run(["--load-format", "dummy", "--model-path", "llama-3-8b", "--dataset", "random", "--no-save"])


def test_random_weights_of_a_named_shape() -> None:
    """The GPU serving script's form (--load-format dummy --model-path llama-3-8b, on cuda); here the
    135M shape on the CPU."""
    result = run([*WORKLOAD, "--num-prompts", "2", "--load-format", "dummy", "--model-path", "smollm2-135m",
                  "--method", "generate_batch", "--no-save", "--disable-tqdm", "--no-warmup"])
    assert result["completed"] == 2 and result["completion_tokens_total"] == 10
    assert result["model"] == "smollm2-135m (random weights)" and "sample_outputs" not in result


class _OldConfig:  # transformers 5.17 (the device machines): the block is `block_size`
    def __init__(self, block_size: int = 128) -> None:
        self.block_size = block_size


class _NewConfig:  # transformers 5.2x: `page_size`, with `block_size` a deprecated alias left None
    def __init__(self, page_size: int = 256, block_size: int | None = None) -> None:
        self.page_size = page_size
        self.block_size = block_size


def test_cb_page_size_reads_either_transformers_name() -> None:
    assert bench_hf_baseline.cb_page_size(_OldConfig) == 128
    assert bench_hf_baseline.cb_page_size(_NewConfig) == 256
    with pytest.raises(RuntimeError, match="unknown transformers API"):
        bench_hf_baseline.cb_page_size(object)
