"""Router overhead: requests/s and added latency in front of instant fake workers.

Targets, measured in the same run on the same workers and workload:
  direct         the load generator spreads requests over the workers itself (the floor)
  radixserve     `radixserve router` (this project)
  sglang-router  `python -m sglang_router.launch_router` (Rust), if installed

For each target and each request kind (non-streaming /v1/completions, streaming
/v1/chat/completions), two phases run in a separate load-generator process (aiohttp on
uvloop): latency with one request in flight (p50/p99), then throughput with
--concurrency requests in flight for --duration seconds. Prompts share 16 long prefixes so
that cache_aware trees do real work. The router's CPU use during the throughput phase is
read from /proc.

Everything listens on 127.0.0.1. sglang-router is started with HTTP(S)_PROXY pointing at a
closed loopback port and HF_HUB_OFFLINE=1, and the workers name a local tokenizer
directory as their model, so it never reaches out to download a tokenizer.

Writes benchmarks/results/router_<time>.json (or --output) with machine info and versions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as `python benchmarks/bench_router.py`
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._common import machine_info, write_results  # noqa: E402

KINDS = ("completions", "chat-stream")


# --- load generator (runs in its own process: `--loadgen`) ---

def _bodies(kind: str, model: str, n: int) -> list[bytes]:
    prefixes = [f"Shared instructions {g}: " + "please answer briefly and precisely. " * 6 for g in range(16)]
    out = []
    for i in range(n):
        text = prefixes[i % 16] + f"question number {i}?"
        if kind == "completions":
            body: dict[str, Any] = {"model": model, "prompt": text, "max_tokens": 4}
        else:
            body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 8, "stream": True}
        out.append(json.dumps(body).encode())
    return out


async def _loadgen(urls: list[str], kind: str, model: str, concurrency: int, duration: float,
                   requests: int) -> dict[str, Any]:
    import aiohttp

    path = "/v1/completions" if kind == "completions" else "/v1/chat/completions"
    targets = [u + path for u in urls]
    bodies = _bodies(kind, model, 4096)
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    errors = 0
    counter = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def one() -> None:
            nonlocal counter, errors
            i = counter
            counter += 1
            t0 = time.perf_counter()
            try:
                async with session.post(targets[i % len(targets)], data=bodies[i % len(bodies)], headers=headers) as r:
                    data = await r.read()  # streams: read to the end, like a client would
                    ok = r.status == 200 and (kind == "completions" or data.rstrip().endswith(b"[DONE]"))
            except aiohttp.ClientError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1

        for _ in range(50):  # warm up connections and the router's trees
            await one()
        latencies.clear()
        errors = 0
        end = time.perf_counter() + duration
        start = time.perf_counter()

        async def loop() -> None:
            while (requests and counter < requests + 50) or (not requests and time.perf_counter() < end):
                await one()

        await asyncio.gather(*(loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()

    def pct(q: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 3) if latencies else None

    return {"requests": len(latencies), "errors": errors, "elapsed_s": round(elapsed, 3),
            "rps": round(len(latencies) / elapsed, 1) if elapsed else None,
            "latency_ms": {"mean": round(sum(latencies) / len(latencies) * 1000, 3) if latencies else None,
                           "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99)}}


def _loadgen_main(args: argparse.Namespace) -> int:
    load = _loadgen(args.urls, args.kind, args.model, args.concurrency, args.duration, args.requests)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(load)
    else:
        result = uvloop.run(load)
    print(json.dumps(result))
    return 0


# --- orchestration ---

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(offline: bool = False) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    if offline:
        blackhole = "http://127.0.0.1:9"  # nothing listens: any download attempt fails locally
        env.update({"HTTP_PROXY": blackhole, "HTTPS_PROXY": blackhole, "http_proxy": blackhole,
                    "https_proxy": blackhole, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
                    "HF_HUB_OFFLINE": "1"})
    return env


def _wait(url: str, body: bytes | None, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def _wait_tokenizer(url: str, timeout: float) -> None:
    """Measure the router in its steady state: `--tokenizer auto` loads the workers' tokenizer in
    the background after they turn healthy (about a second of imports that compete with the
    relaying for the GIL). The first measurements of the cache-event router ran during that load
    and read as a 2x regression."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url + "/metrics", timeout=2) as r:
            text = r.read().decode()
        if "radixserve_router_prompt_tokenizer_loaded 1.0" in text or "prompt_tokenizer_loaded" not in text:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not load a prompt tokenizer within {timeout}s")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _make_tokenizer_dir() -> str:
    """A local tokenizer for sglang-router to load, so that it does not fetch one by model name."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    path = tempfile.mkdtemp(prefix="bench-router-tok-")
    tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(os.path.join(path, "tokenizer.json"))
    Path(path, "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    Path(path, "config.json").write_text(json.dumps({"model_type": "llama"}))
    return path


def _run_loadgen(urls: list[str], kind: str, model: str, concurrency: int, duration: float,
                 requests: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--loadgen", "--kind", kind, "--model", model, "--concurrency",
           str(concurrency), "--duration", str(duration), "--requests", str(requests), "--urls", *urls]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), check=True, timeout=duration + 300)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _start_target(name: str, worker_urls: list[str], policy: str, port: int) -> subprocess.Popen[bytes]:
    if name == "radixserve":
        cmd = [sys.executable, "-m", "radixserve", "router", "--host", "127.0.0.1", "--port", str(port),
               "--policy", policy, "--log-level", "warning", "--worker-urls", *worker_urls]
        env = _env()
    else:
        cmd = [sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1", "--port", str(port),
               "--policy", policy, "--log-level", "error", "--worker-urls", *worker_urls]
        env = _env(offline=True)
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(args: argparse.Namespace) -> dict[str, Any]:
    tok_dir = _make_tokenizer_dir()
    workers: list[subprocess.Popen[bytes]] = []
    results: dict[str, Any] = {}
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    try:
        worker_urls = []
        for _ in range(args.workers):
            port = _free_port()
            cmd = [sys.executable, "-m", "radixserve.testing.fake_worker", "--port", str(port), "--model", tok_dir,
                   "--max-tokens", "4"]
            # stderr too: sglang-router probes workers with HTTP/2 bytes, which aiohttp logs as errors.
            workers.append(subprocess.Popen(cmd, cwd=REPO_ROOT, env=_env(), stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL))
            worker_urls.append(f"http://127.0.0.1:{port}")
        for url, proc in zip(worker_urls, workers, strict=True):
            _wait(url + "/health", None, 30, proc)
        probe = json.dumps({"model": tok_dir, "prompt": "ready?", "max_tokens": 1}).encode()
        for name in targets:
            if name == "sglang-router" and not _has_module("sglang_router"):
                results[name] = {"skipped": "sglang-router is not installed (pip install sglang-router)"}
        runnable = [t for t in targets if t not in results]
        rounds: dict[str, list[dict[str, Any]]] = {t: [] for t in runnable}
        for r in range(args.rounds):
            # Rotate the order each round so that drift on a shared machine hits every target alike.
            for name in runnable[r % len(runnable):] + runnable[:r % len(runnable)]:
                rounds[name].append(_measure_target(name, worker_urls, tok_dir, probe, args))
        for name in runnable:
            results[name] = _best_round(rounds[name], args.kinds.split(","))
    finally:
        for proc in workers:
            _stop(proc)
        shutil.rmtree(tok_dir, ignore_errors=True)
    return {"benchmark": "router_overhead", "results": results, "summary": _summary(results, args.kinds.split(","))}


def _measure_target(name: str, worker_urls: list[str], tok_dir: str, probe: bytes,
                    args: argparse.Namespace) -> dict[str, Any]:
    proc = None
    urls = worker_urls
    if name != "direct":
        port = _free_port()
        proc = _start_target(name, worker_urls, args.policy, port)
        urls = [f"http://127.0.0.1:{port}"]
        started = time.monotonic()
        _wait(urls[0] + "/v1/completions", probe, 60, proc)
        if name == "radixserve":
            _wait_tokenizer(urls[0], 60)
        ready_s = round(time.monotonic() - started, 2)
    per_kind: dict[str, Any] = {}
    try:
        for kind in args.kinds.split(","):
            print(f"[{name}] {kind}", file=sys.stderr, flush=True)
            load_before = os.getloadavg()[0]
            lat = _run_loadgen(urls, kind, tok_dir, 1, 0, args.latency_requests)
            cpu0 = _cpu_seconds(proc.pid) if proc else 0.0
            thr = _run_loadgen(urls, kind, tok_dir, args.concurrency, args.duration, 0)
            cpu = (_cpu_seconds(proc.pid) - cpu0) if proc else None
            per_kind[kind] = {
                "latency_c1": lat, "throughput": thr, "loadavg_1m_before": round(load_before, 2),
                "router_cpu_percent": round(100 * cpu / thr["elapsed_s"], 1) if cpu is not None else None,
            }
            if proc is not None:
                per_kind[kind]["router_ready_s"] = ready_s
    finally:
        if proc is not None:
            _stop(proc)
    return per_kind


def _best_round(rounds: list[dict[str, Any]], kinds: list[str]) -> dict[str, Any]:
    """Best of the rounds per kind: highest rps and lowest c=1 latency (least outside interference)."""
    best: dict[str, Any] = {}
    for kind in kinds:
        by_rps = max(rounds, key=lambda r: r[kind]["throughput"]["rps"] or 0)[kind]
        by_lat = min(rounds, key=lambda r: r[kind]["latency_c1"]["latency_ms"]["p50"] or 1e9)[kind]
        best[kind] = {"latency_c1": by_lat["latency_c1"], "throughput": by_rps["throughput"],
                      "router_cpu_percent": by_rps["router_cpu_percent"],
                      "router_ready_s": by_rps.get("router_ready_s"),
                      "rounds": [{"rps": r[kind]["throughput"]["rps"],
                                  "p50_ms_c1": r[kind]["latency_c1"]["latency_ms"]["p50"],
                                  "loadavg_1m_before": r[kind]["loadavg_1m_before"]} for r in rounds]}
    return best


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _summary(results: dict[str, Any], kinds: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    direct = results.get("direct", {})
    for kind in kinds:
        row: dict[str, Any] = {}
        for name, res in results.items():
            if kind not in res:
                continue
            lat, thr = res[kind]["latency_c1"]["latency_ms"], res[kind]["throughput"]
            entry = {"rps": thr["rps"], "p50_ms_c1": lat["p50"], "p99_ms_c1": lat["p99"],
                     "p50_ms_loaded": thr["latency_ms"]["p50"], "p99_ms_loaded": thr["latency_ms"]["p99"],
                     "errors": res[kind]["latency_c1"]["errors"] + thr["errors"],
                     "router_cpu_percent": res[kind]["router_cpu_percent"]}
            if name != "direct" and kind in direct:
                d = direct[kind]["latency_c1"]["latency_ms"]
                entry["added_p50_ms"] = round(lat["p50"] - d["p50"], 3)
                entry["added_p99_ms"] = round(lat["p99"] - d["p99"], 3)
            row[name] = entry
        rs, sg = row.get("radixserve"), row.get("sglang-router")
        if rs and sg and sg["rps"]:
            row["radixserve_vs_sglang_rps_ratio"] = round(rs["rps"] / sg["rps"], 3)
            if sg.get("added_p50_ms"):
                row["radixserve_vs_sglang_added_p50_ratio"] = round(rs["added_p50_ms"] / sg["added_p50_ms"], 3)
        if rs and row.get("direct"):
            row["radixserve_vs_direct_rps_ratio"] = round(rs["rps"] / row["direct"]["rps"], 3)
        summary[kind] = row
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_router.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--targets", default="direct,radixserve,sglang-router",
                   help="comma-separated targets: direct, radixserve, sglang-router")
    p.add_argument("--kinds", default="completions,chat-stream",
                   help="request kinds: completions (non-streaming), chat-stream (SSE, 8 chunks)")
    p.add_argument("--workers", type=int, default=2, help="fake worker processes behind the routers")
    p.add_argument("--policy", default="cache_aware", help="routing policy for both routers")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight in the throughput phase")
    p.add_argument("--duration", type=float, default=8.0, help="seconds of the throughput phase")
    p.add_argument("--latency-requests", type=int, default=1000, help="sequential requests in the latency phase")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds over all targets (order rotated); the best round per target is reported, "
                        "since other work on a shared machine only ever slows a round down")
    p.add_argument("--output", default=None, help="JSON path (default benchmarks/results/router_<time>.json)")
    # Internal: the load-generator process.
    p.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--urls", nargs="+", default=[], help=argparse.SUPPRESS)
    p.add_argument("--kind", default="completions", help=argparse.SUPPRESS)
    p.add_argument("--model", default="fake-model", help=argparse.SUPPRESS)
    p.add_argument("--requests", type=int, default=0, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.loadgen:
        return _loadgen_main(args)
    result = run(args)
    result["command"] = " ".join(["benchmarks/bench_router.py", *(sys.argv[1:] if argv is None else argv)])
    result["config"] = {k: v for k, v in vars(args).items() if k not in ("loadgen", "urls", "kind", "model", "requests")}
    result["machine"] = machine_info(("radixserve", "aiohttp", "uvloop", "sglang-router", "prometheus-client"))
    out = write_results("router", result, args.output)
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
