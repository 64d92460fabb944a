"""`radixserve serve`: start the three processes and the HTTP server.

Stages (each logged): parse arguments; load the tokenizer (TokenizerManager side); start the
scheduler process (load the model, build the pools and the RadixCache, warm up) and the
detokenizer process; wait until both report ready; serve HTTP with uvicorn.

A watchdog thread waits on the children's sentinels: if one dies, /health turns 503 and the
server exits with status 1 at once, so Kubernetes restarts the pod instead of a hung replica
taking traffic. SIGTERM (or Ctrl-C) makes uvicorn stop accepting connections and wait up to
--graceful-shutdown-timeout for in-flight requests; new requests meanwhile get 503.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from radixserve.server_args import ServerArgs, ServerArgsError
from radixserve.utils.log import configure_logging

logger = logging.getLogger("radixserve.server")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CHILD_STOP_TIMEOUT_S = 5.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="radixserve serve",
        description="Serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, "
                    "/generate, /health, /metrics, ...). With no --model-path it serves the embedded "
                    "SmolLM2-135M-Instruct on http://127.0.0.1:30000.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ServerArgs.add_cli_args(parser)
    return parser


def public_args(server_args: ServerArgs) -> dict[str, Any]:
    d = dict(vars(server_args))
    if d.get("api_key"):
        d["api_key"] = "<set>"
    return d


class ServerProcesses:
    """The scheduler and detokenizer children, their start-up handshake and their watchdog."""

    def __init__(self, server_args: ServerArgs, port_args: Any) -> None:
        self.server_args = server_args
        self.port_args = port_args
        self.ctx = mp.get_context("spawn")
        self.procs: list[BaseProcess] = []
        self.stopping = False

    def start(self, with_detokenizer: bool = True) -> dict[str, Any]:
        """Start one scheduler process per rank, tp x pp of them (and the detokenizer); return world
        rank 0's model info."""
        from radixserve.managers.detokenizer_process import run_detokenizer_process
        from radixserve.managers.scheduler_process import rank_name, run_scheduler_process

        sa = self.server_args
        world = sa.tensor_parallel_size * sa.pipeline_parallel_size
        leader = rank_name(sa, 0)
        targets: list[tuple[str, Any, tuple[Any, ...]]] = [
            (rank_name(sa, rank), run_scheduler_process, (rank,)) for rank in range(world)]
        if with_detokenizer:
            targets.append(("detokenizer", run_detokenizer_process, ()))
        pipes: list[tuple[str, Connection, BaseProcess]] = []
        for name, target, extra in targets:
            reader, writer = self.ctx.Pipe(duplex=False)
            proc: BaseProcess = self.ctx.Process(target=target, args=(self.server_args, self.port_args, writer, *extra),
                                                 name=f"radixserve-{name}", daemon=True)
            proc.start()
            writer.close()
            self.procs.append(proc)
            pipes.append((name, reader, proc))
            logger.info("started the %s process (pid %s)", name, proc.pid)
        info: dict[str, Any] = {"scheduler_pids": [p.pid for _, _, p in pipes if "scheduler" in p.name]}
        pending = {reader: (name, proc) for name, reader, proc in pipes}
        # Wait on every child at once: a rank that fails makes its peers block in a collective,
        # so waiting on them one by one could hang.
        while pending:
            sentinels = {proc.sentinel: reader for reader, (_, proc) in pending.items()}
            for ready in wait([*pending, *sentinels]):
                reader = sentinels[ready] if isinstance(ready, int) else ready  # type: ignore[assignment]
                if reader not in pending:
                    continue
                name, proc = pending.pop(reader)
                msg = self._read_ready(name, reader, proc)
                if msg.get("status") != "ready":
                    raise RuntimeError(f"{name} failed to start: {msg.get('message')}")
                logger.info("%s ready", name)
                if name in (leader, "detokenizer"):
                    info.update({k: v for k, v in msg.items() if k != "status"})
        return info

    @staticmethod
    def _read_ready(name: str, reader: Connection, proc: BaseProcess) -> dict[str, Any]:
        if reader.poll():
            try:
                msg: dict[str, Any] = reader.recv()
                return msg
            except EOFError:
                pass
        proc.join(5)
        return {"status": "error", "message": f"the {name} process exited (code {proc.exitcode})"}

    def watch(self, on_death: Any) -> None:
        def loop() -> None:
            sentinels = {p.sentinel: p for p in self.procs}
            ready = wait(list(sentinels))
            if self.stopping:
                return
            dead = sentinels[ready[0]]  # type: ignore[index]
            on_death(dead)

        threading.Thread(target=loop, name="child-watchdog", daemon=True).start()

    def stop(self) -> None:
        # Children ignore SIGTERM (see init_child_process) and keep no state worth flushing.
        self.stopping = True
        for p in self.procs:
            if p.is_alive():
                p.kill()
        for p in self.procs:
            p.join(CHILD_STOP_TIMEOUT_S)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        server_args = ServerArgs.from_cli_args(args)
    except ServerArgsError as e:
        print(f"radixserve serve: error: {e}", file=sys.stderr)
        return 2
    configure_logging(server_args.log_level, "main")
    # Before anything imports prometheus_client: every process records into this directory.
    metrics_dir = tempfile.mkdtemp(prefix="radixserve-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir
    from radixserve.managers.ipc import PortArgs

    port_args = PortArgs.new()
    procs = ServerProcesses(server_args, port_args)
    try:
        return _serve(server_args, port_args, procs)
    except RuntimeError as e:
        logger.error("%s", e)
        return 1
    finally:
        procs.stop()
        port_args.cleanup()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _serve(server_args: ServerArgs, port_args: Any, procs: ServerProcesses) -> int:
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
    state = ServerState(server_args=public_args(server_args))
    app = build_app(tm, server_args.api_key, state)

    def on_death(proc: BaseProcess) -> None:
        state.healthy = False
        logger.error("the %s process died (exit code %s); shutting the server down", proc.name, proc.exitcode)
        procs.stop()
        logging.shutdown()
        os._exit(1)

    procs.watch(on_death)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if not tm.draining:
                logger.info("signal %d: refusing new requests, waiting up to %.0fs for %d in flight", sig,
                            server_args.graceful_shutdown_timeout, tm.num_inflight)
            tm.draining = True
            super().handle_exit(sig, frame)
            # uvicorn re-raises captured signals after shutdown, which would kill this process before
            # it stops the children and removes its directories; a drained server exits 0 instead.
            self._captured_signals.clear()

    config = uvicorn.Config(app, host=server_args.host, port=server_args.port, log_config=None,
                            log_level=server_args.log_level.lower(), access_log=False,
                            timeout_graceful_shutdown=int(server_args.graceful_shutdown_timeout) or None)
    server = Server(config)
    url = f"http://{server_args.host}:{server_args.port}"
    logger.info("stage 4/4: serving %r at %s (OpenAI base URL %s/v1)", info["model_name"], url, url)
    server.run()
    if not server.started:
        raise RuntimeError(f"the HTTP server could not start on {server_args.host}:{server_args.port}")
    logger.info("server stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
