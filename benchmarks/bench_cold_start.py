"""Cold start from a model reference, timed end to end: `radixserve download` and
`radixserve serve --model-path hf://...` against a Hub on loopback, cold cache and warm cache,
with serving a local file of the same model as the peer, all in one call.

The Hub is radixserve.testing.hub_standin (the same loopback stand-in the tests use; no network
here), publishing the embedded SmolLM2-135M-Instruct GGUF as `bench/SmolLM2-135M-Instruct-GGUF`.
Loopback has no network cost, so the download figures measure radixserve's own work (HTTP
through huggingface_hub, staging, sha256 of every byte, fsync, atomic publish); they are put
against a bound measured in the same call: copying the same file on this disk and hashing it
once, the least any verified download has to do after the bytes arrive. In a cluster add
bytes / network bandwidth (docs/models.md).

Each repeat is a fresh node: the local-file start, then the hf:// start with an empty model cache
(download, then load), then the hf:// start again (a cache hit: one metadata request). The first
start of a GGUF file from a new path also converts its tokenizer metadata once (cached by path),
so the local-file and the cold hf:// start both pay it and the warm start does not.

    python benchmarks/bench_cold_start.py                 # writes benchmarks/results/cold_start_<time>.json
    python benchmarks/bench_cold_start.py --repeats 3
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._common import machine_info, write_results  # noqa: E402

REPO_ID = "bench/SmolLM2-135M-Instruct-GGUF"
URI = f"hf://{REPO_ID}@main"
READY_DEADLINE_S = 600.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def copy_and_hash_bound(src: Path, workdir: Path) -> float:
    """Seconds to copy `src` on this disk, fsync it and sha256 it: a floor under any verified download."""
    dest = workdir / "bound-copy" / src.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    shutil.copyfile(src, dest)
    with open(dest, "rb+") as f:
        os.fsync(f.fileno())
    digest = hashlib.sha256()
    with open(dest, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    elapsed = time.perf_counter() - start
    shutil.rmtree(dest.parent)
    return elapsed


def run_download(dest: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "radixserve", "download", URI, str(dest), "--progress", "none"],
                   env=env, check=True, capture_output=True, text=True, timeout=READY_DEADLINE_S)
    return time.perf_counter() - start


def time_to_ready(model_path: str, env: dict[str, str], log: Path) -> float:
    """Seconds from starting `radixserve serve` to its /health answering 200, then stops it."""
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "radixserve", "serve", "--model-path", model_path, "--host", "127.0.0.1",
           "--port", str(port), "--device", "cpu", "--log-level", "warning"]
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = start + READY_DEADLINE_S
            while time.perf_counter() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with {proc.returncode}; see {log}")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                        return time.perf_counter() - start
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            raise RuntimeError(f"server not ready within {READY_DEADLINE_S} s; see {log}")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=1, help="times to repeat each measurement (median reported)")
    p.add_argument("--output", default=None, help="JSON path (default benchmarks/results/cold_start_<time>.json)")
    args = p.parse_args(argv)

    from tqdm.auto import tqdm

    from radixserve.model_loader.default_model import default_model_path
    from radixserve.testing.hub_standin import HubStandIn

    gguf = default_model_path()
    hub = HubStandIn().start()
    hub.publish(REPO_ID, {gguf.name: gguf.read_bytes()})
    samples: dict[str, list[float]] = {k: [] for k in (
        "copy_hash_bound_s", "download_cold_s", "download_warm_s", "serve_local_file_s", "serve_uri_cold_s",
        "serve_uri_warm_s")}
    warm_file_requests: list[int] = []
    try:
        with tempfile.TemporaryDirectory(prefix="cold-start-") as tmp:
            work = Path(tmp)
            for i in tqdm(range(args.repeats), desc="repeats", unit="run"):
                cache = work / f"cache-{i}"
                # A fresh node each repeat: no model cache and no derived-file cache (the tokenizer a
                # GGUF file's metadata is converted to, keyed by the file's path), for all three starts.
                env = {**os.environ, "HF_ENDPOINT": hub.url, "RADIXSERVE_MODEL_CACHE": str(cache),
                       "RADIXSERVE_CACHE": str(work / f"derived-{i}")}
                env.pop("HF_TOKEN", None)
                samples["copy_hash_bound_s"].append(copy_and_hash_bound(gguf, work))
                dest = work / f"download-{i}" / "model"
                samples["download_cold_s"].append(run_download(dest, env))
                hub.clear_log()
                samples["download_warm_s"].append(run_download(dest, env))
                warm_file_requests.append(len(hub.file_requests()))
                samples["serve_local_file_s"].append(time_to_ready(str(gguf), env, work / "serve-local.log"))
                samples["serve_uri_cold_s"].append(time_to_ready(URI, env, work / "serve-cold.log"))
                samples["serve_uri_warm_s"].append(time_to_ready(URI, env, work / "serve-warm.log"))
    finally:
        hub.stop()

    med = {k: round(statistics.median(v), 3) for k, v in samples.items()}
    size = gguf.stat().st_size
    ratios = {
        "download_cold_vs_copy_hash_bound": round(med["download_cold_s"] / med["copy_hash_bound_s"], 2),
        "serve_uri_cold_vs_local_file": round(med["serve_uri_cold_s"] / med["serve_local_file_s"], 3),
        "serve_uri_warm_vs_local_file": round(med["serve_uri_warm_s"] / med["serve_local_file_s"], 3),
    }
    import torch

    result: dict[str, Any] = {
        "benchmark": "cold_start", "command": " ".join(["bench_cold_start.py", *(argv or sys.argv[1:])]),
        "device": "cpu", "uri": URI, "model_file": gguf.name, "model_bytes": size,
        "hub": "radixserve.testing.hub_standin on 127.0.0.1 (no network cost)",
        "config": vars(args), "machine": machine_info(("radixserve", "torch", "huggingface_hub")),
        "torch_threads": torch.get_num_threads(),
        "median": med, "samples": samples, "ratios": ratios,
        "download_mb_s": round(size / med["download_cold_s"] / 1e6, 1),
        "warm_download_file_requests": warm_file_requests,
    }
    path = write_results("cold_start", result, args.output)
    print(f"{gguf.name} ({size / 1e6:.1f} MB): download cold {med['download_cold_s']} s "
          f"(x{ratios['download_cold_vs_copy_hash_bound']} of copy+hash {med['copy_hash_bound_s']} s), "
          f"warm {med['download_warm_s']} s with {warm_file_requests} file requests")
    print(f"serve to ready: local file {med['serve_local_file_s']} s, hf:// cold {med['serve_uri_cold_s']} s "
          f"(x{ratios['serve_uri_cold_vs_local_file']}), hf:// warm {med['serve_uri_warm_s']} s "
          f"(x{ratios['serve_uri_warm_vs_local_file']}); wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
