"""How the offline Engine reaches the scheduler: in this process, or in scheduler processes.

Both drive the same `Scheduler.handle` / `Scheduler.step` loop; the process driver starts the
scheduler processes of `radixserve serve` (one per TP rank) and exchanges the same ZMQ
messages with rank 0, without an HTTP server or a detokenizer (the Engine decodes itself).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import zmq

from radixserve.managers.io_struct import AbortReq, BatchTokenIDOut, TokenizedGenerateReqInput
from radixserve.managers.ipc import DETOKENIZER_INPUT_DECODER, ENCODER, PortArgs, bind_pull, connect_push
from radixserve.managers.processes import ServerProcesses
from radixserve.managers.scheduler import Scheduler
from radixserve.server_args import ServerArgs

logger = logging.getLogger(__name__)

POLL_MS = 500


class SchedulerDriver(Protocol):
    def submit(self, reqs: list[TokenizedGenerateReqInput]) -> None: ...
    def abort(self, rids: list[str]) -> None: ...
    def next_output(self) -> BatchTokenIDOut: ...
    def close(self) -> None: ...


class InProcessDriver:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def submit(self, reqs: list[TokenizedGenerateReqInput]) -> None:
        for r in reqs:
            self.scheduler.handle(r)

    def next_output(self) -> BatchTokenIDOut:
        while True:
            out = self.scheduler.step()
            if out is not None:
                return out
            if not self.scheduler.has_work():
                raise RuntimeError("scheduler went idle with requests unfinished")

    def abort(self, rids: list[str]) -> None:
        for rid in rids:
            self.scheduler.handle(AbortReq(rid))
        # Run until the aborts are processed, so the pools are clean for the next call.
        while self.scheduler.has_work() and not self.scheduler.waiting_queue and self.scheduler.step():
            pass

    def close(self) -> None:
        self.scheduler.waiting_queue.clear()


class ProcessDriver:
    def __init__(self, server_args: ServerArgs) -> None:
        self.port_args = PortArgs.new()
        self.ctx = zmq.Context()
        # Bound before the scheduler starts: it connects its outputs here.
        self.recv = bind_pull(self.ctx, self.port_args.detokenizer_input)
        self.control = bind_pull(self.ctx, self.port_args.tokenizer_input)  # replies to control messages
        self.send = connect_push(self.ctx, self.port_args.scheduler_input)
        # No HTTP side reads cache events here (docs/router.md, "Cache events").
        self.procs = ServerProcesses(server_args.replace(disable_cache_events=True), self.port_args)
        try:
            self.info: dict[str, Any] = self.procs.start(with_detokenizer=False)
        except BaseException:
            self.close()
            raise

    def submit(self, reqs: list[TokenizedGenerateReqInput]) -> None:
        for r in reqs:
            self.send.send(ENCODER.encode(r))

    def abort(self, rids: list[str]) -> None:
        for rid in rids:
            self.send.send(ENCODER.encode(AbortReq(rid)))

    def next_output(self) -> BatchTokenIDOut:
        while not self.recv.poll(POLL_MS):
            dead = [p for p in self.procs.procs if not p.is_alive()]
            if dead:
                raise RuntimeError(f"scheduler process {dead[0].name} died (exit code {dead[0].exitcode})")
        return DETOKENIZER_INPUT_DECODER.decode(self.recv.recv())

    def close(self) -> None:
        self.procs.stop()
        self.ctx.destroy(linger=0)
        self.port_args.cleanup()
