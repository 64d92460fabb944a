"""Shared by the benchmarks: machine/version info and writing a results JSON file."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@contextlib.contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """`env` in os.environ for the block (a switch an engine reads while it is built), the previous values
    back after it."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _module_version(name: str) -> str | None:
    try:
        version = getattr(importlib.import_module(name.replace("-", "_")), "__version__", None)
    except Exception:  # any import failure means: no version to report
        return None
    return str(version) if version is not None else None


def machine_info(packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """CPU, memory, OS, Python, git commit and the versions of `packages` (None if absent)."""
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            # Importable but not installed (a device run puts the tree on PYTHONPATH): its __version__.
            versions[name] = _module_version(name)
    commit, dirty = git_state()
    mem_gb = None
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        mem_gb = round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)
    return {
        "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "memory_gb": mem_gb,
        "platform": platform.platform(), "python": sys.version.split()[0],
        "git_commit": commit, "git_dirty": dirty, "versions": versions,
    }


# Where a device run finds the commit when its copy of the tree has no .git: write it there first
# (`git rev-parse HEAD > .gpu_assets/git_commit`; .gpu_assets travels with the run) or set the
# environment variable.
GIT_COMMIT_FILE = Path(__file__).resolve().parent.parent / ".gpu_assets" / "git_commit"
GIT_COMMIT_ENV = "RADIXSERVE_GIT_COMMIT"


# Environment that only says where things are, not how the engine runs.
_LOCATION_ENV = frozenset((GIT_COMMIT_ENV, "RADIXSERVE_CACHE", "RADIXSERVE_TEST_TOKENIZER"))


def command_line() -> str:
    """This process's command as a reader would type it, with the RADIXSERVE_* switches it ran under
    (e.g. RADIXSERVE_ONE_ROW_FUSION=0) in front, so that the recorded command reproduces the figure."""
    env = [f"{k}={v}" for k, v in sorted(os.environ.items())
           if k.startswith("RADIXSERVE_") and k not in _LOCATION_ENV]
    return " ".join([*env, sys.executable, *sys.argv])


def git_state() -> tuple[str | None, bool | None]:
    """(commit, whether the tree has uncommitted changes): from git, else from the env/file above
    (dirty then unknown: None)."""
    cwd = Path(__file__).parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=cwd, timeout=5).stdout.strip() or None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True, cwd=cwd, timeout=10)
        dirty = bool(status.stdout.strip()) if commit and status.returncode == 0 else None
        if status.returncode != 0:
            # A .git that answers rev-parse but not status is not this tree's checkout (the device
            # copy of a working tree once recorded the session's base commit this way): use the
            # commit written for the run instead.
            commit = None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    written = os.environ.get(GIT_COMMIT_ENV) or (
        GIT_COMMIT_FILE.read_text().strip() if GIT_COMMIT_FILE.is_file() else "") or None
    if commit is None:
        return written, dirty
    if written and written != commit and not _has_commit(cwd, written):
        # The device copy of a working tree carries a .git of the session's base commit, which answers
        # status too (every later commit then reads as uncommitted changes). A commit written for the
        # run that this .git has never seen is newer than it: that commit is the tree's.
        return written, None
    return commit, dirty


def _has_commit(cwd: Path, commit: str) -> bool:
    try:
        return subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True, cwd=cwd,
                              timeout=5).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def write_results(prefix: str, result: dict[str, Any], path: str | Path | None = None) -> Path:
    """Write `result` as JSON to `path`, or to results/<prefix>_<UTC time>.json."""
    out = Path(path) if path else RESULTS_DIR / f"{prefix}_{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    return out


def replay_ms(graph: Any, iters: int) -> float:
    """Milliseconds per replay of a captured CUDA graph, `iters` replays between two CUDA events
    (one replay first, so nothing of the capture is in the timing)."""
    import torch

    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return float(start.elapsed_time(end) / iters)


def captured(fn: Callable[[], Any], device: Any, launches: int = 1) -> Callable[[], Any]:
    """`launches` calls of fn in one CUDA graph (warmed up on a side stream first), as a replay function;
    on the CPU fn itself. The replay function keeps fn alive: its closure may own tensors the graph
    reads (copies made for it), whose memory would otherwise go to the next allocation."""
    import torch

    if torch.device(device).type != "cuda":
        return fn
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(launches):
            fn()
    kept = (g, fn)

    def replay() -> None:
        kept[0].replay()
    return replay


def graph_seconds(fns: list[Callable[[], Any]], iters: int = 30) -> float:
    """Median seconds of one replay of a CUDA graph that runs `fns` in order (warmed up on a side
    stream first): GPU time as a decode step's graph runs it, without launch overhead."""
    import statistics

    import torch

    def in_order() -> None:
        for f in fns:
            f()

    replay = captured(in_order, "cuda")
    for _ in range(3):
        replay()
    samples = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        replay()
        b.record()
        b.synchronize()
        samples.append(a.elapsed_time(b) / 1e3)
    return float(statistics.median(samples))


def hf_random_model(shape: str, dtype: Any, device: str) -> Any:
    """A transformers model of a named shape (radixserve's NAMED_SHAPES) with random weights, made on
    `device`: the baseline beside an Engine run with --load-format dummy."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from radixserve.configs.model_config import NAMED_SHAPES

    config = dict(NAMED_SHAPES[shape])
    arch = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3",
            "MixtralForCausalLM": "mixtral", "Qwen2MoeForCausalLM": "qwen2_moe", "Qwen3MoeForCausalLM": "qwen3_moe"}[
        config.pop("architectures")[0]]
    with torch.device(device):
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(arch, **config), dtype=dtype)
