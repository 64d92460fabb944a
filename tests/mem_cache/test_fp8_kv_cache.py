"""--kv-cache-dtype fp8_e4m3: the pool stores K / k_scale and V / v_scale as e4m3, the torch backend
reads them back times their scales; the Triton path is checked on the GPU (tests/kernels)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from radixserve import Engine
from radixserve.attention.torch_backend import decode_attention_ref, decode_kv_indices, extend_attention_ref
from radixserve.mem_cache.memory_pool import FP8_E4M3_MAX, TokenToKVPool, to_fp8
from radixserve.server_args import ServerArgs, ServerArgsError


def test_to_fp8_saturates_and_rounds_to_nearest() -> None:
    x = torch.tensor([0.0, 1.0, -1.0, 0.3, 447.0, 1000.0, -1e6, 2.5e-3])
    y = to_fp8(x, 1.0).float()
    assert not torch.isnan(y).any()
    assert y[5] == FP8_E4M3_MAX and y[6] == -FP8_E4M3_MAX  # a plain cast would give NaN
    assert torch.equal(y[:3], x[:3])
    assert abs(float(y[3]) - 0.3) <= 0.3 * 2**-4  # 3 mantissa bits: half a step is 2^-4 relative
    assert torch.equal(to_fp8(x * 4, 4.0), to_fp8(x, 1.0))  # a power-of-two scale is exact


def test_pool_writes_scaled_bytes_and_the_torch_backend_reads_them_back() -> None:
    gen = torch.Generator().manual_seed(0)
    slots, kvh, dim, heads = 40, 2, 16, 4
    fp8 = TokenToKVPool(slots, torch.float8_e4m3fn, 1, kvh, dim, "cpu", k_scale=0.25, v_scale=3.0)
    assert fp8.is_fp8 and fp8.scales(0) == (0.25, 3.0)
    assert TokenToKVPool.bytes_per_token(1, kvh, dim, torch.float8_e4m3fn) * 4 == \
        TokenToKVPool.bytes_per_token(1, kvh, dim, torch.float32)
    loc = torch.randperm(slots, generator=gen)[:30] + 1
    k, v = torch.randn(30, kvh, dim, generator=gen), torch.randn(30, kvh, dim, generator=gen)
    fp8.set_kv_buffer(0, loc, k, v)
    k_buf, v_buf = fp8.get_kv_buffer(0)
    assert k_buf.dtype == torch.float8_e4m3fn
    assert torch.equal(k_buf[loc].float(), to_fp8(k, 0.25).float())
    # The same attention as over a float pool holding the dequantized values, bit for bit.
    deq = TokenToKVPool(slots, torch.float32, 1, kvh, dim, "cpu")
    deq.set_kv_buffer(0, loc, to_fp8(k, 0.25).float() * 0.25, to_fp8(v, 3.0).float() * 3.0)
    dk, dv = deq.get_kv_buffer(0)
    table = torch.zeros(3, 16, dtype=torch.int64)
    table[:2, :15] = loc[:30].view(2, 15)
    pools, seq = torch.tensor([0, 1]), torch.tensor([15, 9])
    idx, mask = decode_kv_indices(table, pools, seq, 15)
    q = torch.randn(2, heads, dim, generator=gen)
    got = decode_attention_ref(q, k_buf, v_buf, idx, mask, 0.25, *fp8.scales(0))
    assert torch.equal(got, decode_attention_ref(q, dk, dv, idx, mask, 0.25))
    rows = [table[0, :15], table[1, :9]]
    qe = torch.randn(7, heads, dim, generator=gen)
    got_e = extend_attention_ref(qe, k_buf, v_buf, rows, [10, 7], [5, 2], 0.25, *fp8.scales(0))
    assert torch.equal(got_e, extend_attention_ref(qe, dk, dv, rows, [10, 7], [5, 2], 0.25))


def test_flags_are_checked() -> None:
    with pytest.raises(ServerArgsError, match="kv_cache_dtype"):
        ServerArgs(kv_cache_dtype="fp8_e5m2")
    with pytest.raises(ServerArgsError, match=r"kv_cache_k_scale.*only with"):
        ServerArgs(kv_cache_k_scale=2.0)
    with pytest.raises(ServerArgsError, match=r"kv_cache_v_scale.*positive"):
        ServerArgs(kv_cache_dtype="fp8_e4m3", kv_cache_v_scale=0.0)


def test_engine_with_an_fp8_kv_cache_stays_close_to_float(tiny_models: dict[str, Path]) -> None:
    """A tiny random Llama, float32 weights: greedy tokens and their log-probs with an e4m3 KV cache
    against the float32 one. e4m3 keeps 3 mantissa bits, so this is a closeness check, not identity."""
    prompts = [[5, 17, 230, 41, 9, 1000, 77], [300, 12, 12, 8], [42] * 20]
    params = {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}
    runs = []
    for kv in ("auto", "fp8_e4m3"):
        with Engine(model_path=str(tiny_models["llama"]), max_total_tokens=1024, log_level="warning",
                    kv_cache_dtype=kv) as engine:
            assert engine.model_runner.token_to_kv_pool.is_fp8 == (kv == "fp8_e4m3")
            runs.append(engine.generate(input_ids=prompts, sampling_params=params, return_logprob=True))
    same_first = 0
    for ref, got in zip(*runs, strict=True):
        same_first += ref["output_ids"][0] == got["output_ids"][0]
        n = next((i for i, (a, b) in enumerate(zip(ref["output_ids"], got["output_ids"], strict=True)) if a != b),
                 len(ref["output_ids"]))
        for (lr, _), (lg, _) in zip(ref["meta_info"]["output_token_logprobs"][:n],
                                    got["meta_info"]["output_token_logprobs"][:n], strict=True):
            assert abs(lr - lg) < 0.15  # seen: at most 0.066
    assert same_first == len(prompts)


def test_checkpoint_kv_scales_are_used_per_layer(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """Scales a checkpoint publishes (llm-compressor's k_scale/v_scale, older vLLM's kv_scale) set
    each layer's FP8 pool scales; they are not weights, so a float KV cache loads the same model."""
    from safetensors.torch import save_file

    model = tmp_path / "llama-kv-scales"
    shutil.copytree(tiny_models["llama"], model)
    save_file({"model.layers.0.self_attn.k_scale": torch.tensor(0.5),
               "model.layers.0.self_attn.v_scale": torch.tensor([0.25, 2.0, 1.0, 0.5]),  # per head: the largest
               "model.layers.1.self_attn.kv_scale": torch.tensor(1.5)}, str(model / "kv_scales.safetensors"))
    prompt, params = [[5, 17, 230, 41, 9]], {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}
    with Engine(model_path=str(model), max_total_tokens=512, log_level="warning", kv_cache_dtype="fp8_e4m3",
                kv_cache_k_scale=3.0) as engine:
        pool = engine.model_runner.token_to_kv_pool
        assert (pool.scales(0), pool.scales(1)) == ((0.5, 2.0), (1.5, 1.5))  # the checkpoint's, not the flag's
        assert len(engine.generate(input_ids=prompt, sampling_params=params)[0]["output_ids"]) == 6
    outs = []
    for path in (model, tiny_models["llama"]):
        with Engine(model_path=str(path), max_total_tokens=512, log_level="warning") as engine:
            assert engine.model_runner.token_to_kv_pool.scales(1) == (1.0, 1.0)
            outs.append(engine.generate(input_ids=prompt, sampling_params=params)[0]["output_ids"])
    assert outs[0] == outs[1]
