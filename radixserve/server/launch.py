"""`radixserve serve`: start the three processes and the HTTP server.

Stages (each logged): parse arguments; load the tokenizer (TokenizerManager side); start the
scheduler process (load the model, build the pools and the RadixCache, warm up) and the
detokenizer process; wait until both report ready; serve HTTP with uvicorn.

A watchdog thread waits on the children's sentinels: if one dies, /health turns 503, every
request in flight ends with a 503 (an error event then [DONE] if streaming), and after at most
DEATH_FLUSH_TIMEOUT_S for those to reach their clients the server exits with status 1, so
Kubernetes restarts the pod instead of a hung replica taking traffic. With --nnodes > 1 node 0 does
all of this for the ranks of every node; the other nodes run only their schedulers (see
`_serve_worker_node`). SIGTERM (or Ctrl-C) makes uvicorn stop accepting connections and wait up to
--graceful-shutdown-timeout for in-flight requests; new requests meanwhile get 503.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

# Only modules that do not import prometheus_client: the env var must be set before it is imported.
from radixserve.managers.ipc import PortArgs
from radixserve.managers.processes import MULTIPROC_ENV, SERVER_ADMISSION_ENV, ServerProcesses
from radixserve.model_store.base import SourceError
from radixserve.model_store.local import ModelPathError, materialize_model_path
from radixserve.server_args import ServerArgs, ServerArgsError
from radixserve.utils.log import configure_logging

if TYPE_CHECKING:
    from radixserve.grpc.server import GrpcServer
    from radixserve.managers.tokenizer_manager import TokenizerManager

logger = logging.getLogger("radixserve.server")
# After a child dies: how long the requests in flight get to send their error to their clients.
DEATH_FLUSH_TIMEOUT_S = 2.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="radixserve serve",
        description="Serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, "
                    "/generate, /health, /metrics, ...). With no --model-path it serves the embedded "
                    "SmolLM2-135M-Instruct on http://127.0.0.1:30000.",
    )
    ServerArgs.add_cli_args(parser)
    return parser


def public_args(server_args: ServerArgs) -> dict[str, Any]:
    d = dict(vars(server_args))
    if d.get("api_key"):
        d["api_key"] = "<set>"
    return d


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        server_args = ServerArgs.from_cli_args(args)
    except ServerArgsError as e:
        print(f"radixserve serve: error: {e}", file=sys.stderr)
        return 2
    configure_logging(server_args.log_level, "main")
    try:  # hf:// and s3:// are downloaded here, once, before any child process starts
        server_args = _materialize(server_args)
    except (ModelPathError, SourceError) as e:
        print(f"radixserve serve: error: {e}", file=sys.stderr)
        return 1
    # Before anything imports prometheus_client: every process records into this directory.
    metrics_dir = tempfile.mkdtemp(prefix="radixserve-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir
    os.environ[SERVER_ADMISSION_ENV] = "1"  # the schedulers apply the default queue limit
    port_args = PortArgs.new()
    procs = ServerProcesses(server_args, port_args)
    try:
        if server_args.node_rank > 0:
            return _serve_worker_node(server_args, procs)
        return _serve(server_args, port_args, procs)
    except RuntimeError as e:
        logger.error("%s", e)
        return 1
    finally:
        procs.stop()
        port_args.cleanup()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _materialize(server_args: ServerArgs) -> ServerArgs:
    path, name = materialize_model_path(server_args.model_path)
    if path == server_args.model_path:
        return server_args
    return server_args.replace(model_path=path, served_model_name=server_args.served_model_name or name)


def _serve(server_args: ServerArgs, port_args: PortArgs, procs: ServerProcesses) -> int:
    import uvicorn

    from radixserve.managers.tokenizer_manager import TokenizerManager
    from radixserve.model_loader.source import resolve_model_source
    from radixserve.model_loader.tokenizer import load_tokenizer
    from radixserve.server.http_server import ServerState, build_app

    logger.info("stage 1/4: loading the tokenizer")
    try:
        source = resolve_model_source(server_args.model_path, server_args.load_format, server_args.tokenizer_path)
        tokenizer = load_tokenizer(source.tokenizer_source)  # also warms the tokenizer cache for the children
    except (OSError, ValueError) as e:
        raise RuntimeError(f"cannot load the model: {e}") from e
    logger.info("stage 2/4: starting the scheduler (model load, KV pools, RadixCache, warm-up) and the detokenizer")
    info = procs.start()
    logger.info("stage 3/4: model %s ready: context %d, KV pool %d tokens, %s %s", info["model_name"],
                info["context_length"], info["max_total_num_tokens"], info["device"], info["dtype"])
    tm = TokenizerManager(server_args, port_args, tokenizer, info)
    state = ServerState(server_args=public_args(server_args), tokenizer_path=str(source.tokenizer_source),
                        model_path=str(source.path) if source.path is not None else server_args.model_path)
    app = build_app(tm, server_args.api_key, state)

    def on_death(proc: BaseProcess) -> None:
        state.healthy = False
        logger.error("the %s process died (exit code %s); shutting the server down", proc.name, proc.exitcode)
        _fail_inflight(tm, f"the {proc.name} process died; the server is restarting")
        procs.stop()
        logging.shutdown()
        os._exit(1)

    procs.watch(on_death)
    grpc_server = None
    if server_args.grpc_port is not None:
        from radixserve.grpc.server import GrpcServer

        grpc_server = GrpcServer(tm, state, server_args.api_key, server_args.host, server_args.grpc_port)

    # loop="asyncio": uvloop is installed for the router (router/cli.py); the server's gRPC front end
    # shares this loop and is only tested on asyncio's.
    config = uvicorn.Config(app, host=server_args.host, port=server_args.port, log_config=None, loop="asyncio",
                            log_level=server_args.log_level.lower(), access_log=False,
                            timeout_graceful_shutdown=int(server_args.graceful_shutdown_timeout) or None)
    server = _uvicorn_server(config, server_args, tm, grpc_server)
    url = f"http://{server_args.host}:{server_args.port}"
    logger.info("stage 4/4: serving %r at %s (OpenAI base URL %s/v1)", info["model_name"], url, url)
    from radixserve.utils.gc_freeze import freeze_startup_heap

    freeze_startup_heap("http")
    server.run()
    if not server.started:
        raise RuntimeError(f"the HTTP server could not start on {server_args.host}:{server_args.port}")
    if grpc_server is not None and grpc_server.failure is not None:
        raise RuntimeError(f"the gRPC server could not start: {grpc_server.failure}")
    logger.info("server stopped")
    return 0


def _uvicorn_server(config: Any, server_args: ServerArgs, tm: TokenizerManager,
                    grpc_server: GrpcServer | None) -> Any:
    """uvicorn's Server, which drains on SIGTERM and runs the gRPC server (if any) beside HTTP."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[Any] | None = None) -> None:
            # gRPC starts after uvicorn's lifespan has started the TokenizerManager, on its loop.
            await super().startup(sockets=sockets)
            if grpc_server is not None and not self.should_exit and not await grpc_server.start_serving():
                self.should_exit = True

        async def shutdown(self, sockets: list[Any] | None = None) -> None:
            # gRPC first: the TokenizerManager closes with the HTTP app. Its calls in flight get the
            # grace period; HTTP requests meanwhile keep running and get what is left of it.
            if grpc_server is not None:
                left = await grpc_server.stop_within(server_args.graceful_shutdown_timeout)
                if self.config.timeout_graceful_shutdown is not None:
                    self.config.timeout_graceful_shutdown = max(1, int(left))
            await super().shutdown(sockets=sockets)

        def handle_exit(self, sig: int, frame: Any) -> None:
            if not tm.draining:
                logger.info("signal %d: refusing new requests, waiting up to %.0fs for %d in flight", sig,
                            server_args.graceful_shutdown_timeout, tm.num_inflight)
            tm.draining = True
            super().handle_exit(sig, frame)
            # uvicorn re-raises captured signals after shutdown, which would kill this process before
            # it stops the children and removes its directories; a drained server exits 0 instead.
            self._captured_signals.clear()

    return Server(config)


