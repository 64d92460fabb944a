"""On two or more GPUs: the peer-memory all-reduces (torch's one-shot and two-shot, and the one-kernel
Lamport all-reduce) sum exactly like NCCL at every size they serve, inside and outside CUDA graphs, and an Engine at TP=2 (NCCL + peer-memory all-reduce, CUDA graphs)
decodes float32 greedily token for token like TP=1; on four and eight GPUs (issue 22), so do
Engines at TP=4 and TP=8 (NCCL, CUDA graphs)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from radixserve.distributed.device_comm import NO_MULTICAST_ENV
from tests.distributed.spawn_ranks import run_ranks

KIND = {2: "nvidia-h200-x2", 4: "nvidia-h200-x4", 8: "nvidia-h200-x8"}


def gpus(n: int) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < n,
                              reason=f"needs {n} GPUs ({KIND[n]})")


pytestmark = [pytest.mark.gpu, gpus(2)]


def _rank(rank: int, size: int, store: str, out: Any) -> None:
    import dataclasses

    import torch.distributed as dist

    from radixserve.distributed.device_comm import AllReducePlan, DeviceAllReduce, KiB

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{store}", rank=rank, world_size=size,
                            device_id=torch.device("cuda", rank))
    plan = dataclasses.replace(AllReducePlan.measured(size), lamport_max=256 * KiB)
    comm = DeviceAllReduce(dist.group.WORLD, torch.device("cuda", rank), torch.bfloat16, plan)
    report: dict[str, Any] = {"enabled": comm.buf is not None and comm.lamport is not None, "reason": comm.reason,
                              "mismatches": []}
    gen = torch.Generator(device="cuda").manual_seed(rank)
    for tokens in (1, 3, 64, 257, 1024, 2, 32):
        for mode in ("one_shot", "two_shot", "lamport", "nccl", None):
            x = torch.randn((tokens, 4096), generator=gen, device="cuda").to(torch.bfloat16)
            x[0, :4] = -0.0  # the Lamport buffer's sentinel
            ref = x.clone()
            dist.all_reduce(ref)
            if not comm.can_use(x) and mode in ("one_shot", "two_shot"):
                continue
            if mode == "lamport" and x.numel() * x.element_size() > comm.lamport_bytes:
                continue
            got = comm.all_reduce(x.clone(), force=mode)
            # Two addends: the sum is the same rounding whichever rank adds first.
            if not torch.equal(got, ref):
                report["mismatches"].append((tokens, mode))
    # Captured in a CUDA graph and replayed with new data in the input.
    x = torch.zeros((8, 4096), dtype=torch.bfloat16, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        comm.all_reduce(x.clone())
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = comm.all_reduce(x * 1.0, force="two_shot")
        z = [comm.all_reduce(x * float(k), force="lamport") for k in (1, 2, 3, 4)]  # the slots rotate
    report["graph_ok"] = True
    for replay in range(3):
        x.fill_(rank + 1.0 + replay)
        graph.replay()
        torch.cuda.synchronize()
        total = 3.0 + 2 * replay
        report["graph_ok"] &= bool(torch.all(y == total)) and all(bool(torch.all(z[k - 1] == k * total))
                                                                  for k in (1, 2, 3, 4))
    out.put((rank, report))
    dist.destroy_process_group()


def test_peer_memory_all_reduce_matches_nccl() -> None:
    os.environ.update(NO_MULTICAST_ENV)
    reports = run_ranks(_rank, 2, timeout=240)
    for rank, rep in reports.items():
        assert rep["enabled"], f"rank {rank}: peer-memory all-reduce unavailable: {rep['reason']}"
        assert rep["mismatches"] == [], f"rank {rank}: differs from NCCL at {rep['mismatches']}"
        assert rep["graph_ok"], f"rank {rank}: the captured all-reduce did not sum the replayed input"


@pytest.mark.parametrize("lamport", ["", "256K"], ids=["default", "lamport"])
def test_tp2_float32_greedy_identical_to_tp1(tiny_models: dict[str, Path], lamport: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from radixserve import Engine
    from radixserve.distributed.device_comm import LAMPORT_ENV

    os.environ.update(NO_MULTICAST_ENV)
    monkeypatch.setenv(LAMPORT_ENV, lamport)  # the scheduler processes inherit it
    prompts = [[1, 500, 600, 700], [2, 42], [1000 + i for i in range(200)], [7] * 33, [9, 8, 7, 6, 5]]
    params = {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True}
    outs = {}
    for tp in (1, 2):
        with Engine(model_path=str(tiny_models["llama_gqa_tied"]), device="cuda", dtype="float32", tp_size=tp,
                    max_total_tokens=8192, log_level="warning") as engine:
            outs[tp] = [o["output_ids"] for o in engine.generate(input_ids=prompts, sampling_params=params)]
    assert outs[2] == outs[1]


@pytest.mark.parametrize("tp", [pytest.param(4, marks=gpus(4)), pytest.param(8, marks=gpus(8))])
def test_tp4_and_tp8_float32_greedy_identical_to_tp1(tmp_path: Path, tp: int) -> None:
    """A tiny Llama with 16 query and 8 KV heads (one KV head per rank at TP=8, as the 70B there), as
    the CPU test over gloo; head_dim 16, the smallest the Triton attention kernels' products take."""
    from radixserve import Engine
    from tests.conftest import _save_tiny, tokenizer_source

    os.environ.update(NO_MULTICAST_ENV)
    path = str(_save_tiny(tmp_path, "llama", tokenizer_source(), hidden_size=256, num_attention_heads=16,
                          num_key_value_heads=8))
    prompts = [[1, 500, 600, 700], [2, 42], [1000 + i for i in range(200)], [7] * 33, [9, 8, 7, 6, 5]]
    params = {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True}
    outs = {}
    for size in (1, tp):
        with Engine(model_path=path, device="cuda", dtype="float32", tp_size=size, max_total_tokens=8192,
                    log_level="warning") as engine:
            outs[size] = [o["output_ids"] for o in engine.generate(input_ids=prompts, sampling_params=params)]
    assert outs[tp] == outs[1]


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_one_row_path_at_tp2_matches_layer_by_layer(backend: str) -> None:
    """The batch-1 one-row path with TP (the o and down products summed over the ranks by NCCL before
    their residual add), in bf16 on two GPUs, against the layer-by-layer path on the same ranks."""
    from tests.kernels.gemv_cases import run_one_row_model_tp

    os.environ.update(NO_MULTICAST_ENV)
    run_one_row_model_tp(2, "cuda", torch.bfloat16, int.from_bytes(os.urandom(2), "little"), backend)
