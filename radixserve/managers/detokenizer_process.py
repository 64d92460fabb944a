"""The detokenizer subprocess: BatchTokenIDOut in, BatchStrOut out, over ZMQ."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import traceback
from multiprocessing.connection import Connection

import zmq

from radixserve.managers.detokenizer_manager import DetokenizerManager
from radixserve.managers.ipc import (
    DETOKENIZER_INPUT_DECODER,
    ENCODER,
    PortArgs,
    bind_pull,
    connect_push,
    init_child_process,
)
from radixserve.server_args import ServerArgs
from radixserve.utils.gc_freeze import freeze_startup_heap
from radixserve.utils.log import configure_logging
from radixserve.utils.step_log import StepLog

logger = logging.getLogger(__name__)


def run_detokenizer_process(server_args: ServerArgs, port_args: PortArgs, ready: Connection) -> None:
    with contextlib.suppress(ImportError):  # `radixserve::detokenizer` in ps and top
        import setproctitle

        setproctitle.setproctitle("radixserve::detokenizer")
    configure_logging(server_args.log_level, "detokenizer")
    init_child_process()
    try:
        from radixserve.model_loader.source import resolve_model_source
        from radixserve.model_loader.tokenizer import load_tokenizer

        source = resolve_model_source(server_args.model_path, server_args.load_format, server_args.tokenizer_path)
        manager = DetokenizerManager(load_tokenizer(source.tokenizer_source))
        ctx = zmq.Context()
        recv_sock = bind_pull(ctx, port_args.detokenizer_input)
        send_sock = connect_push(ctx, port_args.tokenizer_input)
    except Exception as e:
        ready.send({"status": "error", "message": f"{type(e).__name__}: {e}"})
        sys.exit(1)
    freeze_startup_heap("detokenizer")
    ready.send({"status": "ready", "detokenizer_pid": os.getpid()})
    ready.close()
    step_log = StepLog.from_env("detokenizer")  # RADIXSERVE_STEP_LOG
    try:
        while True:
            out = DETOKENIZER_INPUT_DECODER.decode(recv_sock.recv())
            started = time.perf_counter()
            send_sock.send(ENCODER.encode(manager.handle(out)))
            if step_log is not None:
                step_log.output_batch(len(out.rids), (time.perf_counter() - started) * 1e3)
    except Exception:
        logger.error("detokenizer crashed:\n%s", traceback.format_exc())
        sys.exit(1)
