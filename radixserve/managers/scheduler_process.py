"""The scheduler subprocess: ModelRunner + Scheduler driven by ZMQ messages.

The loop is the offline Engine's loop (`Scheduler.handle` for inputs, `Scheduler.step` for one
batch) with sockets around it: drain the input socket, step, send `BatchTokenIDOut` to the
detokenizer. With nothing to do it blocks on the socket instead of spinning.

With tensor or pipeline parallelism there is one such process per rank (tp x pp of them),
joined in a torch.distributed world. Only world rank 0 owns sockets: each iteration it
broadcasts the raw messages it received, and every rank applies them and steps in lockstep.
Scheduling is deterministic given the same inputs; TP ranks sample from the same all-gathered
logits with the same RNG state, and with pipeline stages the last stage's sampled tokens are
broadcast to the others, so all ranks agree on every batch without exchanging schedules.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import msgspec
import torch
import zmq
from torch.profiler import record_function

from radixserve.constrained.base import GrammarError
from radixserve.distributed.parallel_state import ONE_PROCESS, DistGroups, ParallelGroup
from radixserve.managers.io_struct import TokenizedGenerateReqInput
from radixserve.managers.ipc import (
    ENCODER,
    SCHEDULER_INPUT_DECODER,
    PortArgs,
    bind_pull,
    connect_push,
    init_child_process,
    recv_raw,
)
from radixserve.managers.scheduler import Scheduler
from radixserve.managers.scheduler_output import SchedulerStats
from radixserve.model_loader.source import ModelSource, resolve_model_source
from radixserve.model_loader.tokenizer import load_tokenizer
from radixserve.sampling.sampling_params import SamplingParams
from radixserve.server_args import ServerArgs
from radixserve.utils.gc_freeze import freeze_startup_heap
from radixserve.utils.kernel_compiles import WATCH as compile_watch
from radixserve.utils.log import configure_logging

logger = logging.getLogger(__name__)

IDLE_POLL_MS = 500
METRICS_INTERVAL_S = 0.5
CACHE_EVENTS_HEARTBEAT_S = 1.0  # a load-only batch this often when the cache does not change
WARMUP_TOKENS = 4


def set_process_title(name: str) -> None:
    """Name this process `radixserve::<name>` in ps and top (cmdline and comm)."""
    try:
        import setproctitle
    except ImportError:  # an optional nicety: never fail a start-up for it
        return
    setproctitle.setproctitle(f"radixserve::{name}")


def build_scheduler(server_args: ServerArgs, source: ModelSource, tokenizer: Any,
                    groups: DistGroups = ONE_PROCESS) -> Scheduler:
    """Load the model and build the Scheduler: the one factory, for the server and the Engine."""
    from radixserve.model_executor.model_runner import ModelRunner

    runner = ModelRunner(server_args, source, groups.tp, groups.pp, groups.world)
    eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    return Scheduler(server_args, runner, tokenizer, eos_token_ids=frozenset(eos))


def _warm_up_request(rid: str, length: int, vocab_size: int) -> TokenizedGenerateReqInput:
    ids = [1 + (i * 7919) % (vocab_size - 1) for i in range(length)]  # distinct enough, always valid
    return TokenizedGenerateReqInput(rid=rid, input_ids=ids, sampling_params=SamplingParams(
        max_new_tokens=WARMUP_TOKENS, temperature=0, ignore_eos=True))


def _run_until_idle(scheduler: Scheduler, deadline: float) -> None:
    while scheduler.has_work() and time.monotonic() < deadline:
        scheduler.step()


def warm_up(scheduler: Scheduler) -> None:
    """Requests through the whole step path (CUDA graphs, kernels' autotuning, allocator) before
    the server reports ready.

    On CUDA also a full prefill chunk and, with mixed chunks on, a chunk that carries a running
    request's decode row: the first step of each such shape compiles and autotunes Triton kernels,
    which measured 0.7-1.6 s (benchmarks/run_gpu_itl.sh with STEP_LOG=1) and stalled every
    running request at that moment instead of the start-up.
    """
    deadline = time.monotonic() + 600
    vocab = scheduler.vocab_size
    scheduler.add_request(_warm_up_request("__warmup__", 8, vocab))
    _run_until_idle(scheduler, deadline)
    args = scheduler.server_args
    if scheduler.model_runner.device.type == "cuda":
        chunk = args.chunked_prefill_size if args.chunked_prefill_size > 0 else args.max_prefill_tokens
        length = min(chunk, args.max_prefill_tokens, scheduler.context_len - WARMUP_TOKENS - 1,
                     scheduler.model_runner.sizes.max_total_tokens // 4)
        if length > 8:
            scheduler.add_request(_warm_up_request("__warmup_chunk__", length, vocab))
            scheduler.step()  # its prefill; it then decodes while the next prompt arrives
            scheduler.add_request(_warm_up_request("__warmup_mixed__", length - 1, vocab))
            _run_until_idle(scheduler, deadline)
    scheduler.stats = SchedulerStats()  # warm-up is not traffic
    compile_watch.mark_warmed_up()  # a Triton compile from here on stalls live requests: warned about
    scheduler.flush_cache()
    if scheduler.grammar is not None:
        # The grammar backend reads the whole vocabulary once (0.15-1 s): pay it at start-up, not
        # in the first constrained request's latency. A tokenizer it cannot use fails those
        # requests later, with the reason, never the start.
        try:
            _ = scheduler.grammar.backend
        except GrammarError as e:
            logger.warning("constrained decoding unavailable: %s", e)


def model_info(scheduler: Scheduler, model_name: str) -> dict[str, Any]:
    runner = scheduler.model_runner
    return {
        "model_name": model_name,
        "context_length": scheduler.context_len,
        "vocab_size": scheduler.vocab_size,
        "max_total_num_tokens": scheduler.token_to_kv_pool.size,
        "max_running_requests": scheduler.max_running_requests,
        "device": str(runner.device),
        "device_name": (torch.cuda.get_device_name(runner.device) if runner.device.type == "cuda" else "cpu"),
        "device_count": runner.world.size,  # GPUs (or CPU ranks) this server runs on
        "dtype": str(runner.dtype).removeprefix("torch."),
        "attention_impl": type(runner.attn_backend).__name__,
        "architecture": runner.config.architecture,
        "scheduler_pid": os.getpid(),
        "sampling_defaults": (runner.source.generation_defaults
                              if runner.server_args.sampling_defaults == "model" else {}),
    }


def rank_name(server_args: ServerArgs, world_rank: int) -> str:
    tp, pp = server_args.tensor_parallel_size, server_args.pipeline_parallel_size
    pp_rank, tp_rank = divmod(world_rank, tp)
    if pp == 1:
        return "scheduler" if tp == 1 else f"scheduler-tp{tp_rank}"
    return f"scheduler-pp{pp_rank}" if tp == 1 else f"scheduler-pp{pp_rank}-tp{tp_rank}"


def set_host_threads(server_args: ServerArgs) -> None:
    """Size torch's CPU thread pool for this rank. On CUDA the host only builds small index
    tensors, and with one OpenMP thread per core in each of the tp x pp processes they contend
    for the same cores (vLLM's workers run one thread for the same reason); at TP=2 a 256-request
    decode step took 45 ms of wall time for 14 ms of GPU work on each rank (docs/gpu.md). On the
    CPU the model itself runs on these threads: the TP ranks of one node, which compute at the
    same time, split its cores (at least one thread each), as vLLM's CPU workers do; pipeline
    stages take turns (no micro-batches), so each stage's ranks may use them all. OMP_NUM_THREADS,
    when set, wins."""
    from radixserve.model_executor.model_runner import resolve_device

    if os.environ.get("OMP_NUM_THREADS"):
        return
    if resolve_device(server_args.device).type == "cuda":
        torch.set_num_threads(1)
        return
    concurrent = min(server_args.ranks_per_node, server_args.tensor_parallel_size)
    if concurrent > 1:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // concurrent))


def run_scheduler_process(server_args: ServerArgs, port_args: PortArgs, ready: Connection,
                          world_rank: int = 0) -> None:
    """Process entry point of one rank. Reports {"status": "ready", ...} or {"status": "error", ...}."""
    world_size = server_args.tensor_parallel_size * server_args.pipeline_parallel_size
    set_process_title(rank_name(server_args, world_rank))
    configure_logging(server_args.log_level, rank_name(server_args, world_rank))
    init_child_process()
    try:
        set_host_threads(server_args)
        groups = ONE_PROCESS
        if world_size > 1:
            import torch

            from radixserve.distributed.device_comm import disable_multicast
            from radixserve.distributed.parallel_state import DEFAULT_TIMEOUT_S, init_distributed
            from radixserve.model_executor.model_runner import resolve_device

            device = resolve_device(server_args.device)
            if device.type == "cuda":
                # The GPU index on this node: world ranks past the first node start again at 0.
                torch.cuda.set_device(world_rank - server_args.local_ranks.start)
                disable_multicast()
            multinode = server_args.nnodes > 1
            groups = init_distributed(world_rank, server_args.tensor_parallel_size,
                                      server_args.pipeline_parallel_size, port_args.dist_store, device,
                                      init_addr=server_args.dist_init_addr if multinode else None,
                                      timeout_s=server_args.dist_timeout if multinode else DEFAULT_TIMEOUT_S)
            # Same RNG state on every rank: unseeded sampling draws the same numbers everywhere.
            torch.manual_seed(server_args.random_seed if server_args.random_seed is not None else 0)
        source = resolve_model_source(server_args.model_path, server_args.load_format, server_args.tokenizer_path)
        scheduler = build_scheduler(server_args, source, load_tokenizer(source.tokenizer_source), groups)
        model_name = server_args.served_model_name or source.name
        logger.info("warming up")
        warm_up(scheduler)
    except Exception as e:  # start-up errors go to the launcher, which prints them and exits non-zero
        logger.error("scheduler start-up failed: %s", e)
        ready.send({"status": "error", "message": f"{type(e).__name__}: {e}"})
        sys.exit(1)

    io = None
    if world_rank == 0:
        ctx = zmq.Context()
        io = SchedulerIO(bind_pull(ctx, port_args.scheduler_input), connect_push(ctx, port_args.detokenizer_input),
                         connect_push(ctx, port_args.tokenizer_input))
    from radixserve.metrics import SchedulerMetrics

    metrics = SchedulerMetrics(model_name) if world_rank == 0 else None
    if world_rank == 0 and not server_args.disable_cache_events:
        scheduler.enable_cache_events()  # after the warm-up, which left the cache empty
    freeze_startup_heap("scheduler")
    ready.send({"status": "ready", **model_info(scheduler, model_name)})
    ready.close()
    logger.info("scheduler ready (pid %d)", os.getpid())
    try:
        event_loop(scheduler, groups.world, io, metrics)
    except Exception:
        # A failed step (or a dead peer rank) leaves pools in an unknown state: die loudly, the
        # launcher exits non-zero.
        logger.error("scheduler crashed:\n%s", traceback.format_exc())
        sys.exit(1)


@dataclass
class SchedulerIO:
    """Rank 0's sockets."""

    recv: zmq.Socket[Any]
    to_detokenizer: zmq.Socket[Any]
    to_tokenizer: zmq.Socket[Any]

    def __post_init__(self) -> None:
        self.poller = zmq.Poller()
        self.poller.register(self.recv, zmq.POLLIN)


class StatsLogger:
    """SGLang's periodic scheduler lines, from the increments of `SchedulerStats` since the last
    lines: `Prefill batch. ...` if prompts were prefilled, `Decode batch. ...` if tokens were
    decoded; nothing while idle."""

    def __init__(self, scheduler: Scheduler, interval_s: float) -> None:
        self.scheduler = scheduler
        self.interval_s = interval_s
        self.last = dataclasses.replace(scheduler.stats)
        self.last_at = time.monotonic()

    def maybe_log(self, now: float) -> None:
        if self.interval_s <= 0 or now - self.last_at < self.interval_s:
            return
        cur, prev = self.scheduler.stats, self.last
        if cur == prev:
            self.last_at = now
            return
        load = self.scheduler.get_load()
        usage = load["kv_used_tokens"] / max(1.0, load["kv_total_tokens"])
        running, queued = int(load["num_running_reqs"]), int(load["num_waiting_reqs"])
        if cur.num_prefill_batches != prev.num_prefill_batches:
            logger.info("Prefill batch. #new-seq: %d, #new-token: %d, #cached-token: %d, token usage: %.2f, "
                        "#running-req: %d, #queue-req: %d, #prefill-batch: %d",
                        cur.num_prefill_seqs - prev.num_prefill_seqs,
                        cur.num_prefill_tokens - prev.num_prefill_tokens,
                        cur.num_prefill_cached_tokens - prev.num_prefill_cached_tokens, usage, running, queued,
                        cur.num_prefill_batches - prev.num_prefill_batches)
        if cur.num_decode_steps != prev.num_decode_steps:
            tokens = cur.num_decode_tokens - prev.num_decode_tokens
            logger.info("Decode batch. #running-req: %d, #token: %d, token usage: %.2f, gen throughput (token/s): "
                        "%.2f, #queue-req: %d, #decode-step: %d, #retracted-req: %d", running,
                        int(load["kv_used_tokens"]), usage, tokens / max(1e-9, now - self.last_at), queued,
                        cur.num_decode_steps - prev.num_decode_steps, cur.num_retractions - prev.num_retractions)
        self.last, self.last_at = dataclasses.replace(cur), now


def send_cache_events(scheduler: Scheduler, io: SchedulerIO, now: float | None = None,
                      heartbeat_s: float = CACHE_EVENTS_HEARTBEAT_S) -> None:
    """To the TokenizerManager's CacheEventHub, on the socket its replies take (so they stay in order)."""
    out = scheduler.cache_events(time.monotonic() if now is None else now, heartbeat_s)
    if out is not None:
        io.to_tokenizer.send(ENCODER.encode(out))


def event_loop(scheduler: Scheduler, world: ParallelGroup, io: SchedulerIO | None, metrics: Any) -> None:
    last_metrics = 0.0
    stats_log = StatsLogger(scheduler, scheduler.server_args.stats_log_interval) if io is not None else None
    while True:
        raw: list[bytes] | None = None
        if io is not None:
            if not scheduler.has_work():
                io.poller.poll(IDLE_POLL_MS)
            raw = recv_raw(io.recv)
        # Other ranks wait here for rank 0's inputs; an idle rank 0 still broadcasts (empty)
        # every IDLE_POLL_MS, so no collective waits long enough to time out.
        with record_function("scheduler.broadcast_inputs"):
            inputs = world.broadcast_bytes(raw)
        for data in inputs:
            try:
                msg = SCHEDULER_INPUT_DECODER.decode(data)
            except msgspec.MsgspecError as e:  # DecodeError, ValidationError: drop it, keep serving
                logger.error("dropped an undecodable scheduler input (%d bytes): %s", len(data), e)
                continue
            reply = scheduler.handle(msg)
            if reply is not None and io is not None:
                send_cache_events(scheduler, io, heartbeat_s=float("inf"))  # a flush's events before its reply
                io.to_tokenizer.send(ENCODER.encode(reply))
        with record_function("scheduler.step"):
            out = scheduler.step()
        if io is None:
            continue
        if out is not None:
            with record_function("scheduler.send_outputs"):
                io.to_detokenizer.send(ENCODER.encode(out))
        now = time.monotonic()
        send_cache_events(scheduler, io, now=now)
        if metrics is not None and now - last_metrics >= METRICS_INTERVAL_S:
            metrics.update(scheduler.get_load())
            last_metrics = now
        if stats_log is not None:
            stats_log.maybe_log(now)
