"""`radixserve router` command line: flags, config mapping, and a real process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import aiohttp
import pytest

from radixserve.router.cli import build_parser, config_from_args, main

from .conftest import REPO_ROOT, MakeFakeWorkers

OPERATOR_FLAGS = ["--host", "--port", "--kube-selector", "--kube-namespace", "--kube-port", "--policy",
                  "--cache-threshold", "--balance-abs-threshold", "--balance-rel-threshold", "--max-tree-size",
                  "--worker-urls", "--api-key", "--health-check-interval", "--eviction-interval",
                  "--request-timeout", "--log-level"]


def test_help_explains_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in OPERATOR_FLAGS:
        assert flag in out, flag
    for action in build_parser()._actions:
        assert action.help, f"{action.option_strings} has no help"


def test_operator_flags_map_to_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADIXSERVE_API_KEY", "from-env")
    args = build_parser().parse_args([
        "--host", "0.0.0.0", "--port", "30000", "--kube-selector", "app=demo,role=server", "--kube-namespace", "ns",
        "--kube-port", "31000", "--policy", "power_of_two", "--cache-threshold", "0.6",
        "--balance-abs-threshold", "8", "--balance-rel-threshold", "1.2", "--max-tree-size", "1000",
        "--worker-urls", "10.0.0.1:30000", "http://10.0.0.2:30000/",
    ])
    config = config_from_args(args)
    assert (config.host, config.port, config.policy) == ("0.0.0.0", 30000, "power_of_two")
    assert config.kube is not None
    assert (config.kube.selector, config.kube.namespace, config.kube.port) == ("app=demo,role=server", "ns", 31000)
    assert (config.cache.cache_threshold, config.cache.balance_abs_threshold) == (0.6, 8)
    assert (config.cache.balance_rel_threshold, config.cache.max_tree_size) == (1.2, 1000)
    assert config.worker_urls == ["http://10.0.0.1:30000", "http://10.0.0.2:30000"]
    assert config.api_key == "from-env"
    defaults = config_from_args(build_parser().parse_args([]))
    # sglang-router 0.3.2 defaults (see docs/router.md).
    assert (defaults.cache.cache_threshold, defaults.cache.balance_abs_threshold,
            defaults.cache.balance_rel_threshold, defaults.cache.max_tree_size) == (0.3, 64, 1.5, 2**26)
    assert defaults.kube is None
    assert defaults.port == 30080  # not the server's 30000: both run on one machine with their defaults


def test_bad_flags_are_rejected() -> None:
    with pytest.raises(SystemExit):
        main(["--policy", "fastest"])
    with pytest.raises(SystemExit):
        main(["--cache-threshold", "2"])
    with pytest.raises(SystemExit):
        main(["--worker-urls", "ftp://x"])


async def test_router_process_serves_and_stops_on_sigterm(fake_workers: MakeFakeWorkers,
                                                          http: aiohttp.ClientSession) -> None:
    (w,) = await fake_workers(1)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "radixserve", "router", "--port", "0", "--worker-urls", w.url,
        "--health-check-interval", "0.2", "--drain-grace-seconds", "0", cwd=REPO_ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert line.startswith("router listening on http://")
        url = line.split()[-1]
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            async with http.get(url + "/health") as r:
                if r.status == 200:
                    break
            assert asyncio.get_running_loop().time() < deadline, "router never became healthy"
            await asyncio.sleep(0.05)
        async with http.post(url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}) as r:
            assert r.status == 200 and (await r.json())["choices"][0]["text"] == " w0 w1"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
