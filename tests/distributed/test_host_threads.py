"""How many torch CPU threads a scheduler rank takes (scheduler_process.set_host_threads)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from radixserve.managers import scheduler_process
from radixserve.managers.scheduler_process import set_host_threads
from radixserve.server_args import ServerArgs


@pytest.fixture
def eight_cores(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(scheduler_process.os, "sched_getaffinity", lambda pid: set(range(8)))
    torch.set_num_threads(8)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("tp", "pp", "nnodes", "threads"), [
    (1, 1, 1, 8),  # one rank: all the cores, as torch's default
    (2, 1, 1, 4),
    (3, 1, 1, 2),  # the remainder stays idle rather than oversubscribed
    (8, 1, 1, 1),  # more ranks than cores: one thread each, never zero
    (1, 2, 1, 8),  # pipeline stages take turns: each may use every core
    (2, 2, 1, 4),  # split between the two TP ranks of a stage
    (4, 2, 2, 2),  # 8 ranks over two nodes, one stage on each: its 4 TP ranks split the node
    (8, 1, 2, 2),  # TP=8 over two nodes: 4 of its ranks on this one
])
def test_cpu_ranks_of_a_node_split_its_cores(eight_cores: None, tp: int, pp: int, nnodes: int,
                                             threads: int) -> None:
    set_host_threads(ServerArgs(device="cpu", tensor_parallel_size=tp, pipeline_parallel_size=pp, nnodes=nnodes,
                                dist_init_addr="leader.svc:29500" if nnodes > 1 else None))
    assert torch.get_num_threads() == threads


def test_omp_num_threads_wins(eight_cores: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    set_host_threads(ServerArgs(device="cpu", tensor_parallel_size=4))
    assert torch.get_num_threads() == 8
