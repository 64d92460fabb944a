"""The NCCL code path of init_distributed on one GPU: the file-store rendezvous, the gloo side
group for control messages, and NCCL collectives on the device (a one-rank world; the two-GPU
run is issue 9's)."""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
from typing import Any

import pytest
import torch

from radixserve.distributed.device_comm import NO_MULTICAST_ENV

pytestmark = pytest.mark.gpu



def _rank(store: str, out: Any) -> None:
    import torch.distributed as dist

    from radixserve.distributed.parallel_state import init_distributed

    groups = init_distributed(0, 1, 1, store, torch.device("cuda"))
    x = torch.arange(4, dtype=torch.float32, device="cuda")
    dist.all_reduce(x, group=groups.tp.group)
    parts = [torch.empty_like(x)]
    dist.all_gather(parts, x, group=groups.world.group)
    box: list[Any] = [[b"schedule"]]
    dist.broadcast_object_list(box, src=0, group=groups.world.cpu_group)
    out.put({"backend": dist.get_backend(), "cpu_backend": dist.get_backend(groups.world.cpu_group),
             "sum": x.tolist(), "gathered": parts[0].tolist(), "box": box[0]})
    dist.destroy_process_group()


def test_nccl_world_of_one_rank() -> None:
    os.environ.update(NO_MULTICAST_ENV)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with tempfile.TemporaryDirectory() as d:
        p = ctx.Process(target=_rank, args=(os.path.join(d, "store"), out))
        p.start()
        result = out.get(timeout=120)
        p.join(60)
    assert p.exitcode == 0
    assert result == {"backend": "nccl", "cpu_backend": "gloo", "sum": [0.0, 1.0, 2.0, 3.0],
                      "gathered": [0.0, 1.0, 2.0, 3.0], "box": [b"schedule"]}
