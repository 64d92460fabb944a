"""Start-up, overload, shutdown and crash behaviour of `radixserve serve` (tiny random model)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from radixserve.server_args import ServerArgs
from tests.server.server_harness import ServerProcess

pytestmark = pytest.mark.slow

StartServer = Callable[..., ServerProcess]


def test_help_lists_every_server_arg() -> None:
    out = subprocess.run([sys.executable, "-m", "radixserve.server", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0
    for f in dataclasses.fields(ServerArgs):
        assert f"--{f.name.replace('_', '-')}" in out.stdout or f.name in ("tensor_parallel_size",
                                                                            "pipeline_parallel_size"), f.name
    assert "--tp" in out.stdout and "--pp" in out.stdout


def test_missing_model_fails_fast_with_a_clear_message(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    out = subprocess.run([sys.executable, "-m", "radixserve.server", "--model-path", str(missing)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert str(missing) in out.stderr


def test_full_queue_answers_429_and_the_server_keeps_serving(tiny_server: StartServer) -> None:
    server = tiny_server("--max-running-requests", "1", "--max-queued-requests", "1")
    body = {"prompt": "hello", "max_tokens": 300, "ignore_eos": True}
    statuses: list[int] = []
    errors: list[dict[str, object]] = []

    def send() -> None:
        r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)
        statuses.append(r.status_code)
        if r.status_code != 200:
            errors.append(r.json()["error"])

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses.count(200) >= 2 and statuses.count(429) >= 1, statuses
    assert set(statuses) <= {200, 429}
    assert all(e["type"] == "rate_limit_error" and e["code"] == "queue_full" for e in errors)
    r = httpx.post(f"{server.url}/v1/completions", json={"prompt": "again", "max_tokens": 3}, timeout=60)
    assert r.status_code == 200


def test_sigterm_lets_in_flight_requests_finish(tiny_server: StartServer) -> None:
    server = tiny_server("--graceful-shutdown-timeout", "60")
    body = {"prompt": "hello", "max_tokens": 400, "ignore_eos": True, "stream": True}
    events: list[str] = []
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=120) as r:
        lines = r.iter_lines()
        events.append(next(lines))
        server.proc.send_signal(signal.SIGTERM)
        events.extend(lines)
    data = [json.loads(e[6:]) for e in events if e.startswith("data: {")]
    assert data[-1]["choices"][0]["finish_reason"] == "length"
    assert events[-1] == "data: [DONE]" or [e for e in events if e][-1] == "data: [DONE]"
    assert server.proc.wait(60) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health", timeout=5)


@pytest.mark.parametrize("victim", ["scheduler_pid", "detokenizer_pid"])
def test_a_dead_child_brings_the_server_down(tiny_server: StartServer, victim: str) -> None:
    server = tiny_server()
    info = httpx.get(f"{server.url}/get_server_info", timeout=30).json()
    children = set(server.children())
    assert {info["scheduler_pid"], info["detokenizer_pid"]} <= children
    start = time.monotonic()
    os.kill(info[victim], signal.SIGKILL)
    code = server.proc.wait(10)
    assert code != 0 and time.monotonic() - start < 10
    time.sleep(1.5)  # the survivor notices its parent is gone
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert "died" in server.logs()
