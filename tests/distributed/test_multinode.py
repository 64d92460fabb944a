"""Several nodes: two `radixserve serve` processes on loopback as node 0 and node 1 of one TP=2 server
(gloo, TCP rendezvous) answer like one process with TP=2, and the group never outlives a member."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from radixserve import Engine
from radixserve.server_args import ServerArgs, ServerArgsError
from tests.server.server_harness import ServerProcess, free_port

GREEDY: dict[str, Any] = {"max_new_tokens": 10, "temperature": 0, "ignore_eos": True}
PROMPTS = [[100 + (i * 7 + j) % 900 for j in range(n)] for i, n in enumerate([3, 17, 40, 1])]
# The leader notices a dead peer in its next collective (<= 0.5 s when idle), then gives requests
# in flight 2 s to fail; the rest is slack for 2 shared cores.
EXIT_BOUND_S = 15.0


def _node_args(model: Path, rank: int, rendezvous: str) -> list[str]:
    return ["--model-path", str(model), "--tp", "2", "--nnodes", "2", "--node-rank", str(rank),
            "--dist-init-addr", rendezvous, "--max-total-tokens", "2048"]


class Nodes:
    """Node 0 (HTTP + world rank 0) and node 1 (world rank 1 only) of one server."""

    def __init__(self, model: Path, logs: Path) -> None:
        rendezvous = f"127.0.0.1:{free_port()}"  # node 0's rank 0 binds it when it starts
        self.leader = ServerProcess(_node_args(model, 0, rendezvous), logs / "node0.log")
        self.worker = ServerProcess(_node_args(model, 1, rendezvous), logs / "node1.log")
        try:
            self.leader.wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.leader.stop()
        self.worker.stop()


def _wait_exit(server: ServerProcess, since: float) -> tuple[int, float]:
    code = server.proc.wait(EXIT_BOUND_S)
    return code, time.monotonic() - since


# One torch thread in every rank, here and in the one-process reference: on its own a node's rank takes the
# node's cores (2 threads) and a rank of the one-process server half of them (1), and on some CPUs (AVX2, not
# AVX512) the float32 GEMMs then sum in another order, which moves logprobs by ~1e-6.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def nodes(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    with pytest.MonkeyPatch.context() as mp:
        for k, v in ONE_THREAD.items():
            mp.setenv(k, v)
        pair = Nodes(tiny_models["llama"], tmp_path_factory.mktemp("multinode"))
    yield pair
    pair.stop()


def test_two_nodes_give_the_tokens_of_one_process_with_the_same_tp(nodes: Nodes, tiny_models: dict[str, Path],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    got = [httpx.post(f"{nodes.leader.url}/generate", timeout=60, json={
        "input_ids": ids, "sampling_params": GREEDY, "return_logprob": True}).json() for ids in PROMPTS]
    for k, v in ONE_THREAD.items():  # the reference's ranks are processes started below: they read it
        monkeypatch.setenv(k, v)
    with Engine(model_path=str(tiny_models["llama"]), max_total_tokens=2048, log_level="warning", tp_size=2) as one:
        ref = [one.generate(input_ids=ids, sampling_params=GREEDY, return_logprob=True) for ids in PROMPTS]
    for g, r in zip(got, ref, strict=True):
        assert g["output_ids"] == r["output_ids"] and len(g["output_ids"]) == GREEDY["max_new_tokens"]
        # The same ranks doing the same arithmetic over the same transport: the same numbers.
        assert [lp[0] for lp in g["meta_info"]["output_token_logprobs"]] == \
            [lp[0] for lp in r["meta_info"]["output_token_logprobs"]]
    info = httpx.get(f"{nodes.leader.url}/get_server_info", timeout=30).json()
    assert info["nnodes"] == 2 and info["node_rank"] == 0 and len(info["scheduler_pids"]) == 1
    assert nodes.worker.proc.poll() is None


def test_killing_the_worker_node_takes_the_leader_down(nodes: Nodes) -> None:
    start = time.monotonic()
    nodes.worker.proc.send_signal(signal.SIGKILL)  # the whole "node": its main process, then its rank
    code, took = _wait_exit(nodes.leader, start)
    assert code != 0 and took < EXIT_BOUND_S
    assert "scheduler-tp0 process died" in nodes.leader.logs()  # its rank 0 failed, not a timeout


def test_killing_the_leader_takes_the_worker_node_down(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    pair = Nodes(tiny_models["llama"], tmp_path)
    try:
        start = time.monotonic()
        os.kill(pair.leader.proc.pid, signal.SIGKILL)
        code, took = _wait_exit(pair.worker, start)
        assert code == 1 and took < EXIT_BOUND_S
        assert "the multi-node group is broken" in pair.worker.logs()
    finally:
        pair.stop()


@pytest.mark.parametrize(("changes", "field", "message"), [
    ({"nnodes": 2, "tensor_parallel_size": 2}, "dist_init_addr", "required with --nnodes > 1"),
    ({"nnodes": 3, "tensor_parallel_size": 2, "dist_init_addr": "h:1"}, "nnodes", "do not split evenly"),
    ({"nnodes": 2, "node_rank": 2, "tensor_parallel_size": 2, "dist_init_addr": "h:1"}, "node_rank", "not in"),
    ({"nnodes": 2, "tensor_parallel_size": 2, "dist_init_addr": "leader"}, "dist_init_addr", "not HOST:PORT"),
])
def test_node_flags_are_checked(changes: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(ServerArgsError, match=message) as err:
        ServerArgs(**changes)
    assert err.value.field_name == field


def test_each_node_runs_its_share_of_the_ranks() -> None:
    args = ServerArgs(tensor_parallel_size=4, pipeline_parallel_size=2, nnodes=2, node_rank=1,
                      dist_init_addr="leader.svc:29500")
    assert args.ranks_per_node == 4 and list(args.local_ranks) == [4, 5, 6, 7]
    assert list(ServerArgs(tensor_parallel_size=2).local_ranks) == [0, 1]
