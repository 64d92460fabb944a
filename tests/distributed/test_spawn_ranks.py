"""run_ranks, the test helper that spawns rank processes: results by rank, and a rank that gives no
result (it failed before answering, or hangs where a failed peer left it) ends the wait with its name."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.distributed.spawn_ranks import run_ranks


def _answer(rank: int, size: int, store: str, word: str, out: Any) -> None:
    out.put((rank, f"{word} {rank} of {size}"))


def _rank1_hangs(rank: int, size: int, store: str, out: Any) -> None:
    if rank == 1:
        time.sleep(600)
    out.put((rank, "ok"))


def test_every_rank_answers() -> None:
    assert run_ranks(_answer, 3, "rank") == {0: "rank 0 of 3", 1: "rank 1 of 3", 2: "rank 2 of 3"}


def test_a_rank_without_a_result_is_stopped_and_named() -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"ranks \[1\] gave no result; the others gave \{0: 'ok'\}"):
        run_ranks(_rank1_hangs, 2, straggler_s=2)
    assert time.monotonic() - started < 60
