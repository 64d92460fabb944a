"""The scheduler subprocess: ModelRunner + Scheduler driven by ZMQ messages.

The loop is the offline Engine's loop (`Scheduler.handle` for inputs, `Scheduler.step` for one
batch) with sockets around it: drain the input socket, step, send `BatchTokenIDOut` to the
detokenizer. With nothing to do it blocks on the socket instead of spinning.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

import zmq

from radixserve.managers.io_struct import TokenizedGenerateReqInput
from radixserve.managers.ipc import (
    ENCODER,
    SCHEDULER_INPUT_DECODER,
    PortArgs,
    bind_pull,
    connect_push,
    init_child_process,
    recv_all,
)
from radixserve.managers.scheduler import Scheduler
from radixserve.server_args import ServerArgs
from radixserve.utils.log import configure_logging

logger = logging.getLogger(__name__)

IDLE_POLL_MS = 500
METRICS_INTERVAL_S = 0.5
WARMUP_TOKENS = 4


def build_scheduler(server_args: ServerArgs) -> tuple[Scheduler, Any, str]:
    """Load the model and build the Scheduler exactly as the offline Engine does."""
    from radixserve.model_executor.model_runner import ModelRunner
    from radixserve.model_loader.source import resolve_model_source
    from radixserve.model_loader.tokenizer import load_tokenizer
    from radixserve.utils.detokenize import TokenDecoder

    source = resolve_model_source(server_args.model_path, server_args.load_format, server_args.tokenizer_path)
    tokenizer = load_tokenizer(source.tokenizer_source)
    runner = ModelRunner(server_args, source)
    eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    scheduler = Scheduler(server_args, runner, decode=TokenDecoder(tokenizer).decode, eos_token_ids=frozenset(eos))
    return scheduler, tokenizer, server_args.served_model_name or source.name


def warm_up(scheduler: Scheduler) -> None:
    """One short request through the whole step path (CUDA graphs, kernels' autotuning, allocator)."""
    req = TokenizedGenerateReqInput(rid="__warmup__", input_ids=[1, 2, 3, 4, 5, 6, 7, 8],
                                    sampling_params={"max_new_tokens": WARMUP_TOKENS, "temperature": 0,
                                                     "ignore_eos": True})
    scheduler.add_request(req)
    deadline = time.monotonic() + 600
    while scheduler.has_work() and time.monotonic() < deadline:
        scheduler.step()
    scheduler.stats.__init__()  # type: ignore[misc]  # warm-up is not traffic
    scheduler.flush_cache()


def model_info(scheduler: Scheduler, model_name: str) -> dict[str, Any]:
    runner = scheduler.model_runner
    return {
        "model_name": model_name,
        "context_length": scheduler.context_len,
        "vocab_size": scheduler.vocab_size,
        "max_total_num_tokens": scheduler.token_to_kv_pool.size,
        "max_running_requests": scheduler.max_running_requests,
        "device": str(runner.device),
        "dtype": str(runner.dtype).removeprefix("torch."),
        "attention_impl": type(runner.attn_backend).__name__,
        "architecture": runner.config.architecture,
        "scheduler_pid": os.getpid(),
    }


def run_scheduler_process(server_args: ServerArgs, port_args: PortArgs, ready: Connection) -> None:
    """Process entry point. Reports {"status": "ready", ...} or {"status": "error", ...} on `ready`."""
    configure_logging(server_args.log_level, "scheduler")
    init_child_process()
    try:
        scheduler, _, model_name = build_scheduler(server_args)
        logger.info("warming up")
        warm_up(scheduler)
    except Exception as e:  # start-up errors go to the launcher, which prints them and exits non-zero
        logger.error("scheduler start-up failed: %s", e)
        ready.send({"status": "error", "message": f"{type(e).__name__}: {e}"})
        sys.exit(1)

    ctx = zmq.Context()
    recv_sock = bind_pull(ctx, port_args.scheduler_input)
    to_detokenizer = connect_push(ctx, port_args.detokenizer_input)
    to_tokenizer = connect_push(ctx, port_args.tokenizer_input)
    from radixserve.server.metrics import SchedulerMetrics

    metrics = SchedulerMetrics(model_name)
    metrics.update(scheduler.get_load())
    ready.send({"status": "ready", **model_info(scheduler, model_name)})
    ready.close()
    logger.info("scheduler ready (pid %d)", os.getpid())
    try:
        event_loop(scheduler, recv_sock, to_detokenizer, to_tokenizer, metrics)
    except Exception:
        # A failed step leaves pools in an unknown state: die loudly, the launcher exits non-zero.
        logger.error("scheduler crashed:\n%s", traceback.format_exc())
        sys.exit(1)


def event_loop(scheduler: Scheduler, recv_sock: zmq.Socket[Any], to_detokenizer: zmq.Socket[Any],
               to_tokenizer: zmq.Socket[Any], metrics: Any) -> None:
    poller = zmq.Poller()
    poller.register(recv_sock, zmq.POLLIN)
    last_metrics = 0.0
    while True:
        if not scheduler.has_work():
            poller.poll(IDLE_POLL_MS)
        for msg in recv_all(recv_sock, SCHEDULER_INPUT_DECODER):
            reply = scheduler.handle(msg)
            if reply is not None:
                to_tokenizer.send(ENCODER.encode(reply))
        out = scheduler.step()
        if out is not None:
            to_detokenizer.send(ENCODER.encode(out))
        now = time.monotonic()
        if now - last_metrics >= METRICS_INTERVAL_S:
            metrics.update(scheduler.get_load())
            last_metrics = now