def _serve_worker_node(server_args: ServerArgs, procs: ServerProcesses) -> int:
    """Node R > 0 of a multi-node server: its ranks' schedulers only (node 0 serves HTTP and
    broadcasts every input to them). Exits 1 when one of them dies, which is how the group
    breaking shows here: a rank on another node that dies ends every rank's collectives with an
    error. SIGTERM (or Ctrl-C) stops the ranks and exits 0."""
    ranks = server_args.local_ranks
    logger.info("node %d of %d: starting world ranks %d-%d, meeting node 0 at %s", server_args.node_rank,
                server_args.nnodes, ranks.start, ranks.stop - 1, server_args.dist_init_addr)
    procs.start(with_detokenizer=False)
    logger.info("node %d ready: serving ranks %d-%d for node 0", server_args.node_rank, ranks.start, ranks.stop - 1)
    done = threading.Event()
    died: list[BaseProcess] = []

    def on_death(proc: BaseProcess) -> None:
        died.append(proc)
        done.set()

    procs.watch(on_death)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(1.0):
        pass
    if died:
        logger.error("the %s process died (exit code %s): the multi-node group is broken; exiting",
                     died[0].name, died[0].exitcode)
        return 1
    logger.info("signal received: stopping")
    return 0


def _fail_inflight(tm: Any, message: str) -> None:
    """From the watchdog thread: end every request in flight with a 503 (an error event when
    streaming) and give the responses up to DEATH_FLUSH_TIMEOUT_S to reach their clients."""
    from radixserve.errors import UnavailableError

    loop = tm.loop
    if loop is None or loop.is_closed():
        return
    error = UnavailableError(message, code="process_died")
    try:
        loop.call_soon_threadsafe(tm.fail_all, error)
    except RuntimeError:  # the loop closed meanwhile
        return
    deadline = time.monotonic() + DEATH_FLUSH_TIMEOUT_S
    while tm.num_inflight and time.monotonic() < deadline:
        time.sleep(0.02)
    # The handlers have their error; let the last bytes leave the sockets.
    time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


if __name__ == "__main__":
    sys.exit(main())
