"""Cases for the peer-memory all-reduce kernel (kernels/lamport_all_reduce.py) with every rank in one
process: on CPU through Triton's interpreter (push, then reduce, one rank at a time), on one GPU with
each rank's kernel on a stream of its own, running at the same time (eagerly and in a CUDA graph).
Shared by the GPU test and the CPU interpreter run."""

from __future__ import annotations

import torch

from radixserve.kernels import lamport_all_reduce as L

# Sizes change between calls, shrinking and growing, so a slot is reused with more elements than
# it was last written with: a stale element left by a bad clear would be read as arrived.
SIZES = (4096, 700, 8191, 10, 4096, 3000, 8192, 1, 8192, 5000)
# The interpreter's, a quarter the size: with a grid of 4 programs of 256 still two passes at the largest.
SMALL_SIZES = (1024, 175, 2047, 10, 1024, 750, 2048, 1, 2048, 1250)


class Ranks:
    """`world` ranks' buffers, address table and state, all on `device`."""

    def __init__(self, world: int, cap: int, dtype: torch.dtype, device: str, programs: int = L.PROGRAMS) -> None:
        self.world, self.cap, self.dtype = world, cap, dtype
        self.bufs = [L.new_buffer(world, cap, dtype, device) for _ in range(world)]
        self.peers = torch.tensor([b.data_ptr() for b in self.bufs], dtype=torch.int64, device=device)
        self.states = [L.new_state(device, programs) for _ in range(world)]

    def check_only_slot_written(self, call: int, n: int) -> None:
        """After call `call` (0-based) of `n` elements every rank's buffer holds the sentinel except the
        first n elements of each sub-slot of that call's slot."""
        sent = L.sentinel(self.dtype)
        for r, buf in enumerate(self.bufs):
            view = buf.view(L.SLOTS, self.world, self.cap).cpu()
            for s in range(L.SLOTS):
                for p in range(self.world):
                    written = view[s, p] != sent
                    if s == call % L.SLOTS:
                        assert bool(written[:n].all()), f"rank {r} slot {s} sub-slot {p}: an element did not arrive"
                        assert not bool(written[n:].any()), f"rank {r} slot {s} sub-slot {p}: stale past {n}"
                    else:
                        assert not bool(written.any()), f"rank {r} slot {s} sub-slot {p}: not cleared after call {call}"


def _inputs(world: int, n: int, dtype: torch.dtype, gen: torch.Generator) -> list[torch.Tensor]:
    xs = [torch.randn(n, generator=gen).to(dtype) for _ in range(world)]
    xs[0][: min(3, n)] = -0.0  # the sentinel's value: must travel as +0.0
    if world > 1 and n > 5:
        xs[1][3:5] = -0.0  # and where both addends are -0.0
        xs[0][3:5] = -0.0
    return xs


def _want(xs: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    acc = torch.zeros_like(xs[0], dtype=torch.float32)
    for x in xs:  # rank order, in float32: the kernel's order
        acc += x.float()
    return acc.to(dtype)


def check_in_interpreter(gen: torch.Generator) -> None:
    """Push for every rank, then reduce for every rank (the interpreter runs one program at a time, so a
    grid of 4: each program makes several passes over the larger messages)."""
    for world, dtype in ((2, torch.float32), (4, torch.float32), (2, torch.bfloat16)):
        ranks = Ranks(world, 2048, dtype, "cpu", programs=4)
        for call, n in enumerate(SMALL_SIZES):
            xs = _inputs(world, n, dtype, gen)
            for r in range(world):
                L.lamport_all_reduce(xs[r], ranks.peers, ranks.states[r], r, world, ranks.cap, phase=L.PUSH)
            outs = [L.lamport_all_reduce(xs[r], ranks.peers, ranks.states[r], r, world, ranks.cap, phase=L.REDUCE)
                    for r in range(world)]
            want = _want(xs, dtype)
            for r, out in enumerate(outs):
                if dtype == torch.float32:
                    assert torch.equal(out, want), (world, dtype, call, n, r)
                else:  # the interpreter truncates float32 -> bf16 where CUDA rounds: one ulp
                    assert torch.allclose(out.float(), want.float(), rtol=2 ** -7, atol=0), (world, dtype, call, n, r)
                assert torch.equal(out.view(L.int_view_dtype(dtype)), outs[0].view(L.int_view_dtype(dtype))), \
                    f"ranks 0 and {r} disagree"
            ranks.check_only_slot_written(call, n)
            assert all(int(s[0, 0]) == call + 1 for s in ranks.states)
    try:
        L.lamport_all_reduce(torch.zeros(3000), ranks.peers, ranks.states[0], 0, 2, ranks.cap)
    except ValueError as e:
        assert "do not fit" in str(e)
    else:
        raise AssertionError("a message over the buffer's capacity was accepted")


def _concurrent_call(ranks: Ranks, xs: list[torch.Tensor], streams: list[torch.cuda.Stream]) -> list[torch.Tensor]:
    """Every rank's kernel on its own stream, forked from and joined to the current one."""
    main = torch.cuda.current_stream()
    outs = []
    for r, s in enumerate(streams):
        s.wait_stream(main)
        with torch.cuda.stream(s):
            outs.append(L.lamport_all_reduce(xs[r], ranks.peers, ranks.states[r], r, ranks.world, ranks.cap))
    for s in streams:
        main.wait_stream(s)
    return outs


def check_concurrent_on_gpu(gen: torch.Generator) -> None:
    """Each rank's kernel on its own stream at the same time (they spin on each other), eagerly and in a
    CUDA graph replayed with new inputs; the sums are CUDA's float32 -> bf16 rounding, bit for bit."""
    for world, dtype in ((2, torch.bfloat16), (4, torch.bfloat16), (2, torch.float32)):
        ranks = Ranks(world, 8192, dtype, "cuda")
        L.warm_up(ranks.peers, world, ranks.cap, dtype)  # no variant may load while a rank spins
        streams = [torch.cuda.Stream() for _ in range(world)]
        for call, n in enumerate(SIZES):
            xs = [x.cuda() for x in _inputs(world, n, dtype, gen)]
            outs = _concurrent_call(ranks, xs, streams)
            torch.cuda.synchronize()
            want = _want(xs, dtype)
            for r, out in enumerate(outs):
                assert torch.equal(out.view(L.int_view_dtype(dtype)), want.view(L.int_view_dtype(dtype))), \
                    (world, dtype, call, n, r)
            ranks.check_only_slot_written(call, n)
        # In a graph: 7 calls of three sizes a replay (so the slots rotate across replays), replayed
        # with new inputs.
        sizes = (4096, 64, 8192, 4096, 1, 4096, 300)
        xs_static = [[torch.zeros(n, dtype=dtype, device="cuda") for _ in range(world)] for n in sizes]
        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the capture: compiles, and keeps the calls in step
            for xs in xs_static:
                _concurrent_call(ranks, xs, streams)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            outs_static = [_concurrent_call(ranks, xs, streams) for xs in xs_static]
        for _ in range(4):
            fresh = [_inputs(world, n, dtype, gen) for n in sizes]
            for dst, src in zip(xs_static, fresh, strict=True):
                for d, s in zip(dst, src, strict=True):
                    d.copy_(s)
            graph.replay()
            torch.cuda.synchronize()
            for outs, src in zip(outs_static, fresh, strict=True):
                want = _want([s.cuda() for s in src], dtype)
                for out in outs:
                    assert torch.equal(out.view(L.int_view_dtype(dtype)), want.view(L.int_view_dtype(dtype)))
