"""The device-call scripts (benchmarks/run_gpu_*.sh) run where minutes are scarce: a syntax error or a
flag that a benchmark does not take would waste a call. Each script parses with `bash -n`, and every
`--flag` it passes to a benchmarks/*.py tool or to `radixserve.server` is one that tool declares."""

from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("run_gpu_*.sh"))
# A command's words run to the end of its logical line (continuations joined) or a redirection/pipe.
INVOCATION = re.compile(r"(benchmarks/\w+\.py|-m radixserve\.server)\b([^\n|>;&]*)")
FLAG = re.compile(r"(?<![\w$-])(--[a-z][a-z0-9-]*)")


def _logical_lines(text: str) -> str:
    return re.sub(r"\\\n\s*", " ", text)


@cache
def _server_flags() -> str:
    return subprocess.run([sys.executable, "-m", "radixserve.server", "--help"], capture_output=True, text=True,
                          check=True).stdout


def _declared(tool: str) -> str:
    if tool == "-m radixserve.server":
        return _server_flags()
    return (BENCHMARKS.parent / tool).read_text()


def test_there_are_device_scripts() -> None:
    assert len(SCRIPTS) >= 10 and BENCHMARKS / "run_gpu_tp_scaling.sh" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_each_device_script_parses_and_passes_only_declared_flags(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)
    unknown = []
    calls = 0
    for tool, words in INVOCATION.findall(_logical_lines(script.read_text())):
        calls += 1
        declared = _declared(tool)
        unknown += [f"{tool} {flag}" for flag in FLAG.findall(words) if flag not in declared]
    assert calls > 0 or "pytest" in script.read_text()
    assert unknown == []


def test_an_undeclared_flag_is_caught() -> None:
    text = "python3 benchmarks/bench_offline.py --device cuda \\\n  --no-such-flag 3 > log\n"
    (tool, words), = INVOCATION.findall(_logical_lines(text))
    assert [f for f in FLAG.findall(words) if f not in _declared(tool)] == ["--no-such-flag"]
