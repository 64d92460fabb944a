"""Programmatic dependent launch (Hopper and later) for chains of small kernels.

A kernel launched with `launch_pdl` may be scheduled while the kernel before it in the stream is
still running, once every program of that one has called `gdc_launch_dependents`. Such a kernel
must call `gdc_wait` before it reads anything an earlier kernel wrote or writes anything an
earlier kernel may still read: the wait returns when the kernel before has completed and its
writes are visible (and that one waited for its own predecessor, so for all of them). Before the
wait it may only read what no kernel of the step writes (weights), or what the kernel two back or
an earlier one wrote: every kernel here triggers after its own wait, so when this one starts, the
one before it has passed its wait and the one before that has completed. (Batch-1 decode attention
reads the slot table and the lengths there, written before the graph's first kernel.) A kernel
launched without the attribute, or one whose predecessor never triggers, runs as usual; both
instructions are no-ops there.

`launch_options()` is {"launch_pdl": True} where it applies (a CUDA device of compute capability
9 or more, a Triton that knows the option, RADIXSERVE_PDL not "0"), else {}; kernels take a
`PDL` constexpr that is True exactly then.
"""

from __future__ import annotations

import functools
import logging
import os

import torch
import triton
import triton.language as tl

logger = logging.getLogger(__name__)


@triton.jit
def gdc_wait():
    tl.inline_asm_elementwise("griddepcontrol.wait; // dummy $0", "=r", [], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def gdc_launch_dependents():
    tl.inline_asm_elementwise("griddepcontrol.launch_dependents; // dummy $0", "=r", [], dtype=tl.int32,
                              is_pure=False, pack=1)


@triton.jit
def _probe(X):
    gdc_wait()
    gdc_launch_dependents()
    tl.store(X, tl.load(X) + 1)


@functools.cache
def _supported(device_index: int) -> bool:
    if os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.get_device_capability(device_index)[0] < 9:
        return False
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    if "launch_pdl" not in getattr(CUDAOptions, "__dataclass_fields__", {}):
        return False
    try:  # compile and launch once (no sync: this may run while a CUDA graph is being captured)
        _probe[(1,)](torch.zeros(1, device=torch.device("cuda", device_index)), launch_pdl=True)
    except Exception as e:  # an old Triton or driver: the kernels run without PDL
        logger.warning("programmatic dependent launch unavailable (%s: %s); launching without it",
                       type(e).__name__, e)
        return False
    return True


def enabled(device: torch.device) -> bool:
    if device.type != "cuda" or os.environ.get("RADIXSERVE_PDL", "1") == "0":
        return False
    return _supported(device.index if device.index is not None else torch.cuda.current_device())


def launch_options(device: torch.device) -> dict[str, bool]:
    return {"launch_pdl": True} if enabled(device) else {}
