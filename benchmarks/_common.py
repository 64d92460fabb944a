"""Shared by the benchmarks: machine/version info and writing a results JSON file."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """CPU, memory, OS, Python, git commit and the versions of `packages` (None if absent)."""
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    mem_gb = None
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        mem_gb = round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)
    return {
        "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "memory_gb": mem_gb,
        "platform": platform.platform(), "python": sys.version.split()[0],
        "git_commit": commit, "versions": versions,
    }


def write_results(prefix: str, result: dict[str, Any], path: str | Path | None = None) -> Path:
    """Write `result` as JSON to `path`, or to results/<prefix>_<UTC time>.json."""
    out = Path(path) if path else RESULTS_DIR / f"{prefix}_{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    return out
