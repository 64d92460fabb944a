"""The server's child processes: one scheduler per rank of this node (tp x pp / nnodes) and the
detokenizer.

Started with the spawn method, each reports {"status": "ready", ...} or {"status": "error", ...}
on a pipe; a watchdog waits on their sentinels. `radixserve serve` and the offline Engine's
multi-rank driver both start them here. Imports nothing that loads prometheus_client.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from radixserve.managers.ipc import PortArgs
from radixserve.server_args import ServerArgs

logger = logging.getLogger(__name__)

# Every process records its metrics into this directory (prometheus-client multiprocess mode).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CHILD_STOP_TIMEOUT_S = 5.0
# Set by `radixserve serve`: the schedulers apply the default --max-queued-requests (the offline
# Engine, which never answers 429, queues without limit unless told otherwise).
SERVER_ADMISSION_ENV = "RADIXSERVE_SERVER_ADMISSION"


class ServerProcesses:
    """The scheduler and detokenizer children, their start-up handshake and their watchdog."""

    def __init__(self, server_args: ServerArgs, port_args: PortArgs) -> None:
        self.server_args = server_args
        self.port_args = port_args
        self.ctx = mp.get_context("spawn")
        self.procs: list[BaseProcess] = []
        self.stopping = False

    def start(self, with_detokenizer: bool = True) -> dict[str, Any]:
        """Start one scheduler process per rank of this node, tp x pp / nnodes of them (and the
        detokenizer); return world rank 0's model info (node 0 only: other nodes get the pids)."""
        from radixserve.managers.detokenizer_process import run_detokenizer_process
        from radixserve.managers.scheduler_process import rank_name, run_scheduler_process

        sa = self.server_args
        leader = rank_name(sa, 0)
        targets: list[tuple[str, Any, tuple[Any, ...]]] = [
            (rank_name(sa, rank), run_scheduler_process, (rank,)) for rank in sa.local_ranks]
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
