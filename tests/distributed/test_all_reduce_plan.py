"""Which all-reduce serves a message of each size (distributed/device_comm.py's AllReducePlan), and the
switch that turns the one-kernel peer-memory all-reduce on."""

from __future__ import annotations

import pytest
import torch

from radixserve.distributed.device_comm import LAMPORT_ENV, AllReducePlan, DeviceAllReduce, KiB, MiB


def test_two_gpus_use_two_shot_only_where_it_measured_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LAMPORT_ENV, raising=False)
    plan = AllReducePlan.measured(2)
    buffer = plan.staging_bytes
    assert plan.lamport_max == 0
    assert plan.choose(8 * KiB, buffer, lamport_bytes=256 * KiB) == "nccl"  # off unless asked for
    assert plan.choose(512 * KiB, buffer) == "nccl"
    assert plan.choose(2 * MiB, buffer) == "two_shot"
    assert plan.choose(8 * MiB, buffer) == "two_shot"
    assert plan.choose(64 * MiB, buffer) == "nccl"
    assert AllReducePlan.measured(4).choose(2 * MiB, buffer) == "nccl"  # not measured at 4 ranks


@pytest.mark.parametrize(("raw", "bytes_"), [("65536", 65536), ("64K", 64 * KiB), ("1m", MiB), ("0", 0), ("", 0)])
def test_the_lamport_switch_reads_bytes(monkeypatch: pytest.MonkeyPatch, raw: str, bytes_: int) -> None:
    monkeypatch.setenv(LAMPORT_ENV, raw)
    assert AllReducePlan.measured(2).lamport_max == bytes_
    assert AllReducePlan.measured(8).lamport_max == bytes_


def test_the_lamport_switch_serves_small_messages_where_its_buffer_holds_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LAMPORT_ENV, "64K")
    plan = AllReducePlan.measured(2)
    assert plan.choose(8 * KiB, plan.staging_bytes, lamport_bytes=64 * KiB) == "lamport"
    assert plan.choose(64 * KiB, plan.staging_bytes, lamport_bytes=64 * KiB) == "lamport"
    assert plan.choose(128 * KiB, plan.staging_bytes, lamport_bytes=64 * KiB) == "nccl"
    # Without its buffer (no peer access, a CPU group) nothing goes to it.
    assert plan.choose(8 * KiB, plan.staging_bytes, lamport_bytes=0) == "nccl"


@pytest.mark.parametrize("raw", ["64KB", "lots", "-1"])
def test_a_bad_lamport_switch_says_what_it_expects(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(LAMPORT_ENV, raw)
    with pytest.raises(ValueError, match="expected a byte count"):
        AllReducePlan.measured(2)


def test_a_cpu_group_falls_back_to_the_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CPU (gloo) the peer-memory paths are off with the reason, and every size is the group's own
    all-reduce, so the answer is the plain sum."""
    import torch.distributed as dist

    monkeypatch.setenv(LAMPORT_ENV, "64K")
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        comm = DeviceAllReduce(dist.group.WORLD, torch.device("cpu"), torch.float32)
        assert comm.lamport is None and comm.buf is None
        assert "not a CUDA device" in comm.reason
        x = torch.arange(6, dtype=torch.float32)
        assert torch.equal(comm.all_reduce(x.clone()), x)
        assert comm.describe()["lamport_max"] == 64 * KiB
    finally:
        dist.destroy_process_group()
