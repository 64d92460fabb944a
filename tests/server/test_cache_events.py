"""Cache events from a real `radixserve serve` (the shared SmolLM2 server): snapshot, stream, flush,
and the Gateway API Inference Extension's metric names. The unit tests: tests/cache_events."""

from __future__ import annotations

import time

import httpx

from radixserve.cache_events.protocol import (
    BATCH_DECODER,
    EVENTS_PATH,
    SNAPSHOT_DECODER,
    SNAPSHOT_PATH,
    BlocksStored,
    EventBatch,
    Snapshot,
    prefix_block_hashes,
)
from tests.server.server_harness import ServerProcess

PROMPT = [(i * 37) % 900 + 10 for i in range(70)]  # 4 full blocks of 16 and 6 tokens


def snapshot(server: ServerProcess) -> Snapshot:
    r = httpx.get(server.url + SNAPSHOT_PATH, headers=server.headers, timeout=10)
    assert r.status_code == 200, r.text
    return SNAPSHOT_DECODER.decode(r.content)


def read_batches(server: ServerProcess, since: int, until_seq: int, epoch: str) -> list[EventBatch]:
    """The stream from `since` up to batch `until_seq` (heartbeats keep it moving)."""
    out: list[EventBatch] = []
    deadline = time.monotonic() + 20
    with httpx.stream("GET", server.url + EVENTS_PATH, params={"since": since, "epoch": epoch},
                      headers=server.headers, timeout=10) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        assert r.headers["x-radixserve-cache-epoch"] == epoch
        for line in r.iter_lines():
            out.append(BATCH_DECODER.decode(line))
            if out[-1].seq >= until_seq or time.monotonic() > deadline:
                break
    return out


def test_prompt_blocks_appear_in_the_snapshot_and_stream_then_leave_on_flush(smol_server: ServerProcess) -> None:
    server = smol_server
    before = snapshot(server)
    deadline = time.monotonic() + 10
    while before.seq == 0:
        # A fresh server's first batch (AllCleared, then its tree as the warm-up left it) may still be
        # on its way from the scheduler when /health first answers; start from after it.
        assert time.monotonic() < deadline, "no cache-events batch from a running server"
        time.sleep(0.1)
        before = snapshot(server)
    assert before.block_tokens == 16 and before.load.max_running > 0
    r = httpx.post(server.url + "/generate", headers=server.headers, timeout=60, json={
        "input_ids": PROMPT, "sampling_params": {"max_new_tokens": 3, "temperature": 0}})
    assert r.status_code == 200, r.text
    want = prefix_block_hashes(PROMPT)
    deadline = time.monotonic() + 10
    while True:
        after = snapshot(server)
        if set(want) <= {b.hash for b in after.blocks}:
            break
        assert time.monotonic() < deadline, "the prompt's blocks never reached the snapshot"
        time.sleep(0.1)
    assert after.epoch == before.epoch and after.seq > before.seq
    parents = {b.hash: b.parent for b in after.blocks}
    assert [parents[h] for h in want] == [0, *want[:-1]]  # chained from the root

    # The stream from the first snapshot replays what happened since: applying it gives the second.
    batches = read_batches(server, before.seq, after.seq, before.epoch)
    assert [b.seq for b in batches] == list(range(before.seq + 1, after.seq + 1))
    blocks = {b.hash: b.parent for b in before.blocks}
    for batch in batches:
        for ev in batch.events:
            assert isinstance(ev, BlocksStored)  # nothing was evicted or flushed meanwhile
            blocks.update((b.hash, b.parent) for b in ev.blocks)
    assert blocks == parents

    deadline = time.monotonic() + 10
    while (r := httpx.post(server.url + "/flush_cache", headers=server.headers, timeout=30)).status_code == 409:
        assert time.monotonic() < deadline, "requests kept running"  # an earlier test's aborts, finishing
        time.sleep(0.1)
    assert r.status_code == 200, r.text
    flushed = snapshot(server)  # the flush's events reach the server before its reply
    assert flushed.blocks == [] and flushed.load.cached_tokens == 0


def test_gaps_auth_and_bad_input_get_openai_shaped_errors(smol_server: ServerProcess) -> None:
    server = smol_server
    snap = snapshot(server)
    gaps: list[tuple[dict[str, str | int], str]] = [
        ({"since": snap.seq + 1000}, "since"), ({"since": 0, "epoch": "not-this-one"}, "epoch")]
    for params, param in gaps:
        r = httpx.get(server.url + EVENTS_PATH, params=params, headers=server.headers, timeout=10)
        assert r.status_code == 410, r.text
        assert r.json()["error"]["code"] == "cache_events_gap" and r.json()["error"]["param"] == param
    r = httpx.get(server.url + EVENTS_PATH, params={"since": "x"}, headers=server.headers, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"].endswith("since")
    for path in (EVENTS_PATH, SNAPSHOT_PATH):
        r = httpx.get(server.url + path, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_inference_extension_metric_names_are_exported(smol_server: ServerProcess) -> None:
    server = smol_server
    names = ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc",
             "vllm:gpu_cache_usage_perc", "vllm:cache_config_info")
    deadline = time.monotonic() + 10
    while True:
        text = httpx.get(server.url + "/metrics", timeout=10).text
        if all(f"\n{n}{{" in text for n in names) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    lines = text.splitlines()
    for n in names:
        assert any(line.startswith(n + "{") and 'model_name="' in line for line in lines), n
    assert 'block_size="16"' in text
    ours = next(line for line in text.splitlines() if line.startswith("radixserve:token_usage{"))
    theirs = next(line for line in text.splitlines() if line.startswith("vllm:kv_cache_usage_perc{"))
    assert ours.split()[-1] == theirs.split()[-1]  # the same value under both names
