"""The generated modules of radixserve.proto, made on first use if the install did not make them.

`pip install .` and `pip install -e .` (scripts/setup.sh) generate them at build time (setup.py).
A source tree used without (re)installing, or one whose .proto changed since, gets them
generated here, into the package directory, when grpcio-tools is installed (the dev extra has it).

They are imported by name at run time and typed as Any: generated code has no annotations, and
mypy must not follow into it (pyproject.toml excludes the files).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
from pathlib import Path
from types import ModuleType
from typing import Any

from radixserve.grpc import codegen

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent


class StubsUnavailableError(ImportError):
    """The generated modules are missing and cannot be generated here."""


def _ensure_generated() -> None:
    if not codegen.is_stale(PACKAGE_DIR):
        return
    if importlib.util.find_spec("grpc_tools") is None:
        if all((PACKAGE_DIR / name).exists() for name in codegen.OUTPUTS):
            return  # older than the .proto by file time only (an installed wheel): use them
        raise StubsUnavailableError(
            "radixserve's gRPC modules were not generated (install the package with pip, which runs "
            "grpcio-tools at build time, or `pip install grpcio-tools` to generate them on first use)")
    if not os.access(PACKAGE_DIR, os.W_OK):
        raise StubsUnavailableError(f"cannot generate radixserve's gRPC modules: {PACKAGE_DIR} is not writable")
    logger.info("generating the gRPC modules from %s", PACKAGE_DIR / codegen.PROTO)
    codegen.generate(PACKAGE_DIR.parent.parent, PACKAGE_DIR.parent.parent)
    importlib.invalidate_caches()


@functools.cache
def load() -> tuple[Any, Any]:
    """(radixserve_pb2, radixserve_pb2_grpc): the messages and the service stubs."""
    _ensure_generated()
    pb2: ModuleType = importlib.import_module("radixserve.grpc.radixserve_pb2")
    pb2_grpc: ModuleType = importlib.import_module("radixserve.grpc.radixserve_pb2_grpc")
    return pb2, pb2_grpc
