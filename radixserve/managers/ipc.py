"""ZMQ plumbing shared by the three processes: socket addresses, typed send/recv, parent watch."""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

import msgspec
import zmq
from tqdm import tqdm

from radixserve.managers.io_struct import BatchTokenIDOut, SchedulerInput, TokenizerManagerInput

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class PortArgs:
    """ipc endpoints of one server instance; a fresh directory per instance so servers never collide."""

    ipc_dir: str
    scheduler_input: str  # TokenizerManager -> Scheduler (PULL bound by the scheduler)
    detokenizer_input: str  # Scheduler -> Detokenizer (PULL bound by the detokenizer)
    tokenizer_input: str  # Detokenizer and Scheduler -> TokenizerManager (PULL bound by it)

    @classmethod
    def new(cls) -> PortArgs:
        d = tempfile.mkdtemp(prefix="radixserve-ipc-")
        return cls(d, f"ipc://{d}/scheduler", f"ipc://{d}/detokenizer", f"ipc://{d}/tokenizer")

    @property
    def dist_store(self) -> str:
        """torch.distributed file store of the TP ranks."""
        return os.path.join(self.ipc_dir, "dist_store")

    def cleanup(self) -> None:
        shutil.rmtree(self.ipc_dir, ignore_errors=True)


def bind_pull(ctx: zmq.Context[Any], addr: str) -> zmq.Socket[Any]:
    sock: zmq.Socket[Any] = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.bind(addr)
    return sock


def connect_push(ctx: zmq.Context[Any], addr: str) -> zmq.Socket[Any]:
    sock: zmq.Socket[Any] = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    # No high-water mark: a burst of requests while the scheduler runs a long batch must queue,
    # not fail (ZMQ's default of 1000 messages would make sends fail under load).
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.connect(addr)
    return sock


ENCODER = msgspec.msgpack.Encoder()
SCHEDULER_INPUT_DECODER = msgspec.msgpack.Decoder(SchedulerInput)
DETOKENIZER_INPUT_DECODER = msgspec.msgpack.Decoder(BatchTokenIDOut)
TOKENIZER_INPUT_DECODER = msgspec.msgpack.Decoder(TokenizerManagerInput)


def recv_raw(sock: zmq.Socket[Any]) -> list[bytes]:
    """Every message waiting on the socket, undecoded, without blocking."""
    out: list[bytes] = []
    while True:
        try:
            out.append(sock.recv(zmq.NOBLOCK))
        except zmq.Again:
            return out


def init_child_process(interval_s: float = 1.0) -> None:
    """Signals and lifetime of a server child process.

    Ctrl-C and a SIGTERM to the whole process group reach the children too; they ignore both so
    that the main process can drain in-flight requests first, and it stops them itself.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # tqdm's class lock is a multiprocessing semaphore, made at the first bar (even a disabled one).
    # The main process kills its children at shutdown, and the resource tracker then reports a killed
    # child's semaphore as leaked on every Ctrl-C. A child's bars are its own: a thread lock serves.
    tqdm.set_lock(threading.RLock())
    watch_parent(interval_s)


def watch_parent(interval_s: float = 1.0) -> None:
    """Exit this process when its parent is gone (SIGKILL of the server leaves no orphans on the GPU)."""
    # The pid multiprocessing recorded at spawn: a parent that died before this line ran is
    # already replaced by init in getppid(), and the child would otherwise live on.
    spawner = multiprocessing.parent_process()
    parent = spawner.pid if spawner is not None and spawner.pid is not None else os.getppid()

    def loop() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                logger.error("parent process %d is gone; exiting", parent)
                os._exit(1)

    threading.Thread(target=loop, name="parent-watch", daemon=True).start()
