"""What an operator sees of `radixserve serve`: access-log lines and request ids, TTFT measured at the
first token, abort and error counters, the scheduler's stats lines, process titles, and `--help`."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from radixserve.entrypoints import generate_cli
from radixserve.router.cli import build_parser as router_parser
from radixserve.server.launch import build_parser as serve_parser
from tests.server.server_harness import ServerProcess

StartServer = Callable[..., ServerProcess]
slow = pytest.mark.slow


def metrics(server: ServerProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics by (name, labels without model_name)."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for fam in text_string_to_metric_families(httpx.get(f"{server.url}/metrics", timeout=30).text):
        for s in fam.samples:
            labels = frozenset((k, v) for k, v in s.labels.items() if k != "model_name")
            out[(s.name, labels)] = s.value
    return out


def sample(m: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return m.get((name, frozenset(labels.items())), 0.0)


def access_lines(server: ServerProcess) -> list[str]:
    return [line for line in server.logs().splitlines() if "logger=radixserve.access" in line]


def wait_for(check: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def fields(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", line.split("msg=", 1)[1]))


@slow
def test_access_log_request_ids_and_error_counts(tiny_server: StartServer) -> None:
    server = tiny_server("--log-requests", "--api-key", "sk-obs")
    auth = {"Authorization": "Bearer sk-obs"}
    body = {"prompt": "hello there", "max_tokens": 5, "ignore_eos": True}

    r = httpx.post(f"{server.url}/v1/completions", json=body, headers={**auth, "X-Request-Id": "client-id-1"},
                   timeout=60)
    assert r.status_code == 200 and r.headers["x-request-id"] == "client-id-1"
    usage = r.json()["usage"]
    r2 = httpx.post(f"{server.url}/v1/completions", json=body, headers=auth, timeout=60)
    generated = r2.headers["x-request-id"]
    assert r2.status_code == 200 and re.fullmatch(r"[0-9a-f]{32}", generated)
    # The client's id becomes the rid of a route that takes one.
    g = httpx.post(f"{server.url}/generate", json={"text": "hi", "sampling_params": {"max_new_tokens": 2}},
                   headers={**auth, "X-Request-Id": "native-7"}, timeout=60)
    assert g.headers["x-request-id"] == "native-7" and g.json()["meta_info"]["id"] == "native-7"
    # An id that is not a sane token is replaced; errors carry an id too.
    bad = httpx.post(f"{server.url}/v1/completions", json=body, headers={"X-Request-Id": "a b"}, timeout=60)
    assert bad.status_code == 401 and re.fullmatch(r"[0-9a-f]{32}", bad.headers["x-request-id"])

    bad_id = bad.headers["x-request-id"]
    assert wait_for(lambda: any(f"id={bad_id} " in ln for ln in access_lines(server)))
    assert not any("route=/health " in ln for ln in access_lines(server))  # probes log at debug level
    lines = {fields(ln)["id"]: fields(ln) for ln in access_lines(server) if "status=" in ln}
    one = lines["client-id-1"]
    assert one["route"] == "/v1/completions" and one["status"] == "200" and one["method"] == "POST"
    assert int(one["prompt_tokens"]) == usage["prompt_tokens"] and int(one["completion_tokens"]) == 5
    assert int(one["cached_tokens"]) == usage["prompt_tokens_details"]["cached_tokens"]
    assert 0 < float(one["ttft"]) <= float(one["duration"])
    assert lines[generated]["status"] == "200" and lines[bad_id]["status"] == "401"
    assert len([ln for ln in access_lines(server) if "id=client-id-1 " in ln and "status=" in ln]) == 1
    # --log-requests: the payload, cut to size.
    payload = [ln for ln in access_lines(server) if "id=client-id-1 payload=" in ln]
    assert len(payload) == 1 and "hello there" in payload[0] and "response=" in payload[0]
    assert sample(metrics(server), "radixserve:num_request_errors_total", code="401") >= 1


@slow
def test_ttft_is_measured_at_the_first_token_of_a_non_streaming_request(tiny_server: StartServer) -> None:
    server = tiny_server()
    before = metrics(server)
    r = httpx.post(f"{server.url}/v1/completions", json={"prompt": "count", "max_tokens": 200, "ignore_eos": True},
                   timeout=120)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 200
    after = metrics(server)

    def delta(name: str) -> float:
        return sample(after, name) - sample(before, name)

    assert delta("radixserve:time_to_first_token_seconds_count") == 1
    assert delta("radixserve:e2e_request_latency_seconds_count") == 1
    ttft, e2e = delta("radixserve:time_to_first_token_seconds_sum"), delta("radixserve:e2e_request_latency_seconds_sum")
    assert 0 < ttft < e2e / 2, (ttft, e2e)


@slow
def test_a_streaming_client_that_disconnects_is_counted_as_aborted(tiny_server: StartServer) -> None:
    server = tiny_server()
    body = {"prompt": "go on", "max_tokens": 480, "ignore_eos": True, "stream": True}  # context 512
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body,
                      headers={"X-Request-Id": "gone-1"}, timeout=60) as r:
        assert r.status_code == 200 and r.headers["x-request-id"] == "gone-1"
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
    name = "radixserve:num_aborted_requests_total"
    assert wait_for(lambda: sample(metrics(server), name, reason="client_disconnected") == 1)
    assert wait_for(lambda: any("id=gone-1 " in ln and "status=499" in ln for ln in access_lines(server)))
    assert wait_for(lambda: server.load()["num_running_reqs"] == 0)


@slow
def test_process_titles_and_scheduler_stats_lines(tiny_server: StartServer) -> None:
    server = tiny_server("--stats-log-interval", "0.2")
    titles = []
    for pid in server.children():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                titles.append(f.read().replace(b"\0", b" ").decode(errors="replace").strip())
        except OSError:
            continue
    assert any(t.startswith("radixserve::scheduler") for t in titles), titles
    assert any(t.startswith("radixserve::detokenizer") for t in titles), titles
    r = httpx.post(f"{server.url}/v1/completions", json={"prompt": "stats", "max_tokens": 40, "ignore_eos": True},
                   timeout=60)
    assert r.status_code == 200

    def has_lines() -> bool:
        logs = server.logs()
        return "Prefill batch. #new-seq: " in logs and "Decode batch. #running-req: " in logs

    assert wait_for(has_lines)
    decode = next(ln for ln in server.logs().splitlines() if "Decode batch." in ln)
    assert "proc=scheduler" in decode
    assert re.search(r"#token: \d+, token usage: [\d.]+, gen throughput \(token/s\): [\d.]+, #queue-req: \d+",
                     decode), decode
    prefill = next(ln for ln in server.logs().splitlines() if "Prefill batch." in ln)
    assert re.search(r"#new-seq: \d+, #new-token: \d+, #cached-token: \d+, token usage: [\d.]+", prefill), prefill


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_help_shows_distinct_default_ports_and_no_empty_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    serve, router = _flat(serve_parser().format_help()), _flat(router_parser().format_help())
    serve_port = re.search(r"--port PORT [^-]*?\(default: (\d+)\)", serve)
    router_port = re.search(r"--port PORT [^-]*?\(default: (\d+)\)", router)
    assert serve_port and router_port
    assert serve_port.group(1) == "30000" and router_port.group(1) != serve_port.group(1)
    for text in (serve, router):
        assert "(default: None)" not in text and "(default: [])" not in text
        assert "[default:" not in text
    with pytest.raises(SystemExit):
        generate_cli.main(["--help"])
    generate = capsys.readouterr().out
    assert "--max-new-tokens" in generate and "--model-path" in generate and "--log-level" in generate
    for server_only in ("--port", "--host", "--api-key", "--graceful-shutdown-timeout", "--log-requests",
                        "--max-queued-requests", "--stream-interval"):
        assert server_only not in generate, server_only
    assert "(default: None)" not in generate
