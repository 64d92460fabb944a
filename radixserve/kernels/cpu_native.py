"""The CPU kernels written in C (radixserve/kernels/cpu/*.c): built once per machine, loaded with ctypes.

torch's CPU ops have no product of int8 activations with a file's quantized blocks, which is what
llama.cpp runs at batch 1; `qdot.c` is that product. `decode.c` runs a whole decode step of a
Llama-family model around it (model_executor/cpu_decode.py). They are compiled at first use with the
machine's C compiler (`cc`, or $CC) with -O3 -march=native -fopenmp into the radixserve cache
(`$RADIXSERVE_CACHE/cpu_kernels/<key>/`), the key naming the source, the compiler, its flags and the
CPU's feature flags, so a cache shared between machines never hands one CPU another's build. The
build goes to a temporary file renamed into place, so processes that start together (TP ranks) do
not read a half-written library. Where there is no compiler, or the build fails, `load()` returns
None with the reason in `unavailable_reason()`, and the callers keep torch's kernels.
RADIXSERVE_CPU_KERNELS=0 turns the native kernels off (A/B runs, or to rule them out).

The products take the C kernel only where it has its AVX512-VNNI path (`products_enabled`): its plain C
loop, on a CPU without it, decoded the embedded model at a fifth of torch's int4 op's speed (an AVX2
AMD EPYC, 2 cores: 5.5 against 26.5 tok/s, benchmarks/results/cpu_decode_20261204T001911Z.json), so
torch's op serves there; RADIXSERVE_CPU_KERNELS=1 asks for the C product anyway (tests, A/B runs).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCES = tuple(Path(__file__).with_name("cpu") / name for name in ("qdot.c", "decode.c"))
LIBRARY = "libradixserve_cpu.so"
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11")
ENV_SWITCH = "RADIXSERVE_CPU_KERNELS"
_reason: list[str] = []


def cache_root() -> Path:
    root = os.environ.get("RADIXSERVE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "radixserve")
    return Path(root) / "cpu_kernels"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc"))


def _build_key(cc: str) -> str:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    h = hashlib.sha256()
    for part in (*(src.read_bytes() for src in SOURCES), version.encode(), " ".join(FLAGS).encode(),
                 _cpu_flags().encode()):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:20]


def _build(cc: str, dest: Path, extra_flags: tuple[str, ...] = ()) -> None:
    """Compile SOURCES into `dest` (written whole or not at all); `extra_flags` after FLAGS, e.g. a test's
    `-mno-avx512f` for the plain C path."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        proc = subprocess.run([cc, *FLAGS, *extra_flags, "-o", tmp, *map(str, SOURCES), "-lm"], capture_output=True,
                              text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.rs_qdot.restype = ctypes.c_int
    lib.rs_qdot.argtypes = [ptr, i64, i64, ptr, i64, ctypes.c_int, ptr, ptr, ctypes.c_int, i64, ctypes.c_int32, ptr,
                            ctypes.c_int]
    lib.rs_decode.restype = ctypes.c_int
    lib.rs_decode.argtypes = [ptr, i64, ptr, ptr, ptr, i64, ptr, ptr, ptr, ctypes.c_int]
    lib.rs_qdot_has_vnni.restype = ctypes.c_int
    lib.rs_qdot_has_vnni.argtypes = []
    return lib


def load() -> ctypes.CDLL | None:
    """The built library, or None (the reason in `unavailable_reason()`). The switch is read on every call,
    so a process can build one model with the native kernels and one without (bench_cpu_decode.py)."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None
    return _load_built()


@functools.cache
def _load_built() -> ctypes.CDLL | None:
    cc = _compiler()
    if cc is None:
        _reason.append(f"no C compiler ({os.environ.get('CC', 'cc')}) on PATH")
        return None
    torch.get_num_threads()  # torch's libgomp is loaded before ours, so ours resolves to it
    try:
        dest = cache_root() / _build_key(cc) / LIBRARY
        if not dest.exists():
            logger.info("building the CPU kernels (%s) into %s", ", ".join(s.name for s in SOURCES), dest.parent)
            _build(cc, dest)
        lib = _declare(ctypes.CDLL(str(dest)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        _reason.append(f"building the CPU kernels failed: {e}")
        logger.warning("CPU kernels unavailable, torch's kernels serve instead: %s", e)
        return None
    return lib


def unavailable_reason() -> str:
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return f"{ENV_SWITCH}=0"
    return "; ".join(_reason) or "available"


def has_vnni() -> bool:
    lib = load()
    return bool(lib is not None and lib.rs_qdot_has_vnni())


def products_enabled() -> bool:
    """Whether quantized products on this CPU take the C kernel (see the module's docstring)."""
    if load() is None:
        return False
    return has_vnni() or os.environ.get(ENV_SWITCH) == "1"


def products_reason() -> str:
    """Why quantized products do not take the C kernel here ("" where they do)."""
    if products_enabled():
        return ""
    if load() is None:
        return unavailable_reason()
    return f"this CPU has no AVX512-VNNI, so torch's int4 op serves ({ENV_SWITCH}=1 asks for the C product)"
