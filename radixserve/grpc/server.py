"""The gRPC server that `radixserve serve --grpc-port N` runs beside uvicorn.

It is a `grpc.aio` server on uvicorn's event loop in the main process, so its handlers call the
TokenizerManager directly, as the HTTP routes do (no thread, no second loop). launch.py starts
it once uvicorn (and so the TokenizerManager) has started, and stops it before the HTTP server
shuts down, because the TokenizerManager closes with the HTTP app.
"""

from __future__ import annotations

import logging
import time

import grpc.aio

from radixserve.grpc import stubs
from radixserve.grpc.servicer import RadixServeServicer
from radixserve.managers.tokenizer_manager import TokenizerManager
from radixserve.server.http_server import MAX_BODY_BYTES, ServerState

logger = logging.getLogger(__name__)


def grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcServer:
    def __init__(self, tm: TokenizerManager, state: ServerState, api_key: str | None, host: str, port: int) -> None:
        self.tm = tm
        self.state = state
        self.api_key = api_key
        self.address = grpc_address(host, port)
        self.port: int | None = None  # the bound port, once started (--grpc-port 0 picks one)
        self.failure: Exception | None = None  # why it could not start
        self._server: grpc.aio.Server | None = None

    async def start(self) -> int:
        """Bind and start serving; returns the port. RuntimeError if the address cannot be bound."""
        pb2, pb2_grpc = stubs.load()
        # A prompt's token ids may be as large as the HTTP server's body limit allows. grpc-core
        # binds with SO_REUSEPORT by default, so a second server on a taken port would start and
        # share it silently: off, a taken port is an error at start-up.
        options = [("grpc.max_receive_message_length", MAX_BODY_BYTES), ("grpc.so_reuseport", 0)]
        server = grpc.aio.server(options=options)
        pb2_grpc.add_RadixServeServicer_to_server(RadixServeServicer(pb2, self.tm, self.state, self.api_key), server)
        try:
            port = server.add_insecure_port(self.address)
        except RuntimeError as e:  # grpcio raises on a port in use; older versions returned 0
            raise RuntimeError(f"the gRPC server cannot bind {self.address}: {e}") from e
        if port == 0:
            raise RuntimeError(f"the gRPC server cannot bind {self.address}")
        await server.start()
        self._server, self.port = server, port
        return port

    async def start_serving(self) -> bool:
        """start(), logging the address; False (and `failure` set) if it cannot start."""
        try:
            port = await self.start()
        except (RuntimeError, ImportError) as e:  # a taken port; stubs missing and not generatable
            self.failure = e
            return False
        # --grpc-port 0: GET /get_server_info (and GetServerInfo) tell the port that was picked.
        self.state.server_args["grpc_port"] = port
        logger.info("serving gRPC (radixserve.v1.RadixServe) at %s", self.address.rsplit(":", 1)[0] + f":{port}")
        return True

    async def stop_within(self, timeout: float) -> float:
        """stop(timeout); returns what is left of `timeout`."""
        started = time.monotonic()
        await self.stop(timeout)
        return timeout - (time.monotonic() - started)

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls at once; let those in flight run up to `grace` seconds, then cancel
        them (which aborts their requests)."""
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
