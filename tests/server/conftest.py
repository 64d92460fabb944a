from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.server_harness import ServerProcess

API_KEY = "sk-radixserve-test"


@pytest.fixture(scope="session")
def smol_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The embedded SmolLM2 behind `radixserve serve --api-key ...`, shared by the API tests."""
    log = tmp_path_factory.mktemp("smol_server") / "server.log"
    # The float32 reference path: these tests assert exact greedy equality across batch compositions
    # (64 concurrent streams == sequential). The packed int4 path rounds each linear layer's input to
    # bf16, which turns the fp32 batch-order noise of the other ops into rare flips at greedy near-ties
    # (docs/quantization.md); it is tested in tests/model_loader/test_gguf_packed.py.
    # --grpc-port 0: gRPC beside HTTP (tests/server/test_grpc.py learns the port from /get_server_info).
    server = ServerProcess(["--log-level", "warning", "--gguf-dequantize", "--grpc-port", "0"], log,
                           api_key=API_KEY).wait_ready()
    yield server
    server.stop()


@pytest.fixture
def tiny_server(tiny_models: dict[str, Path], tmp_path: Path) -> Iterator[object]:
    """Factory: a server over the tiny random Llama (starts in seconds); stopped after the test."""
    started: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        server = ServerProcess(["--model-path", str(tiny_models["llama"]), *args],
                               tmp_path / f"server{len(started)}.log")
        started.append(server)
        return server.wait_ready()

    yield start
    for s in started:
        s.stop()
