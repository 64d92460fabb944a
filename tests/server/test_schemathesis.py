"""schemathesis against a running server: what /openapi.json promises is what the server does.

A short, seeded run over every operation (examples, coverage and fuzzing phases) over the tiny
random model: no 5xx, every response matches its documented schema, status code, content type
and headers, and bodies the schema forbids are refused. Not checked: that every schema-valid
body is accepted (positive_data_acceptance): some rules span fields (`best_of == n`, a token id
inside this model's vocabulary) and JSON Schema cannot state them, so they are 400s the schema
cannot predict.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.server.server_harness import ServerProcess

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
          "response_schema_conformance,negative_data_rejection,unsupported_method,missing_required_header,"
          "ignored_auth")
BUDGET_S = 30


@pytest.mark.slow
def test_schemathesis_finds_nothing(tiny_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st is not None, "schemathesis is a dev dependency (pip install -e .[dev])"
    server = tiny_server("--api-key", "sk-test")
    cmd = [st, "run", f"{server.url}/openapi.json", "--checks", CHECKS, "--seed", "20261201",
           "--max-examples", "10", "--max-time", str(BUDGET_S), "--workers", "1",
           "--phases", "examples,coverage,fuzzing", "-H", "Authorization: Bearer sk-test",
           "--generation-deterministic", "--request-timeout", "60",
           # An endless NDJSON stream by design (a router reads it for as long as it runs);
           # tests/cache_events covers it.
           "--exclude-path", "/v1/cache/events"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=BUDGET_S + 120, cwd=tmp_path)
    report = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    assert "generated" in run.stdout and "Tested:" in run.stdout, report
    assert server.proc.poll() is None, "the server died under schemathesis"
